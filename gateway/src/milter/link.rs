//! One connection to a milter: connect, negotiate (SMFIC_OPTNEG), send commands and read the
//! milter's packets, each write and each read under the stage's `timeout` (a progress packet
//! starts the read's wait again). Its state is explicit and moves in one place (`advance`):
//! `Ready` between exchanges, `InFlight` while a reply is owed, `Broken` once anything went wrong
//! (a timeout, the milter hung up, a packet that does not decode). Only a `Ready` link serves
//! another message; one dropped while `InFlight` (its call was cut) is closed with it.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::address::MilterAddress;
use super::codec::{Actions, Command, DecodeError, OptNeg, PacketReader, Protocol, Reply, VERSION};

/// The largest packet a milter may send: a header change or a piece of a replaced body
/// (libmilter writes at most 64 KiB of body per packet), with room to spare.
pub const MAX_PACKET: usize = 1 << 20;
/// Bytes read from the socket at once.
const READ_CHUNK: usize = 64 * 1024;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why talking to the milter failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the milter closed the connection")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad packet: {0}")]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Protocol(String),
    #[error("the connection was lost earlier")]
    Broken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Between exchanges: the next command may go out.
    Ready,
    /// A write is under way, or an answer is owed: dropped now, the link is out of step.
    InFlight,
    Broken,
}

/// What moves the state.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// A write begins.
    Write,
    /// A write the milter does not answer is complete.
    Told,
    /// The milter's final answer to what was asked arrived.
    Answered,
    Failed,
}

fn advance(state: LinkState, step: Step) -> LinkState {
    match (state, step) {
        (LinkState::Ready, Step::Write) => LinkState::InFlight,
        (LinkState::InFlight, Step::Told | Step::Answered) => LinkState::Ready,
        // Anything else is out of step: a write while an answer is owed, an answer nobody asked
        // for, or a failure.
        _ => LinkState::Broken,
    }
}

pub struct Link {
    io: Box<dyn Io>,
    reader: PacketReader,
    timeout: Duration,
    state: LinkState,
    /// What the milter asked for, within what was offered.
    pub agreed: OptNeg,
    scratch: Vec<u8>,
    /// What a read takes from the socket (on the heap: futures holding a link stay small).
    buffer: Vec<u8>,
}

impl Link {
    /// Connects and negotiates: `offer` is what Sluice can do; the milter's answer is masked by
    /// it (a milter asking for more than offered gets what was offered, as Postfix does).
    pub async fn open(address: &MilterAddress, timeout: Duration, offer: OptNeg) -> Result<Link, LinkError> {
        let connect = async {
            Ok::<Box<dyn Io>, std::io::Error>(match address {
                MilterAddress::Inet(host_port) => {
                    let stream = TcpStream::connect(host_port.as_str()).await?;
                    // Milter exchanges are small request/answer pairs: without this each waits
                    // for a delayed ACK (~40 ms).
                    stream.set_nodelay(true)?;
                    Box::new(stream)
                }
                MilterAddress::Unix(path) => Box::new(UnixStream::connect(path).await?),
            })
        };
        let io = match tokio::time::timeout(timeout, connect).await {
            Err(_) => return Err(LinkError::Timeout(timeout)),
            Ok(result) => result.map_err(LinkError::Connect)?,
        };
        let mut link = Link {
            io,
            reader: PacketReader::new(MAX_PACKET),
            timeout,
            state: LinkState::Ready,
            agreed: offer,
            scratch: Vec::new(),
            buffer: vec![0; READ_CHUNK],
        };
        link.ask(&[Command::OptNeg(offer)]).await?;
        match link.answer().await? {
            Reply::OptNeg(theirs) if (2..=VERSION).contains(&theirs.version) => {
                link.agreed = OptNeg {
                    version: theirs.version,
                    actions: theirs.actions & offer.actions,
                    protocol: theirs.protocol & offer.protocol,
                };
                Ok(link)
            }
            Reply::OptNeg(theirs) => {
                link.state = LinkState::Broken;
                Err(LinkError::Protocol(format!(
                    "milter speaks protocol version {}, not 2 to {VERSION}",
                    theirs.version
                )))
            }
            other => {
                link.state = LinkState::Broken;
                Err(LinkError::Protocol(format!("answered the negotiation with {}", other.name())))
            }
        }
    }

    pub fn state(&self) -> LinkState {
        self.state
    }

    pub fn wants(&self, protocol: Protocol) -> bool {
        self.agreed.protocol.contains(protocol)
    }

    pub fn may(&self, actions: Actions) -> bool {
        self.agreed.actions.contains(actions)
    }

    /// Writes commands (macros and the command they go with) in one write; the last is answered.
    pub async fn ask(&mut self, commands: &[Command]) -> Result<(), LinkError> {
        self.write(commands).await
    }

    /// Writes commands the milter does not answer (it asked for no reply, or none exists).
    pub async fn tell(&mut self, commands: &[Command]) -> Result<(), LinkError> {
        self.write(commands).await?;
        self.state = advance(self.state, Step::Told);
        Ok(())
    }

