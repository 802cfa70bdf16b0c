//! One message's content as the session reads it: decoded, counted (size, header section, bare
//! line endings) and judged. Content that breaks a limit is still read to its end, so framing
//! survives, but is no longer passed on; the refusal is chosen from the final totals, so it never
//! depends on how reads were split.

use super::header_meter::HeaderMeter;
use super::parser::{BodyDecoder, Framing};
use super::reply::Reply;
use super::session::SessionConfig;
use crate::config::BareLineEndings;

#[derive(Debug)]
pub(super) struct Content {
    pub(super) decoder: BodyDecoder,
    /// Decoded bytes so far.
    pub(super) size: u64,
    header: HeaderMeter,
    /// Set at the first broken limit: nothing more goes to the spool. It bounds what the chain
    /// ever buffers, too: the header splitter never sees more than `max_header_size`.
    refused: bool,
}

impl Content {
    pub(super) fn new(framing: Framing) -> Content {
        Content { decoder: BodyDecoder::new(framing), size: 0, header: HeaderMeter::default(), refused: false }
    }

    /// Counts decoded bytes and decides whether they go on to the spool.
    pub(super) fn accept(&mut self, out: Vec<u8>, config: &SessionConfig) -> Option<Vec<u8>> {
        self.size += out.len() as u64;
        // Measured to the end whatever else is wrong, so the final refusal is the same however
        // the content was cut.
        self.header.feed(&out);
        self.refused = self.refused || self.refusal(config).is_some();
        (!self.refused && !out.is_empty()).then_some(out)
    }

    /// Why the content (so far, or complete) is refused, if it is.
    pub(super) fn refusal(&self, config: &SessionConfig) -> Option<Reply> {
        if self.size > config.max_message_size {
            return Some(Reply::new(552, "5.3.4", "Message size exceeds fixed limit"));
        }
        if self.header.peak() > config.max_header_size {
            let text = format!("Message header section exceeds fixed limit of {} bytes", config.max_header_size);
            return Some(Reply::new(552, "5.3.4", text));
        }
        if config.bare_line_endings == BareLineEndings::Reject && self.decoder.bare_line_endings() > 0 {
            return Some(Reply::new(550, "5.6.0", "Message contains bare CR or LF; send CRLF line endings"));
        }
        None
    }
}
