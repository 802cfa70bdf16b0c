//! One SMTP client connection to the next hop: opening it (greeting, EHLO, STARTTLS as the
//! policy says), bounded reply reading, command writing, EHLO extension discovery and
//! dot-stuffed content transfer, over a plain or TLS stream.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::link::{Answer, Opening};
use super::tls::{describe, Stream};
use super::{RelayError, RelaySettings};
use crate::config::RelayTls;
use crate::smtp::reply::Reply;
use crate::spool::Spool;

/// A reply line longer than this, or a reply with more lines, is a protocol error.
const MAX_REPLY_LINE: u64 = 4096;
const MAX_REPLY_LINES: usize = 200;
/// Largest single write call: each one is bounded by the command timeout.
const WRITE_PIECE: usize = 64 * 1024;

/// What the next hop offered in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub size: bool,
    pub starttls: bool,
    /// XFORWARD and the attributes it takes; None: not offered.
    pub xforward: Option<Vec<String>>,
}

impl Extensions {
    pub fn from_ehlo(reply: &Reply) -> Extensions {
        let mut ext = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let keyword = words.next().unwrap_or("").to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => ext.pipelining = true,
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "SIZE" => ext.size = true,
                "STARTTLS" => ext.starttls = true,
                "XFORWARD" => ext.xforward = Some(words.map(str::to_ascii_uppercase).collect()),
                _ => {}
            }
        }
        ext
    }
}

/// Reads are buffered by the outer layer, writes by the inner one; both pass the other through.
type Buffered = BufReader<BufWriter<Stream>>;

pub struct Wire {
    io: Buffered,
    /// Bound on each reply and on each write call: a next hop that makes no progress for this
    /// long (silent, or no longer reading) fails the exchange.
    command_timeout: Duration,
    pub extensions: Extensions,
    /// The TLS negotiated (`tls::describe`); None: plain text.
    pub tls: Option<String>,
}

impl Wire {
    fn new(stream: Stream, command_timeout: Duration) -> Wire {
        Wire {
            io: BufReader::with_capacity(16 * 1024, BufWriter::with_capacity(64 * 1024, stream)),
            command_timeout,
            extensions: Extensions::default(),
            tls: None,
        }
    }

    /// Connects, reads the greeting, introduces us with EHLO (HELO if EHLO is refused) and runs
    /// STARTTLS as `mode` says (`settings.tls.mode`, or `None` for the plain-text retry of an
    /// opportunistic handshake that failed; `Opening` decides each step). A connection that is
    /// to be secured and cannot be is closed with QUIT and returned as `RelayError::Tls`:
    /// nothing else is sent on it.
    pub async fn open(settings: &RelaySettings, mode: RelayTls) -> Result<Wire, RelayError> {
        let stream = timeout(settings.connect_timeout, TcpStream::connect(&settings.address))
            .await
            .map_err(|_| RelayError::Timeout("connect"))?
            .map_err(RelayError::Connect)?;
        stream.set_nodelay(true).map_err(RelayError::Io)?;
        let mut wire = Wire::new(Stream::Plain(stream), settings.command_timeout);
        let helo = &settings.helo_name;
        let mut state = Opening::Greeting;
        loop {
            state = match state {
                Opening::Greeting => {
                    let reply = wire.read_reply("greeting").await?;
                    state.after(Answer::Reply(&reply), mode)
                }
                Opening::Ehlo { .. } => {
                    let reply = wire.command(&format!("EHLO {helo}"), "EHLO").await?;
                    if reply.code == 250 {
                        wire.extensions = Extensions::from_ehlo(&reply);
                    }
                    state.after(Answer::Reply(&reply), mode)
                }
                Opening::Helo => {
                    wire.extensions = Extensions::default();
                    let reply = wire.command(&format!("HELO {helo}"), "HELO").await?;
                    state.after(Answer::Reply(&reply), mode)
                }
                Opening::StartTls => {
                    let reply = wire.command("STARTTLS", "STARTTLS").await?;
                    state.after(Answer::Reply(&reply), mode)
                }
                Opening::Handshake => {
                    let secured = wire.secure(settings).await;
                    let (next, result) = match secured {
                        Ok(next) => (Some(next), Ok(())),
                        Err(why) => (None, Err(why)),
                    };
                    let state = state.after(Answer::Handshake(result), mode);
                    match next {
                        Some(next) => wire = next,
                        // The handshake consumed the connection: nothing to say QUIT on.
                        None => return Err(Self::failed(state)),
                    }
                    state
                }
                Opening::Open => return Ok(wire),
                Opening::Refused(reply) => return Err(RelayError::Refused(reply)),
                Opening::Insecure(failure) => {
                    let _ = wire.quit().await;
                    return Err(RelayError::Tls(failure));
                }
            };
        }
    }

