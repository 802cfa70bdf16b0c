//! The one async loop per connection: reads the socket into the session state machine (only
//! while the flow controller allows), writes its replies (batched, flushed whenever it needs
//! input: RFC 2920 pipelining), runs envelope commands through the chain and the next hop, and
//! feeds message bytes into the chain. It decides nothing about the protocol or about flow.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use super::command::MailParams;
use super::deadline::{Expiry, ReadClock};
use super::reply::Reply;
use super::session::{Envelope, Hello, Phase, Request, Session, Step};
use super::transaction_log::{EndedAt, TransactionLog};
use crate::chain::envelope_edit;
use crate::chain::runner::{ContentOutcome, ContentRun, Finished};
use crate::chain::stage::SessionSlots;
use crate::chain::stage::Verdict;
use crate::chain::{EnvelopeOutcome, Transaction};
use crate::context::Context;
use crate::flow::gate::{FlowHandle, SessionFlow};
use crate::inbound_tls::{ClientStream, TlsInfo};
use crate::next_hop::{ClientFacts, Delivery, NextHop, Proto};
use crate::policy::Decision;
use crate::server::Shutdown;
use crate::sessions::Listing;
use crate::settings::Settings;

/// Socket reads ask for at least this much room.
const READ_BUFFER: usize = 64 * 1024;

/// Why the loop stopped reading.
enum Interruption {
    Timeout(Expiry),
    Draining,
    Deadline,
}

/// Where the current transaction stands in the chain.
enum Chained {
    None,
    /// MAIL accepted: stage instances exist, content not started.
    Envelope(Transaction),
    /// Content is flowing through the stages.
    Content(ContentRun),
}

pub struct Connection {
    stream: ClientStream,
    peer: SocketAddr,
    context: Arc<Context>,
    shutdown: Shutdown,
    session: Session,
    /// The settings generation (limits, next hop, chain) current when the session was admitted:
    /// it keeps it across reloads.
    settings: Arc<Settings>,
    flow: Arc<FlowHandle>,
    listing: Listing,
    next_hop: NextHop,
    chained: Chained,
    input: BytesMut,
    output: Vec<u8>,
    /// The session's id, for transaction ids.
    id: u64,
    /// Transactions begun in this session.
    transactions: u32,
    /// The current transaction's facts, for its log line (from MAIL on).
    record: Option<TransactionLog>,
    /// The read deadlines: idle, per command line, minimum data rate.
    clock: ReadClock,
    /// The encryption STARTTLS negotiated, for the transaction log lines.
    tls: Option<TlsInfo>,
    /// What chain stages keep for this session (milter connections), dropped with it.
    stage_slots: SessionSlots,
}

