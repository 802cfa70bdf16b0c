//! The milter stage: a transaction's events as milter commands (with the macros common milters
//! read), the milter's answers as verdicts, and its end-of-message modifications as the chain's
//! header, envelope and body changes. Body chunks go to the milter as they arrive, each waiting
//! for its answer, so a milter that falls behind holds the stage's inbox and the flow controller
//! pauses the client. The connection is kept for the client session (`SessionSlots`): the next
//! transaction starts with SMFIC_ABORT on it instead of a new connection and negotiation, or
//! with a new one if the milter closed the kept one meanwhile.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use tracing::{debug, info, warn};

use super::address::MilterAddress;
use super::codec::{Actions, Command, Family, OptNeg, Protocol, Reply, MAX_BODY_CHUNK, VERSION};
use super::link::{Link, LinkError, LinkState};
use super::modifications::Modifications;
use super::translate::{self, macros, Phase};
use crate::chain::headers::HeaderSection;
use crate::chain::stage::{
    BodyOutput, EnvelopeEvent, Interests, MessageContext, Reaction, SessionSlots, Stage, StageError, StageEvent,
    StageFactory, Verdict,
};
use crate::config::stages::QuarantineAction;

#[derive(Debug, Clone)]
pub struct MilterSettings {
    pub stage: String,
    pub address: MilterAddress,
    /// Bound on each write to the milter and each wait for a packet from it.
    pub timeout: Duration,
    /// Our host name, the `j` macro.
    pub hostname: String,
    /// `[stage.macros]`, sent with the connection's (and overriding built-in ones).
    pub macros: Vec<(String, String)>,
    pub quarantine: QuarantineAction,
    /// Offer SMFIF_CHGBODY, holding the body until the milter's end-of-message answer.
    pub replace_body: bool,
    /// `server.max_message_size`: the most a replaced body may hold.
    pub max_message_size: u64,
}

impl MilterSettings {
    /// What Sluice offers: every modification it can apply (body replacement only if asked
    /// for), every step a milter may skip or leave unanswered, and header values as they are.
    fn offer(&self) -> OptNeg {
        let mut actions = Actions::ADD_HEADERS
            | Actions::CHANGE_HEADERS
            | Actions::ADD_RCPT
            | Actions::ADD_RCPT_PAR
            | Actions::DELETE_RCPT
            | Actions::CHANGE_FROM
            | Actions::QUARANTINE;
        if self.replace_body {
            actions = actions | Actions::CHANGE_BODY;
        }
        let protocol = [
            Protocol::NO_CONNECT,
            Protocol::NO_HELO,
            Protocol::NO_MAIL,
            Protocol::NO_RCPT,
            Protocol::NO_BODY,
            Protocol::NO_HEADERS,
            Protocol::NO_EOH,
            Protocol::NO_UNKNOWN,
            Protocol::NO_DATA,
            Protocol::SKIP,
            Protocol::NR_HEADER,
            Protocol::NR_CONNECT,
            Protocol::NR_HELO,
            Protocol::NR_MAIL,
            Protocol::NR_RCPT,
            Protocol::NR_DATA,
            Protocol::NR_UNKNOWN,
            Protocol::NR_EOH,
            Protocol::NR_BODY,
            Protocol::HEADER_LEADING_SPACE,
        ]
        .into_iter()
        .fold(Protocol(0), |all, bit| all | bit);
        OptNeg { version: VERSION, actions, protocol }
    }
}

/// Negotiates with the milter once at start (and reload), so a wrong address or a milter that
/// is not running shows in the log at once; it may come up later: messages meanwhile get the
/// stage's on_error answer.
pub async fn check(settings: &MilterSettings) {
    let address = settings.address.to_string();
    match Link::open(&settings.address, settings.timeout, settings.offer()).await {
        Ok(link) => {
            info!(target: "sluice::filters", stage = %settings.stage, address = address.as_str(),
                actions = link.agreed.actions.names().join(",").as_str(),
                protocol = link.agreed.protocol.names().join(",").as_str(), "milter answers");
            link.quit().await;
        }
        Err(err) => {
            warn!(target: "sluice::filters", stage = %settings.stage, address = address.as_str(), error = %err,
                "milter is not reachable; messages get the stage's on_error answer until it is")
        }
    }
}

pub struct MilterFactory {
    settings: Arc<MilterSettings>,
    /// This factory's slot in each session's `SessionSlots`.
    slot: u64,
}