    fn failed(state: Opening) -> RelayError {
        match state {
            Opening::Insecure(failure) => RelayError::Tls(failure),
            Opening::Refused(reply) => RelayError::Refused(reply),
            _ => RelayError::Closed,
        }
    }

    /// The TLS handshake on this connection, after the next hop's 220 to STARTTLS. Anything it
    /// sent after that 220 and before the handshake is an injection (the CVE-2011-0411 class
    /// turned around): the connection is refused then, not secured.
    async fn secure(self, settings: &RelaySettings) -> Result<Wire, String> {
        if !self.io.buffer().is_empty() {
            return Err("the next hop sent data after its 220 to STARTTLS, before the handshake".into());
        }
        let Stream::Plain(tcp) = self.io.into_inner().into_inner() else {
            return Err("STARTTLS on a connection already secured".into());
        };
        let tls = settings.tls.secure(tcp, settings.command_timeout).await?;
        let description = describe(tls.get_ref().1);
        let mut wire = Wire::new(Stream::Tls(Box::new(tls)), settings.command_timeout);
        wire.tls = Some(description);
        Ok(wire)
    }

    /// Writes `bytes` in pieces, each bounded by the command timeout: "no progress for
    /// command_timeout" fails, however long the whole transfer takes.
    async fn write(&mut self, bytes: &[u8], what: &'static str) -> Result<(), RelayError> {
        for piece in bytes.chunks(WRITE_PIECE) {
            timeout(self.command_timeout, self.io.write_all(piece))
                .await
                .map_err(|_| RelayError::Stalled(what))?
                .map_err(RelayError::Io)?;
        }
        Ok(())
    }

    /// Queues a command line without flushing (for pipelining).
    pub async fn send(&mut self, line: &str) -> Result<(), RelayError> {
        tracing::trace!(target: "sluice::relay", command = line, "to next hop:");
        self.write(format!("{line}\r\n").as_bytes(), "a command").await
    }

    pub async fn flush(&mut self) -> Result<(), RelayError> {
        timeout(self.command_timeout, self.io.flush())
            .await
            .map_err(|_| RelayError::Stalled("a flush"))?
            .map_err(RelayError::Io)
    }

    /// Sends one command and waits for its reply.
    pub async fn command(&mut self, line: &str, what: &'static str) -> Result<Reply, RelayError> {
        self.send(line).await?;
        self.flush().await?;
        self.read_reply(what).await
    }

    /// Reads one (possibly multi-line) reply within the command timeout.
    pub async fn read_reply(&mut self, what: &'static str) -> Result<Reply, RelayError> {
        timeout(self.command_timeout, self.read_reply_lines()).await.map_err(|_| RelayError::Timeout(what))?
    }

