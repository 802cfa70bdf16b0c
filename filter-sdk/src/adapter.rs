//! Glue between a `Filter` and the generated component bindings (wasm32 only): converts the
//! SDK's types to and from the WIT types, so filter authors never see raw bindings.

use std::cell::RefCell;

use crate::bindings::exports::sluice::filter::handler::{GuestMessage, Interests as WitInterests};
use crate::bindings::sluice::filter::host;
use crate::bindings::sluice::filter::types as wit;
use crate::{BodyOutput, Config, Event, Filter, Header, HeaderChange, Headers, Reaction, Verdict};

/// The configuration, from the host.
pub fn host_config() -> Config {
    Config::new(host::config())
}

/// `wants` for the component: the filter's interests under the current configuration.
pub fn wants<F: Filter>() -> WitInterests {
    let interests = F::interests(&host_config());
    let table = [
        (Event::Connect, WitInterests::CONNECT),
        (Event::Helo, WitInterests::HELO),
        (Event::MailFrom, WitInterests::MAIL_FROM),
        (Event::RcptTo, WitInterests::RCPT_TO),
        (Event::Headers, WitInterests::HEADERS),
        (Event::Body, WitInterests::BODY),
        (Event::End, WitInterests::END),
    ];
    table.iter().filter(|(event, _)| interests.wants(*event)).fold(WitInterests::empty(), |all, (_, flag)| all | *flag)
}

/// `validate-config` for the component: `check_config` on the host's configuration.
pub fn validate_config<F: Filter>() -> Result<wit::ConfigReport, wit::ConfigProblem> {
    match crate::check_config::<F>(&host_config()) {
        Ok(unused_keys) => Ok(wit::ConfigReport { unused_keys }),
        Err(err) => Err(wit::ConfigProblem { key: err.key, message: err.message }),
    }
}

/// One message's filter instance behind the WIT resource.
pub struct Adapter<F: Filter>(RefCell<F>);

impl<F: Filter> GuestMessage for Adapter<F> {
    fn new() -> Self {
        match F::new(&host_config()) {
            Ok(filter) => Adapter(RefCell::new(filter)),
            Err(err) => {
                // `validate-config` accepted this configuration at load, so only a filter whose
                // `new` depends on more than its configuration gets here. A trap is a stage
                // failure: the host applies the stage's on_error policy.
                crate::log::error(&err.to_string());
                panic!("{err}");
            }
        }
    }

    fn on_connect(&self, peer: String) -> wit::Verdict {
        verdict(self.0.borrow_mut().on_connect(&peer))
    }

    fn on_helo(&self, name: String) -> wit::Verdict {
        verdict(self.0.borrow_mut().on_helo(&name))
    }

    fn on_mail_from(&self, address: String) -> wit::Verdict {
        verdict(self.0.borrow_mut().on_mail_from(&address))
    }

    fn on_rcpt_to(&self, address: String) -> wit::Verdict {
        verdict(self.0.borrow_mut().on_rcpt_to(&address))
    }

    fn on_headers(&self, headers: Vec<wit::Header>) -> wit::Reaction {
        let headers = Headers(headers.into_iter().map(|h| Header { name: h.name, value: h.value }).collect());
        reaction(self.0.borrow_mut().on_headers(&headers))
    }

    fn on_body_chunk(&self, chunk: Vec<u8>) -> wit::Reaction {
        reaction(self.0.borrow_mut().on_body_chunk(&chunk))
    }

    fn on_end(&self) -> wit::Reaction {
        reaction(self.0.borrow_mut().on_end())
    }
}

fn reply(reply: crate::Reply) -> wit::SmtpReply {
    wit::SmtpReply { code: reply.code, enhanced: reply.enhanced, text: reply.text }
}

fn verdict(verdict: Verdict) -> wit::Verdict {
    match verdict {
        Verdict::Continue => wit::Verdict::Continue,
        Verdict::Accept => wit::Verdict::Accept,
        Verdict::Reject(r) => wit::Verdict::Reject(reply(r)),
        Verdict::Tempfail(r) => wit::Verdict::Tempfail(reply(r)),
        Verdict::Discard => wit::Verdict::Discard,
    }
}

fn reaction(reaction: Reaction) -> wit::Reaction {
    let header = |h: Header| wit::Header { name: h.name, value: h.value };
    wit::Reaction {
        verdict: verdict(reaction.verdict),
        header_changes: reaction
            .header_changes
            .into_iter()
            .map(|change| match change {
                HeaderChange::Add(h) => wit::HeaderChange::Add(header(h)),
                HeaderChange::Prepend(h) => wit::HeaderChange::Prepend(header(h)),
                HeaderChange::Change { name, index, value } => {
                    wit::HeaderChange::Change(wit::HeaderAt { name, index, value })
                }
                HeaderChange::Remove { name, index } => wit::HeaderChange::Remove(wit::HeaderNameAt { name, index }),
            })
            .collect(),
        body: match reaction.body {
            BodyOutput::Pass => wit::BodyOutput::Pass,
            BodyOutput::Replace(chunks) => wit::BodyOutput::Replace(chunks),
        },
    }
}