impl MilterFactory {
    pub fn new(settings: MilterSettings) -> MilterFactory {
        MilterFactory { settings: Arc::new(settings), slot: crate::chain::stage::slot_id() }
    }
}

impl StageFactory for MilterFactory {
    fn instantiate(&self, context: &MessageContext) -> Result<Box<dyn Stage>, StageError> {
        let mut interests = Interests::ALL;
        let conn = match context.session.take::<Kept>(self.slot) {
            Some(Kept::Open { link, helo }) if link.state() == LinkState::Ready => {
                interests = interests_of(&link, self.settings.replace_body);
                Conn::Open { link, helo, reuse: Reuse::AbortDue }
            }
            Some(Kept::Decided(verdict)) => Conn::Decided(verdict),
            _ => Conn::Fresh,
        };
        Ok(Box::new(MilterStage {
            settings: self.settings.clone(),
            slot: self.slot,
            session: context.session.clone(),
            transaction_id: context.transaction_id.clone(),
            conn,
            interests,
            peer: None,
            subject: None,
            held: Vec::new(),
            body: BodyFeed::Feeding,
        }))
    }
}

/// The events a stage on `link` is called for (asked once a link is open, not per event). Mail
/// always: a kept connection's SMFIC_ABORT goes with the transaction's first command.
fn interests_of(link: &Link, replace_body: bool) -> Interests {
    let mut interests = Interests::ALL;
    if link.wants(Protocol::NO_RCPT) {
        interests = interests.without(StageEvent::Rcpt);
    }
    if link.wants(Protocol::NO_BODY) && !replace_body {
        interests = interests.without(StageEvent::Body);
    }
    interests
}

/// What a session keeps of its milter between transactions.
enum Kept {
    /// A connection that has seen CONNECT, and HELO with this name.
    Open { link: Link, helo: Option<String> },
    /// The milter answered for the whole connection at CONNECT or HELO.
    Decided(Verdict),
}

/// The transaction's connection to the milter.
enum Conn {
    /// None yet: opened at the connect event.
    Fresh,
    /// `helo`: the HELO name the milter has seen on it.
    Open { link: Link, helo: Option<String>, reuse: Reuse },
    /// The milter answered for the whole connection: every transaction gets this.
    Decided(Verdict),
    /// It failed during this transaction.
    Lost,
}

/// How far this transaction has used a connection kept from an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reuse {
    /// Opened for this transaction, or kept and since answered on: it works.
    Proven,
    /// Kept: SMFIC_ABORT ends the earlier transaction before this one's first command.
    AbortDue,
    /// Aborted, no answer yet: if the milter closed it while the session was idle, a new one
    /// is opened instead.
    Unproven,
}

/// Whether body chunks still go to the milter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFeed {
    Feeding,
    /// The milter answered SMFIR_SKIP: it has seen enough of the body.
    Skipped,
}

struct MilterStage {
    settings: Arc<MilterSettings>,
    slot: u64,
    session: SessionSlots,
    transaction_id: String,
    conn: Conn,
    /// What the open link's negotiation leaves to call the stage for.
    interests: Interests,
    /// The client, from the connect event (for a connection opened anew).
    peer: Option<SocketAddr>,
    /// The message's Subject, for `quarantine = "tag"`.
    subject: Option<String>,
    /// The body as it came, while `replace_body` holds it back.
    held: Vec<Bytes>,
    body: BodyFeed,
}

impl Drop for MilterStage {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.conn, Conn::Lost) {
            Conn::Open { link, helo, .. } if link.state() == LinkState::Ready => {
                self.session.give(self.slot, Kept::Open { link, helo })
            }
            Conn::Decided(verdict) => self.session.give(self.slot, Kept::Decided(verdict)),
            _ => {}
        }
    }
}

impl MilterStage {
    fn failed(&self, err: LinkError) -> StageError {
        match err {
            LinkError::Timeout(after) => StageError::Timeout(after),
            err => StageError::Failed(format!("milter at {}: {err}", self.settings.address)),
        }
    }

    fn link(&mut self) -> Result<&mut Link, StageError> {
        match &mut self.conn {
            Conn::Open { link, .. } => Ok(link),
            _ => Err(StageError::Failed(format!("milter at {}: not connected", self.settings.address))),
        }
    }

