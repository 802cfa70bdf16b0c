//! The ClamAV scanner bridge: a chain stage that streams the whole message (header section and
//! body) to clamd with INSTREAM while it arrives, so the scan overlaps with receipt. The stream is
//! fed through a small bounded channel: a slow clamd makes this stage slow, its inbox fills and
//! the flow controller pauses the client — nothing is buffered without bound. A scan is one task
//! per message, aborted (its clamd connection closed) if the message ends any other way.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use clamav_client::tokio::{Socket, Tcp, TransportProtocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::chain::headers::HeaderSection;
use crate::chain::stage::{
    EnvelopeEvent, Interests, MessageContext, Reaction, Stage, StageError, StageEvent, StageFactory, Verdict,
};
use crate::config::stages::{OversizeAction, VirusAction};
use crate::smtp::reply::Reply;

/// Pieces in flight to clamd: enough to keep the socket busy, few enough to push back.
const IN_FLIGHT: usize = 2;
/// INSTREAM chunk size (clamd's own default buffer is 8 KiB; larger chunks mean fewer frames).
const FRAME: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddress {
    Tcp(String),
    Unix(PathBuf),
}

impl ClamdAddress {
    pub fn parse(text: &str) -> ClamdAddress {
        match text.strip_prefix("unix:") {
            Some(path) => ClamdAddress::Unix(PathBuf::from(path)),
            None => ClamdAddress::Tcp(text.to_string()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClamdSettings {
    pub stage: String,
    pub address: ClamdAddress,
    pub action: VirusAction,
    pub max_size: u64,
    pub oversize: OversizeAction,
}

/// As the config spells it: `127.0.0.1:3310` or `unix:/run/clamav/clamd.ctl`.
impl std::fmt::Display for ClamdAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClamdAddress::Tcp(address) => f.write_str(address),
            ClamdAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The `oversize` action as the config spells it.
fn oversize_name(action: OversizeAction) -> &'static str {
    match action {
        OversizeAction::Tempfail => "tempfail",
        OversizeAction::Reject => "reject",
        OversizeAction::Accept => "accept",
    }
}

/// What clamd said about a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanResult {
    Clean,
    Infected(String),
    /// clamd refused the stream as larger than its StreamMaxLength.
    TooLarge,
    Error(String),
}

impl std::fmt::Display for ScanResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanResult::Clean => f.write_str("clean"),
            ScanResult::Infected(name) => write!(f, "infected: {name}"),
            ScanResult::TooLarge => f.write_str("too large for clamd"),
            ScanResult::Error(text) => write!(f, "error: {text}"),
        }
    }
}

impl ScanResult {
    /// Parses clamd's INSTREAM reply ("stream: OK", "stream: NAME FOUND", "... ERROR").
    pub fn parse(reply: &[u8]) -> ScanResult {
        let text = String::from_utf8_lossy(reply);
        let text = text.trim_end_matches(['\0', '\n', '\r']).trim();
        let body = text.strip_prefix("stream:").map_or(text, str::trim);
        if body == "OK" {
            ScanResult::Clean
        } else if let Some(name) = body.strip_suffix(" FOUND") {
            ScanResult::Infected(name.trim().to_string())
        } else if body.contains("size limit exceeded") {
            ScanResult::TooLarge
        } else {
            ScanResult::Error(if body.is_empty() { "empty reply".into() } else { body.to_string() })
        }
    }
}

/// Asks clamd for PONG at start, so a misconfigured address shows in the log at once (clamd may
/// also come up later: messages meanwhile get the stage's on_error answer).
pub async fn check(settings: &ClamdSettings) {
    let reply = match settings.address.clone() {
        ClamdAddress::Tcp(host_address) => clamav_client::tokio::ping(Tcp { host_address }).await,
        ClamdAddress::Unix(socket_path) => clamav_client::tokio::ping(Socket { socket_path }).await,
    };
    match reply {
        Ok(pong) if pong == clamav_client::PONG => {
            info!(target: "sluice::scanner", stage = %settings.stage, address = settings.address.to_string().as_str(), "clamd answers")
        }
        Ok(other) => {
            warn!(target: "sluice::scanner", stage = %settings.stage, reply = %String::from_utf8_lossy(&other), "clamd answered PING oddly")
        }
        Err(err) => {
            warn!(target: "sluice::scanner", stage = %settings.stage, address = settings.address.to_string().as_str(), error = %err, "clamd is not reachable; messages get the stage's on_error answer until it is")
        }
    }
}

