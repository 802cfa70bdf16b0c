//! The milter protocol (Sendmail libmilter, protocol version 6, as Postfix speaks it) as bytes:
//! the MTA's commands and the milter's replies as owned values, their packets, and a frame
//! decoder over a byte stream. Pure: no I/O, no async.
//!
//! Every packet is a u32 big-endian length (counting the command byte and the data), one
//! command byte and the data. A "C string" is its bytes then NUL.
//!
//! Decoding is strict: a C string must end with NUL, a fixed-size field must be whole and no
//! byte may follow the last field. Two leniencies, because real milters need them: the
//! arguments of a CHGFROM reply may be absent, and a reply whose last field is a C string may
//! carry one NUL too many after it (libmilter-based milters have been seen to send it).

use std::fmt;
use std::ops::{BitAnd, BitOr};

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// The protocol version spoken (libmilter's `SMFI_PROT_VERSION`).
pub const VERSION: u32 = 6;

/// The most body bytes in one BODY packet (libmilter's `MILTER_CHUNK_SIZE`).
pub const MAX_BODY_CHUNK: usize = 65535;

/// A newtype over a u32 bit mask with named bits, `contains`, `|`, `&` and `names` for logs.
macro_rules! flags {
    ($(#[$outer:meta])* $name:ident { $($flag:ident = $value:expr => $libmilter:literal,)* }) => {
        $(#[$outer])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(pub u32);

        impl $name {
            $(#[doc = concat!("libmilter's `", $libmilter, "`.")] pub const $flag: $name = $name($value);)*

            const NAMED: &'static [(&'static str, u32)] = &[$((stringify!($flag), $value),)*];

            /// True when every bit of `other` is set in `self`.
            pub fn contains(self, other: $name) -> bool {
                self.0 & other.0 == other.0
            }

            /// The names of the bits set, lowest first, for logs. Bits without a name are left
            /// out (the `Debug` form shows the raw value too).
            pub fn names(self) -> Vec<&'static str> {
                Self::NAMED.iter().filter(|(_, bit)| self.0 & bit != 0).map(|(name, _)| *name).collect()
            }
        }

        impl BitOr for $name {
            type Output = $name;
            fn bitor(self, other: $name) -> $name {
                $name(self.0 | other.0)
            }
        }

        impl BitAnd for $name {
            type Output = $name;
            fn bitand(self, other: $name) -> $name {
                $name(self.0 & other.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:#x} {})", stringify!($name), self.0, self.names().join("|"))
            }
        }
    };
}

flags! {
    /// What a milter may do to a message (libmilter's `SMFIF_*`): the MTA offers a set in its
    /// OPTNEG, the milter answers with the subset it wants.
    Actions {
        ADD_HEADERS = 0x1 => "SMFIF_ADDHDRS",
        CHANGE_BODY = 0x2 => "SMFIF_CHGBODY",
        ADD_RCPT = 0x4 => "SMFIF_ADDRCPT",
        DELETE_RCPT = 0x8 => "SMFIF_DELRCPT",
        CHANGE_HEADERS = 0x10 => "SMFIF_CHGHDRS",
        QUARANTINE = 0x20 => "SMFIF_QUARANTINE",
        CHANGE_FROM = 0x40 => "SMFIF_CHGFROM",
        ADD_RCPT_PAR = 0x80 => "SMFIF_ADDRCPT_PAR",
        SET_SYMLIST = 0x100 => "SMFIF_SETSYMLIST",
    }
}

flags! {
    /// Which events a milter does not want and which it will not answer (libmilter's
    /// `SMFIP_*`): `NO_*` events are not sent, `NR_*` events are sent but get no reply. With
    /// `SKIP` the milter may answer SKIP to BODY, with `RCPT_REJ` rejected recipients are sent
    /// too, with `HEADER_LEADING_SPACE` header values keep their leading space, `MDS_*` allow
    /// bigger packets.
    Protocol {
        NO_CONNECT = 0x1 => "SMFIP_NOCONNECT",
        NO_HELO = 0x2 => "SMFIP_NOHELO",
        NO_MAIL = 0x4 => "SMFIP_NOMAIL",
        NO_RCPT = 0x8 => "SMFIP_NORCPT",
        NO_BODY = 0x10 => "SMFIP_NOBODY",
        NO_HEADERS = 0x20 => "SMFIP_NOHDRS",
        NO_EOH = 0x40 => "SMFIP_NOEOH",
        NR_HEADER = 0x80 => "SMFIP_NR_HDR",
        NO_UNKNOWN = 0x100 => "SMFIP_NOUNKNOWN",
        NO_DATA = 0x200 => "SMFIP_NODATA",
        SKIP = 0x400 => "SMFIP_SKIP",
        RCPT_REJ = 0x800 => "SMFIP_RCPT_REJ",
        NR_CONNECT = 0x1000 => "SMFIP_NR_CONN",
        NR_HELO = 0x2000 => "SMFIP_NR_HELO",
        NR_MAIL = 0x4000 => "SMFIP_NR_MAIL",
        NR_RCPT = 0x8000 => "SMFIP_NR_RCPT",
        NR_DATA = 0x10000 => "SMFIP_NR_DATA",
        NR_UNKNOWN = 0x20000 => "SMFIP_NR_UNKN",
        NR_EOH = 0x40000 => "SMFIP_NR_EOH",
        NR_BODY = 0x80000 => "SMFIP_NR_BODY",
        HEADER_LEADING_SPACE = 0x100000 => "SMFIP_HDR_LEADSPC",
        MDS_256K = 0x10000000 => "SMFIP_MDS_256K",
        MDS_1M = 0x20000000 => "SMFIP_MDS_1M",
    }
}

/// Option negotiation, both ways: the MTA's offer and the milter's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptNeg {
    pub version: u32,
    pub actions: Actions,
    pub protocol: Protocol,
}

