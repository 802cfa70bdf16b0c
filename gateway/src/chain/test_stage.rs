//! The built-in `test` stage: a configurable stage for tests and demonstrations — slow, holding,
//! failing, hanging or panicking at a chosen event (or panicking between calls), answering a chosen verdict, changing headers
//! and appending to the body. It exercises every path of the stage contract without wasm.

use async_trait::async_trait;
use bytes::Bytes;

use super::headers::{HeaderChange, HeaderSection};
use super::stage::{
    BodyOutput, EnvelopeEvent, Interests, MessageContext, Reaction, Stage, StageError, StageFactory, Verdict,
};
use crate::config::stages::{PanicSite, StageEvent, TestStageConfig, TestVerdict};
use crate::smtp::reply::Reply;

pub struct TestStageFactory {
    config: TestStageConfig,
}

impl TestStageFactory {
    pub fn new(config: TestStageConfig) -> TestStageFactory {
        TestStageFactory { config }
    }
}

impl StageFactory for TestStageFactory {
    fn instantiate(&self, context: &MessageContext) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(TestStage { config: self.config.clone(), context: context.clone(), seen_headers: false }))
    }
}

struct TestStage {
    config: TestStageConfig,
    context: MessageContext,
    /// The header section has been seen: `panic_in = "interests"` panics from here on, so the
    /// envelope phase passes and the panic hits a stage task.
    seen_headers: bool,
}

fn field(text: &str) -> Option<(String, String)> {
    text.split_once(':').map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
}

impl TestStage {
    /// Fault injection and the configured verdict for `event`.
    async fn at(&self, event: StageEvent, rcpt: Option<&str>) -> Result<Verdict, StageError> {
        let config = &self.config;
        if config.panic_at == Some(event) {
            panic!("test stage told to panic at {event:?}");
        }
        if config.fail_at == Some(event) {
            return Err(StageError::Failed(format!("test stage told to fail at {event:?}")));
        }
        if config.hang_at == Some(event) {
            std::future::pending::<()>().await;
        }
        let matches_rcpt = match (&config.rcpt_contains, rcpt) {
            (Some(needle), Some(address)) => address.contains(needle.as_str()),
            _ => true,
        };
        if config.at != Some(event) || !matches_rcpt {
            return Ok(Verdict::Continue);
        }
        let reply = |code, enhanced, text| {
            config
                .reply
                .as_ref()
                .and_then(|r| Reply::parse_lines(&[r.clone()]))
                .unwrap_or_else(|| Reply::new(code, enhanced, text))
        };
        Ok(match config.verdict {
            None => Verdict::Continue,
            Some(TestVerdict::Accept) => Verdict::Accept,
            Some(TestVerdict::Discard) => Verdict::Discard,
            Some(TestVerdict::Reject) => Verdict::Reject(reply(550, "5.7.1", "Rejected by test stage")),
            Some(TestVerdict::Tempfail) => Verdict::Tempfail(reply(451, "4.7.1", "Deferred by test stage")),
        })
    }
}

#[async_trait]
impl Stage for TestStage {
    fn interests(&self) -> Interests {
        if self.seen_headers && self.config.panic_in == Some(PanicSite::Interests) {
            panic!("test stage told to panic in interests()");
        }
        Interests::ALL
    }

    async fn envelope(&mut self, event: &EnvelopeEvent) -> Result<Verdict, StageError> {
        match event {
            EnvelopeEvent::Connect { .. } => self.at(StageEvent::Connect, None).await,
            EnvelopeEvent::Helo { .. } => self.at(StageEvent::Helo, None).await,
            EnvelopeEvent::MailFrom { .. } => self.at(StageEvent::Mail, None).await,
            EnvelopeEvent::RcptTo { address } => self.at(StageEvent::Rcpt, Some(address)).await,
        }
    }

    async fn headers(&mut self, _headers: &HeaderSection) -> Result<Reaction, StageError> {
        self.seen_headers = true;
        let mut reaction = Reaction::verdict(self.at(StageEvent::Headers, None).await?);
        if let Some(name) = &self.config.remove_header {
            reaction.header_changes.push(HeaderChange::Remove { name: name.clone(), index: 0 });
        }
        if let Some((name, value)) = self.config.add_header.as_deref().and_then(field) {
            reaction = reaction.add_header(&name, &value);
        }
        Ok(reaction)
    }

    async fn body(&mut self, _chunk: Bytes) -> Result<Reaction, StageError> {
        if let Some(delay) = self.config.delay {
            tokio::time::sleep(delay.0).await;
        }
        if self.config.hold_until_end_of_data {
            self.context.end_of_data.wait().await;
        }
        Ok(Reaction::verdict(self.at(StageEvent::Body, None).await?))
    }

    async fn end(&mut self) -> Result<Reaction, StageError> {
        let mut reaction = Reaction::verdict(self.at(StageEvent::End, None).await?);
        if let Some((name, value)) = self.config.end_header.as_deref().and_then(field) {
            reaction = reaction.add_header(&name, &value);
        }
        if let Some(text) = &self.config.append {
            reaction.body = BodyOutput::Replace(vec![Bytes::from(text.clone())]);
        }
        Ok(reaction)
    }
}
