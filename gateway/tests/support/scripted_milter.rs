//! `ScriptedMilter`: an in-process milter on 127.0.0.1:0 that behaves the way a test chooses
//! (answers normally with scripted replies and modifications, never answers, goes silent after
//! OPTNEG, closes mid-body, answers garbage or an unknown reply, falls behind on body chunks,
//! stops reading until released). It records what the MTA sent — OPTNEG offer, macros, commands,
//! headers, body chunks, complete bodies — and lets a test wait for those instead of sleeping.
//! The packet framing is written here by hand, independent of Sluice's own codec on purpose.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::WAIT;

/// Packets longer than this are refused as unframeable (an MTA's body chunks are <= 65535).
const MAX_PACKET: usize = 1 << 20;

/// One raw packet: u32 big-endian length (code + data), the code, the data.
pub fn packet(code: u8, data: &[u8]) -> Vec<u8> {
    let mut out = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(code);
    out.extend_from_slice(data);
    out
}

/// C strings: each part followed by a NUL.
pub fn cstr(parts: &[&[u8]]) -> Vec<u8> {
    parts.iter().flat_map(|part| part.iter().copied().chain([0])).collect()
}

/// A 'y' REPLYCODE packet, e.g. `replycode("550 5.7.1 go away")`.
pub fn replycode(text: &str) -> Vec<u8> {
    packet(b'y', &cstr(&[text.as_bytes()]))
}

/// How a `Normal` (and `SlowBody`, `HoldBody`) milter answers.
#[derive(Debug, Clone)]
pub struct Options {
    /// Actions asked for in the OPTNEG answer; sent as `actions & offered` unless `exceed_offer`.
    pub actions: u32,
    /// Protocol bits asked for in the OPTNEG answer, sent as given. Its NR_* ("no reply") bits
    /// are honoured: those commands then get no reply.
    pub protocol: u32,
    /// Raw packets sent at end of body ('E'), before the final reply (several may be concatenated).
    pub at_eom: Vec<Vec<u8>>,
    /// Raw packet(s) answering 'E' after `at_eom`; default 'c'.
    pub final_reply: Vec<u8>,
    /// For command code X answer these raw bytes instead of the default (first match wins). It
    /// overrides everything: the OPTNEG answer, the final reply at 'E' (`at_eom` still goes
    /// first), and is sent even for commands that normally get none ('D', 'A', 'K', 'Q', NR_*).
    pub reply_to: Vec<(u8, Vec<u8>)>,
    /// Send `actions` as given even beyond what the MTA offered (default false).
    pub exceed_offer: bool,
    /// Before answering command code X: this many progress packets, each after this pause (a
    /// milter that takes long but says it is working).
    pub progress: Option<(u8, usize, Duration)>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            actions: 0x1ff,
            protocol: 0,
            at_eom: Vec::new(),
            final_reply: packet(b'c', &[]),
            reply_to: Vec::new(),
            exceed_offer: false,
            progress: None,
        }
    }
}

/// How the milter behaves; the variants without `Options` use `Options::default()`.
#[derive(Debug, Clone)]
pub enum Behaviour {
    Normal(Options),
    /// Nothing listens: `address()` is that of a port bound, then closed.
    Down,
    /// Accepts and reads everything, answers nothing (not even OPTNEG).
    NeverAnswer,
    /// Answers OPTNEG, then reads on and never answers again.
    SilentAfterOptneg,
    /// Answers normally until the first 'B' arrives, then closes the connection.
    CloseMidBody,
    /// Answers OPTNEG, then answers the first command that expects a reply with bytes that are
    /// no valid packet (length 0xFFFFFFFF, then junk); reads on, answers nothing more.
    Garbage,
    /// Like `Garbage` but with a well-framed packet of unknown code 'Z'.
    UnknownReply,
    /// Sleeps `delay` before answering each 'B'.
    SlowBody {
        delay: Duration,
        options: Options,
    },
    /// Answers normally, but at a connection's first 'B' stops reading and answering until
    /// `release()` (or drop, or `WAIT`); the receive buffer is 4 KiB so the MTA's writes block.
    /// Once released, no connection holds again.
    HoldBody(Options),
}