/// The address family of a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `U`: no port or address follow.
    Unknown,
    /// `L`: a unix socket; the address is its path.
    Unix,
    /// `4`
    Inet4,
    /// `6`
    Inet6,
}

impl Family {
    /// The byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            Family::Unknown => b'U',
            Family::Unix => b'L',
            Family::Inet4 => b'4',
            Family::Inet6 => b'6',
        }
    }

    /// The family of a wire byte, if it names one.
    pub fn from_code(code: u8) -> Option<Family> {
        [Family::Unknown, Family::Unix, Family::Inet4, Family::Inet6].into_iter().find(|f| f.code() == code)
    }
}

/// A command from the MTA to the milter.
///
/// Encoding cannot express a NUL inside a C string field: it is written as a space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `O`: the MTA's offer.
    OptNeg(OptNeg),
    /// `D`: macros for the command `for_command` (`C`, `H`, `M`, `R`, `T`, `L`, `N`, `E`, `B`),
    /// sent just before it. Decoding accepts any byte there.
    Macros { for_command: u8, macros: Vec<(Vec<u8>, Vec<u8>)> },
    /// `C`: the client. With `Family::Unknown` the port and address are not sent (encoding
    /// ignores them, decoding gives 0 and empty).
    Connect { hostname: Vec<u8>, family: Family, port: u16, address: Vec<u8> },
    /// `H`: the HELO/EHLO argument.
    Helo(Vec<u8>),
    /// `M`: `<sender>`, then one string per ESMTP argument. Decoding needs the sender.
    Mail(Vec<Vec<u8>>),
    /// `R`: `<recipient>`, then one string per ESMTP argument. Decoding needs the recipient.
    Rcpt(Vec<Vec<u8>>),
    /// `T`: DATA.
    Data,
    /// `L`: one header field.
    Header { name: Vec<u8>, value: Vec<u8> },
    /// `N`: end of headers.
    EndOfHeaders,
    /// `B`: a piece of the body, at most `MAX_BODY_CHUNK` bytes (the caller splits; a longer
    /// one is a bug, caught by a debug assertion and written anyway).
    Body(Bytes),
    /// `E`: end of the body; the milter's modifications and verdict follow.
    EndOfBody,
    /// `A`: forget the current message.
    Abort,
    /// `Q`: close the connection.
    Quit,
    /// `K`: quit this connection's session; a new one follows on the same socket.
    QuitNewConnection,
    /// `U`: an SMTP command the MTA did not know.
    Unknown(Vec<u8>),
}

