//! `faults`: a filter that misbehaves on command, for the host's tests (not a stock filter).
//! Config `mode` chooses, and `at` says where (`new` — the constructor, which the host also runs
//! once at load to check the configuration —, `connect`, `helo`, `mail`, `rcpt`, `headers`,
//! `body`, `end`; default `body`):
//! `verdict` (answers the verdict named by `verdict`: accept, reject, tempfail or discard),
//! `trap` (panics), `loop` (spins forever: the CPU limit must stop it), `alloc` (allocates without
//! end: the memory limit must stop it), `garbage` (answers a reject with a 250 reply: malformed),
//! `remember` (reports, in a header, how many messages this instance has seen: always 1, since
//! every message gets a fresh instance), and `pass`.
//!
//! Malformed or costly answers, one mode each, for the host boundary's tests:
//! `reply` (rejects with `code`, `enhanced` and `text` as configured, e.g. an enhanced code with
//! a CRLF and a second reply in it), `header` (`count` header changes of kind `op` — add,
//! prepend, change or remove — on `name`, numbered `name-1`… when count > 1, with `value`
//! repeated `repeat` times), `body` (replaces the body with `output`, handed over in pieces of
//! `pieces` bytes; at `end` appends it instead), `grow` (passes every body chunk on `factor`
//! times) and `drop-then-trap` (drops the first body chunk, then panics at the next call).
//! `sign` asks the host (`keys`) for `count` signatures of `value` with the `[stage.keys]` key
//! `key` at the header section and `count` more at the end, and reports in an `X-Faults-Signed`
//! header how many each got and the first refusal, for the host's per-message bounds.
//!
//! `wants` (a comma-separated list of events, default all) sets the filter's interests, and
//! `when` (a header field name) limits the misbehaviour to messages that carry that field.

use sluice_filter_sdk::keys::HostKey;
use sluice_filter_sdk::{
    export_filter, log, Config, ConfigError, Event, Filter, Header, HeaderChange, Headers, Interests, Reaction, Verdict,
};
use std::sync::atomic::{AtomicU32, Ordering};

/// Messages this instance has seen; fresh instances start at 0.
static SEEN: AtomicU32 = AtomicU32::new(0);

const MODES: &[&str] = &[
    "pass",
    "verdict",
    "trap",
    "loop",
    "alloc",
    "garbage",
    "remember",
    "reply",
    "header",
    "body",
    "grow",
    "drop-then-trap",
    "sign",
];
const VERDICTS: &[&str] = &["continue", "accept", "reject", "tempfail", "discard"];
const OPS: &[&str] = &["add", "prepend", "change", "remove"];

/// `key`, which must be one of `allowed` (or `default` when absent).
fn one_of(config: &Config, key: &str, allowed: &[&str], default: &str) -> Result<String, ConfigError> {
    let value = config.get_or(key, default.to_string())?;
    match allowed.contains(&value.as_str()) {
        true => Ok(value),
        false => {
            Err(ConfigError { key: key.into(), message: format!("{value:?} is not one of {}", allowed.join(", ")) })
        }
    }
}

pub struct Faults {
    mode: String,
    at: String,
    verdict: String,
    /// Only messages with this header field are affected.
    when: Option<String>,
    /// Mode `reply`.
    code: u16,
    enhanced: String,
    text: String,
    /// Mode `header`.
    count: usize,
    op: String,
    name: String,
    value: String,
    /// Mode `body`: the output and the size of its pieces.
    output: String,
    pieces: usize,
    /// Mode `grow`.
    factor: usize,
    /// Mode `sign`: the host's key.
    key: Option<HostKey>,
    /// Mode `sign`: how the signatures at the header section went.
    signed_at_headers: String,
    /// False until the header section showed the `when` field (always true without `when`).
    armed: bool,
    /// Body chunks answered so far.
    chunks: u32,
}

