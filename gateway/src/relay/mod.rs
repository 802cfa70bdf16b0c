//! The in-line relay to the next hop. One `RelayClient` per client session mirrors the client's
//! transaction: MAIL and RCPT are passed on as they arrive (so the next hop's per-recipient answers
//! reach the client), and the content is sent at end of data; the client's 250 is the next hop's.
//! Any failure to reach or hear the next hop becomes 451 4.4.1: the client keeps the message;
//! a next hop that `[relay] tls = "required"` cannot secure gets nothing, and the client 451
//! 4.7.5. The connection's state is an `Opening`, then a `Link` (ready / in flight / broken);
//! the shutdown deadline's rule for deliveries lives in `RelayClient::data`. The next hop learns
//! the real client by XFORWARD (`xforward`) and, if asked, a `Received:` field (`received`).

mod facts;
mod link;
mod pool;
mod received;
mod tls;
mod wire;
mod xforward;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::chain::envelope_edit::EditedEnvelope;
use crate::config;
use crate::smtp::command::{BodyType, MailParams};
use crate::smtp::reply::Reply;
use crate::spool::Spool;
pub use facts::{ClientFacts, Proto};
use link::{Exchange, Link, TlsFailure};
pub use pool::RelayPool;
pub use tls::TlsPolicy;
use wire::Wire;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("next hop stopped reading while we sent {0}")]
    Stalled(&'static str),
    #[error("connection error: {0}")]
    Io(std::io::Error),
    #[error("connection closed by next hop")]
    Closed,
    #[error("malformed reply: {0:?}")]
    Malformed(String),
    #[error("refused the session: {0}")]
    Refused(Reply),
    #[error("{0}")]
    Tls(TlsFailure),
    #[error("cannot read spooled message: {0}")]
    Spool(std::io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    pub address: String,
    pub helo_name: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub tls: TlsPolicy,
    /// `[relay] add_received`: our host name for the `Received:` field; None: no field.
    pub received_by: Option<String>,
}

/// The part of the transaction the next hop has accepted, kept to replay it on a new connection.
#[derive(Debug, Default)]
struct Accepted {
    /// The client and Sluice's transaction id, for XFORWARD and `Received:`.
    origin: Option<(ClientFacts, String)>,
    mail: Option<String>,
    /// The reverse path in `mail`, to rewrite it when a stage changes the sender.
    from: String,
    rcpts: Vec<String>,
    /// The recipients' addresses, in the order of `rcpts`.
    to: Vec<String>,
}

/// How a delivery ended.
#[derive(Debug)]
pub enum Delivery {
    /// The final answer for the message: the next hop's, or ours for it (451 when it could not
    /// be reached or heard, or answered out of protocol).
    Answered(Reply),
    /// The shutdown deadline came before the final dot: the next hop has nothing, and the
    /// connection was dropped mid-stream.
    Abandoned,
}

/// Where the DATA command left the transfer.
enum Started {
    /// 354: the data stream is open on this connection.
    Streaming(Wire),
    /// Anything else: the message's answer, and the connection is gone.
    Refused(Reply),
}

/// Where sending the message left the transfer.
enum Sent {
    /// The final dot is out on this connection: only its reply is missing.
    Dot(Wire),
    Refused(Reply),
}

pub struct RelayClient {
    settings: RelaySettings,
    pool: Arc<RelayPool>,
    link: Link<Wire>,
    accepted: Accepted,
}

impl RelayClient {
    pub fn new(settings: RelaySettings, pool: Arc<RelayPool>) -> RelayClient {
        RelayClient { settings, pool, link: Link::Broken, accepted: Accepted::default() }
    }

    /// The client's answer when the next hop could not be used; the operator's reason is logged.
    fn unavailable(&self, err: &RelayError) -> Reply {
        let next_hop = &self.settings.address;
        if let (RelayError::Tls(failure), config::RelayTls::Required) = (err, self.settings.tls.mode) {
            tracing::warn!(target: "sluice::relay", next_hop = %next_hop, error = %err, "next hop not secured; nothing sent");
            // Mail is kept by the client until the next hop (or the config) is fixed.
            let text = match failure {
                TlsFailure::NotOffered => "Next hop offers no STARTTLS; [relay] tls = required".to_string(),
                TlsFailure::Refused(_) => "Next hop refused STARTTLS; [relay] tls = required".to_string(),
                TlsFailure::Handshake(_) => {
                    "TLS with the next hop failed (certificate or handshake); [relay] tls = required".to_string()
                }
            };
            return Reply::new(451, "4.7.5", text);
        }
        tracing::warn!(target: "sluice::relay", next_hop = %next_hop, error = %err, "next hop unavailable");
        Reply::new(451, "4.4.1", "Next hop unavailable; try again later")
    }

    async fn connect(&self) -> Result<Wire, RelayError> {
        let s = &self.settings;
        let wire = match Wire::open(s, s.tls.mode).await {
            // Like Postfix's `may`: a next hop whose TLS does not work still gets the mail, in
            // plain text, on a new connection (the failed handshake consumed the first).
            Err(RelayError::Tls(TlsFailure::Handshake(why))) if s.tls.mode == config::RelayTls::Opportunistic => {
                tracing::warn!(target: "sluice::relay", next_hop = %s.address, error = %why, "TLS handshake with the next hop failed; delivering in plain text (tls = opportunistic)");
                Wire::open(s, config::RelayTls::None).await?
            }
            other => other?,
        };
        let tls = wire.tls.as_deref().unwrap_or("none");
        tracing::debug!(target: "sluice::relay", next_hop = %s.address, tls, "connected to next hop");
        Ok(wire)
    }

    /// The XFORWARD lines for this transaction: none unless the next hop offers it.
    fn xforward_lines(&self, wire: &Wire) -> Vec<String> {
        match (&wire.extensions.xforward, &self.accepted.origin) {
            (Some(offered), Some((client, _))) => xforward::commands(client, offered),
            _ => Vec::new(),
        }
    }

    /// The first refusal among the XFORWARD replies (already sent): None when all were taken.
    async fn xforward_replies(wire: &mut Wire, lines: usize) -> Result<Option<Reply>, RelayError> {
        let mut refused = None;
        for _ in 0..lines {
            let reply = wire.read_reply("XFORWARD").await?;
            if !reply.is_positive() && refused.is_none() {
                tracing::warn!(target: "sluice::relay", reply = reply.summary().as_str(), "next hop refused XFORWARD; connection dropped");
                refused = Some(reply);
            }
        }
        Ok(refused)
    }

    /// Sends XFORWARD (when offered), then `mail` if given: all in one write when the next hop
    /// pipelines (RFC 2920; one round trip per message fewer), else each line after the reply
    /// to the one before. The first XFORWARD refusal ends the attempt (421: the connection is
    /// closing); None: all were taken and `mail` is sent, its reply not yet read.
    async fn xforward_then(&mut self, wire: &mut Wire, mail: Option<&str>) -> Result<Option<Reply>, RelayError> {
        let lines = self.xforward_lines(wire);
        if wire.extensions.pipelining {
            for line in lines.iter().map(String::as_str).chain(mail) {
                wire.send(line).await?;
            }
            wire.flush().await?;
            let refused = Self::xforward_replies(wire, lines.len()).await?;
            if refused.is_some() && mail.is_some() {
                // Only empties the pipe: the connection is dropped whatever MAIL got.
                let _ = wire.read_reply("MAIL").await;
            }
            return Ok(refused);
        }
        for line in lines.iter().map(String::as_str) {
            wire.send(line).await?;
            wire.flush().await?;
            if let Some(refused) = Self::xforward_replies(wire, 1).await? {
                return Ok(Some(refused));
            }
        }
        if let Some(mail) = mail {
            wire.send(mail).await?;
            wire.flush().await?;
        }
        Ok(None)
    }

    fn mail_line(wire: &Wire, from: &str, params: &MailParams) -> Result<String, Reply> {
        let mut line = format!("MAIL FROM:<{from}>");
        if params.smtputf8 {
            if !wire.extensions.smtputf8 {
                return Err(Reply::new(553, "5.6.7", "Next hop does not support SMTPUTF8"));
            }
            line.push_str(" SMTPUTF8");
        }
        if let (Some(BodyType::EightBitMime), true) = (params.body, wire.extensions.eight_bit_mime) {
            line.push_str(" BODY=8BITMIME");
        }
        if let (Some(size), true) = (params.size, wire.extensions.size) {
            line.push_str(&format!(" SIZE={size}"));
        }
        Ok(line)
    }

    /// Passes MAIL FROM on, on this session's connection, a parked one, or a new one, with the
    /// client's facts (XFORWARD) before it; `id`: Sluice's transaction id, for `Received:`.
    pub async fn mail(&mut self, from: &str, params: &MailParams, client: &ClientFacts, id: &str) -> Reply {
        self.accepted = Accepted { origin: Some((client.clone(), id.to_string())), ..Accepted::default() };
        // A transaction still open here was never ended: its connection is not reused.
        let kept = match self.link.take() {
            Link::Ready(wire) => Some(wire),
            Link::InFlight(_) | Link::Broken => self.pool.take(&self.settings).await,
        };
        if let Some(wire) = kept {
            // A kept connection may have been closed by the next hop meanwhile: then start over.
            match self.mail_on(wire, from, params).await {
                Err(RelayError::Io(_) | RelayError::Closed) => {
                    tracing::debug!(target: "sluice::relay", "kept next-hop connection was closed; reconnecting");
                }
                Ok(reply) if reply.code == 421 => {}
                Ok(reply) => return reply,
                Err(err) => return self.unavailable(&err),
            }
        }
        let wire = match self.connect().await {
            Ok(wire) => wire,
            Err(RelayError::Refused(reply)) => return reply,
            Err(err) => return self.unavailable(&err),
        };
        match self.mail_on(wire, from, params).await {
            Ok(reply) => reply,
            Err(err) => self.unavailable(&err),
        }
    }

    /// Sends XFORWARD and MAIL on `wire` and moves the link on.
    async fn mail_on(&mut self, mut wire: Wire, from: &str, params: &MailParams) -> Result<Reply, RelayError> {
        let line = match Self::mail_line(&wire, from, params) {
            Ok(line) => line,
            Err(reply) => {
                self.link = Link::Ready(wire);
                return Ok(reply);
            }
        };
        if let Some(refused) = self.xforward_then(&mut wire, Some(&line)).await? {
            self.link = Link::after(Exchange::Xforward, wire, &refused);
            return Ok(match refused.code {
                421 => refused,
                _ => Reply::new(451, "4.4.1", "Next hop refused the client's details; try again later"),
            });
        }
        let reply = wire.read_reply("MAIL").await?;
        if reply.is_positive() {
            self.accepted.mail = Some(line);
            self.accepted.from = from.to_string();
        }
        self.link = Link::after(Exchange::Mail, wire, &reply);
        Ok(reply)
    }

    pub async fn rcpt(&mut self, to: &str) -> Reply {
        let mut wire = match self.link.take() {
            Link::InFlight(wire) => wire,
            other => {
                self.link = other;
                return self.unavailable(&RelayError::Closed);
            }
        };
        let line = format!("RCPT TO:<{to}>");
        match wire.command(&line, "RCPT").await {
            Ok(reply) => {
                if reply.is_positive() {
                    self.accepted.rcpts.push(line);
                    self.accepted.to.push(to.to_string());
                }
                self.link = Link::after(Exchange::Rcpt, wire, &reply);
                reply
            }
            Err(err) => self.unavailable(&err),
        }
    }

    /// Sends the content; the answer is final for the message. This is where the shutdown
    /// deadline (`abandon`) meets a delivery, and the rule is: until the final dot is sent the
    /// transfer is abandoned when it fires — the connection, mid-stream, is dropped with it and
    /// the next hop has nothing (never RSET inside a data stream). Once the dot is sent the next
    /// hop may have the message, so its answer is awaited whatever the deadline (bounded by
    /// `command_timeout`) and passed on: a 421 there would make the client send it twice.
    ///
    /// `edited`: the envelope as the chain changed it, relayed instead of the client's.
    pub async fn data(
        &mut self,
        spool: &mut Spool,
        edited: Option<&EditedEnvelope>,
        abandon: &CancellationToken,
    ) -> Delivery {
        let sent = tokio::select! {
            sent = self.send_message(spool, edited) => Some(sent),
            _ = abandon.cancelled() => None,
        };
        self.accepted = Accepted::default();
        let reply = match sent {
            None => {
                tracing::info!(target: "sluice::relay", "shutdown deadline before the final dot: next-hop connection dropped");
                return Delivery::Abandoned;
            }
            Some(Ok(Sent::Dot(mut wire))) => match wire.read_reply("end of data").await {
                Ok(reply) => {
                    self.link = Link::after(Exchange::EndOfData, wire, &reply);
                    reply
                }
                Err(err) => self.unavailable(&err),
            },
            Some(Ok(Sent::Refused(reply))) => reply,
            Some(Err(err)) => self.unavailable(&err),
        };
        Delivery::Answered(reply)
    }

    /// DATA, the content and the final dot. The connection is owned here while the stream is
    /// open, so dropping this future (the deadline) drops the connection.
    async fn send_message(&mut self, spool: &mut Spool, edited: Option<&EditedEnvelope>) -> Result<Sent, RelayError> {
        let started = match edited {
            None => self.start_data().await?,
            Some(edited) => self.start_edited(edited).await?,
        };
        let mut wire = match started {
            Started::Streaming(wire) => wire,
            Started::Refused(reply) => return Ok(Sent::Refused(reply)),
        };
        wire.send_content(self.received().as_bytes(), spool).await?;
        Ok(Sent::Dot(wire))
    }

    /// The `Received:` field for this transaction (`[relay] add_received`), or nothing.
    fn received(&self) -> String {
        let (Some(by), Some((client, id))) = (&self.settings.received_by, &self.accepted.origin) else {
            return String::new();
        };
        let rcpt = match self.accepted.to.as_slice() {
            [one] => Some(one.as_str()),
            _ => None,
        };
        received::field(client, &received::Receipt { by, id, rcpt }, SystemTime::now())
    }

    /// Sends DATA; if the connection died while the client was sending (idle timeouts of the next
    /// hop), reconnects once and replays the accepted envelope, pipelined when offered.
    async fn start_data(&mut self) -> Result<Started, RelayError> {
        if let Link::InFlight(mut wire) = self.link.take() {
            match wire.command("DATA", "DATA").await {
                Ok(reply) if reply.code != 421 => return Ok(self.data_answer(wire, reply)),
                Ok(_) | Err(RelayError::Io(_) | RelayError::Closed) => {
                    tracing::info!(target: "sluice::relay", "next hop connection lost before DATA; reconnecting");
                }
                Err(err) => return Err(err),
            }
        }
        let wire = self.connect().await?;
        self.replay(wire, |_| Reply::new(451, "4.4.1", "Next hop changed its answer; try again later"), |_| false).await
    }

    /// Sends the envelope as the chain changed it instead of the client's: the next hop's
    /// transaction is reset (or, if that fails, a new connection made) and the changed envelope
    /// replayed. A refusal of it is the message's answer, in the refusal's class: the client is
    /// told that the next hop would not take the envelope the filters made.
    async fn start_edited(&mut self, edited: &EditedEnvelope) -> Result<Started, RelayError> {
        let Some(mail) = self.accepted.mail.take() else { return Err(RelayError::Closed) };
        let original = std::mem::take(&mut self.accepted.to);
        let tail = mail.get("MAIL FROM:<".len() + self.accepted.from.len() + 1..).unwrap_or_default();
        self.accepted.mail = Some(format!("MAIL FROM:<{}>{tail}", edited.mail_from));
        self.accepted.from = edited.mail_from.clone();
        self.accepted.rcpts = edited.recipients.iter().map(|to| format!("RCPT TO:<{to}>")).collect();
        self.accepted.to = edited.recipients.clone();
        let kept = match self.link.take() {
            Link::InFlight(mut wire) => match wire.command("RSET", "RSET").await {
                Ok(reply) => match Link::after(Exchange::Rset, wire, &reply) {
                    Link::Ready(wire) => Some(wire),
                    _ => None,
                },
                Err(_) => None,
            },
            _ => None,
        };
        let wire = match kept {
            Some(wire) => wire,
            None => self.connect().await?,
        };
        let refused = |refusal: &Reply| {
            let text = format!("Next hop refused the envelope as the filters changed it: {}", refusal.summary());
            match refusal.is_transient() {
                true => Reply::new(451, "4.4.1", text),
                false => Reply::new(554, "5.4.1", text),
            }
        };
        self.replay(wire, refused, |to| edited.added(&original, to)).await
    }

    /// Replays the accepted envelope on `wire` (XFORWARD, MAIL, RCPTs), pipelined when offered,
    /// then DATA. A refusal of any of it ends the transfer with `refused(reply)`.
    /// `droppable`: recipients whose refusal leaves them out (a filter added them) rather than
    /// ending the transfer.
    async fn replay(
        &mut self,
        mut wire: Wire,
        refused: impl Fn(&Reply) -> Reply,
        droppable: impl Fn(&str) -> bool,
    ) -> Result<Started, RelayError> {
        let mail = self.accepted.mail.clone().ok_or(RelayError::Closed)?;
        if self.xforward_then(&mut wire, None).await?.is_some() {
            return Ok(Started::Refused(Reply::new(
                451,
                "4.4.1",
                "Next hop refused the client's details; try again later",
            )));
        }
        let mut lines = vec![mail];
        lines.extend(self.accepted.rcpts.iter().cloned());
        if wire.extensions.pipelining {
            for line in &lines {
                wire.send(line).await?;
            }
            wire.send("DATA").await?;
            wire.flush().await?;
        }
        let mut changed = None;
        let mut dropped = Vec::new();
        for (at, line) in lines.iter().enumerate() {
            if !wire.extensions.pipelining {
                if changed.is_some() {
                    break;
                }
                wire.send(line).await?;
                wire.flush().await?;
            }
            let reply = wire.read_reply("replayed envelope").await?;
            let recipient = at.checked_sub(1).and_then(|n| self.accepted.to.get(n));
            match recipient {
                _ if reply.is_positive() || changed.is_some() => {}
                Some(to) if droppable(to) => {
                    tracing::warn!(target: "sluice::relay", rcpt = to.as_str(), reply = reply.summary().as_str(), "next hop refused a recipient a filter added; left out");
                    dropped.push(at - 1);
                }
                _ => changed = Some(reply),
            }
        }
        for n in dropped.into_iter().rev() {
            self.accepted.rcpts.remove(n);
            self.accepted.to.remove(n);
        }
        if let Some(reply) = changed {
            // The connection is dropped here, whatever the pipelined DATA got.
            tracing::warn!(target: "sluice::relay", reply = reply.summary().as_str(), "next hop refused the replayed envelope");
            return Ok(Started::Refused(refused(&reply)));
        }
        let reply = match wire.extensions.pipelining {
            true => wire.read_reply("DATA").await?,
            false => wire.command("DATA", "DATA").await?,
        };
        Ok(self.data_answer(wire, reply))
    }

    /// The answer to DATA: 354 opens the stream; any other is never the message's answer. A
    /// refusal (4xx/5xx) is passed on, anything else is a protocol error (451 4.4.0); either way
    /// the link is broken and the connection dropped, never pooled.
    fn data_answer(&self, wire: Wire, reply: Reply) -> Started {
        if let Link::InFlight(wire) = Link::after(Exchange::Data, wire, &reply) {
            return Started::Streaming(wire);
        }
        tracing::warn!(target: "sluice::relay", reply = reply.summary().as_str(), "next hop did not answer DATA with 354; connection dropped");
        Started::Refused(match reply.code {
            // Its "closing" is about its connection, not about our session with the client.
            421 => self.unavailable(&RelayError::Closed),
            400..=599 => reply,
            _ => Reply::new(451, "4.4.0", "Next hop protocol error; try again later"),
        })
    }

    /// Ends the next hop's transaction between commands (client RSET, content refused by the
    /// chain) with RSET, so the connection serves the next one. Never used inside a data stream:
    /// those are owned by `data` and dropped if abandoned.
    pub async fn reset(&mut self) {
        self.accepted = Accepted::default();
        match self.link.take() {
            Link::InFlight(mut wire) => {
                if let Ok(reply) = wire.command("RSET", "RSET").await {
                    self.link = Link::after(Exchange::Rset, wire, &reply);
                }
            }
            other => self.link = other,
        }
    }

    /// The client session ended. A connection between transactions is parked for another
    /// session; one with a transaction still open (the session was cut short: client gone,
    /// shutdown deadline) is closed rather than reset, so ending a session never waits on the
    /// next hop.
    pub fn release(&mut self) {
        if let Link::Ready(wire) = self.link.take() {
            self.pool.give(wire, &self.settings);
        }
    }
}