/// What the milter has seen so far (all connections together).
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Connections accepted, and connections ended.
    pub connections: usize,
    pub closed: usize,
    /// The MTA's OPTNEG offer (version, actions, protocol), the last one.
    pub optneg: Option<(u32, u32, u32)>,
    /// Every packet's code in arrival order, with its connection number (1-based).
    pub commands: Vec<(usize, u8)>,
    /// 'D' packets: the command they are for, and the name/value pairs.
    pub macros: Vec<(u8, Vec<(String, String)>)>,
    /// 'C' packets: hostname, family byte, port (0 for 'U'), address ("" for 'U').
    pub connects: Vec<(String, u8, u16, String)>,
    pub helos: Vec<String>,
    /// 'M' and 'R' packets: the sender/recipient, then its ESMTP arguments.
    pub mails: Vec<Vec<String>>,
    pub rcpts: Vec<Vec<String>>,
    /// 'L' packets: name and raw value as received.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The data size of each 'B' packet.
    pub body_chunks: Vec<usize>,
    /// The body of each message, concatenated 'B' data, pushed at 'E'.
    pub bodies: Vec<Vec<u8>>,
    pub aborts: usize,
    /// 'Q' and 'K' packets.
    pub quits: usize,
    /// 'E' packets.
    pub messages_ended: usize,
    /// Packets it could not frame or parse (length 0 or over 1 MiB, unknown code, malformed
    /// data); the connection is closed at the first.
    pub bad_packets: usize,
    /// Packets cut short by the end of the connection (not counted as bad).
    pub cut_packets: usize,
    /// Connections that reached their first 'B' under `HoldBody` (and held, unless released).
    pub held: usize,
}

#[derive(Default)]
struct State {
    seen: Seen,
    released: bool,
    stopping: bool,
    /// The open connections by number, shut down on drop to end their threads.
    open: Vec<(usize, TcpStream)>,
    threads: Vec<JoinHandle<()>>,
}

type Shared = super::peer_state::Shared<State>;

impl Shared {
    fn record(&self, change: impl FnOnce(&mut Seen)) {
        self.change(|state| change(&mut state.seen));
    }

    /// Waits until `done` holds or `timeout` passes; false if the milter is stopping.
    fn wait_or_stop(&self, timeout: Duration, done: impl Fn(&State) -> bool) -> bool {
        !self.wait_until(timeout, |state| state.stopping || done(state)).stopping
    }
}