/// A reply from the milter to the MTA.
///
/// Encoding cannot express a NUL inside a C string field: it is written as a space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `O`: what the milter wants.
    OptNeg(OptNeg),
    /// `a`: accept the message (or connection) without further milter calls.
    Accept,
    /// `c`: go on.
    Continue,
    /// `d`: accept and drop the message.
    Discard,
    /// `r`: reject (5xx).
    Reject,
    /// `t`: fail temporarily (4xx).
    Tempfail,
    /// `s`: send no more BODY packets.
    Skip,
    /// `p`: still working; restarts the MTA's timeout.
    Progress,
    /// `f`: fail the connection.
    ConnectionFailed,
    /// `4`: 421, the milter is shutting down.
    Shutdown,
    /// `y`: reject or fail with this SMTP reply text (may be several CRLF-separated lines).
    ReplyCode(Vec<u8>),
    /// `h`: append a header field.
    AddHeader { name: Vec<u8>, value: Vec<u8> },
    /// `i`: insert a header field at `index` (0 = first).
    InsertHeader { index: u32, name: Vec<u8>, value: Vec<u8> },
    /// `m`: change the `index`th (1-based) field called `name`; an empty value deletes it.
    ChangeHeader { index: u32, name: Vec<u8>, value: Vec<u8> },
    /// `+`: add a recipient.
    AddRcpt(Vec<u8>),
    /// `2`: add a recipient with ESMTP arguments.
    AddRcptWithArgs { rcpt: Vec<u8>, args: Vec<u8> },
    /// `-`: delete a recipient.
    DeleteRcpt(Vec<u8>),
    /// `e`: change the envelope sender, with optional ESMTP arguments.
    ChangeFrom { from: Vec<u8>, args: Option<Vec<u8>> },
    /// `b`: a piece of the new body; several may follow each other.
    ReplaceBody(Bytes),
    /// `q`: quarantine the message, for this reason.
    Quarantine(Vec<u8>),
    /// `l`: the space-separated macro names wanted at `stage`.
    SetSymbolList { stage: u32, macros: Vec<u8> },
}

/// Why bytes are not a milter packet.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("milter packet of length 0 (no command byte)")]
    Empty,
    #[error("milter packet of {length} bytes, over the limit of {max}")]
    TooLong { length: usize, max: usize },
    #[error("unknown milter packet code '{}'", .0.escape_ascii())]
    UnknownCode(u8),
    #[error("milter {packet} packet cut short")]
    Truncated { packet: &'static str },
    #[error("milter {packet} packet: a string without its terminating NUL")]
    MissingNul { packet: &'static str },
    #[error("milter {packet} packet: bytes after its last field")]
    TrailingBytes { packet: &'static str },
    #[error("milter connect packet: unknown address family '{}'", .0.escape_ascii())]
    BadFamily(u8),
}

impl Command {
    /// The command byte.
    pub fn code(&self) -> u8 {
        match self {
            Command::OptNeg(_) => b'O',
            Command::Macros { .. } => b'D',
            Command::Connect { .. } => b'C',
            Command::Helo(_) => b'H',
            Command::Mail(_) => b'M',
            Command::Rcpt(_) => b'R',
            Command::Data => b'T',
            Command::Header { .. } => b'L',
            Command::EndOfHeaders => b'N',
            Command::Body(_) => b'B',
            Command::EndOfBody => b'E',
            Command::Abort => b'A',
            Command::Quit => b'Q',
            Command::QuitNewConnection => b'K',
            Command::Unknown(_) => b'U',
        }
    }

    /// Appends the whole packet (length, command byte, data) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        packet(out, self.code(), |out| match self {
            Command::OptNeg(optneg) => put_optneg(out, optneg),
            Command::Macros { for_command, macros } => {
                out.push(*for_command);
                macros.iter().for_each(|(name, value)| put_cstrs(out, &[name, value]));
            }
            Command::Connect { hostname, family, port, address } => {
                put_cstr(out, hostname);
                out.push(family.code());
                if *family != Family::Unknown {
                    out.extend_from_slice(&port.to_be_bytes());
                    put_cstr(out, address);
                }
            }
            Command::Helo(text) | Command::Unknown(text) => put_cstr(out, text),
            Command::Mail(args) | Command::Rcpt(args) => args.iter().for_each(|arg| put_cstr(out, arg)),
            Command::Header { name, value } => put_cstrs(out, &[name, value]),
            Command::Body(body) => {
                debug_assert!(body.len() <= MAX_BODY_CHUNK, "a BODY of {} bytes: split it", body.len());
                out.extend_from_slice(body);
            }
            Command::Data
            | Command::EndOfHeaders
            | Command::EndOfBody
            | Command::Abort
            | Command::Quit
            | Command::QuitNewConnection => {}
        });
    }
}

