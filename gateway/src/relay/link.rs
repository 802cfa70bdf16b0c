//! The state of a session's connection to the next hop: while it is opened (`Opening`:
//! greeting, EHLO, STARTTLS, handshake, EHLO again) and once open (`Link`: ready, in flight or
//! broken), each with the one transition function that moves it after each exchange.
//!
//! An exchange takes the connection out of its state (`Link::take`), which leaves `Broken`
//! behind until the exchange puts the connection back through `Link::after`. So an exchange that
//! never finishes — a failed read or write, a stalled next hop, the shutdown deadline cutting a
//! data stream short — leaves the link `Broken` and its connection dropped with the exchange: a
//! half-sent command or data stream is never reused, never reset and never pooled.

use std::mem;

use super::wire::Extensions;
use crate::config::RelayTls;
use crate::smtp::reply::Reply;

/// How far opening a connection has got. Each state names what is sent (or awaited) next; a
/// required STARTTLS that cannot happen ends in `Insecure` before any MAIL is sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Opening {
    /// Connected: the greeting is awaited.
    Greeting,
    /// EHLO is sent; `secured`: over TLS, the second EHLO (RFC 3207 §4.2).
    Ehlo {
        secured: bool,
    },
    /// EHLO was refused: HELO is sent.
    Helo,
    StartTls,
    /// The next hop said 220 to STARTTLS: the handshake is next.
    Handshake,
    /// Ready for transactions.
    Open,
    /// The next hop refused the session (greeting, HELO): this reply goes to the client.
    Refused(Reply),
    /// `tls = "required"` and the connection cannot be secured.
    Insecure(TlsFailure),
}

/// Why a required STARTTLS did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsFailure {
    #[error("next hop offers no STARTTLS; [relay] tls = required")]
    NotOffered,
    #[error("next hop refused STARTTLS ({}); [relay] tls = required", .0.summary())]
    Refused(Reply),
    #[error("TLS handshake with the next hop failed: {0}")]
    Handshake(String),
}

/// What answered the step of an `Opening`.
pub enum Answer<'a> {
    Reply(&'a Reply),
    /// The handshake's outcome.
    Handshake(Result<(), String>),
}