    async fn read_reply_lines(&mut self) -> Result<Reply, RelayError> {
        let mut lines = Vec::new();
        loop {
            let mut raw = Vec::new();
            let n = (&mut self.io).take(MAX_REPLY_LINE).read_until(b'\n', &mut raw).await.map_err(RelayError::Io)?;
            if n == 0 {
                return Err(RelayError::Closed);
            }
            if raw.last() != Some(&b'\n') || lines.len() >= MAX_REPLY_LINES {
                return Err(RelayError::Malformed(String::from_utf8_lossy(&raw).into_owned()));
            }
            let line = String::from_utf8_lossy(&raw).trim_end_matches(['\r', '\n']).to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                let reply = Reply::parse_lines(&lines).ok_or_else(|| RelayError::Malformed(lines.join(" | ")))?;
                tracing::trace!(target: "sluice::relay", reply = reply.summary().as_str(), "next hop:");
                return Ok(reply);
            }
        }
    }

    /// Sends `prefix` (a `Received:` field) and the spooled content dot-stuffed, then the
    /// terminating `.`, and flushes. The reply is read by the caller: from here on the next hop
    /// may have the message.
    pub async fn send_content(&mut self, prefix: &[u8], spool: &mut Spool) -> Result<(), RelayError> {
        let mut stuffer = DotStuffer::default();
        let mut reader = spool.reader().await.map_err(RelayError::Spool)?;
        let mut out = Vec::with_capacity(80 * 1024);
        // The prefix goes out with the first chunk, through the stuffer: the content's first
        // line is then not at the start of the stream, and its dots are counted right.
        stuffer.stuff(prefix, &mut out);
        let mut sent = 0;
        while let Some(chunk) = reader.next_chunk().await.map_err(RelayError::Spool)? {
            stuffer.stuff(chunk, &mut out);
            self.write(&out, "the content").await?;
            sent += out.len();
            out.clear();
        }
        // Empty content: the prefix is still to go.
        self.write(&out, "the content").await?;
        sent += out.len();
        self.write(stuffer.terminator(), "the content").await?;
        // The content itself is never logged; its size is.
        tracing::trace!(target: "sluice::relay", bytes = sent, "to next hop: content and final dot");
        self.flush().await
    }

    /// Resolves when the next hop closes the connection or sends anything unasked (an MTA's idle
    /// timeout is a 421, then a close): either way the connection is done. Consumes nothing, so
    /// it can be raced with other events and the connection used afterwards.
    pub async fn hung_up(&mut self) {
        let _ = self.io.fill_buf().await;
    }

    /// Ends the session politely: QUIT, and its reply awaited (RFC 5321 4.1.1.10), both bounded.
    pub async fn quit(mut self) -> Result<Reply, RelayError> {
        self.command("QUIT", "QUIT").await
    }

    /// QUIT without waiting for the reply: for when the gateway itself is stopping.
    pub async fn quit_now(mut self) -> Result<(), RelayError> {
        self.send("QUIT").await?;
        self.flush().await
    }
}

/// Adds the transparency dot (RFC 5321 §4.5.2) to lines starting with '.', across chunk edges,
/// and picks the terminator that makes the stream end in CRLF.CRLF whatever the content's end.
#[derive(Debug)]
struct DotStuffer {
    at_line_start: bool,
    /// The stream so far ends in CRLF (at first: the DATA command's).
    after_crlf: bool,
    last_was_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer { at_line_start: true, after_crlf: true, last_was_cr: false }
    }
}