impl Faults {
    fn act(&self, here: &str) -> Verdict {
        if self.at != here || !self.armed {
            return Verdict::Continue;
        }
        match self.mode.as_str() {
            "trap" => panic!("faults filter: trap at {here}"),
            "loop" => spin(),
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "garbage" => Verdict::reject(250, "2.0.0", "a reject that is not one"),
            "reply" => Verdict::reject(self.code, &self.enhanced, self.text.clone()),
            "verdict" => match self.verdict.as_str() {
                "accept" => Verdict::Accept,
                "reject" => Verdict::reject(550, "5.7.1", format!("faults rejects at {here}")),
                "tempfail" => Verdict::tempfail(451, "4.7.1", format!("faults defers at {here}")),
                "discard" => Verdict::Discard,
                _ => Verdict::Continue,
            },
            _ => Verdict::Continue,
        }
    }

    /// The configured header changes (mode `header`).
    fn header_changes(&self) -> Vec<HeaderChange> {
        (1..=self.count)
            .map(|i| {
                let name = if self.count > 1 { format!("{}-{i}", self.name) } else { self.name.clone() };
                let value = self.value.clone();
                match self.op.as_str() {
                    "prepend" => HeaderChange::Prepend(Header { name, value }),
                    "change" => HeaderChange::Change { name, index: 1, value },
                    "remove" => HeaderChange::Remove { name, index: 0 },
                    _ => HeaderChange::Add(Header { name, value }),
                }
            })
            .collect()
    }

    /// `output` in pieces of `pieces` bytes (mode `body`).
    fn output(&self) -> Vec<Vec<u8>> {
        self.output.as_bytes().chunks(self.pieces.max(1)).map(<[u8]>::to_vec).collect()
    }

    /// What mode `at` answers with beyond its verdict: header changes or body output.
    fn changes(&self, here: &str, reaction: Reaction) -> Reaction {
        if self.at != here || !self.armed {
            return reaction;
        }
        match self.mode.as_str() {
            "header" => Reaction { header_changes: self.header_changes(), ..reaction },
            "body" if here == "end" => reaction.replace_body(self.output()),
            _ => reaction,
        }
    }

    /// Mode `sign`: `count` signatures asked for; how many came and the first refusal.
    fn sign(&self) -> String {
        let Some(key) = &self.key else { return "no key".into() };
        let results: Vec<Result<Vec<u8>, String>> = (0..self.count).map(|_| key.sign(self.value.as_bytes())).collect();
        let signed = results.iter().filter(|result| result.is_ok()).count();
        match results.into_iter().find_map(Result::err) {
            Some(why) => format!("{signed} signed; refused: {why}"),
            None => format!("{signed} signed"),
        }
    }
}

const EVENTS: &[&str] = &["connect", "helo", "mail", "rcpt", "headers", "body", "end"];
/// Busy forever, until the host's CPU limit stops the call.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Where a fault can be placed: the events, or the constructor.
const AT: &[&str] = &["new", "connect", "helo", "mail", "rcpt", "headers", "body", "end"];

fn event(name: &str) -> Option<Event> {
    Some(match name.trim() {
        "connect" => Event::Connect,
        "helo" => Event::Helo,
        "mail" => Event::MailFrom,
        "rcpt" => Event::RcptTo,
        "headers" => Event::Headers,
        "body" => Event::Body,
        "end" => Event::End,
        _ => return None,
    })
}

impl Filter for Faults {
    fn interests(config: &Config) -> Interests {
        match config.get("wants") {
            None => Interests::ALL,
            Some(list) => list.split(',').filter_map(event).fold(Interests::NONE, Interests::with),
        }
    }