impl Opening {
    /// The transition: the state after this state's step got `answer`, under `tls`.
    pub fn after(self, answer: Answer<'_>, tls: RelayTls) -> Opening {
        use Opening::*;
        let required = tls == RelayTls::Required;
        match (self, answer) {
            (Greeting, Answer::Reply(reply)) if reply.code == 220 => Ehlo { secured: false },
            (Greeting | Helo, Answer::Reply(reply)) if reply.code != 250 => Refused(reply.clone()),
            (Helo, Answer::Reply(_)) => Open,
            (Ehlo { secured: false }, Answer::Reply(reply)) if reply.code == 250 => {
                match (Extensions::from_ehlo(reply).starttls, tls) {
                    (true, RelayTls::Opportunistic | RelayTls::Required) => StartTls,
                    (false, RelayTls::Required) => Insecure(TlsFailure::NotOffered),
                    _ => Open,
                }
            }
            // No EHLO, no extensions: STARTTLS cannot be offered.
            (Ehlo { secured: false }, Answer::Reply(_)) if required => Insecure(TlsFailure::NotOffered),
            (Ehlo { secured: true }, Answer::Reply(reply)) if reply.code == 250 => Open,
            (Ehlo { .. }, Answer::Reply(_)) => Helo,
            (StartTls, Answer::Reply(reply)) => match reply.code {
                220 => Handshake,
                421 => Refused(reply.clone()),
                _ if required => Insecure(TlsFailure::Refused(reply.clone())),
                // RFC 3207: "454 TLS not available": go on in plain text on this connection,
                // with the first EHLO's extensions.
                _ => Open,
            },
            (Handshake, Answer::Handshake(Ok(()))) => Ehlo { secured: true },
            (Handshake, Answer::Handshake(Err(why))) => Insecure(TlsFailure::Handshake(why)),
            // The driver gives each state only its own kind of answer; the end states stay.
            (state, _) => state,
        }
    }
}

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
    /// Before MAIL: the client's facts (`xforward`).
    Xforward,
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
            (Mail, _) | (EndOfData, _) | (Rset | Xforward, 200..=299) => Link::Ready(conn),
            // Refused XFORWARD leaves its attributes half set at the next hop: not reused.
            (Rset | Xforward, _) => Link::Broken,
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
        assert_eq!(after(Xforward, 250), Link::Ready(()));
        assert_eq!(after(Xforward, 550), Link::Broken);
        for exchange in [Xforward, Mail, Rcpt, Data, EndOfData, Rset] {
            assert_eq!(after(exchange, 421), Link::Broken, "{exchange:?} answered 421");
        }
    }

    fn reply(code: u16, lines: &[&str]) -> Reply {
        Reply { code, enhanced: None, lines: lines.iter().map(|l| l.to_string()).collect() }
    }

    /// Runs an opening from the greeting through `answers`; the state reached.
    fn opening(tls: RelayTls, answers: Vec<Answer<'_>>) -> Opening {
        answers.into_iter().fold(Opening::Greeting, |state, answer| state.after(answer, tls))
    }

    #[test]
    fn opening_with_starttls() {
        use Opening::*;
        let greeting = reply(220, &["mx ESMTP"]);
        let with_tls = reply(250, &["mx", "PIPELINING", "STARTTLS"]);
        let without = reply(250, &["mx", "PIPELINING"]);
        let go = reply(220, &["2.0.0 Ready to start TLS"]);
        let secured = || Answer::Handshake(Ok(()));
        for tls in [RelayTls::Opportunistic, RelayTls::Required] {
            let steps = vec![Answer::Reply(&greeting), Answer::Reply(&with_tls), Answer::Reply(&go)];
            assert_eq!(opening(tls, steps), Handshake, "{tls:?}");
            let mut state = Handshake.after(secured(), tls);
            assert_eq!(state, Ehlo { secured: true });
            state = state.after(Answer::Reply(&without), tls);
            assert_eq!(state, Open, "{tls:?}: the second EHLO needs no STARTTLS");
        }
        // tls = none: STARTTLS is offered but not used.
        let steps = vec![Answer::Reply(&greeting), Answer::Reply(&with_tls)];
        assert_eq!(opening(RelayTls::None, steps), Open);
        // Not offered: plain text when opportunistic, nothing when required.
        let steps = || vec![Answer::Reply(&greeting), Answer::Reply(&without)];
        assert_eq!(opening(RelayTls::Opportunistic, steps()), Open);
        assert_eq!(opening(RelayTls::Required, steps()), Insecure(TlsFailure::NotOffered));
    }

    #[test]
    fn opening_failures() {
        use Opening::*;
        let greeting = reply(220, &["mx ESMTP"]);
        let busy = reply(554, &["5.3.2 go away"]);
        let refused_ehlo = reply(502, &["5.5.2 no EHLO"]);
        let helo_ok = reply(250, &["mx"]);
        let with_tls = reply(250, &["mx", "STARTTLS"]);
        let not_now = reply(454, &["4.7.0 TLS not available"]);
        let closing = reply(421, &["4.3.2 bye"]);
        assert_eq!(opening(RelayTls::Required, vec![Answer::Reply(&busy)]), Refused(busy.clone()));
        // EHLO refused: HELO when TLS may be skipped, nothing when it is required.
        let steps = || vec![Answer::Reply(&greeting), Answer::Reply(&refused_ehlo)];
        assert_eq!(opening(RelayTls::Opportunistic, steps()), Helo);
        assert_eq!(Helo.after(Answer::Reply(&helo_ok), RelayTls::Opportunistic), Open);
        assert_eq!(Helo.after(Answer::Reply(&busy), RelayTls::Opportunistic), Refused(busy.clone()));
        assert_eq!(opening(RelayTls::Required, steps()), Insecure(TlsFailure::NotOffered));
        // STARTTLS refused.
        let steps = |answer| vec![Answer::Reply(&greeting), Answer::Reply(&with_tls), Answer::Reply(answer)];
        assert_eq!(opening(RelayTls::Opportunistic, steps(&not_now)), Open);
        assert_eq!(opening(RelayTls::Required, steps(&not_now)), Insecure(TlsFailure::Refused(not_now.clone())));
        assert_eq!(opening(RelayTls::Opportunistic, steps(&closing)), Refused(closing.clone()));
        // A failed handshake leaves no connection, whatever the mode.
        for tls in [RelayTls::Opportunistic, RelayTls::Required] {
            let failed = Handshake.after(Answer::Handshake(Err("bad certificate".into())), tls);
            assert_eq!(failed, Insecure(TlsFailure::Handshake("bad certificate".into())));
        }
        // The end states stay.
        assert_eq!(Open.after(Answer::Reply(&busy), RelayTls::Required), Open);
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