pub struct ClamdFactory {
    settings: Arc<ClamdSettings>,
}

impl ClamdFactory {
    pub fn new(settings: ClamdSettings) -> ClamdFactory {
        ClamdFactory { settings: Arc::new(settings) }
    }
}

impl StageFactory for ClamdFactory {
    fn instantiate(&self, _context: &MessageContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(ClamdStage { settings: self.settings.clone(), scan: None, sent: 0, state: Progress::Scanning }))
    }
}

/// Streams `chunks` to clamd with INSTREAM and returns its reply.
///
/// The framing is written here rather than with `clamav_client::tokio::scan_stream` because clamd
/// answers "INSTREAM size limit exceeded" and closes while the client is still writing; that
/// function then returns the write error and drops the reply, and a message too large to scan
/// would look like a clamd failure. Here the reply is read after a failed write too.
async fn instream<C: TransportProtocol>(connection: C, mut chunks: mpsc::Receiver<Bytes>) -> io::Result<Vec<u8>>
where
    C::Stream: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = connection.connect().await?;
    let written: io::Result<()> = async {
        conn.write_all(b"zINSTREAM\0").await?;
        while let Some(chunk) = chunks.recv().await {
            for frame in chunk.chunks(FRAME) {
                conn.write_all(&(frame.len() as u32).to_be_bytes()).await?;
                conn.write_all(frame).await?;
            }
        }
        conn.write_all(&[0, 0, 0, 0]).await?;
        conn.flush().await
    }
    .await;
    let mut reply = Vec::new();
    let read = conn.read_to_end(&mut reply).await;
    match (written, read) {
        _ if !reply.is_empty() => Ok(reply),
        (Err(err), _) | (Ok(()), Err(err)) => Err(err),
        (Ok(()), Ok(_)) => Ok(reply),
    }
}

/// A scan in progress: the stream's sending side and the task talking to clamd.
struct Scan {
    sender: mpsc::Sender<Bytes>,
    task: JoinHandle<io::Result<Vec<u8>>>,
}

impl Drop for Scan {
    fn drop(&mut self) {
        // A message that ends early (refused, client gone) must not leave clamd working for it.
        self.task.abort();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Scanning,
    /// Over `max_size`: no longer sent to clamd.
    TooLarge,
}

struct ClamdStage {
    settings: Arc<ClamdSettings>,
    scan: Option<Scan>,
    sent: u64,
    state: Progress,
}

impl ClamdStage {
    fn start(&mut self) {
        let (sender, receiver) = mpsc::channel(IN_FLIGHT);
        let task = match self.settings.address.clone() {
            ClamdAddress::Tcp(host_address) => tokio::spawn(instream(Tcp { host_address }, receiver)),
            ClamdAddress::Unix(socket_path) => tokio::spawn(instream(Socket { socket_path }, receiver)),
        };
        self.scan = Some(Scan { sender, task });
    }

    /// Streams bytes to clamd, waiting while clamd is behind (that wait is the backpressure).
    async fn send(&mut self, bytes: Bytes) -> Result<(), StageError> {
        if self.state == Progress::TooLarge {
            return Ok(());
        }
        self.sent += bytes.len() as u64;
        if self.sent > self.settings.max_size {
            warn!(target: "sluice::scanner", stage = %self.settings.stage, max_size = self.settings.max_size, "message larger than max_size: not scanned");
            self.state = Progress::TooLarge;
            self.scan = None;
            return Ok(());
        }
        if self.scan.is_none() {
            self.start();
        }
        let Some(scan) = &self.scan else { return Ok(()) };
        if scan.sender.send(bytes).await.is_err() {
            // The scan task ended early: clamd refused the size, is unreachable or hung up.
            return match self.finish().await {
                Ok(ScanResult::TooLarge) => {
                    self.state = Progress::TooLarge;
                    Ok(())
                }
                Ok(other) => Err(StageError::Failed(format!("clamd ended the scan early ({other})"))),
                Err(err) => Err(StageError::Failed(err)),
            };
        }
        Ok(())
    }