    fn new(config: &Config) -> Result<Self, ConfigError> {
        let seen = SEEN.fetch_add(1, Ordering::Relaxed) + 1;
        log::debug(&format!("message number {seen} in this instance"));
        if let Some(wanted) = config.get("wants") {
            if let Some(bad) = wanted.split(',').find(|name| event(name).is_none()) {
                let message = format!("{:?} is not an event ({})", bad.trim(), EVENTS.join(", "));
                return Err(ConfigError { key: "wants".into(), message });
            }
        }
        let output: String = config.get_or("output", String::new())?;
        let when = config.get("when").map(str::to_string);
        let mode = one_of(config, "mode", MODES, "pass")?;
        if one_of(config, "at", AT, "body")? == "new" {
            match mode.as_str() {
                "loop" => spin(),
                "trap" => panic!("faults: trap in the constructor, as configured"),
                _ => {}
            }
        }
        let key = match mode.as_str() {
            "sign" => Some(config.key("key")?),
            _ => None,
        };
        Ok(Faults {
            key,
            mode,
            at: one_of(config, "at", AT, "body")?,
            verdict: one_of(config, "verdict", VERDICTS, "continue")?,
            code: config.get_or("code", 550)?,
            enhanced: config.get_or("enhanced", "5.7.1".to_string())?,
            text: config.get_or("text", "faults reply".to_string())?,
            count: config.get_or("count", 1)?,
            op: one_of(config, "op", OPS, "add")?,
            name: config.get_or("name", "X-Faults".to_string())?,
            value: config.get_or::<String>("value", "x".into())?.repeat(config.get_or("repeat", 1)?),
            pieces: config.get_or("pieces", output.len())?,
            output,
            factor: config.get_or("factor", 2)?,
            armed: when.is_none(),
            when,
            chunks: 0,
            signed_at_headers: String::new(),
        })
    }

    fn on_connect(&mut self, _peer: &str) -> Verdict {
        self.act("connect")
    }

    fn on_helo(&mut self, _name: &str) -> Verdict {
        self.act("helo")
    }

    fn on_mail_from(&mut self, _address: &str) -> Verdict {
        self.act("mail")
    }

    fn on_rcpt_to(&mut self, _address: &str) -> Verdict {
        self.act("rcpt")
    }

    fn on_headers(&mut self, headers: &Headers) -> Reaction {
        if let Some(name) = &self.when {
            self.armed = headers.get(name).is_some();
        }
        if self.mode == "sign" {
            self.signed_at_headers = self.sign();
        }
        let reaction = self.changes("headers", Reaction::from(self.act("headers")));
        if self.mode == "remember" {
            return reaction.add_header("X-Instance-Messages", SEEN.load(Ordering::Relaxed).to_string());
        }
        reaction
    }

    fn on_body_chunk(&mut self, chunk: &[u8]) -> Reaction {
        self.chunks += 1;
        let reaction = Reaction::from(self.act("body"));
        if !self.armed {
            return reaction;
        }
        match self.mode.as_str() {
            "body" if self.at == "body" => match self.chunks {
                1 => reaction.replace_body(self.output()),
                _ => reaction.replace_body(Vec::new()),
            },
            "grow" => reaction.replace_body(vec![chunk.to_vec(); self.factor]),
            "drop-then-trap" if self.chunks == 1 => reaction.replace_body(Vec::new()),
            "drop-then-trap" => panic!("faults filter: trap after dropping the first chunk"),
            _ => reaction,
        }
    }

    fn on_end(&mut self) -> Reaction {
        if self.armed && self.mode == "drop-then-trap" && self.chunks > 0 {
            panic!("faults filter: trap at end after dropping the first chunk");
        }
        let reaction = self.changes("end", Reaction::from(self.act("end")));
        if self.mode == "sign" {
            let signed = format!("headers: {}; end: {}", self.signed_at_headers, self.sign());
            return reaction.add_header("X-Faults-Signed", signed);
        }
        reaction
    }
}

export_filter!(Faults);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_filter_sdk::check_config;

    fn check(pairs: &[(&str, &str)]) -> Result<Vec<String>, ConfigError> {
        check_config::<Faults>(&Config::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
    }

    #[test]
    fn every_key_is_read_at_load_and_bad_values_name_their_key() {
        let all = [("mode", "header"), ("at", "end"), ("count", "2"), ("op", "prepend"), ("wants", "end, headers")];
        assert_eq!(check(&all), Ok(vec![]));
        assert_eq!(check(&[("mode", "pass"), ("mdoe", "trap")]), Ok(vec!["mdoe".to_string()]));
        assert_eq!(check(&[("mode", "explode")]).unwrap_err().key, "mode");
        assert_eq!(check(&[("at", "later")]).unwrap_err().key, "at");
        assert_eq!(check(&[("count", "many")]).unwrap_err().key, "count");
        assert_eq!(check(&[("wants", "body,nothing")]).unwrap_err().key, "wants");
    }
}
