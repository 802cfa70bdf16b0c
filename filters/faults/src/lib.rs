//! `faults`: a filter that misbehaves on command, for the host's tests (not a stock filter).
//! Config `mode` chooses, and `at` says where (`connect`, `helo`, `mail`, `rcpt`, `headers`,
//! `body`, `end`; default `body`):
//! `verdict` (answers the verdict named by `verdict`: accept, reject, tempfail or discard),
//! `trap` (panics), `loop` (spins forever: the CPU limit must stop it), `alloc` (allocates without
//! end: the memory limit must stop it), `garbage` (answers a reject with a 250 reply: malformed),
//! `remember` (reports, in a header, how many messages this instance has seen: always 1, since
//! every message gets a fresh instance), and `pass`.

use sluice_filter_sdk::{export_filter, log, Config, ConfigError, Filter, Headers, Reaction, Verdict};
use std::sync::atomic::{AtomicU32, Ordering};

/// Messages this instance has seen; fresh instances start at 0.
static SEEN: AtomicU32 = AtomicU32::new(0);

pub struct Faults {
    mode: String,
    at: String,
    verdict: String,
}

impl Faults {
    fn act(&self, here: &str) -> Verdict {
        if self.at != here {
            return Verdict::Continue;
        }
        match self.mode.as_str() {
            "trap" => panic!("faults filter: trap at {here}"),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "garbage" => Verdict::reject(250, "2.0.0", "a reject that is not one"),
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
}

impl Filter for Faults {
    fn new(config: &Config) -> Result<Self, ConfigError> {
        let seen = SEEN.fetch_add(1, Ordering::Relaxed) + 1;
        log::debug(&format!("message number {seen} in this instance"));
        Ok(Faults {
            mode: config.get_or("mode", "pass".to_string())?,
            at: config.get_or("at", "body".to_string())?,
            verdict: config.get_or("verdict", "continue".to_string())?,
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

    fn on_headers(&mut self, _headers: &Headers) -> Reaction {
        let reaction = Reaction::from(self.act("headers"));
        if self.mode == "remember" {
            return reaction.add_header("X-Instance-Messages", SEEN.load(Ordering::Relaxed).to_string());
        }
        reaction
    }

    fn on_body_chunk(&mut self, _chunk: &[u8]) -> Reaction {
        self.act("body").into()
    }

    fn on_end(&mut self) -> Reaction {
        self.act("end").into()
    }
}

export_filter!(Faults);
