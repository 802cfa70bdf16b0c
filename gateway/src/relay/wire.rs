//! One SMTP client connection to the next hop: bounded reply reading, command writing, EHLO
//! extension discovery and dot-stuffed content transfer.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::RelayError;
use crate::smtp::reply::Reply;
use crate::spool::Spool;

/// A reply line longer than this, or a reply with more lines, is a protocol error.
const MAX_REPLY_LINE: u64 = 4096;
const MAX_REPLY_LINES: usize = 200;

/// What the next hop offered in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub size: bool,
}

impl Extensions {
    fn from_ehlo(reply: &Reply) -> Extensions {
        let mut ext = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let keyword = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => ext.pipelining = true,
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "SIZE" => ext.size = true,
                _ => {}
            }
        }
        ext
    }
}

pub struct Wire {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    reply_timeout: Duration,
    pub extensions: Extensions,
}

impl Wire {
    /// Connects, reads the greeting and introduces us with EHLO (HELO if EHLO is refused).
    pub async fn open(
        address: &str,
        helo: &str,
        connect: Duration,
        reply_timeout: Duration,
    ) -> Result<Wire, RelayError> {
        let stream = timeout(connect, TcpStream::connect(address))
            .await
            .map_err(|_| RelayError::Timeout("connect"))?
            .map_err(RelayError::Connect)?;
        stream.set_nodelay(true).map_err(RelayError::Io)?;
        let (read, write) = stream.into_split();
        let mut wire = Wire {
            reader: BufReader::with_capacity(16 * 1024, read),
            writer: BufWriter::with_capacity(64 * 1024, write),
            reply_timeout,
            extensions: Extensions::default(),
        };
        let greeting = wire.read_reply("greeting").await?;
        if greeting.code != 220 {
            return Err(RelayError::Refused(greeting));
        }
        let ehlo = wire.command(&format!("EHLO {helo}"), "EHLO").await?;
        if ehlo.code == 250 {
            wire.extensions = Extensions::from_ehlo(&ehlo);
        } else {
            let helo_reply = wire.command(&format!("HELO {helo}"), "HELO").await?;
            if helo_reply.code != 250 {
                return Err(RelayError::Refused(helo_reply));
            }
        }
        Ok(wire)
    }

    /// Queues a command line without flushing (for pipelining).
    pub async fn send(&mut self, line: &str) -> Result<(), RelayError> {
        self.writer.write_all(line.as_bytes()).await.map_err(RelayError::Io)?;
        self.writer.write_all(b"\r\n").await.map_err(RelayError::Io)
    }

    pub async fn flush(&mut self) -> Result<(), RelayError> {
        self.writer.flush().await.map_err(RelayError::Io)
    }

    /// Sends one command and waits for its reply.
    pub async fn command(&mut self, line: &str, what: &'static str) -> Result<Reply, RelayError> {
        self.send(line).await?;
        self.flush().await?;
        self.read_reply(what).await
    }

    /// Reads one (possibly multi-line) reply within the reply timeout.
    pub async fn read_reply(&mut self, what: &'static str) -> Result<Reply, RelayError> {
        timeout(self.reply_timeout, self.read_reply_lines()).await.map_err(|_| RelayError::Timeout(what))?
    }

    async fn read_reply_lines(&mut self) -> Result<Reply, RelayError> {
        let mut lines = Vec::new();
        loop {
            let mut raw = Vec::new();
            let n =
                (&mut self.reader).take(MAX_REPLY_LINE).read_until(b'\n', &mut raw).await.map_err(RelayError::Io)?;
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
                return Reply::parse_lines(&lines).ok_or_else(|| RelayError::Malformed(lines.join(" | ")));
            }
        }
    }

    /// Sends the spooled content dot-stuffed, then the terminating `.`; returns the final reply.
    pub async fn send_content(&mut self, spool: &mut Spool) -> Result<Reply, RelayError> {
        let mut stuffer = DotStuffer::default();
        let mut reader = spool.reader().await.map_err(RelayError::Spool)?;
        let mut out = Vec::with_capacity(80 * 1024);
        while let Some(chunk) = reader.next_chunk().await.map_err(RelayError::Spool)? {
            out.clear();
            stuffer.stuff(chunk, &mut out);
            self.writer.write_all(&out).await.map_err(RelayError::Io)?;
        }
        let terminator: &[u8] = if stuffer.at_line_start { b".\r\n" } else { b"\r\n.\r\n" };
        self.writer.write_all(terminator).await.map_err(RelayError::Io)?;
        self.flush().await?;
        self.read_reply("end of data").await
    }
}

/// Adds the transparency dot (RFC 5321 §4.5.2) to lines starting with '.', across chunk edges.
#[derive(Debug)]
struct DotStuffer {
    at_line_start: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer { at_line_start: true }
    }
}

impl DotStuffer {
    fn stuff(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
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

    #[test]
    fn ehlo_extensions() {
        let reply = Reply {
            code: 250,
            enhanced: None,
            lines: vec!["mx hello".into(), "PIPELINING".into(), "SIZE 1000".into(), "8BITMIME".into()],
        };
        let ext = Extensions::from_ehlo(&reply);
        assert_eq!(ext, Extensions { pipelining: true, eight_bit_mime: true, smtputf8: false, size: true });
    }
}
