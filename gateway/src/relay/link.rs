//! The state of a session's connection to the next hop — ready, in flight or broken — and the
//! one transition function that moves it after each exchange.
//!
//! An exchange takes the connection out of its state (`Link::take`), which leaves `Broken`
//! behind until the exchange puts the connection back through `Link::after`. So an exchange that
//! never finishes — a failed read or write, a stalled next hop, the shutdown deadline cutting a
//! data stream short — leaves the link `Broken` and its connection dropped with the exchange: a
//! half-sent command or data stream is never reused, never reset and never pooled.

use std::mem;

use crate::smtp::reply::Reply;

/// Generic over the connection so the transitions can be tested without sockets.
#[derive(Debug, PartialEq, Eq)]
pub enum Link<C> {
    /// Connected, between transactions: reusable, and what the pool is given.
    Ready(C),
    /// Connected, with a transaction open at the next hop (its MAIL accepted): it must end (final
    /// dot, or RSET) before the connection serves another.
    InFlight(C),
    /// No usable connection: none taken yet, or the last one failed, is being closed by the next
    /// hop (421), answered out of protocol, or was abandoned mid-exchange.
    Broken,
}

/// What a reply answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    Mail,
    Rcpt,
    Data,
    EndOfData,
    Rset,
}

impl<C> Link<C> {
    /// Takes the connection out for an exchange, leaving `Broken` until `after` puts it back.
    pub fn take(&mut self) -> Link<C> {
        mem::replace(self, Link::Broken)
    }

    /// The transition: the state after `exchange` on `conn` was answered with `reply`.
    pub fn after(exchange: Exchange, conn: C, reply: &Reply) -> Link<C> {
        use Exchange::*;
        match (exchange, reply.code) {
            // The next hop is closing the connection.
            (_, 421) => Link::Broken,
            (Mail, 200..=299) | (Rcpt, _) | (Data, 354) => Link::InFlight(conn),
            // Any other answer to DATA: the next hop is not reading a data stream, so whatever we
            // sent next would mean different things to the two sides.
            (Data, _) => Link::Broken,
            (Mail, _) | (EndOfData, _) | (Rset, 200..=299) => Link::Ready(conn),
            (Rset, _) => Link::Broken,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(exchange: Exchange, code: u16) -> Link<()> {
        Link::after(exchange, (), &Reply::new(code, "x.x.x", "text"))
    }

    #[test]
    fn transitions() {
        use Exchange::*;
        assert_eq!(after(Mail, 250), Link::InFlight(()));
        assert_eq!(after(Mail, 550), Link::Ready(()));
        assert_eq!(after(Rcpt, 250), Link::InFlight(()));
        assert_eq!(after(Rcpt, 450), Link::InFlight(()));
        assert_eq!(after(Data, 354), Link::InFlight(()));
        for code in [220, 250, 451, 554] {
            assert_eq!(after(Data, code), Link::Broken, "DATA answered {code}");
        }
        assert_eq!(after(EndOfData, 250), Link::Ready(()));
        assert_eq!(after(EndOfData, 554), Link::Ready(()));
        assert_eq!(after(Rset, 250), Link::Ready(()));
        assert_eq!(after(Rset, 500), Link::Broken);
        for exchange in [Mail, Rcpt, Data, EndOfData, Rset] {
            assert_eq!(after(exchange, 421), Link::Broken, "{exchange:?} answered 421");
        }
    }

    #[test]
    fn an_exchange_that_never_finishes_leaves_the_link_broken() {
        let mut link = Link::InFlight(String::from("connection"));
        let taken = link.take();
        assert_eq!(taken, Link::InFlight(String::from("connection")));
        // The exchange is dropped here (cancelled) without calling `after`.
        drop(taken);
        assert_eq!(link, Link::Broken);
    }
}
