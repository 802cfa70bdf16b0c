//! The `required_domains` policy: mail whose From domain is listed must carry a passing DKIM
//! signature of that very domain (`d=` equal to it, without case), else it is rejected (550
//! 5.7.20) or, with `on_missing = "tempfail"`, tempfailed (451 4.7.5); a signature of the domain
//! whose key lookup failed for now tempfails it whatever `on_missing` says, as a retry may pass.

use sluice_dkim::{DkimResult, ResultInfo};
use sluice_filter_sdk::Verdict;

use crate::config::{OnMissing, Settings};

/// The verdict on a message From `authors` (lower case) given its signatures' `results`:
/// `Accept` when every listed author domain has a passing signature (or none is listed).
pub fn decide(settings: &Settings, authors: &[String], results: &[ResultInfo]) -> Verdict {
    for domain in authors.iter().filter(|domain| settings.requires(domain)) {
        let of_domain = |result: DkimResult| {
            results.iter().find(|info| {
                info.result == result
                    && info.domain.as_deref().is_some_and(|d| d.trim_end_matches('.').eq_ignore_ascii_case(domain))
            })
        };
        if of_domain(DkimResult::Pass).is_some() {
            continue;
        }
        let missing = format!("No valid DKIM signature from {domain}");
        return match (of_domain(DkimResult::TempError), settings.on_missing) {
            (Some(info), _) => {
                let why = info.reason.as_deref().unwrap_or("temporary error");
                Verdict::tempfail(451, "4.7.5", format!("{missing} yet ({why}); try again later"))
            }
            (None, OnMissing::Tempfail) => Verdict::tempfail(451, "4.7.5", missing),
            (None, OnMissing::Reject) => Verdict::reject(550, "5.7.20", missing),
        };
    }
    Verdict::Accept
}
