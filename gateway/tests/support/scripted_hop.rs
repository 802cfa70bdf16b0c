//! `ScriptedHop`: an in-process next hop on 127.0.0.1:0 that misbehaves the way a test chooses
//! (answers DATA with something other than 354, stops reading after 354, answers the final dot
//! late, hangs up idle connections). It records what it received — connections, QUITs, RSETs,
//! complete messages, data streams cut short — and lets a test wait for those events instead of
//! sleeping.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// How the next hop answers; everything not named here gets a plain 250.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// A well-behaved next hop.
    Normal,
    /// Answers DATA with this reply line (e.g. "250 2.0.0 Ok") instead of 354.
    DataReply(&'static str),
    /// Answers DATA with 354, then reads nothing until [`ScriptedHop::release`] (or its drop).
    /// Its receive buffer is small, so a large message cannot vanish into the kernel.
    StallAfter354,
    /// Answers the final dot only this long after it arrived.
    DelayDot(Duration),
    /// Offers XFORWARD, and answers an XFORWARD line only once the MAIL after it has arrived:
    /// a client that waits for each XFORWARD reply before sending MAIL never gets one.
    XforwardAnsweredAfterMail,
    /// Refuses RCPT for addresses containing this text (550 5.1.1).
    RefuseRecipient(&'static str),
}

/// What the next hop has seen so far.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Connections accepted.
    pub connections: usize,
    /// Connections that ended (EOF, QUIT or hang-up).
    pub closed: usize,
    pub quits: usize,
    /// RSET commands (outside a data stream).
    pub rsets: usize,
    pub data_commands: usize,
    /// Data streams during which the hop is not reading (`StallAfter354`).
    pub stalled: usize,
    /// Content of each complete message (dot-unstuffed), recorded when its final dot arrived.
    pub messages: Vec<Vec<u8>>,
    /// Data streams that ended without the final dot (the connection closed mid-stream).
    pub cut_streams: usize,
    /// The recipients of accepted RCPT commands, in order.
    pub rcpts: Vec<String>,
    /// XFORWARD lines whose MAIL arrived before their reply (`XforwardAnsweredAfterMail`).
    pub pipelined_xforward: usize,
    /// "RSET" arrived inside a data stream: as a line, or glued to the end of a line the
    /// writer cut short.
    pub rset_in_data: bool,
}

#[derive(Default)]
struct State {
    seen: Seen,
    released: bool,
    stopping: bool,
    /// The open connections by number, for `hang_up`.
    open: Vec<(usize, TcpStream)>,
}

type Shared = super::peer_state::Shared<State>;

impl Shared {
    fn record(&self, change: impl FnOnce(&mut Seen)) {
        self.change(|state| change(&mut state.seen));
    }

    fn wait_released(&self) {
        drop(self.wait_until(Duration::MAX, |state| state.released || state.stopping));
    }
}

/// A running scripted next hop; dropping it releases stalled connections and stops accepting.
pub struct ScriptedHop {
    pub port: u16,
    address: SocketAddr,
    shared: Arc<Shared>,
}