    /// Ends the conversation (SMFIC_QUIT); the link is not used again.
    pub async fn quit(mut self) {
        let _ = self.tell(&[Command::Quit]).await;
        self.state = LinkState::Broken;
    }

    async fn write(&mut self, commands: &[Command]) -> Result<(), LinkError> {
        match self.state {
            LinkState::Ready => self.state = advance(self.state, Step::Write),
            LinkState::Broken => return Err(LinkError::Broken),
            LinkState::InFlight => {
                self.state = LinkState::Broken;
                return Err(LinkError::Protocol("an earlier exchange was cut short; its answer is still owed".into()));
            }
        }
        self.scratch.clear();
        for command in commands {
            command.encode(&mut self.scratch);
        }
        let written = tokio::time::timeout(self.timeout, async {
            self.io.write_all(&self.scratch).await?;
            self.io.flush().await
        })
        .await;
        let result = match written {
            Err(_) => Err(LinkError::Timeout(self.timeout)),
            Ok(result) => result.map_err(LinkError::from),
        };
        self.fail_on(result)
    }

    /// The milter's next packet other than progress: a modification (at end of message) or its
    /// answer. Each wait is bounded by `timeout`, started again by each progress packet.
    pub async fn next(&mut self) -> Result<Reply, LinkError> {
        match self.state {
            LinkState::InFlight => {}
            LinkState::Broken => return Err(LinkError::Broken),
            LinkState::Ready => {
                self.state = LinkState::Broken;
                return Err(LinkError::Protocol("read with no answer owed".into()));
            }
        }
        loop {
            let packet = self.read_packet().await;
            match self.fail_on(packet)? {
                Reply::Progress => continue,
                reply => return Ok(reply),
            }
        }
    }

    /// The answer to what was asked: the next packet, which must be one of the answers (not a
    /// modification; those only come at end of message, through `next`).
    pub async fn answer(&mut self) -> Result<Reply, LinkError> {
        let reply = self.next().await?;
        if is_modification(&reply) || matches!(reply, Reply::SetSymbolList { .. }) {
            self.state = advance(self.state, Step::Failed);
            return Err(LinkError::Protocol(format!("sent {} outside the end of a message", reply.name())));
        }
        self.answered();
        Ok(reply)
    }

    /// The final answer arrived (after `next` returned it at end of message).
    pub fn answered(&mut self) {
        self.state = advance(self.state, Step::Answered);
    }

    async fn read_packet(&mut self) -> Result<Reply, LinkError> {
        loop {
            if let Some(reply) = self.reader.next_reply()? {
                return Ok(reply);
            }
            let read = match tokio::time::timeout(self.timeout, self.io.read(&mut self.buffer)).await {
                Err(_) => return Err(LinkError::Timeout(self.timeout)),
                Ok(read) => read?,
            };
            if read == 0 {
                return Err(LinkError::Closed);
            }
            self.reader.push(&self.buffer[..read]);
        }
    }

    /// The link is no longer usable (the stage found the milter's answer wrong).
    pub fn break_off(&mut self) {
        self.state = advance(self.state, Step::Failed);
    }

    fn fail_on<T>(&mut self, result: Result<T, LinkError>) -> Result<T, LinkError> {
        if result.is_err() {
            self.state = advance(self.state, Step::Failed);
        }
        result
    }
}

/// A link dropped between exchanges says goodbye (SMFIC_QUIT, as Postfix does at the end of a
/// session; libmilter takes a bare EOF for a failure), in a task of its own, within `timeout`.
impl Drop for Link {
    fn drop(&mut self) {
        if self.state != LinkState::Ready {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let mut io = std::mem::replace(&mut self.io, Box::new(tokio::io::empty()));
        let timeout = self.timeout;
        runtime.spawn(async move {
            let mut quit = Vec::new();
            Command::Quit.encode(&mut quit);
            let _ = tokio::time::timeout(timeout, io.write_all(&quit)).await;
        });
    }
}

/// The packets that change the message: only valid between SMFIC_BODYEOB and its answer.
pub fn is_modification(reply: &Reply) -> bool {
    matches!(
        reply,
        Reply::AddHeader { .. }
            | Reply::InsertHeader { .. }
            | Reply::ChangeHeader { .. }
            | Reply::AddRcpt(_)
            | Reply::AddRcptWithArgs { .. }
            | Reply::DeleteRcpt(_)
            | Reply::ChangeFrom { .. }
            | Reply::ReplaceBody(_)
            | Reply::Quarantine(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_moves() {
        use LinkState::*;
        let cases = [
            (Ready, Step::Write, InFlight),
            (InFlight, Step::Told, Ready),
            (InFlight, Step::Answered, Ready),
            (InFlight, Step::Write, Broken),
            (Ready, Step::Answered, Broken),
            (Ready, Step::Told, Broken),
            (Ready, Step::Failed, Broken),
            (InFlight, Step::Failed, Broken),
            (Broken, Step::Write, Broken),
            (Broken, Step::Answered, Broken),
        ];
        for (from, step, to) in cases {
            assert_eq!(advance(from, step), to, "{from:?} {step:?}");
        }
    }
}