impl Connection {
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        id: u64,
        context: Arc<Context>,
        settings: Arc<Settings>,
        shutdown: Shutdown,
    ) -> Connection {
        let flow = context.flows.open(id, settings.watermarks);
        let local_port = stream.local_addr().map_or(0, |a| a.port());
        Connection {
            stream: ClientStream::Plain(stream),
            peer,
            session: Session::new(settings.session.clone()),
            listing: context.sessions.open(id, peer, local_port, flow.clone()),
            flow,
            next_hop: settings.next_hop(),
            chained: Chained::None,
            input: BytesMut::with_capacity(READ_BUFFER),
            output: Vec::with_capacity(1024),
            id,
            transactions: 0,
            record: None,
            clock: ReadClock::new(settings.reads),
            tls: None,
            stage_slots: SessionSlots::default(),
            settings,
            context,
            shutdown,
        }
    }

    /// Runs the session to its end; every exit path leaves nothing half-done at the next hop.
    /// Returns the session's flow counts for the "session closed" line, which the caller logs
    /// once the session's slots are free.
    pub async fn run(mut self) -> SessionFlow {
        debug!(target: "sluice::smtp", "connected");
        let (policy, client, hostname) = (&self.settings.policy, self.peer.ip(), &self.settings.session.hostname);
        if let Err(refusal) = policy.connect(&self.context.rates, client, hostname, Instant::now()) {
            refusal.log(client);
            self.close_with(refusal.reply).await;
            return self.flow.snapshot();
        }
        let greeting = self.session.greeting();
        self.reply(&greeting);
        loop {
            let step = self.session.step(&mut self.input);
            for line in self.session.take_commands() {
                trace!(target: "sluice::smtp", command = line.as_str(), "client:");
            }
            match step {
                Step::Reply(reply) => self.reply(&reply),
                Step::Body(bytes) => match self.content() {
                    Some(run) => run.push(bytes),
                    None => warn!(target: "sluice::smtp", "message bytes outside a transaction dropped"),
                },
                Step::Request(request) => {
                    let Some(reply) = self.handle(request).await else {
                        self.close_with(shutting_down(&self.settings)).await;
                        break;
                    };
                    let reply = self.session.answer(reply);
                    self.reply(&reply);
                }
                Step::Refuse { reply, size } => {
                    if let Some(record) = &mut self.record {
                        record.size = size;
                    }
                    self.log_message(EndedAt::Data, "refused", &reply);
                    self.abandon().await;
                    self.reply(&reply);
                }
                Step::Abandon => self.abandon().await,
                Step::NeedInput => {
                    if !self.flush().await {
                        break;
                    }
                    match self.read().await {
                        Ok(true) => {}
                        Ok(false) => {
                            debug!(target: "sluice::smtp", "client closed the connection");
                            break;
                        }
                        Err(Interruption::Timeout(expiry)) => {
                            let phase = self.session.phase();
                            info!(target: "sluice::smtp", phase = phase.name(), reason = expiry.as_str(), "client timed out");
                            let text = format!("{} Error: timeout exceeded", self.settings.session.hostname);
                            self.close_with(Reply::new(421, "4.4.2", text)).await;
                            break;
                        }
                        Err(Interruption::Draining | Interruption::Deadline) => {
                            self.close_with(shutting_down(&self.settings)).await;
                            break;
                        }
                    }
                }
                Step::StartTls { discarded } => {
                    if !self.flush().await || !self.start_tls(discarded).await {
                        break;
                    }
                }
                Step::Close => {
                    self.flush().await;
                    break;
                }
            }
        }
        // A transaction cut short (client gone, timeout, shutdown) ends here: its stages stop,
        // and `release` closes its next-hop connection rather than resetting it.
        self.chained = Chained::None;
        self.next_hop.release();
        // TLS ends with close_notify, so the client can tell our close from a truncation.
        if matches!(self.stream, ClientStream::Tls(_)) {
            let deadline = self.shutdown.deadline.clone();
            tokio::select! {
                _ = timeout(REFUSAL_WRITE_TIMEOUT, self.stream.shutdown()) => {}
                _ = deadline.cancelled() => {}
            }
        }
        self.flow.snapshot()
    }

    /// The running content phase, started on the first message bytes.
    fn content(&mut self) -> Option<&mut ContentRun> {
        self.chained = match std::mem::replace(&mut self.chained, Chained::None) {
            Chained::Envelope(transaction) => {
                Chained::Content(transaction.start_content(self.settings.spool(), self.flow.clone()))
            }
            other => other,
        };
        match &mut self.chained {
            Chained::Content(run) => Some(run),
            _ => None,
        }
    }

    /// Runs a request; None if the shutdown deadline cut it short (the client gets 421).
    async fn handle(&mut self, request: Request) -> Option<Reply> {
        let deadline = self.shutdown.deadline.clone();
        match request {
            Request::Mail { helo, from, params } => unless(&deadline, self.mail(&helo, &from, &params)).await,
            Request::Rcpt { to } => unless(&deadline, self.rcpt(&to)).await,
            Request::Deliver { envelope, size } => {
                if let Some(record) = &mut self.record {
                    record.size = size;
                }
                self.deliver(envelope, &deadline).await
            }
        }
    }

    /// MAIL through the chain, then the next hop; a refusal ends the transaction with its line.
    async fn mail(&mut self, helo: &str, from: &str, params: &MailParams) -> Reply {
        self.transactions += 1;
        let mut record = TransactionLog::begin(
            self.id,
            self.transactions,
            self.peer,
            helo,
            self.tls.as_ref().map(|t| t.version.as_str()),
            from,
        );
        let policy = &self.settings.policy;
        if let Err(refusal) = policy.mail(&self.context.rates, self.peer.ip(), self.transactions, Instant::now()) {
            refusal.log(self.peer.ip());
            self.context.messages.push(record.log(EndedAt::Mail, "refused", &refusal.reply));
            return refusal.reply;
        }
        let (transaction, outcome) =
            self.settings.chain.begin(self.peer, helo, from, &record.id, &self.stage_slots).await;
        let reply = match outcome {
            EnvelopeOutcome::Refuse(refusal) => {
                record.decided_by = transaction.refused_by().cloned();
                refusal
            }
            EnvelopeOutcome::Continue => {
                let client = ClientFacts {
                    addr: self.peer.ip(),
                    port: self.peer.port(),
                    name: None,
                    helo: helo.to_string(),
                    proto: match self.session.hello() {
                        Some(Hello::Helo) => Proto::Smtp,
                        _ => Proto::Esmtp,
                    },
                    tls: self.tls.as_ref().map(|t| format!("{} with cipher {}", t.version, t.cipher)),
                };
                let reply = self.next_hop.mail(from, params, &client, &record.id).await;
                if reply.is_positive() {
                    self.chained = Chained::Envelope(transaction);
                    self.record = Some(record);
                    return reply;
                }
                record.relay_reply = Some(reply.clone());
                reply
            }
        };
        let result = if reply.is_transient() { "tempfailed" } else { "rejected" };
        self.context.messages.push(record.log(EndedAt::Mail, result, &reply));
        reply
    }

    /// RCPT: the relay policy and the recipient rate first, then the chain and the next hop.
    async fn rcpt(&mut self, to: &str) -> Reply {
        let (policy, client) = (&self.settings.policy, self.peer.ip());
        if let Decision::Denied(why) = policy.relay(client, to) {
            let shown = client.to_canonical();
            info!(target: "sluice::policy", client = %shown, rcpt = to, reason = why.as_str(), "relay access denied");
            return crate::policy::relay_denied(to);
        }
        let counted = match policy.recipient(&self.context.rates, client, Instant::now()) {
            Ok(counted) => counted,
            Err(refusal) => {
                refusal.log(client);
                return refusal.reply;
            }
        };
        let refused = match &mut self.chained {
            Chained::Envelope(transaction) => match transaction.rcpt(to).await {
                EnvelopeOutcome::Refuse(reply) => Some(reply),
                EnvelopeOutcome::Continue => None,
            },
            _ => None,
        };
        let reply = match refused {
            Some(reply) => reply,
            None => self.next_hop.rcpt(to).await,
        };
        match (reply.is_positive(), &mut self.record) {
            (true, Some(record)) => record.rcpt(to),
            (true, None) => {}
            (false, _) => self.settings.policy.uncount_recipient(&self.context.rates, client, counted),
        }
        reply
    }

    /// End of data: waits for the chain, then delivers or answers with the chain's verdict. The
    /// shutdown deadline cuts the wait for the chain, and the delivery as far as the next hop
    /// lets it (`NextHop::deliver`): None then.
    async fn deliver(&mut self, envelope: Envelope, deadline: &CancellationToken) -> Option<Reply> {
        self.content();
        let Chained::Content(run) = std::mem::replace(&mut self.chained, Chained::None) else {
            warn!(target: "sluice::smtp", "end of data outside a transaction");
            return Some(Reply::new(451, "4.3.0", "Local error; try again later"));
        };
        let Some(Finished { outcome, message_id }) = unless(deadline, run.finish()).await else {
            self.log_message(EndedAt::Data, "tempfailed", &shutting_down(&self.settings));
            return None;
        };
        if let Some(record) = &mut self.record {
            record.message_id = message_id;
        }
        let (outcome, edited) = with_edited_envelope(outcome, &envelope);
        let (result, reply) = match outcome {
            ContentOutcome::Deliver(mut spool, _) => {
                let started = Instant::now();
                let delivery = self.next_hop.deliver(&envelope.mail_from, edited.as_ref(), &mut spool, deadline).await;
                let Delivery::Answered(reply) = delivery else {
                    self.log_message(EndedAt::Data, "tempfailed", &shutting_down(&self.settings));
                    return None;
                };
                self.context.metrics.relay_reply(reply.code, started.elapsed());
                if let Some(record) = &mut self.record {
                    record.relay_reply = Some(reply.clone());
                }
                let result = match reply.code {
                    200..=299 => "accepted",
                    400..=499 => "tempfailed",
                    _ => "rejected",
                };
                (result, reply)
            }
            ContentOutcome::Decided { stage, verdict, reason } => {
                // Cut by the deadline, the reset leaves the connection dropped instead.
                unless(deadline, self.next_hop.reset()).await;
                debug!(target: "sluice::filters", stage = %stage, verdict = verdict.kind(), "message decided by the chain");
                if let Some(record) = &mut self.record {
                    record.decided_by = Some((stage, reason));
                }
                match verdict {
                    Verdict::Reject(reply) => ("rejected", reply),
                    Verdict::Tempfail(reply) => ("tempfailed", reply),
                    _ => ("discarded", Reply::new(250, "2.0.0", "Ok")),
                }
            }
            ContentOutcome::Failed(why) => {
                unless(deadline, self.next_hop.reset()).await;
                warn!(target: "sluice::filters", error = %why, "chain failed; the client will retry");
                ("tempfailed", Reply::new(451, "4.3.0", "Local error in the filter chain; try again later"))
            }
        };
        self.log_message(EndedAt::Data, result, &reply);
        Some(reply)
    }

    /// Drops the transaction (stage tasks are stopped, the spool freed) and resets the next hop.
    async fn abandon(&mut self) {
        self.chained = Chained::None;
        self.record = None;
        self.next_hop.reset().await;
    }

    /// The transaction's log line and count, once its content got its answer; the transaction
    /// is over.
    fn log_message(&mut self, at: EndedAt, result: &str, reply: &Reply) {
        self.context.metrics.transaction(result);
        if let Some(record) = self.record.take() {
            self.context.messages.push(record.log(at, result, reply));
        }
    }

    /// Queues a reply for the client.
    fn reply(&mut self, reply: &Reply) {
        trace!(target: "sluice::smtp", reply = reply.summary().as_str(), "server:");
        self.output.extend_from_slice(&reply.to_wire());
    }

    /// Reads more input once flow control allows; Ok(false) at end of stream. The wait is bounded
    /// by the clock's deadline, a timer that fires whether or not bytes trickle in.
    async fn read(&mut self) -> Result<bool, Interruption> {
        let deadline = self.shutdown.deadline.clone();
        tokio::select! {
            _ = self.flow.wait_readable() => {}
            _ = deadline.cancelled() => return Err(Interruption::Deadline),
        }
        let (until, expiry) = self.clock.deadline(self.session.waiting(&self.input), Instant::now());
        self.input.reserve(READ_BUFFER);
        let idle = self.session.is_idle();
        self.update_listing(0, 0);
        tokio::select! {
            result = timeout_at(until.into(), self.stream.read_buf(&mut self.input)) => match result {
                Ok(Ok(0)) | Ok(Err(_)) => Ok(false),
                Ok(Ok(n)) => {
                    self.clock.received(n, Instant::now());
                    // Acknowledge message bytes at once: a client with Nagle on (smtp-source,
                    // many MTAs) holds its final ".\r\n" until our ACK, and a delayed ACK costs
                    // it 40 ms a message. A command needs none: our reply carries the ACK.
                    if let (Some(tcp), Phase::Content) = (self.stream.tcp(), self.session.phase()) {
                        let _ = socket2::SockRef::from(tcp).set_tcp_quickack(true);
                    }
                    tracing::trace!(target: "sluice::io", bytes = n, buffered = self.input.len(), "read");
                    self.context.metrics.bytes_in.inc_by(n as u64);
                    self.update_listing(n as u64, 0);
                    Ok(true)
                }
                Err(_) => Err(Interruption::Timeout(expiry)),
            },
            // Between transactions a draining gateway closes at once; within one it waits.
            _ = self.shutdown.draining.cancelled(), if idle => Err(Interruption::Draining),
            _ = self.shutdown.deadline.cancelled() => Err(Interruption::Deadline),
        }
    }

    /// The handshake after STARTTLS's 220, bounded by `command_timeout` and the shutdown
    /// deadline; false if it failed (the session ends: the connection is no longer usable).
    async fn start_tls(&mut self, discarded: usize) -> bool {
        let Some(acceptor) = self.settings.tls.clone() else {
            warn!(target: "sluice::smtp", "STARTTLS accepted without a certificate");
            return false;
        };
        if discarded > 0 {
            info!(target: "sluice::smtp", bytes = discarded, "discarded input pipelined after STARTTLS");
        }
        let limit = self.settings.reads.command_timeout;
        let deadline = self.shutdown.deadline.clone();
        let handshake = tokio::select! {
            done = timeout(limit, self.stream.start_tls(&acceptor)) => done,
            _ = deadline.cancelled() => return false,
        };
        self.context.metrics.tls_handshake(matches!(handshake, Ok(Ok(_))));
        match handshake {
            Ok(Ok(tls)) => {
                self.session.tls_started();
                self.listing.info.lock().unwrap_or_else(|p| p.into_inner()).tls = Some(tls.clone());
                // Logged once /sessions shows it.
                info!(target: "sluice::smtp", version = %tls.version, cipher = %tls.cipher, "TLS established");
                self.tls = Some(tls);
                true
            }
            Ok(Err(err)) => {
                info!(target: "sluice::smtp", error = %err, "TLS handshake failed");
                false
            }
            Err(_) => {
                info!(target: "sluice::smtp", timeout = ?limit, "TLS handshake timed out");
                false
            }
        }
    }

    /// Writes the batched replies; false if the client is gone.
    async fn flush(&mut self) -> bool {
        if self.output.is_empty() {
            return true;
        }
        let limit = self.settings.reads.command_timeout;
        let written = timeout(limit, self.stream.write_all(&self.output)).await;
        let bytes = self.output.len() as u64;
        tracing::trace!(target: "sluice::io", bytes, "write");
        self.context.metrics.bytes_out.inc_by(bytes);
        self.update_listing(0, bytes);
        self.output.clear();
        matches!(written, Ok(Ok(())))
    }

    /// Keeps the session's entry for the admin API current.
    fn update_listing(&self, read: u64, written: u64) {
        let mut info = self.listing.info.lock().unwrap_or_else(|p| p.into_inner());
        info.state = self.session.state_name();
        info.transaction = self.session.transaction();
        info.bytes_in += read;
        info.bytes_out += written;
    }

    async fn close_with(&mut self, reply: Reply) {
        self.reply(&reply);
        self.flush().await;
    }
}

