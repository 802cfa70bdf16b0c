//! Verdict folding: which stage decides a message, and from when the rest of its content no longer
//! matters. The rule does not depend on timing: **the earliest stage in chain order that ends the
//! message wins** — with reject, tempfail, discard, or its failure's `on_error` verdict. Once a
//! stage has decided, the stages after it are not called again (their verdict could not win), but
//! the stages before it still see the whole message, because any of them may still decide and
//! would win. So the outcome is that of the lowest-index stage that decides on the full content,
//! however fast each stage answers. The content is *settled* — the client's remaining bytes may be
//! read and dropped, and the flow controller told `EarlyVerdict` — only once every stage before
//! the decider can no longer decide (it accepted, was bypassed, decided itself or is past the end).

use std::sync::Mutex;

use super::stage::Verdict;

/// One transaction's verdict, shared by the session task (envelope phase) and the stage tasks.
pub struct Decision {
    state: Mutex<State>,
}

struct State {
    /// The transaction's stages in chain order. Names are unique (config validation), so a
    /// stage's name gives its position.
    names: Vec<String>,
    /// Per stage: it may still be called, so it may still decide.
    open: Vec<bool>,
    /// The winning verdict so far and its stage's position.
    verdict: Option<(usize, Verdict)>,
    /// Why the winning stage decided (its verdict, or its failure), for the transaction's log line.
    reason: String,
    /// Whether `settled` has become true (it is announced once).
    settled: bool,
}

impl State {
    fn settles(&mut self) -> bool {
        let settled = match &self.verdict {
            Some((decider, _)) => self.open.iter().take(*decider).all(|open| !open),
            None => false,
        };
        let news = settled && !self.settled;
        self.settled |= settled;
        news
    }
}

impl Decision {
    /// A decision over these stages (their names, in chain order).
    pub fn new(names: Vec<String>) -> Decision {
        let open = vec![true; names.len()];
        Decision { state: Mutex::new(State { names, open, verdict: None, reason: String::new(), settled: false }) }
    }

    /// Records a stage's final verdict (reject, tempfail, discard). It replaces the verdict so far
    /// if it comes from an earlier stage; the stage is not called again either way. Returns
    /// whether this settled the message (announce `EarlyVerdict` then). `reason` says why, for the
    /// transaction's log line.
    pub fn decide(&self, stage: &str, verdict: Verdict, reason: &str) -> bool {
        let mut state = self.lock();
        // An unknown name cannot occur; ranked after every stage, its verdict still counts.
        let position = state.names.iter().position(|name| name == stage).unwrap_or(state.names.len());
        if state.verdict.as_ref().is_none_or(|(decider, _)| position < *decider) {
            state.verdict = Some((position, verdict));
            state.reason = reason.to_string();
        }
        if let Some(open) = state.open.get_mut(position) {
            *open = false;
        }
        state.settles()
    }

    /// Stage `index` will not be called again (it accepted, was bypassed, passed the end or its
    /// task ended), so it can no longer decide. Returns whether this settled the message.
    pub fn close(&self, index: usize) -> bool {
        let mut state = self.lock();
        if let Some(open) = state.open.get_mut(index) {
            *open = false;
        }
        state.settles()
    }

    /// Whether the message still matters to stage `index`: no stage at or before it has decided.
    /// Only then is the stage called, and only then does it pass body content on.
    pub fn reaches(&self, index: usize) -> bool {
        self.lock().verdict.as_ref().is_none_or(|(decider, _)| index < *decider)
    }

    /// Whether the message's fate is decided for good: a verdict that no stage still open can
    /// overturn. From then on the client's content is dropped as it arrives.
    pub fn is_decided(&self) -> bool {
        self.lock().settled
    }

    /// The winning verdict so far and its stage (final once every stage task has ended).
    pub fn get(&self) -> Option<(String, Verdict)> {
        let state = self.lock();
        let (position, verdict) = state.verdict.clone()?;
        let name = state.names.get(position).cloned().unwrap_or_default();
        Some((name, verdict))
    }

    /// Why the winning stage decided (empty while none has).
    pub fn reason(&self) -> String {
        self.lock().reason.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::Reply;

    fn decision(n: usize) -> Decision {
        Decision::new((0..n).map(|i| format!("s{i}")).collect())
    }

    fn reject() -> Verdict {
        Verdict::Reject(Reply::new(550, "5.7.1", "no"))
    }

    fn tempfail() -> Verdict {
        Verdict::Tempfail(Reply::new(451, "4.7.1", "later"))
    }

    #[test]
    fn the_earliest_stage_wins_whatever_the_order_of_answers() {
        for later_first in [false, true] {
            let decision = decision(3);
            if later_first {
                assert!(!decision.decide("s2", reject(), "test"), "s0 and s1 may still decide");
                assert!(!decision.decide("s1", tempfail(), "test"));
            } else {
                assert!(!decision.decide("s1", tempfail(), "test"));
                assert!(!decision.decide("s2", reject(), "test"));
            }
            assert_eq!(decision.get(), Some(("s1".to_string(), tempfail())));
            assert!(decision.reaches(0) && !decision.reaches(1) && !decision.reaches(2));
            assert!(!decision.is_decided());
            assert!(decision.close(0), "the last stage before the decider closes: settled");
            assert!(decision.is_decided());
            assert_eq!(decision.get(), Some(("s1".to_string(), tempfail())));
        }
    }

    #[test]
    fn the_first_stage_settles_at_once_and_settling_is_announced_once() {
        let decision = decision(2);
        assert!(decision.reaches(1) && decision.get().is_none());
        assert!(decision.decide("s0", Verdict::Discard, "test"));
        assert!(!decision.decide("s1", reject(), "test"), "already settled; a later stage cannot win");
        assert!(!decision.close(1) && !decision.close(0));
        assert_eq!(decision.get(), Some(("s0".to_string(), Verdict::Discard)));
    }

    #[test]
    fn closed_stages_before_a_late_decider_settle_it() {
        let decision = decision(3);
        assert!(!decision.close(0) && !decision.close(1), "no verdict: nothing to settle");
        assert!(!decision.is_decided());
        assert!(decision.decide("s2", reject(), "test"));
        assert!(decision.is_decided() && !decision.reaches(2) && decision.reaches(1));
    }
}
