//! The one `message` line per transaction, self-contained for an operator: Sluice's own id for
//! the transaction, the client, envelope, Message-ID, the size as read, the result, the deciding
//! stage and why, the reply as sent, the next hop's reply (and its queue id) and the duration.
//! Text values are recorded as strings, which the text format writes quoted and escaped (so logfmt
//! parsers read them back) and the JSON format as JSON strings; a field that does not apply is
//! left out.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tracing::info;

use super::reply::Reply;
use crate::admin::views::MessageView;

/// Where a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedAt {
    /// MAIL was refused (by a stage, the next hop, or because it is down).
    Mail,
    /// At the end of the content.
    Data,
}

impl EndedAt {
    fn name(self) -> &'static str {
        match self {
            EndedAt::Mail => "mail",
            EndedAt::Data => "data",
        }
    }
}

/// What is known of one transaction, gathered from MAIL to its end.
pub struct TransactionLog {
    /// Sluice's id for the transaction: unique across sessions and restarts, logged (the relayed
    /// bytes are left as they are) beside the next hop's queue id.
    pub id: String,
    client: SocketAddr,
    helo: String,
    /// The client's TLS version, when the transaction ran after STARTTLS.
    tls: Option<String>,
    from: String,
    rcpts: Vec<String>,
    started: Instant,
    /// Filled in as the transaction goes on.
    pub size: u64,
    pub message_id: Option<String>,
    /// The stage that decided the message, and why.
    pub decided_by: Option<(String, String)>,
    pub relay_reply: Option<Reply>,
}

impl TransactionLog {
    /// A transaction starting at MAIL; `number` counts the session's transactions from 1.
    pub fn begin(
        session: u64,
        number: u32,
        client: SocketAddr,
        helo: &str,
        tls: Option<&str>,
        from: &str,
    ) -> TransactionLog {
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |t| t.as_millis() as u64);
        TransactionLog {
            id: transaction_id(millis, session, number),
            client,
            helo: helo.to_string(),
            tls: tls.map(str::to_string),
            from: from.to_string(),
            rcpts: Vec::new(),
            started: Instant::now(),
            size: 0,
            message_id: None,
            decided_by: None,
            relay_reply: None,
        }
    }

    /// A recipient the transaction took.
    pub fn rcpt(&mut self, to: &str) {
        self.rcpts.push(to.to_string());
    }

    /// Writes the line: `result` (accepted, rejected, tempfailed, discarded, refused) and the reply
    /// the client got.
    /// Returns the line as the dashboard lists it.
    pub fn log(&self, at: EndedAt, result: &str, reply: &Reply) -> MessageView {
        let (stage, reason) = match &self.decided_by {
            Some((stage, reason)) => (Some(stage.as_str()), Some(reason.as_str())),
            None => (None, None),
        };
        let relay_reply = self.relay_reply.as_ref().map(Reply::summary);
        let queue_id = self.relay_reply.as_ref().and_then(next_hop_queue_id);
        let (client, shown_reply) = (self.client.to_string(), reply.summary());
        let duration_ms = self.started.elapsed().as_millis() as u64;
        info!(
            target: "sluice::smtp",
            transaction = self.id.as_str(),
            client = client.as_str(),
            helo = self.helo.as_str(),
            tls = self.tls.as_deref(),
            from = self.from.as_str(),
            rcpts = self.rcpts.join(",").as_str(),
            rcpt_count = self.rcpts.len(),
            message_id = self.message_id.as_deref(),
            size = self.size,
            at = at.name(),
            result,
            stage,
            reason,
            reply = shown_reply.as_str(),
            relay_reply = relay_reply.as_deref(),
            queue_id = queue_id.as_deref(),
            duration_ms,
            "message"
        );
        MessageView {
            at_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |t| t.as_millis() as u64),
            transaction: self.id.clone(),
            client,
            from: self.from.clone(),
            rcpts: self.rcpts.clone(),
            result: result.to_string(),
            stage: stage.map(str::to_string),
            reason: reason.map(str::to_string),
            reply: shown_reply,
            size: self.size,
            duration_ms,
        }
    }
}

/// `MILLIS.SESSION.NUMBER` in hex, hex and decimal: the time at MAIL keeps it unique across
/// restarts and instances, the session id and number within one process.
fn transaction_id(millis: u64, session: u64, number: u32) -> String {
    format!("{millis:x}.{session:x}.{number}")
}

/// The next hop's queue id in its reply, as Postfix, Exim and others word it ("queued as ID").
fn next_hop_queue_id(reply: &Reply) -> Option<String> {
    let text = reply.summary();
    let (_, after) = text.split_once("queued as ")?;
    let id: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')).collect();
    let id = id.trim_end_matches('.');
    (!id.is_empty()).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_time_session_and_number() {
        assert_eq!(transaction_id(0x19ad5e3c7b1, 0x2a, 3), "19ad5e3c7b1.2a.3");
    }

    #[test]
    fn the_next_hops_queue_id_is_found_in_its_reply() {
        let id = |text: &str| next_hop_queue_id(&Reply::new(250, "2.0.0", text));
        assert_eq!(id("Ok: queued as 4Q2hWz3xJvz9sH").as_deref(), Some("4Q2hWz3xJvz9sH"));
        assert_eq!(id("OK id=1rXyZ-000abc-7Q queued as 1rXyZ-000abc-7Q.").as_deref(), Some("1rXyZ-000abc-7Q"));
        assert_eq!(id("Ok: delivered as 1796182849.M064134P20908Q0.gw.test"), None);
        assert_eq!(id("Ok: queued as "), None);
    }
}