impl Reply {
    /// The reply byte.
    pub fn code(&self) -> u8 {
        match self {
            Reply::OptNeg(_) => b'O',
            Reply::Accept => b'a',
            Reply::Continue => b'c',
            Reply::Discard => b'd',
            Reply::Reject => b'r',
            Reply::Tempfail => b't',
            Reply::Skip => b's',
            Reply::Progress => b'p',
            Reply::ConnectionFailed => b'f',
            Reply::Shutdown => b'4',
            Reply::ReplyCode(_) => b'y',
            Reply::AddHeader { .. } => b'h',
            Reply::InsertHeader { .. } => b'i',
            Reply::ChangeHeader { .. } => b'm',
            Reply::AddRcpt(_) => b'+',
            Reply::AddRcptWithArgs { .. } => b'2',
            Reply::DeleteRcpt(_) => b'-',
            Reply::ChangeFrom { .. } => b'e',
            Reply::ReplaceBody(_) => b'b',
            Reply::Quarantine(_) => b'q',
            Reply::SetSymbolList { .. } => b'l',
        }
    }

    /// libmilter's name of the reply (`SMFIR_` lowercased), for logs and errors.
    pub fn name(&self) -> &'static str {
        reply_name(self.code())
    }

    /// Appends the whole packet (length, reply byte, data) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        packet(out, self.code(), |out| match self {
            Reply::OptNeg(optneg) => put_optneg(out, optneg),
            Reply::ReplyCode(text) | Reply::AddRcpt(text) | Reply::DeleteRcpt(text) | Reply::Quarantine(text) => {
                put_cstr(out, text)
            }
            Reply::AddHeader { name, value } => put_cstrs(out, &[name, value]),
            Reply::InsertHeader { index, name, value } | Reply::ChangeHeader { index, name, value } => {
                out.extend_from_slice(&index.to_be_bytes());
                put_cstrs(out, &[name, value]);
            }
            Reply::AddRcptWithArgs { rcpt, args } => put_cstrs(out, &[rcpt, args]),
            Reply::ChangeFrom { from, args } => {
                put_cstr(out, from);
                if let Some(args) = args {
                    put_cstr(out, args);
                }
            }
            Reply::ReplaceBody(body) => out.extend_from_slice(body),
            Reply::SetSymbolList { stage, macros } => {
                out.extend_from_slice(&stage.to_be_bytes());
                put_cstr(out, macros);
            }
            Reply::Accept
            | Reply::Continue
            | Reply::Discard
            | Reply::Reject
            | Reply::Tempfail
            | Reply::Skip
            | Reply::Progress
            | Reply::ConnectionFailed
            | Reply::Shutdown => {}
        });
    }
}

/// Decodes the data of a command packet (without length and command byte). Strict: no
/// leniency, since the MTA side is ours.
pub fn decode_command(code: u8, data: &[u8]) -> Result<Command, DecodeError> {
    let mut f = Fields { rest: data, packet: command_name(code) };
    let command = match code {
        b'O' => Command::OptNeg(f.optneg()?),
        b'D' => {
            let for_command = f.byte()?;
            let mut macros = Vec::new();
            while !f.rest.is_empty() {
                macros.push((f.cstr()?, f.cstr()?));
            }
            Command::Macros { for_command, macros }
        }
        b'C' => {
            let hostname = f.cstr()?;
            let code = f.byte()?;
            let family = Family::from_code(code).ok_or(DecodeError::BadFamily(code))?;
            let (port, address) = match family {
                Family::Unknown => (0, Vec::new()),
                _ => (f.u16()?, f.cstr()?),
            };
            Command::Connect { hostname, family, port, address }
        }
        b'H' => Command::Helo(f.cstr()?),
        b'M' => Command::Mail(f.cstrs()?),
        b'R' => Command::Rcpt(f.cstrs()?),
        b'T' => Command::Data,
        b'L' => Command::Header { name: f.cstr()?, value: f.cstr()? },
        b'N' => Command::EndOfHeaders,
        b'B' => Command::Body(Bytes::copy_from_slice(f.take_rest())),
        b'E' => Command::EndOfBody,
        b'A' => Command::Abort,
        b'Q' => Command::Quit,
        b'K' => Command::QuitNewConnection,
        b'U' => Command::Unknown(f.cstr()?),
        _ => return Err(DecodeError::UnknownCode(code)),
    };
    f.end(false)?;
    Ok(command)
}