    /// Sends `commands` (a command after its macros) unless the milter asked to skip the command
    /// (`skip`), and returns its answer unless it asked for none (`no_reply`). On a kept
    /// connection, SMFIC_ABORT goes first; if the milter closed that connection while the session
    /// was idle, the exchange is made once more on a new one.
    async fn exchange(
        &mut self,
        skip: Protocol,
        no_reply: Protocol,
        commands: &[Command],
    ) -> Result<Option<Reply>, StageError> {
        let reuse = match &self.conn {
            Conn::Open { reuse, .. } => *reuse,
            _ => Reuse::Proven,
        };
        match self.try_exchange(skip, no_reply, commands).await {
            Err(LinkError::Closed | LinkError::Io(_)) if reuse != Reuse::Proven => {
                debug!(target: "sluice::filters", stage = %self.settings.stage, "kept milter connection was closed; reconnecting");
                self.reopen().await?;
                self.try_exchange(skip, no_reply, commands).await.map_err(|err| self.lose(err))
            }
            result => result.map_err(|err| self.lose(err)),
        }
    }

    async fn try_exchange(
        &mut self,
        skip: Protocol,
        no_reply: Protocol,
        commands: &[Command],
    ) -> Result<Option<Reply>, LinkError> {
        let Conn::Open { link, reuse, .. } = &mut self.conn else { return Err(LinkError::Broken) };
        if *reuse == Reuse::AbortDue {
            link.tell(&[Command::Abort]).await?;
            *reuse = Reuse::Unproven;
        }
        if link.wants(skip) {
            return Ok(None);
        }
        let answer = match link.wants(no_reply) {
            true => {
                link.tell(commands).await?;
                None
            }
            false => {
                link.ask(commands).await?;
                Some(link.answer().await?)
            }
        };
        // A packet written and taken, or answered: the connection works. (A milter that closed
        // it would have failed the write or the read, or the next exchange's.)
        if answer.is_some() {
            *reuse = Reuse::Proven;
        }
        Ok(answer)
    }

