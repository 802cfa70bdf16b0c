//! The in-line relay to the next hop. One `RelayClient` per client session mirrors the client's
//! transaction: MAIL and RCPT are passed on as they arrive (so the next hop's per-recipient answers
//! reach the client), and the content is sent at end of data; the client's 250 is the next hop's.
//! Any failure to reach or hear the next hop becomes 451 4.4.1: the client keeps the message.

mod pool;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use crate::smtp::command::{BodyType, MailParams};
use crate::smtp::reply::Reply;
use crate::spool::Spool;
pub use pool::RelayPool;
use wire::Wire;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("connection error: {0}")]
    Io(std::io::Error),
    #[error("connection closed by next hop")]
    Closed,
    #[error("malformed reply: {0:?}")]
    Malformed(String),
    #[error("refused the session: {0}")]
    Refused(Reply),
    #[error("cannot read spooled message: {0}")]
    Spool(std::io::Error),
}

#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub address: String,
    pub helo_name: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
}

/// The part of the transaction the next hop has accepted, kept to replay it on a new connection.
#[derive(Debug, Default)]
struct Accepted {
    mail: Option<String>,
    rcpts: Vec<String>,
}

pub struct RelayClient {
    settings: RelaySettings,
    pool: Arc<RelayPool>,
    wire: Option<Wire>,
    accepted: Accepted,
}

impl RelayClient {
    pub fn new(settings: RelaySettings, pool: Arc<RelayPool>) -> RelayClient {
        RelayClient { settings, pool, wire: None, accepted: Accepted::default() }
    }

    fn unavailable(&self, err: &RelayError) -> Reply {
        tracing::warn!(target: "sluice::relay", next_hop = %self.settings.address, error = %err, "next hop unavailable");
        Reply::new(451, "4.4.1", "Next hop unavailable; try again later")
    }

    async fn connect(&self) -> Result<Wire, RelayError> {
        let s = &self.settings;
        let wire = Wire::open(&s.address, &s.helo_name, s.connect_timeout, s.command_timeout).await?;
        tracing::debug!(target: "sluice::relay", next_hop = %s.address, "connected to next hop");
        Ok(wire)
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

    /// Passes MAIL FROM on, on this session's connection, a parked one, or a new one.
    pub async fn mail(&mut self, from: &str, params: &MailParams) -> Reply {
        self.accepted = Accepted::default();
        if let Some(wire) = self.wire.take().or_else(|| self.pool.take()) {
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

    /// Sends MAIL on `wire`, keeping the connection unless it failed or is closing.
    async fn mail_on(&mut self, mut wire: Wire, from: &str, params: &MailParams) -> Result<Reply, RelayError> {
        let line = match Self::mail_line(&wire, from, params) {
            Ok(line) => line,
            Err(reply) => {
                self.wire = Some(wire);
                return Ok(reply);
            }
        };
        let reply = wire.command(&line, "MAIL").await?;
        if reply.is_positive() {
            self.accepted.mail = Some(line);
        }
        if reply.code != 421 {
            self.wire = Some(wire);
        }
        Ok(reply)
    }

    pub async fn rcpt(&mut self, to: &str) -> Reply {
        let Some(wire) = self.wire.as_mut() else {
            return self.unavailable(&RelayError::Closed);
        };
        let line = format!("RCPT TO:<{to}>");
        match wire.command(&line, "RCPT").await {
            Ok(reply) => {
                if reply.is_positive() {
                    self.accepted.rcpts.push(line);
                }
                reply
            }
            Err(err) => {
                self.wire = None;
                self.unavailable(&err)
            }
        }
    }

    /// Sends the content; the reply is the next hop's final answer for the message.
    pub async fn data(&mut self, spool: &mut Spool) -> Reply {
        let result = match self.start_data().await {
            Ok(Ok(())) => match self.wire.as_mut() {
                Some(wire) => wire.send_content(spool).await,
                None => Err(RelayError::Closed),
            },
            Ok(Err(reply)) => Ok(reply),
            Err(err) => Err(err),
        };
        self.accepted = Accepted::default();
        match result {
            Ok(reply) => {
                if reply.code == 421 {
                    self.wire = None;
                }
                reply
            }
            Err(err) => {
                self.wire = None;
                self.unavailable(&err)
            }
        }
    }

    /// Sends DATA; if the connection died while the client was sending (idle timeouts of the next
    /// hop), reconnects once and replays the accepted envelope, pipelined when offered.
    async fn start_data(&mut self) -> Result<Result<(), Reply>, RelayError> {
        if let Some(wire) = self.wire.as_mut() {
            match wire.command("DATA", "DATA").await {
                Ok(reply) if reply.code == 354 => return Ok(Ok(())),
                Ok(reply) if reply.code != 421 => return Ok(Err(reply)),
                Ok(_) | Err(RelayError::Io(_) | RelayError::Closed) => {
                    tracing::info!(target: "sluice::relay", "next hop connection lost before DATA; reconnecting");
                }
                Err(err) => return Err(err),
            }
        }
        self.wire = None;
        let mut wire = self.connect().await?;
        let mail = self.accepted.mail.clone().ok_or(RelayError::Closed)?;
        let mut lines = vec![mail];
        lines.extend(self.accepted.rcpts.iter().cloned());
        lines.push("DATA".into());
        if wire.extensions.pipelining {
            for line in &lines {
                wire.send(line).await?;
            }
            wire.flush().await?;
        }
        let mut failure = None;
        for (i, line) in lines.iter().enumerate() {
            if !wire.extensions.pipelining {
                if failure.is_some() {
                    break;
                }
                wire.send(line).await?;
                wire.flush().await?;
            }
            let reply = wire.read_reply("replayed envelope").await?;
            let expected = if i + 1 == lines.len() { 354 } else { 250 };
            if reply.code != expected && failure.is_none() {
                failure = Some(reply);
            }
        }
        if let Some(reply) = failure {
            tracing::warn!(target: "sluice::relay", reply = %reply, "next hop refused the replayed envelope");
            self.wire = None;
            return Ok(Err(Reply::new(451, "4.4.1", "Next hop changed its answer; try again later")));
        }
        self.wire = Some(wire);
        Ok(Ok(()))
    }

    /// Abandons the next hop's transaction (client RSET, refused content, vanished client).
    pub async fn reset(&mut self) {
        self.accepted = Accepted::default();
        if let Some(wire) = self.wire.as_mut() {
            match wire.command("RSET", "RSET").await {
                Ok(reply) if reply.is_positive() => {}
                _ => self.wire = None,
            }
        }
    }

    /// The client session ended: park the connection for another session.
    pub fn release(&mut self) {
        if let Some(wire) = self.wire.take() {
            if self.accepted.mail.is_none() {
                self.pool.give(wire);
            }
        }
    }
}
