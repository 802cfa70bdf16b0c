//! The one async loop per connection: reads the socket into the session state machine, writes its
//! replies (batched, flushed whenever it needs input: RFC 2920 pipelining), spools message bytes
//! and runs the next-hop requests. It decides nothing about the protocol itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::reply::Reply;
use super::session::{Envelope, Phase, Request, Session, Step};
use crate::next_hop::NextHop;
use crate::server::{Context, Shutdown};
use crate::spool::Spool;

/// Socket reads ask for at least this much room.
const READ_BUFFER: usize = 64 * 1024;

/// Why the loop stopped reading.
enum Interruption {
    Timeout,
    Draining,
    Deadline,
}

pub struct Connection {
    stream: TcpStream,
    context: Arc<Context>,
    shutdown: Shutdown,
    session: Session,
    next_hop: NextHop,
    spool: Spool,
    input: BytesMut,
    output: Vec<u8>,
    /// When the current transaction's MAIL arrived, for the per-message log line.
    transaction_start: Instant,
}

impl Connection {
    pub fn new(stream: TcpStream, context: Arc<Context>, shutdown: Shutdown) -> Connection {
        let session = Session::new(context.session.clone());
        let next_hop = context.next_hop();
        let spool = context.spool();
        Connection {
            stream,
            context,
            shutdown,
            session,
            next_hop,
            spool,
            input: BytesMut::with_capacity(READ_BUFFER),
            output: Vec::with_capacity(1024),
            transaction_start: Instant::now(),
        }
    }

    /// Runs the session to its end; every exit path leaves nothing half-done at the next hop.
    pub async fn run(mut self) {
        debug!(target: "sluice::smtp", "connected");
        self.output.extend_from_slice(&self.session.greeting().to_wire());
        loop {
            match self.session.step(&mut self.input) {
                Step::Reply(reply) => self.output.extend_from_slice(&reply.to_wire()),
                Step::Body(bytes) => {
                    if let Err(err) = self.spool.write(&bytes).await {
                        warn!(target: "sluice::smtp", error = %err, "cannot spool message; the client will get 451");
                        self.close_with(Reply::new(451, "4.3.0", "Local spool error; try again later")).await;
                        break;
                    }
                }
                Step::Request(request) => {
                    let deadline = self.shutdown.deadline.clone();
                    let answered = tokio::select! {
                        reply = self.handle(request) => Some(reply),
                        _ = deadline.cancelled() => None,
                    };
                    let Some(reply) = answered else {
                        self.close_with(shutting_down(&self.context)).await;
                        break;
                    };
                    let reply = self.session.answer(reply);
                    self.output.extend_from_slice(&reply.to_wire());
                }
                Step::Refuse(reply) => {
                    self.log_message(None, "refused", &reply);
                    self.abandon().await;
                    self.output.extend_from_slice(&reply.to_wire());
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
                        Err(Interruption::Timeout) => {
                            let phase = self.session.phase();
                            info!(target: "sluice::smtp", ?phase, "client timed out");
                            let text = format!("{} Error: timeout exceeded", self.context.session.hostname);
                            self.close_with(Reply::new(421, "4.4.2", text)).await;
                            break;
                        }
                        Err(Interruption::Draining | Interruption::Deadline) => {
                            self.close_with(shutting_down(&self.context)).await;
                            break;
                        }
                    }
                }
                Step::Close => {
                    self.flush().await;
                    break;
                }
            }
        }
        if !self.session.is_idle() || !self.spool.is_empty() {
            self.abandon().await;
        }
        self.next_hop.quit().await;
        debug!(target: "sluice::smtp", "disconnected");
    }

    async fn handle(&mut self, request: Request) -> Reply {
        match request {
            Request::Mail { from, params } => {
                self.transaction_start = Instant::now();
                self.next_hop.mail(&from, &params).await
            }
            Request::Rcpt { to } => self.next_hop.rcpt(&to).await,
            Request::Deliver(envelope) => {
                let reply = self.next_hop.deliver(&envelope.mail_from, &mut self.spool).await;
                let result = match reply.code {
                    200..=299 => "accepted",
                    400..=499 => "tempfailed",
                    _ => "rejected",
                };
                self.log_message(Some(&envelope), result, &reply);
                self.spool.clear();
                reply
            }
        }
    }

    async fn abandon(&mut self) {
        self.spool.clear();
        self.next_hop.reset().await;
    }

    /// The per-message log line: envelope, size, result, reply, duration.
    fn log_message(&self, envelope: Option<&Envelope>, result: &str, reply: &Reply) {
        let (from, rcpts) = envelope.map_or((String::new(), String::new()), |e| (e.mail_from.clone(), e.rcpt_to.join(",")));
        info!(
            target: "sluice::smtp",
            from = %from,
            rcpts = %rcpts,
            size = self.spool.len(),
            result,
            reply = %reply,
            duration_ms = self.transaction_start.elapsed().as_millis() as u64,
            "message"
        );
    }

    /// Reads more input; Ok(false) at end of stream.
    async fn read(&mut self) -> Result<bool, Interruption> {
        let limit = match self.session.phase() {
            Phase::Command => self.context.command_timeout,
            Phase::Content => self.context.data_timeout,
        };
        self.input.reserve(READ_BUFFER);
        let idle = self.session.is_idle();
        tokio::select! {
            result = timeout(limit, self.stream.read_buf(&mut self.input)) => match result {
                Ok(Ok(0)) | Ok(Err(_)) => Ok(false),
                Ok(Ok(_)) => Ok(true),
                Err(_) => Err(Interruption::Timeout),
            },
            // Between transactions a draining gateway closes at once; within one it waits.
            _ = self.shutdown.draining.cancelled(), if idle => Err(Interruption::Draining),
            _ = self.shutdown.deadline.cancelled() => Err(Interruption::Deadline),
        }
    }

    /// Writes the batched replies; false if the client is gone.
    async fn flush(&mut self) -> bool {
        if self.output.is_empty() {
            return true;
        }
        let limit = self.context.command_timeout;
        let written = timeout(limit, self.stream.write_all(&self.output)).await;
        self.output.clear();
        matches!(written, Ok(Ok(())))
    }

    async fn close_with(&mut self, reply: Reply) {
        self.output.extend_from_slice(&reply.to_wire());
        self.flush().await;
    }
}

fn shutting_down(context: &Context) -> Reply {
    Reply::new(421, "4.3.2", format!("{} Service shutting down, try again later", context.session.hostname))
}

/// Socket write bound used for one-shot replies outside a session (e.g. "too many sessions").
pub const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