    /// A new connection in place of a kept one the milter closed: CONNECT and HELO again. (Boxed:
    /// it is called from within an exchange, and makes exchanges itself, on a new connection.)
    fn reopen(&mut self) -> BoxFuture<'_, Result<(), StageError>> {
        Box::pin(async move {
            let helo = match std::mem::replace(&mut self.conn, Conn::Fresh) {
                Conn::Open { helo, .. } => helo,
                _ => None,
            };
            let peer = self.peer.ok_or_else(|| self.protocol("no client to connect for".into()))?;
            let mut verdict = self.connect(peer).await?;
            if let (Verdict::Continue, Some(name)) = (&verdict, helo) {
                verdict = self.helo(&name).await?;
            }
            match verdict {
                Verdict::Continue => Ok(()),
                other => Err(self.protocol(format!("answered {} on a new connection", other.summary()))),
            }
        })
    }

    /// The link failed: it is dropped, and so is the failure's cause into a stage error.
    fn lose(&mut self, err: LinkError) -> StageError {
        self.conn = Conn::Lost;
        self.failed(err)
    }

    async fn connect(&mut self, peer: SocketAddr) -> Result<Verdict, StageError> {
        self.peer = Some(peer);
        let settings = self.settings.clone();
        let link = Link::open(&settings.address, settings.timeout, settings.offer()).await.map_err(|e| self.lose(e))?;
        debug!(target: "sluice::filters", stage = %settings.stage, version = link.agreed.version,
            actions = link.agreed.actions.names().join(",").as_str(),
            protocol = link.agreed.protocol.names().join(",").as_str(), "milter negotiated");
        self.interests = interests_of(&link, settings.replace_body);
        self.conn = Conn::Open { link, helo: None, reuse: Reuse::Proven };
        let address = peer.ip().to_canonical();
        let family = if address.is_ipv4() { Family::Inet4 } else { Family::Inet6 };
        let pairs = translate::connect_macros(&settings.hostname, &address.to_string(), &settings.macros);
        let connect = Command::Connect {
            hostname: b"unknown".to_vec(),
            family,
            port: peer.port(),
            address: address.to_string().into_bytes(),
        };
        let answer = self.exchange(Protocol::NO_CONNECT, Protocol::NR_CONNECT, &[macros(b'C', pairs), connect]).await?;
        self.session_verdict(answer)
    }

    /// An answer at CONNECT or HELO is for the whole connection: kept for later transactions.
    fn session_verdict(&mut self, answer: Option<Reply>) -> Result<Verdict, StageError> {
        let verdict = self.verdict(answer, Phase::Envelope)?;
        if verdict != Verdict::Continue {
            self.conn = Conn::Decided(verdict.clone());
        }
        Ok(verdict)
    }

    /// The verdict an answer stands for; an answer out of place loses the link, which is then
    /// out of step with the milter.
    fn verdict(&mut self, answer: Option<Reply>, phase: Phase) -> Result<Verdict, StageError> {
        let Some(answer) = answer else { return Ok(Verdict::Continue) };
        translate::verdict(answer, phase).map_err(|why| {
            self.conn = Conn::Lost;
            self.protocol(why)
        })
    }

    fn protocol(&self, what: String) -> StageError {
        StageError::Failed(format!("milter at {}: {what}", self.settings.address))
    }

    async fn helo(&mut self, name: &str) -> Result<Verdict, StageError> {
        if let Conn::Open { helo: Some(sent), .. } = &self.conn {
            if sent == name {
                return Ok(Verdict::Continue);
            }
        }
        let answer =
            self.exchange(Protocol::NO_HELO, Protocol::NR_HELO, &[Command::Helo(name.as_bytes().to_vec())]).await?;
        if let Conn::Open { helo, .. } = &mut self.conn {
            *helo = Some(name.to_string());
        }
        self.session_verdict(answer)
    }

    async fn mail(&mut self, from: &str) -> Result<Verdict, StageError> {
        let pairs = vec![
            ("i".to_string(), self.transaction_id.clone()),
            ("{mail_addr}".to_string(), from.to_string()),
            ("{auth_authen}".to_string(), String::new()),
        ];
        let mail = Command::Mail(vec![format!("<{from}>").into_bytes()]);
        let answer = self.exchange(Protocol::NO_MAIL, Protocol::NR_MAIL, &[macros(b'M', pairs), mail]).await?;
        self.verdict(answer, Phase::Envelope)
    }

    async fn rcpt(&mut self, to: &str) -> Result<Verdict, StageError> {
        let pairs = vec![("i".to_string(), self.transaction_id.clone()), ("{rcpt_addr}".to_string(), to.to_string())];
        let rcpt = Command::Rcpt(vec![format!("<{to}>").into_bytes()]);
        let answer = self.exchange(Protocol::NO_RCPT, Protocol::NR_RCPT, &[macros(b'R', pairs), rcpt]).await?;
        self.verdict(answer, Phase::Envelope)
    }

    fn queue_id(&self, for_command: u8) -> Command {
        macros(for_command, vec![("i".to_string(), self.transaction_id.clone())])
    }

    /// One body chunk, in pieces of at most 65535 bytes, each answered unless the milter asked
    /// for no answers to body chunks.
    async fn feed(&mut self, chunk: &Bytes) -> Result<Verdict, StageError> {
        let mut at = 0;
        while at < chunk.len() && self.body == BodyFeed::Feeding {
            let piece = chunk.slice(at..chunk.len().min(at + MAX_BODY_CHUNK));
            at += piece.len();
            let skip_allowed = self.link()?.wants(Protocol::SKIP);
            match self.exchange(Protocol::NO_BODY, Protocol::NR_BODY, &[Command::Body(piece)]).await? {
                Some(Reply::Skip) if skip_allowed => self.body = BodyFeed::Skipped,
                answer => match self.verdict(answer, Phase::Content)? {
                    Verdict::Continue => {}
                    verdict => return Ok(verdict),
                },
            }
        }
        Ok(Verdict::Continue)
    }
}

#[async_trait]
impl Stage for MilterStage {
    fn interests(&self) -> Interests {
        match &self.conn {
            Conn::Open { .. } => self.interests,
            _ => Interests::ALL,
        }
    }

    async fn envelope(&mut self, event: &EnvelopeEvent) -> Result<Verdict, StageError> {
        match (&self.conn, event) {
            (Conn::Decided(verdict), _) => Ok(verdict.clone()),
            (Conn::Lost, _) => Err(self.protocol("the connection was lost earlier in this transaction".into())),
            (Conn::Fresh, EnvelopeEvent::Connect { peer }) => self.connect(*peer).await,
            (Conn::Fresh, _) => Err(self.protocol("not connected".into())),
            (Conn::Open { .. }, EnvelopeEvent::Connect { peer }) => {
                self.peer = Some(*peer);
                Ok(Verdict::Continue)
            }
            (Conn::Open { .. }, EnvelopeEvent::Helo { name }) => self.helo(&name.clone()).await,
            (Conn::Open { .. }, EnvelopeEvent::MailFrom { address }) => self.mail(&address.clone()).await,
            (Conn::Open { .. }, EnvelopeEvent::RcptTo { address }) => self.rcpt(&address.clone()).await,
        }
    }