/// Decodes the data of a reply packet (without length and reply byte): strict, but the
/// arguments of CHGFROM may be absent, and one NUL too many may follow a last C string.
pub fn decode_reply(code: u8, data: &[u8]) -> Result<Reply, DecodeError> {
    let mut f = Fields { rest: data, packet: reply_name(code) };
    let reply = match code {
        b'O' => Reply::OptNeg(f.optneg()?),
        b'a' => Reply::Accept,
        b'c' => Reply::Continue,
        b'd' => Reply::Discard,
        b'r' => Reply::Reject,
        b't' => Reply::Tempfail,
        b's' => Reply::Skip,
        b'p' => Reply::Progress,
        b'f' => Reply::ConnectionFailed,
        b'4' => Reply::Shutdown,
        b'y' => Reply::ReplyCode(f.cstr()?),
        b'h' => Reply::AddHeader { name: f.cstr()?, value: f.cstr()? },
        b'i' => Reply::InsertHeader { index: f.u32()?, name: f.cstr()?, value: f.cstr()? },
        b'm' => Reply::ChangeHeader { index: f.u32()?, name: f.cstr()?, value: f.cstr()? },
        b'+' => Reply::AddRcpt(f.cstr()?),
        b'2' => Reply::AddRcptWithArgs { rcpt: f.cstr()?, args: f.cstr()? },
        b'-' => Reply::DeleteRcpt(f.cstr()?),
        // "from\0\0" is empty arguments (what encoding `Some("")` writes), not a spare NUL.
        b'e' => Reply::ChangeFrom { from: f.cstr()?, args: if f.rest.is_empty() { None } else { Some(f.cstr()?) } },
        b'b' => Reply::ReplaceBody(Bytes::copy_from_slice(f.take_rest())),
        b'q' => Reply::Quarantine(f.cstr()?),
        b'l' => Reply::SetSymbolList { stage: f.u32()?, macros: f.cstr()? },
        _ => return Err(DecodeError::UnknownCode(code)),
    };
    f.end(matches!(code, b'y' | b'h' | b'i' | b'm' | b'+' | b'2' | b'-' | b'e' | b'q' | b'l'))?;
    Ok(reply)
}

/// Cuts a byte stream into packets. Bytes are pushed as they arrive; a frame comes out once it
/// is whole. A bad length (0, or over `max_packet`) is refused as soon as its 4 bytes are in,
/// before the rest is waited for, and is not consumed: the stream cannot be resynchronised, so
/// every later call refuses it again (drop the connection). A frame whose data does not decode
/// is consumed, and reading can go on with the next one.
#[derive(Debug)]
pub struct PacketReader {
    buffer: BytesMut,
    max_packet: usize,
}

impl PacketReader {
    /// A reader refusing packets whose length (command byte and data) is over `max_packet`.
    pub fn new(max_packet: usize) -> PacketReader {
        PacketReader { buffer: BytesMut::new(), max_packet }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame as command byte and data; `None` until enough bytes are in.
    pub fn next_frame(&mut self) -> Result<Option<(u8, Bytes)>, DecodeError> {
        let &[a, b, c, d, ..] = &self.buffer[..] else { return Ok(None) };
        let length = usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
        if length == 0 {
            return Err(DecodeError::Empty);
        }
        if length > self.max_packet {
            return Err(DecodeError::TooLong { length, max: self.max_packet });
        }
        if self.buffer.len() - 4 < length {
            return Ok(None);
        }
        self.buffer.advance(4);
        let mut frame = self.buffer.split_to(length);
        let code = frame[0];
        frame.advance(1);
        Ok(Some((code, frame.freeze())))
    }

    /// The next whole frame decoded as a milter's reply (a REPLBODY shares the read buffer).
    pub fn next_reply(&mut self) -> Result<Option<Reply>, DecodeError> {
        match self.next_frame()? {
            None => Ok(None),
            Some((b'b', body)) => Ok(Some(Reply::ReplaceBody(body))),
            Some((code, data)) => decode_reply(code, &data).map(Some),
        }
    }

    /// The next whole frame decoded as an MTA's command (a BODY shares the read buffer).
    pub fn next_command(&mut self) -> Result<Option<Command>, DecodeError> {
        match self.next_frame()? {
            None => Ok(None),
            Some((b'B', body)) => Ok(Some(Command::Body(body))),
            Some((code, data)) => decode_command(code, &data).map(Some),
        }
    }

    /// Bytes pushed and not yet returned in a frame.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }
}

/// The reply codes and libmilter's names of them (`SMFIR_*` lowercased), in the same order.
const REPLY_CODES: &[u8; 21] = b"Oacdrtspf4yhim+2-ebql";
#[rustfmt::skip]
const REPLY_NAMES: [&str; 21] = [
    "optneg", "accept", "continue", "discard", "reject", "tempfail", "skip", "progress", "conn_fail",
    "shutdown", "replycode", "addheader", "insheader", "chgheader", "addrcpt", "addrcpt_par", "delrcpt",
    "chgfrom", "replbody", "quarantine", "setsymlist",
];

/// The command codes and libmilter's names of them (`SMFIC_*` lowercased), in the same order.
const COMMAND_CODES: &[u8; 15] = b"ODCHMRTLNBEAQKU";
const COMMAND_NAMES: [&str; 15] = [
    "optneg", "macro", "connect", "helo", "mail", "rcpt", "data", "header", "eoh", "body", "bodyeob", "abort", "quit",
    "quit_nc", "unknown",
];

fn reply_name(code: u8) -> &'static str {
    REPLY_CODES.iter().position(|&c| c == code).map_or("unknown", |i| REPLY_NAMES[i])
}

