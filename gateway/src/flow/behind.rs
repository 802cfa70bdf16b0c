//! Which stage a pause is due to: the one whose task spent the most time at work on its items
//! while the reader was paused. Bytes held cannot tell: the session hands a whole read to the
//! first inbox at once, before that stage's task can run, so counting bytes blamed the first
//! stage even when it only passes them on in microseconds to a slow stage further on. Time at
//! work tells them apart whatever the scheduling: the slow stage works through the pause. Pure:
//! the caller passes the times.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, Default)]
struct Work {
    /// The task took an item and has not finished it.
    since: Option<Instant>,
    /// Time spent on finished items within the current pause.
    in_pause: Duration,
}

/// The stage tasks' work on one message (one entry per inbox, the spool's last).
#[derive(Debug, Clone, Default)]
pub struct Workload {
    work: Vec<Work>,
    paused_at: Option<Instant>,
}

impl Workload {
    pub fn new(inboxes: usize) -> Workload {
        Workload { work: vec![Work::default(); inboxes], paused_at: None }
    }

    /// Inbox `inbox`'s task took an item.
    pub fn started(&mut self, inbox: usize, now: Instant) {
        if let Some(work) = self.work.get_mut(inbox) {
            work.since = Some(now);
        }
    }

    /// Inbox `inbox`'s task is done with its item (or gone).
    pub fn finished(&mut self, inbox: usize, now: Instant) {
        let worked = self.worked(inbox, now);
        if let Some(work) = self.work.get_mut(inbox) {
            work.in_pause = worked;
            work.since = None;
        }
    }

    pub fn paused(&mut self, now: Instant) {
        self.paused_at = Some(now);
        self.work.iter_mut().for_each(|work| work.in_pause = Duration::ZERO);
    }

    /// How long the current pause has lasted.
    pub fn resumed(&mut self, now: Instant) -> Duration {
        self.paused_at.take().map_or(Duration::ZERO, |at| now.saturating_duration_since(at))
    }

    /// The inbox behind the pause so far: the one whose task worked longest since it began, or
    /// (no work yet) the one holding the most bytes, per `queued`.
    pub fn behind(&self, queued: &[u64], now: Instant) -> usize {
        let held = |i: usize| queued.get(i).copied().unwrap_or(0);
        let inboxes = self.work.len().max(queued.len());
        (0..inboxes).max_by_key(|&i| (self.worked(i, now), held(i), std::cmp::Reverse(i))).unwrap_or(0)
    }

    /// Work within the current pause, the item in hand included; zero while not paused.
    fn worked(&self, inbox: usize, now: Instant) -> Duration {
        let (Some(paused_at), Some(work)) = (self.paused_at, self.work.get(inbox)) else {
            return Duration::ZERO;
        };
        let current = work.since.map_or(Duration::ZERO, |since| now.saturating_duration_since(since.max(paused_at)));
        work.in_pause + current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_stage_working_through_the_pause_is_behind_not_the_one_holding_the_read() {
        // fast → slow → spool. slow is at work on an item; the session hands fast a large read,
        // which pauses the reader before fast has run.
        let t = Instant::now();
        let mut load = Workload::new(3);
        load.started(1, t);
        load.paused(t + ms(1));
        let queued = [300_000, 64_000, 0];
        assert_eq!(load.behind(&queued, t + ms(1)), 0, "no work in the pause yet: the bytes decide");
        // fast passes its items on in microseconds; slow is still at its item, then takes more.
        for i in 0..4 {
            let at = t + ms(1) + Duration::from_micros(10 * i);
            load.started(0, at);
            load.finished(0, at + Duration::from_micros(5));
        }
        assert_eq!(load.behind(&[0, 364_000, 0], t + ms(3)), 1);
        load.finished(1, t + ms(20));
        load.started(1, t + ms(20));
        load.started(2, t + ms(20));
        load.finished(2, t + ms(21));
        assert_eq!(load.behind(&[0, 300_000, 0], t + ms(25)), 1);
        assert_eq!(load.resumed(t + ms(25)), ms(24));
        // A new pause starts from nothing: work before it does not count.
        load.finished(1, t + ms(30));
        load.paused(t + ms(40));
        load.started(0, t + ms(40));
        assert_eq!(load.behind(&[10, 300_000, 0], t + ms(45)), 0, "only fast works in this pause");
    }
}