    async fn headers(&mut self, headers: &HeaderSection) -> Result<Reaction, StageError> {
        self.subject = headers.get("Subject").map(|s| s.trim().to_string());
        let data = [self.queue_id(b'T'), Command::Data];
        let answer = self.exchange(Protocol::NO_DATA, Protocol::NR_DATA, &data).await?;
        let verdict = self.verdict(answer, Phase::Content)?;
        if verdict != Verdict::Continue {
            return Ok(Reaction::verdict(verdict));
        }
        let leading_space = self.link()?.wants(Protocol::HEADER_LEADING_SPACE);
        for raw in headers.raw_fields() {
            let field = translate::header(raw, leading_space);
            let answer = self.exchange(Protocol::NO_HEADERS, Protocol::NR_HEADER, &[field]).await?;
            let verdict = self.verdict(answer, Phase::Content)?;
            if verdict != Verdict::Continue {
                return Ok(Reaction::verdict(verdict));
            }
        }
        let eoh = [self.queue_id(b'N'), Command::EndOfHeaders];
        let answer = self.exchange(Protocol::NO_EOH, Protocol::NR_EOH, &eoh).await?;
        Ok(Reaction::verdict(self.verdict(answer, Phase::Content)?))
    }

    async fn body(&mut self, chunk: Bytes) -> Result<Reaction, StageError> {
        let verdict = self.feed(&chunk).await?;
        if !self.settings.replace_body {
            return Ok(Reaction::verdict(verdict));
        }
        self.held.push(chunk);
        // Held until end of message; a verdict now (accept: no end call) lets it go at once.
        let body = match verdict {
            Verdict::Continue => Vec::new(),
            _ => std::mem::take(&mut self.held),
        };
        Ok(Reaction { body: BodyOutput::Replace(body), ..Reaction::verdict(verdict) })
    }

    async fn end(&mut self) -> Result<Reaction, StageError> {
        let settings = self.settings.clone();
        let end = [self.queue_id(b'E'), Command::EndOfBody];
        let link = self.link()?;
        link.ask(&end).await.map_err(|err| self.lose(err))?;
        let mut changes = Modifications::new(settings.max_message_size);
        let answer = loop {
            let packet = match self.link()?.next().await {
                Ok(packet) => packet,
                Err(err) => return Err(self.lose(err)),
            };
            if translate::is_final(&packet) {
                self.link()?.answered();
                break packet;
            }
            if matches!(packet, Reply::ReplaceBody(_)) {
                // The body held for the milter is not needed any more.
                self.held = Vec::new();
            }
            let agreed = self.link()?.agreed;
            changes.add(packet, agreed).map_err(|why| {
                self.conn = Conn::Lost;
                self.protocol(why)
            })?;
        };
        let verdict = self.verdict(Some(answer), Phase::Content)?;
        if verdict.is_final() {
            return Ok(Reaction::verdict(verdict));
        }
        let held = std::mem::take(&mut self.held);
        let mut reaction = changes.into_reaction(verdict, &settings.quarantine, self.subject.as_deref());
        if settings.replace_body && matches!(reaction.body, BodyOutput::Pass) {
            reaction.body = BodyOutput::Replace(held);
        }
        Ok(reaction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offer_names_what_sluice_applies() {
        let settings = |replace_body| MilterSettings {
            stage: "m".into(),
            address: MilterAddress::Inet("127.0.0.1:1".into()),
            timeout: Duration::from_secs(1),
            hostname: "gw.test".into(),
            macros: Vec::new(),
            quarantine: QuarantineAction::Tempfail,
            replace_body,
            max_message_size: 1 << 20,
        };
        let offer = settings(false).offer();
        assert_eq!(offer.version, 6);
        assert!(!offer.actions.contains(Actions::CHANGE_BODY) && !offer.actions.contains(Actions::SET_SYMLIST));
        assert!(offer.actions.contains(Actions::ADD_HEADERS | Actions::DELETE_RCPT | Actions::QUARANTINE));
        assert!(settings(true).offer().actions.contains(Actions::CHANGE_BODY));
        assert!(offer.protocol.contains(Protocol::NR_BODY | Protocol::SKIP | Protocol::HEADER_LEADING_SPACE));
        assert!(!offer.protocol.contains(Protocol::RCPT_REJ));
    }
}