    /// Ends the stream and waits for clamd's answer.
    async fn finish(&mut self) -> Result<ScanResult, String> {
        let Some(mut scan) = self.scan.take() else {
            return Ok(ScanResult::Clean);
        };
        // Dropping the sender ends the stream: the task sends the end marker and reads the reply.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut scan.sender, closed));
        match (&mut scan.task).await {
            Ok(Ok(reply)) => Ok(ScanResult::parse(&reply)),
            Ok(Err(err)) => Err(format!("clamd at {}: {err}", self.settings.address)),
            Err(err) => Err(format!("scan task failed: {err}")),
        }
    }
}

#[async_trait]
impl Stage for ClamdStage {
    fn interests(&self) -> Interests {
        Interests::of(&[StageEvent::Headers, StageEvent::Body, StageEvent::End])
    }

    async fn envelope(&mut self, _event: &EnvelopeEvent) -> Result<Verdict, StageError> {
        Ok(Verdict::Continue)
    }

    async fn headers(&mut self, headers: &HeaderSection) -> Result<Reaction, StageError> {
        self.send(Bytes::from(headers.to_bytes())).await?;
        Ok(Reaction::carry_on())
    }

    async fn body(&mut self, chunk: Bytes) -> Result<Reaction, StageError> {
        self.send(chunk).await?;
        Ok(Reaction::carry_on())
    }

    async fn end(&mut self) -> Result<Reaction, StageError> {
        let settings = self.settings.clone();
        let result = match self.state {
            Progress::TooLarge => ScanResult::TooLarge,
            Progress::Scanning => self.finish().await.map_err(StageError::Failed)?,
        };
        info!(target: "sluice::scanner", stage = %settings.stage, result = result.to_string().as_str(), bytes = self.sent, "scanned");
        Ok(match result {
            ScanResult::Clean => match settings.action {
                VirusAction::Tag => Reaction::carry_on().add_header("X-Virus-Status", "Clean"),
                _ => Reaction::carry_on(),
            },
            ScanResult::Infected(name) => match settings.action {
                VirusAction::Reject => {
                    Reaction::verdict(Verdict::Reject(Reply::new(554, "5.7.1", format!("Virus found: {name}"))))
                }
                VirusAction::Discard => Reaction::verdict(Verdict::Discard),
                VirusAction::Tag => {
                    Reaction::carry_on().add_header("X-Virus-Status", "Infected").add_header("X-Virus-Name", &name)
                }
            },
            ScanResult::TooLarge => {
                warn!(target: "sluice::scanner", stage = %settings.stage, oversize = oversize_name(settings.oversize), "message too large to scan");
                match settings.oversize {
                    OversizeAction::Tempfail => Reaction::verdict(Verdict::Tempfail(Reply::new(
                        451,
                        "4.7.1",
                        "Message too large to scan for viruses; try again later",
                    ))),
                    OversizeAction::Reject => Reaction::verdict(Verdict::Reject(Reply::new(
                        554,
                        "5.7.1",
                        "Message too large to scan for viruses",
                    ))),
                    OversizeAction::Accept => {
                        Reaction::carry_on().add_header("X-Virus-Status", "Unscanned (too large)")
                    }
                }
            }
            ScanResult::Error(why) => return Err(StageError::Failed(format!("clamd: {why}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamd_replies() {
        assert_eq!(ScanResult::parse(b"stream: OK\0"), ScanResult::Clean);
        assert_eq!(
            ScanResult::parse(b"stream: Eicar-Test-Signature.UNOFFICIAL FOUND\0"),
            ScanResult::Infected("Eicar-Test-Signature.UNOFFICIAL".into())
        );
        assert_eq!(ScanResult::parse(b"INSTREAM size limit exceeded. ERROR\0"), ScanResult::TooLarge);
        assert_eq!(
            ScanResult::parse(b"stream: Can't allocate memory ERROR\0"),
            ScanResult::Error("Can't allocate memory ERROR".into())
        );
        assert_eq!(ScanResult::parse(b""), ScanResult::Error("empty reply".into()));
        assert_eq!(ClamdAddress::parse("unix:/run/clamd.ctl"), ClamdAddress::Unix("/run/clamd.ctl".into()));
        assert_eq!(ClamdAddress::parse("127.0.0.1:3310"), ClamdAddress::Tcp("127.0.0.1:3310".into()));
    }
}
