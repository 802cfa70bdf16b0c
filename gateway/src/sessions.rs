//! Who is connected right now: each session's peer, state, current transaction, bytes and flow
//! state, as the admin API (`/sessions`) shows them. Entries leave the book when their session
//! ends, whatever the way it ends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::admin::views::{QueueView, SessionView, TlsView, TransactionView};
use crate::flow::gate::FlowHandle;
use crate::inbound_tls::TlsInfo;

/// What the session driver keeps up to date.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub state: &'static str,
    /// Sender and recipient count of the transaction in progress.
    pub transaction: Option<(String, usize)>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// What STARTTLS negotiated, once it has.
    pub tls: Option<TlsInfo>,
}

struct Entry {
    peer: SocketAddr,
    local_port: u16,
    started: Instant,
    info: Arc<Mutex<SessionInfo>>,
    flow: Arc<FlowHandle>,
}

#[derive(Default)]
pub struct SessionBook {
    entries: Mutex<BTreeMap<u64, Entry>>,
}

/// A session's place in the book; dropping it removes the entry.
pub struct Listing {
    book: Arc<SessionBook>,
    id: u64,
    pub info: Arc<Mutex<SessionInfo>>,
}

impl Drop for Listing {
    fn drop(&mut self) {
        self.book.lock().remove(&self.id);
    }
}

/// Session ids as shown everywhere (logs, API, ctl).
pub fn format_id(id: u64) -> String {
    format!("{id:08x}")
}

impl SessionBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn open(self: &Arc<Self>, id: u64, peer: SocketAddr, local_port: u16, flow: Arc<FlowHandle>) -> Listing {
        let info = Arc::new(Mutex::new(SessionInfo {
            state: "greeting",
            transaction: None,
            bytes_in: 0,
            bytes_out: 0,
            tls: None,
        }));
        self.lock().insert(id, Entry { peer, local_port, started: Instant::now(), info: info.clone(), flow });
        Listing { book: self.clone(), id, info }
    }

    pub fn list(&self) -> Vec<SessionView> {
        self.lock().iter().map(|(id, entry)| view(*id, entry)).collect()
    }

    pub fn get(&self, id: u64) -> Option<SessionView> {
        self.lock().get(&id).map(|entry| view(id, entry))
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn view(id: u64, entry: &Entry) -> SessionView {
    let info = entry.info.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let flow = entry.flow.snapshot();
    SessionView {
        id: format_id(id),
        peer: entry.peer.to_string(),
        local_port: entry.local_port,
        state: info.state.to_string(),
        transaction: info.transaction.map(|(from, rcpts)| TransactionView { from, rcpts }),
        bytes_in: info.bytes_in,
        bytes_out: info.bytes_out,
        tls: info.tls.map(|tls| TlsView { version: tls.version, cipher: tls.cipher }),
        paused: flow.paused,
        paused_by: flow.paused_by,
        queued: flow.queued.into_iter().map(|(stage, bytes)| QueueView { stage, bytes }).collect(),
        pauses: flow.pauses,
        resumes: flow.resumes,
        age_seconds: (entry.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    }
}
