//! Where accepted transactions go: the relay to the configured next hop, or the local Maildir
//! when there is none. The session driver talks to this one type either way.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::chain::envelope_edit::EditedEnvelope;
use crate::maildir::Maildir;
use crate::relay::RelayClient;
pub use crate::relay::{ClientFacts, Delivery, Proto};
use crate::smtp::command::MailParams;
use crate::smtp::reply::Reply;
use crate::spool::Spool;

pub enum NextHop {
    /// Boxed: a relay session's state (connection, settings, the transaction's facts) is large.
    Relay(Box<RelayClient>),
    Maildir(Arc<Maildir>),
}

impl NextHop {
    /// MAIL, with the client's facts and Sluice's transaction id: the relay tells the next hop
    /// the real client (XFORWARD, `Received:`); a maildir keeps no such record.
    pub async fn mail(&mut self, from: &str, params: &MailParams, client: &ClientFacts, id: &str) -> Reply {
        match self {
            NextHop::Relay(relay) => relay.mail(from, params, client, id).await,
            NextHop::Maildir(_) => Reply::new(250, "2.1.0", "Ok"),
        }
    }

    pub async fn rcpt(&mut self, to: &str) -> Reply {
        match self {
            NextHop::Relay(relay) => relay.rcpt(to).await,
            NextHop::Maildir(_) => Reply::new(250, "2.1.5", "Ok"),
        }
    }

    /// Delivers the spooled content. `abandon` (the shutdown deadline) may cut a relay transfer
    /// before its final dot (see `RelayClient::data`); a maildir delivery is local and
    /// all-or-nothing (a rename), so it is never cut: cutting it could lose the reply to a
    /// message already delivered.
    ///
    /// `edited`: the envelope as the chain changed it (a maildir keeps only its sender).
    pub async fn deliver(
        &mut self,
        mail_from: &str,
        edited: Option<&EditedEnvelope>,
        spool: &mut Spool,
        abandon: &CancellationToken,
    ) -> Delivery {
        match self {
            NextHop::Relay(relay) => relay.data(spool, edited, abandon).await,
            NextHop::Maildir(maildir) => Delivery::Answered(
                match maildir.deliver(edited.map_or(mail_from, |e| e.mail_from.as_str()), spool).await {
                    Ok(name) => Reply::new(250, "2.0.0", format!("Ok: delivered as {name}")),
                    Err(err) => {
                        tracing::error!(target: "sluice::relay", error = %err, "maildir delivery failed; check the [maildir] path and free space");
                        Reply::new(451, "4.3.0", "Local delivery failed; try again later")
                    }
                },
            ),
        }
    }

    pub async fn reset(&mut self) {
        if let NextHop::Relay(relay) = self {
            relay.reset().await;
        }
    }

    /// The client session ended; a transaction still open is dropped with the connection.
    pub fn release(&mut self) {
        if let NextHop::Relay(relay) = self {
            relay.release();
        }
    }
}