/// Runs `work` unless the shutdown deadline comes first (None then; `work` is dropped).
async fn unless<T>(deadline: &CancellationToken, work: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        done = work => Some(done),
        _ = deadline.cancelled() => None,
    }
}

/// The envelope as the chain's stages changed it, for a message to deliver; one left without
/// recipients is the chain's discard, answered like any other.
fn with_edited_envelope(
    outcome: ContentOutcome,
    envelope: &Envelope,
) -> (ContentOutcome, Option<envelope_edit::EditedEnvelope>) {
    let ContentOutcome::Deliver(spool, changes) = outcome else { return (outcome, None) };
    match envelope_edit::apply(&envelope.mail_from, &envelope.rcpt_to, &changes) {
        Some(edited) if edited.recipients.is_empty() => {
            let reason = "every recipient removed".to_string();
            (ContentOutcome::Decided { stage: "chain".into(), verdict: Verdict::Discard, reason }, None)
        }
        edited => (ContentOutcome::Deliver(spool, changes), edited),
    }
}

/// The 421 of a gateway that is stopping.
pub fn shutting_down(settings: &Settings) -> Reply {
    Reply::new(421, "4.3.2", format!("{} Service shutting down, try again later", settings.session.hostname))
}

/// Socket write bound used for one-shot replies outside a session (e.g. "too many sessions").
pub const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