impl ScriptedHop {
    pub fn start(behaviour: Behaviour) -> ScriptedHop {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Behaviour::StallAfter354 = behaviour {
            // Inherited by accepted sockets; a fixed size also turns receive autotuning off.
            socket.set_recv_buffer_size(64 * 1024).unwrap();
        }
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&any.into()).unwrap();
        socket.listen(128).unwrap();
        let listener: TcpListener = socket.into();
        let address = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut state = accepting.lock();
                if state.stopping {
                    return;
                }
                state.seen.connections += 1;
                let number = state.seen.connections;
                if let Ok(clone) = stream.try_clone() {
                    state.open.push((number, clone));
                }
                drop(state);
                accepting.notify();
                let (shared, behaviour) = (accepting.clone(), behaviour.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &behaviour, &shared);
                    // Dropping the clone too is what closes the socket.
                    shared.lock().open.retain(|(n, _)| *n != number);
                    shared.record(|seen| seen.closed += 1);
                });
            }
        });
        ScriptedHop { port: address.port(), address, shared }
    }

    pub fn seen(&self) -> Seen {
        self.shared.lock().seen.clone()
    }

    /// Waits (up to `WAIT`) until `condition` holds for what was seen; returns that.
    pub fn wait_for(&self, what: &str, condition: impl Fn(&Seen) -> bool) -> Seen {
        let shown = |state: &State| format!("the scripted next hop: {:?}", state.seen);
        self.shared.wait_for(what, |state| condition(&state.seen), shown).seen.clone()
    }

    /// Lets stalled connections read again.
    pub fn release(&self) {
        self.shared.change(|state| state.released = true);
    }

    /// Closes every open connection like an MTA's idle timeout: 421, then close.
    pub fn hang_up(&self) {
        for (_, mut stream) in self.shared.lock().open.drain(..) {
            let _ = stream.write_all(b"421 4.4.2 hop.test Error: timeout exceeded\r\n");
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for ScriptedHop {
    fn drop(&mut self) {
        self.shared.change(|state| state.stopping = true);
        // Wakes the accept loop so it sees `stopping`.
        let _ = TcpStream::connect(self.address);
    }
}

/// One connection: greeting, then commands until QUIT or EOF.
fn serve(stream: TcpStream, behaviour: &Behaviour, shared: &Shared) -> io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    out.write_all(b"220 hop.test ESMTP scripted\r\n")?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let verb = String::from_utf8_lossy(&line).split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => {
                let xforward = match behaviour {
                    Behaviour::XforwardAnsweredAfterMail => "250-XFORWARD NAME ADDR PROTO HELO\r\n",
                    _ => "",
                };
                out.write_all(
                    format!("250-hop.test\r\n{xforward}250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n")
                        .as_bytes(),
                )?
            }
            "XFORWARD" if matches!(behaviour, Behaviour::XforwardAnsweredAfterMail) => {
                let mut next = Vec::new();
                input.read_until(b'\n', &mut next)?;
                if !next.to_ascii_uppercase().starts_with(b"MAIL FROM:") {
                    return out.write_all(b"503 5.5.1 expected MAIL after XFORWARD\r\n");
                }
                shared.record(|seen| seen.pipelined_xforward += 1);
                out.write_all(b"250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n")?;
            }
            "RCPT" => {
                let text = String::from_utf8_lossy(&line).to_string();
                let to = text.split_once('<').and_then(|(_, rest)| rest.split_once('>')).map_or("", |(to, _)| to);
                match behaviour {
                    Behaviour::RefuseRecipient(refused) if to.contains(refused) => {
                        out.write_all(format!("550 5.1.1 <{to}>: Recipient address rejected\r\n").as_bytes())?
                    }
                    _ => {
                        let to = to.to_string();
                        shared.record(|seen| seen.rcpts.push(to));
                        out.write_all(b"250 2.1.5 Ok\r\n")?
                    }
                }
            }
            "QUIT" => {
                shared.record(|seen| seen.quits += 1);
                return out.write_all(b"221 2.0.0 Bye\r\n");
            }
            "RSET" => {
                shared.record(|seen| seen.rsets += 1);
                out.write_all(b"250 2.0.0 Ok\r\n")?;
            }
            "DATA" => {
                shared.record(|seen| seen.data_commands += 1);
                if let Behaviour::DataReply(reply) = behaviour {
                    out.write_all(format!("{reply}\r\n").as_bytes())?;
                    continue;
                }
                out.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
                if let Behaviour::StallAfter354 = behaviour {
                    shared.record(|seen| seen.stalled += 1);
                    shared.wait_released();
                }
                let Some(content) = read_data(&mut input, shared) else {
                    shared.record(|seen| seen.cut_streams += 1);
                    return Ok(());
                };
                let id = {
                    let mut state = shared.lock();
                    state.seen.messages.push(content);
                    state.seen.messages.len()
                };
                shared.notify();
                if let Behaviour::DelayDot(delay) = behaviour {
                    std::thread::sleep(*delay);
                }
                out.write_all(format!("250 2.0.0 Ok: queued as hop{id}\r\n").as_bytes())?;
            }
            _ => out.write_all(b"250 2.0.0 Ok\r\n")?,
        }
    }
}

/// Reads a data stream up to its final dot, dot-unstuffed; None if it ends first.
fn read_data(input: &mut impl BufRead, shared: &Shared) -> Option<Vec<u8>> {
    let mut content = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        if line == b".\r\n" {
            return Some(content);
        }
        if line.ends_with(b"RSET\r\n") {
            shared.record(|seen| seen.rset_in_data = true);
        }
        let unstuffed = if line.starts_with(b".") { &line[1..] } else { &line[..] };
        content.extend_from_slice(unstuffed);
    }
}
