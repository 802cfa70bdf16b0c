//! The latest message lines of the transaction log, kept for the dashboard: the last 200, each
//! numbered, so the event stream sends each line once (`since`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::admin::views::MessageView;

/// Lines kept.
pub const KEPT: usize = 200;

#[derive(Default)]
pub struct MessageBook {
    /// (number, line), oldest first; numbers count from 1. Shared lines: what is copied under
    /// the lock, which sessions take to add theirs, is a reference.
    lines: Mutex<VecDeque<(u64, Arc<MessageView>)>>,
}

impl MessageBook {
    pub fn push(&self, line: MessageView) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let number = lines.back().map_or(1, |(n, _)| n + 1);
        if lines.len() == KEPT {
            lines.pop_front();
        }
        lines.push_back((number, Arc::new(line)));
    }

    /// The lines numbered up to `mark`, oldest first.
    pub fn upto(&self, mark: u64) -> Vec<MessageView> {
        let shared: Vec<Arc<MessageView>> = {
            let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
            lines.iter().filter(|(n, _)| *n <= mark).map(|(_, line)| line.clone()).collect()
        };
        shared.iter().map(|line| MessageView::clone(line)).collect()
    }

    /// The lines numbered above `seen`, oldest first, and the number of the last one (`seen`
    /// when there is none).
    pub fn since(&self, seen: u64) -> (Vec<MessageView>, u64) {
        let (shared, last): (Vec<Arc<MessageView>>, u64) = {
            let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
            let last = lines.back().map_or(seen, |(n, _)| *n);
            (lines.iter().filter(|(n, _)| *n > seen).map(|(_, line)| line.clone()).collect(), last)
        };
        (shared.iter().map(|line| MessageView::clone(line)).collect(), last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: u64) -> MessageView {
        MessageView {
            at_ms: n,
            transaction: format!("t{n}"),
            client: "127.0.0.1:1".into(),
            from: "a@x.test".into(),
            rcpts: vec!["b@x.test".into()],
            result: "accepted".into(),
            stage: None,
            reason: None,
            reply: "250 2.0.0 Ok".into(),
            size: 10,
            duration_ms: 1,
        }
    }

    #[test]
    fn keeps_the_last_lines_and_gives_each_once() {
        let book = MessageBook::default();
        assert_eq!(book.since(0), (vec![], 0));
        for n in 1..=250 {
            book.push(line(n));
        }
        let (all, last) = book.since(0);
        assert_eq!((all.len(), all[0].at_ms, last), (KEPT, 51, 250));
        book.push(line(251));
        let (new, last) = book.since(250);
        assert_eq!((new, last), (vec![line(251)], 251));
        assert_eq!(book.since(251), (vec![], 251));
        assert_eq!(book.upto(52).iter().map(|l| l.at_ms).collect::<Vec<_>>(), vec![52]);
    }
}
