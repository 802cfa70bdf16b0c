//! Key records, looked up through the host's resolver (`<selector>._domainkey.<domain>` TXT),
//! once per name per message, and what a lookup without a usable answer means for a signature
//! (RFC 6376 §6.1.2: no record is a permanent error, a failed lookup a temporary one).

use sluice_dkim::{DkimResult, KeyRecord};
use sluice_filter_sdk::dns::{self, DnsError};

/// A lookup that gave no key record: the result of the signature that needs it, and why.
pub type NoKey = (DkimResult, String);

/// The answers of one message's lookups, by name (lower case).
#[derive(Default)]
pub struct KeyLookups {
    answers: Vec<(String, Result<String, NoKey>)>,
}

impl KeyLookups {
    /// The text of the key record published at `name`.
    pub fn record(&mut self, name: &str) -> Result<String, NoKey> {
        let name = name.to_ascii_lowercase();
        if let Some((_, answer)) = self.answers.iter().find(|(seen, _)| *seen == name) {
            return answer.clone();
        }
        let answer = look_up(&name);
        self.answers.push((name, answer.clone()));
        answer
    }
}

fn look_up(name: &str) -> Result<String, NoKey> {
    let not_found = || (DkimResult::PermError, format!("no key record at {name}"));
    match dns::txt(name) {
        // Several records at one name are undefined (RFC 6376 §3.6.2.2): the first that reads as
        // a key record is taken, else the first, whose error is then reported.
        Ok(records) => records
            .iter()
            .find(|text| KeyRecord::parse(text).is_ok())
            .or(records.first())
            .cloned()
            .ok_or_else(not_found),
        Err(DnsError::NotFound) => Err(not_found()),
        Err(err @ (DnsError::Timeout | DnsError::ServerFailure)) => {
            Err((DkimResult::TempError, format!("key lookup failed: {err}")))
        }
        Err(DnsError::BadName) => Err((DkimResult::PermError, format!("{name} is not a valid domain name"))),
    }
}
