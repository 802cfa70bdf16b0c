//! The content-reading half of the session state machine: DATA (dot-terminated) and BDAT
//! (counted) content through the decoder into body steps, and the end of the content.

use bytes::BytesMut;

use super::{Envelope, Request, Session, State, Step, BODY_CHUNK};
use crate::smtp::content::Content;
use crate::smtp::reply::Reply;

impl Session {
    pub(super) fn read_data(&mut self, envelope: Envelope, mut content: Content, input: &mut BytesMut) -> Option<Step> {
        if input.is_empty() {
            self.state = State::Data(envelope, content);
            return Some(Step::NeedInput);
        }
        let window = input.len().min(BODY_CHUNK);
        let mut out = Vec::with_capacity(window + 64);
        let (used, ended) = content.decoder.decode(&input[..window], &mut out);
        let _ = input.split_to(used);
        if let Some(body) = content.accept(out, &self.config) {
            self.queued.push_back(Step::Body(body));
        }
        if ended {
            self.end_content(envelope, content);
        } else {
            self.state = State::Data(envelope, content);
        }
        None
    }

    pub(super) fn read_chunk(
        &mut self,
        envelope: Envelope,
        mut content: Content,
        remaining: u64,
        last: bool,
        input: &mut BytesMut,
    ) -> Option<Step> {
        let take = remaining.min(input.len() as u64).min(BODY_CHUNK as u64) as usize;
        if take == 0 && remaining > 0 {
            self.state = State::Chunk { envelope, content, remaining, last };
            return Some(Step::NeedInput);
        }
        let mut out = Vec::with_capacity(take + 64);
        let (used, _) = content.decoder.decode(&input[..take], &mut out);
        let _ = input.split_to(used);
        let remaining = remaining - used as u64;
        if remaining == 0 && last {
            content.decoder.finish(&mut out);
        }
        if let Some(body) = content.accept(out, &self.config) {
            self.queued.push_back(Step::Body(body));
        }
        if remaining > 0 {
            self.state = State::Chunk { envelope, content, remaining, last };
        } else if last {
            self.end_content(envelope, content);
        } else {
            let reply = Reply::new(250, "2.0.0", format!("{} octets received", content.size));
            self.queued.push_back(Step::Reply(reply));
            self.state = State::Chunking(envelope, content);
        }
        None
    }

    /// End of content: refuse a faulty message or ask for delivery (after queued body steps).
    /// The refusal is chosen from the final totals, so it never depends on how reads were split.
    fn end_content(&mut self, envelope: Envelope, content: Content) {
        self.state = State::Ready;
        let step = match content.refusal(&self.config) {
            Some(reply) => Step::Refuse { reply, size: content.size },
            None => Step::Request(Request::Deliver { envelope, size: content.size }),
        };
        self.queued.push_back(step);
    }
}