/// A running scripted milter; dropping it stops the listener and every connection thread.
pub struct ScriptedMilter {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl ScriptedMilter {
    pub fn start(behaviour: Behaviour) -> ScriptedMilter {
        let shared = Arc::new(Shared::default());
        if let Behaviour::Down = behaviour {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            return ScriptedMilter { port, shared, accept: None };
        }
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Behaviour::HoldBody(_) = behaviour {
            // Inherited by accepted sockets; a fixed size also turns receive autotuning off.
            socket.set_recv_buffer_size(4096).unwrap();
        }
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&any.into()).unwrap();
        socket.listen(128).unwrap();
        let listener: TcpListener = socket.into();
        let port = listener.local_addr().unwrap().port();
        let accepting = shared.clone();
        let accept = std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else {
                    std::thread::sleep(Duration::from_millis(10)); // e.g. out of fds: no busy loop
                    continue;
                };
                let mut state = accepting.lock();
                if state.stopping {
                    return;
                }
                state.seen.connections += 1;
                let number = state.seen.connections;
                if let Ok(clone) = stream.try_clone() {
                    state.open.push((number, clone));
                }
                let (shared, behaviour) = (accepting.clone(), behaviour.clone());
                let thread = std::thread::spawn(move || {
                    let _ = serve(stream, number, &behaviour, &shared);
                    // Dropping the clone too is what closes the socket.
                    shared.lock().open.retain(|(n, _)| *n != number);
                    shared.record(|seen| seen.closed += 1);
                });
                state.threads.push(thread);
                drop(state);
                accepting.notify();
            }
        });
        ScriptedMilter { port, shared, accept: Some(accept) }
    }

    /// Sluice's (and Postfix's) address syntax: "inet:127.0.0.1:PORT".
    pub fn address(&self) -> String {
        format!("inet:127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn seen(&self) -> Seen {
        self.shared.lock().seen.clone()
    }

    /// Waits (up to `WAIT`) until `condition` holds for what was seen; returns that.
    pub fn wait_for(&self, what: &str, condition: impl Fn(&Seen) -> bool) -> Seen {
        let shown = |state: &State| format!("the scripted milter: {}", summary(&state.seen));
        self.shared.wait_for(what, |state| condition(&state.seen), shown).seen.clone()
    }

    /// Lets held connections (`HoldBody`) read and answer again.
    pub fn release(&self) {
        self.shared.change(|state| state.released = true);
    }

    /// Closes every open connection, as a milter timing out idle clients does.
    pub fn hang_up(&self) {
        for (_, stream) in &self.shared.lock().open {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for ScriptedMilter {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.stopping = true;
            for (_, stream) in &state.open {
                let _ = stream.shutdown(Shutdown::Both); // ends blocked reads and writes
            }
        }
        self.shared.notify();
        if let Some(accept) = self.accept.take() {
            // Wakes the accept loop so it sees `stopping`; without that it could not be joined.
            if TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), WAIT).is_ok() {
                let _ = accept.join();
            }
        }
        let threads = std::mem::take(&mut self.shared.lock().threads);
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// `Seen` for a failure message, with bodies shown by size only.
fn summary(seen: &Seen) -> String {
    let mut shown = seen.clone();
    let sizes: Vec<usize> = shown.bodies.drain(..).map(|b| b.len()).collect();
    format!("{shown:?} (bodies of {sizes:?} bytes)")
}

/// One packet (code, data); None at EOF between packets. Errors: UnexpectedEof inside a packet,
/// InvalidData for a length of 0 or over MAX_PACKET.
fn read_frame(input: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut length = [0u8; 4];
    if input.read(&mut length[..1])? == 0 {
        return Ok(None);
    }
    input.read_exact(&mut length[1..])?;
    let length = u32::from_be_bytes(length) as usize;
    if length == 0 || length > MAX_PACKET {
        return Err(io::ErrorKind::InvalidData.into());
    }
    let mut packet = vec![0u8; length];
    input.read_exact(&mut packet)?;
    let data = packet.split_off(1);
    Ok(Some((packet[0], data)))
}

/// The commands with no reply by default, and those the negotiated NR_* bits silence.
fn expects_reply(code: u8, protocol: u32) -> bool {
    let no_reply_bit = match code {
        b'D' | b'A' | b'K' | b'Q' => return false,
        b'L' => 0x80,
        b'C' => 0x1000,
        b'H' => 0x2000,
        b'M' => 0x4000,
        b'R' => 0x8000,
        b'T' => 0x10000,
        b'U' => 0x20000,
        b'N' => 0x40000,
        b'B' => 0x80000,
        _ => 0,
    };
    protocol & no_reply_bit == 0
}

/// One connection: packets until 'Q', EOF, a bad packet or the behaviour's end.
fn serve(stream: TcpStream, number: usize, behaviour: &Behaviour, shared: &Shared) -> io::Result<()> {
    let defaults = Options::default();
    let options = match behaviour {
        Behaviour::Normal(options) | Behaviour::HoldBody(options) => options,
        Behaviour::SlowBody { options, .. } => options,
        _ => &defaults,
    };
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    let mut body = Vec::new();
    let mut offered_actions = 0;
    let (mut misbehaved, mut held) = (false, false);
    loop {
        let (code, data) = match read_frame(&mut input) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(e) => {
                shared.record(|seen| match e.kind() {
                    io::ErrorKind::UnexpectedEof => seen.cut_packets += 1,
                    io::ErrorKind::InvalidData => seen.bad_packets += 1,
                    _ => {}
                });
                return Ok(());
            }
        };
        if note(number, code, &data, &mut body, shared).is_none() {
            shared.record(|seen| seen.bad_packets += 1);
            return Ok(());
        }
        if code == b'O' {
            offered_actions = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
        }
        match behaviour {
            Behaviour::NeverAnswer if code != b'Q' => continue,
            Behaviour::SilentAfterOptneg if code != b'O' && code != b'Q' => continue,
            Behaviour::CloseMidBody if code == b'B' => return out.shutdown(Shutdown::Both),
            Behaviour::Garbage | Behaviour::UnknownReply if misbehaved => continue,
            Behaviour::Garbage | Behaviour::UnknownReply if code != b'O' && expects_reply(code, options.protocol) => {
                misbehaved = true;
                let bytes = match behaviour {
                    Behaviour::Garbage => b"\xff\xff\xff\xffjunk that is no milter packet".to_vec(),
                    _ => packet(b'Z', &[]),
                };
                out.write_all(&bytes)?;
                continue;
            }
            Behaviour::HoldBody(_) if code == b'B' && !held => {
                held = true;
                shared.record(|seen| seen.held += 1);
                if !shared.wait_or_stop(WAIT, |state| state.released) {
                    return Ok(());
                }
            }
            Behaviour::SlowBody { delay, .. } if code == b'B' && !shared.wait_or_stop(*delay, |_| false) => {
                return Ok(());
            }
            _ => {}
        }
        answer(code, offered_actions, options, &mut out)?;
        if code == b'Q' {
            return Ok(());
        }
    }
}