impl DotStuffer {
    /// `.CRLF` after content ending in CRLF; otherwise (a bare LF or CR, or no line end at all)
    /// CRLF first, so a lenient next hop cannot see the end of data anywhere else.
    fn terminator(&self) -> &'static [u8] {
        if self.after_crlf {
            b".\r\n"
        } else {
            b"\r\n.\r\n"
        }
    }

    fn stuff(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if let Some(&last) = chunk.last() {
            self.after_crlf = chunk.ends_with(b"\r\n") || (chunk == b"\n" && self.last_was_cr);
            self.last_was_cr = last == b'\r';
        }
        self.stuff_dots(chunk, out);
    }

    fn stuff_dots(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        while !chunk.is_empty() {
            if self.at_line_start && chunk[0] == b'.' {
                out.push(b'.');
            }
            match memchr::memchr(b'\n', chunk) {
                Some(i) => {
                    out.extend_from_slice(&chunk[..=i]);
                    chunk = &chunk[i + 1..];
                    self.at_line_start = true;
                }
                None => {
                    out.extend_from_slice(chunk);
                    self.at_line_start = false;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuff(pieces: &[&[u8]]) -> Vec<u8> {
        let mut stuffer = DotStuffer::default();
        let mut out = Vec::new();
        for piece in pieces {
            stuffer.stuff(piece, &mut out);
        }
        out
    }

    #[test]
    fn dot_stuffing_across_chunks() {
        assert_eq!(stuff(&[b".a\r\n.\r\n..\r\nx.\r\n"]), b"..a\r\n..\r\n...\r\nx.\r\n");
        assert_eq!(stuff(&[b"a\r", b"\n", b".b\r\n"]), b"a\r\n..b\r\n");
        assert_eq!(stuff(&[b"a\r\n", b".", b".\r\n"]), b"a\r\n...\r\n");
    }

    #[tokio::test]
    async fn content_ending_in_a_bare_lf_is_terminated_with_crlf_dot_crlf() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let hop = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b".\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before the dot");
                got.extend_from_slice(&buf[..n]);
            }
            stream.write_all(b"250 2.0.0 Ok\r\n").await.unwrap();
            got
        });
        let stream = TcpStream::connect(address).await.unwrap();
        let mut wire = Wire::new(Stream::Plain(stream), Duration::from_secs(30));
        let mut spool = Spool::new(1024, crate::spool::SpoolBudget::new(1 << 20), None);
        spool.write(b"Subject: x\r\n\r\nbare lf\n").await.unwrap();
        wire.send_content(b"Received: x\r\n", &mut spool).await.unwrap();
        assert_eq!(wire.read_reply("end of data").await.unwrap().code, 250);
        assert_eq!(hop.await.unwrap(), b"Received: x\r\nSubject: x\r\n\r\nbare lf\n\r\n.\r\n");
    }

    #[test]
    fn the_terminator_always_completes_crlf_dot_crlf() {
        let terminator = |pieces: &[&[u8]]| {
            let mut stuffer = DotStuffer::default();
            for piece in pieces {
                stuffer.stuff(piece, &mut Vec::new());
            }
            stuffer.terminator()
        };
        assert_eq!(terminator(&[]), b".\r\n");
        assert_eq!(terminator(&[b"a\r\n"]), b".\r\n");
        assert_eq!(terminator(&[b"a\r", b"\n", b""]), b".\r\n");
        assert_eq!(terminator(&[b"a\n"]), b"\r\n.\r\n");
        assert_eq!(terminator(&[b"a\r\n", b"\n"]), b"\r\n.\r\n");
        assert_eq!(terminator(&[b"a\r"]), b"\r\n.\r\n");
        assert_eq!(terminator(&[b"a"]), b"\r\n.\r\n");
    }

    #[test]
    fn ehlo_extensions() {
        let reply = Reply {
            code: 250,
            enhanced: None,
            lines: vec!["mx hello".into(), "PIPELINING".into(), "SIZE 1000".into(), "8BITMIME".into()],
        };
        let ext = Extensions::from_ehlo(&reply);
        let expected = Extensions { pipelining: true, eight_bit_mime: true, size: true, ..Extensions::default() };
        assert_eq!(ext, expected);
        let reply = Reply {
            code: 250,
            enhanced: None,
            lines: vec!["mx".into(), "STARTTLS".into(), "XFORWARD NAME ADDR proto HELO SOURCE PORT IDENT".into()],
        };
        let ext = Extensions::from_ehlo(&reply);
        assert!(ext.starttls);
        let attributes = ["NAME", "ADDR", "PROTO", "HELO", "SOURCE", "PORT", "IDENT"].map(String::from);
        assert_eq!(ext.xforward.as_deref(), Some(&attributes[..]));
    }
}
