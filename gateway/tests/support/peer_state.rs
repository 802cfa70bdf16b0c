//! What a scripted peer (`ScriptedHop`, `ScriptedMilter`) shares between its connection threads
//! and the test: its state under a mutex with a condition variable, so a test waits for what the
//! peer has seen instead of sleeping, and the peer's threads wait to be released or stopped.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::WAIT;

#[derive(Default)]
pub struct Shared<T> {
    state: Mutex<T>,
    changed: Condvar,
}

impl<T> Shared<T> {
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every waiter: call after changing the state through `lock`.
    pub fn notify(&self) {
        self.changed.notify_all();
    }

    /// Changes the state and wakes every waiter.
    pub fn change<R>(&self, change: impl FnOnce(&mut T) -> R) -> R {
        let result = change(&mut self.lock());
        self.notify();
        result
    }

    /// Waits until `done` holds or `timeout` passes (`Duration::MAX`: however long it takes);
    /// the state then.
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&T) -> bool) -> MutexGuard<'_, T> {
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.lock();
        while !done(&state) {
            state = match deadline {
                None => self.changed.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    self.changed.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0
                }
            };
        }
        state
    }

    /// Waits (up to `WAIT`) until `condition` holds; panics naming `what` and the state
    /// (`shown`) otherwise.
    pub fn wait_for(
        &self,
        what: &str,
        condition: impl Fn(&T) -> bool,
        shown: impl Fn(&T) -> String,
    ) -> MutexGuard<'_, T> {
        let state = self.wait_until(WAIT, &condition);
        assert!(condition(&state), "never saw {what}; saw {}", shown(&state));
        state
    }
}