fn command_name(code: u8) -> &'static str {
    COMMAND_CODES.iter().position(|&c| c == code).map_or("unknown command", |i| COMMAND_NAMES[i])
}

/// Appends a packet: a length placeholder, the code, what `data` writes, then the length.
fn packet(out: &mut Vec<u8>, code: u8, data: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(code);
    data(out);
    let length = out.len() - start - 4;
    debug_assert!(u32::try_from(length).is_ok(), "a milter packet of {length} bytes");
    out[start..start + 4].copy_from_slice(&(length as u32).to_be_bytes());
}

/// A C string: the bytes, any NUL among them as a space (it cannot be expressed), then NUL.
fn put_cstr(out: &mut Vec<u8>, text: &[u8]) {
    out.extend(text.iter().map(|&b| if b == 0 { b' ' } else { b }));
    out.push(0);
}

fn put_cstrs(out: &mut Vec<u8>, texts: &[&[u8]]) {
    texts.iter().for_each(|text| put_cstr(out, text));
}

fn put_optneg(out: &mut Vec<u8>, optneg: &OptNeg) {
    for value in [optneg.version, optneg.actions.0, optneg.protocol.0] {
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// The fields of one packet's data, taken front to back.
struct Fields<'a> {
    rest: &'a [u8],
    packet: &'static str,
}

impl<'a> Fields<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let Some((head, rest)) = self.rest.split_first_chunk::<N>() else {
            return Err(DecodeError::Truncated { packet: self.packet });
        };
        self.rest = rest;
        Ok(*head)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        self.take::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.take().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.take().map(u32::from_be_bytes)
    }

    fn optneg(&mut self) -> Result<OptNeg, DecodeError> {
        Ok(OptNeg { version: self.u32()?, actions: Actions(self.u32()?), protocol: Protocol(self.u32()?) })
    }

    /// A C string: `Truncated` when nothing is left, `MissingNul` when no NUL ends it.
    fn cstr(&mut self) -> Result<Vec<u8>, DecodeError> {
        if self.rest.is_empty() {
            return Err(DecodeError::Truncated { packet: self.packet });
        }
        let end = memchr::memchr(0, self.rest).ok_or(DecodeError::MissingNul { packet: self.packet })?;
        let text = self.rest[..end].to_vec();
        self.rest = &self.rest[end + 1..];
        Ok(text)
    }

    /// One or more C strings up to the end of the data.
    fn cstrs(&mut self) -> Result<Vec<Vec<u8>>, DecodeError> {
        let mut strings = vec![self.cstr()?];
        while !self.rest.is_empty() {
            strings.push(self.cstr()?);
        }
        Ok(strings)
    }

    fn take_rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    /// Nothing may be left, but with `spare_nul` one NUL after the last C string may.
    fn end(self, spare_nul: bool) -> Result<(), DecodeError> {
        match self.rest {
            [] => Ok(()),
            [0] if spare_nul => Ok(()),
            _ => Err(DecodeError::TrailingBytes { packet: self.packet }),
        }
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