/// Writes the reply (if any) to one command under `options`.
fn answer(code: u8, offered_actions: u32, options: &Options, out: &mut impl Write) -> io::Result<()> {
    if let Some((_, count, pause)) = options.progress.filter(|(at, _, _)| *at == code) {
        for _ in 0..count {
            std::thread::sleep(pause);
            out.write_all(&packet(b'p', &[]))?;
            out.flush()?;
        }
    }
    let scripted = options.reply_to.iter().find(|(c, _)| *c == code).map(|(_, bytes)| bytes);
    match (code, scripted) {
        (b'E', scripted) => {
            for modification in &options.at_eom {
                out.write_all(modification)?;
            }
            out.write_all(scripted.unwrap_or(&options.final_reply))
        }
        (_, Some(bytes)) => out.write_all(bytes),
        (b'O', None) => {
            let actions = if options.exceed_offer { options.actions } else { options.actions & offered_actions };
            let mut data = 6u32.to_be_bytes().to_vec();
            data.extend_from_slice(&actions.to_be_bytes());
            data.extend_from_slice(&options.protocol.to_be_bytes());
            out.write_all(&packet(b'O', &data))
        }
        _ if expects_reply(code, options.protocol) => out.write_all(&packet(b'c', &[])),
        _ => Ok(()),
    }
}

/// The C strings of `data` (which must end with a NUL unless empty).
fn cstrings(data: &[u8]) -> Option<Vec<&[u8]>> {
    match data.split_last() {
        None => Some(Vec::new()),
        Some((0, strings)) => Some(strings.split(|&b| b == 0).collect()),
        Some(_) => None,
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Records one command in `seen`; None if its data is malformed or its code unknown.
fn note(number: usize, code: u8, data: &[u8], body: &mut Vec<u8>, shared: &Shared) -> Option<()> {
    let valid = |condition: bool| condition.then_some(());
    let mut state = shared.lock();
    let seen = &mut state.seen;
    seen.commands.push((number, code));
    match code {
        b'O' => {
            valid(data.len() >= 12)?;
            let word = |i: usize| u32::from_be_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
            seen.optneg = Some((word(0), word(4), word(8)));
        }
        b'D' => {
            let (&for_command, rest) = data.split_first()?;
            let strings = cstrings(rest)?;
            valid(strings.len() % 2 == 0)?;
            let pairs = strings.chunks(2).map(|pair| (text(pair[0]), text(pair[1]))).collect();
            seen.macros.push((for_command, pairs));
        }
        b'C' => {
            let nul = data.iter().position(|&b| b == 0)?;
            let (&family, rest) = data[nul + 1..].split_first()?;
            let (port, address) = match (family, rest) {
                (b'U', []) => (0, String::new()),
                (b'U', _) | (_, [] | [_]) => return None,
                (_, [high, low, address @ ..]) => match cstrings(address)?.as_slice() {
                    [address] => (u16::from_be_bytes([*high, *low]), text(address)),
                    _ => return None,
                },
            };
            seen.connects.push((text(&data[..nul]), family, port, address));
        }
        b'H' | b'U' => match cstrings(data)?.as_slice() {
            [helo] if code == b'H' => seen.helos.push(text(helo)),
            [_] => {}
            _ => return None,
        },
        b'M' | b'R' => {
            let strings: Vec<String> = cstrings(data)?.into_iter().map(text).collect();
            valid(!strings.is_empty())?;
            if code == b'M' {
                seen.mails.push(strings)
            } else {
                seen.rcpts.push(strings)
            }
        }
        b'L' => match cstrings(data)?.as_slice() {
            [name, value] => seen.headers.push((text(name), value.to_vec())),
            _ => return None,
        },
        b'B' => {
            seen.body_chunks.push(data.len());
            body.extend_from_slice(data);
        }
        b'E' => {
            body.extend_from_slice(data); // libmilter allows a last body piece here
            seen.messages_ended += 1;
            seen.bodies.push(std::mem::take(body));
        }
        b'A' if data.is_empty() => {
            seen.aborts += 1;
            body.clear();
        }
        b'Q' | b'K' if data.is_empty() => seen.quits += 1,
        b'T' | b'N' if data.is_empty() => {}
        _ => return None,
    }
    drop(state);
    shared.notify();
    Some(())
}
