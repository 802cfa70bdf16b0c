//! Per-client rate windows: how many events (connections, MAIL commands, recipients) each client
//! address had in its current window, shared by every session and kept across reloads. Counted
//! the way Postfix's anvil does: a window opens at a client's first event and lasts the limit's
//! period; in it at most COUNT events are admitted, and the first event after it opens a new one.
//! `Windows` is the pure state (time passed in); `RateTable` puts it behind a lock.
//!
//! Bounded in memory: an entry is dropped once its window is over (swept, oldest first, on every
//! event), and at most `MAX_TRACKED` addresses are tracked per table, so a flood from ever new
//! source addresses evicts the oldest windows instead of growing the table.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::policy::Rate;

/// Addresses tracked per table (about 100 bytes each).
pub const MAX_TRACKED: usize = 100_000;

/// An event refused by its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tripped {
    /// The first refusal in this window (the one worth a log line).
    pub first: bool,
    /// When the window ends.
    pub retry_after: Duration,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    admitted: u32,
    refused: u32,
}

/// The windows of one kind of event, by client key (`client_key`).
#[derive(Debug)]
pub struct Windows {
    open: HashMap<IpAddr, Window>,
    /// Window starts in the order they opened: the oldest first, to sweep and to evict. An
    /// entry whose key has since opened a newer window is stale and skipped.
    order: VecDeque<(Instant, IpAddr)>,
    cap: usize,
}

/// What one client counts as: an IPv4 address (IPv4-mapped IPv6 included) alone, an IPv6
/// address by its /64, which one host or subscriber usually holds whole: keyed by /128, one
/// client could step around every limit by changing the low bits of its address.
pub fn client_key(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

impl Windows {
    pub fn new(cap: usize) -> Windows {
        Windows { open: HashMap::new(), order: VecDeque::new(), cap }
    }

    /// One event of `key` at `now`: admitted and counted while its window has room.
    pub fn hit(&mut self, key: IpAddr, rate: Rate, now: Instant) -> Result<(), Tripped> {
        self.admit(key, rate, now).map(|_| ())
    }

    /// `hit`, saying which window counted the event (its start), for `refund`.
    pub fn admit(&mut self, key: IpAddr, rate: Rate, now: Instant) -> Result<Instant, Tripped> {
        self.sweep(rate.period, now);
        if let Some(window) = self.open.get_mut(&key) {
            let age = now.saturating_duration_since(window.start);
            if age < rate.period {
                if window.admitted < rate.count {
                    window.admitted += 1;
                    return Ok(window.start);
                }
                window.refused = window.refused.saturating_add(1);
                return Err(Tripped { first: window.refused == 1, retry_after: rate.period - age });
            }
        } else if self.open.len() >= self.cap {
            self.evict_oldest();
        }
        self.open.insert(key, Window { start: now, admitted: 1, refused: 0 });
        self.order.push_back((now, key));
        Ok(now)
    }

    /// Takes back an admitted event that did not happen after all (a recipient refused further
    /// on), if the window that counted it (`counted_in`, from `admit`) is still the open one: a
    /// refund never makes room in a later window.
    pub fn refund(&mut self, key: IpAddr, counted_in: Instant) {
        if let Some(window) = self.open.get_mut(&key).filter(|window| window.start == counted_in) {
            window.admitted = window.admitted.saturating_sub(1);
        }
    }

    /// Drops the windows over at `now`, oldest first.
    fn sweep(&mut self, period: Duration, now: Instant) {
        while let Some(&(start, key)) = self.order.front() {
            if now.saturating_duration_since(start) < period {
                break;
            }
            self.order.pop_front();
            if self.open.get(&key).is_some_and(|window| window.start == start) {
                self.open.remove(&key);
            }
        }
    }

    fn evict_oldest(&mut self) {
        while let Some((start, key)) = self.order.pop_front() {
            if self.open.get(&key).is_some_and(|window| window.start == start) {
                self.open.remove(&key);
                return;
            }
        }
    }
}

/// `Windows` shared by the sessions.
#[derive(Debug)]
pub struct RateTable(Mutex<Windows>);

impl Default for RateTable {
    fn default() -> Self {
        RateTable(Mutex::new(Windows::new(MAX_TRACKED)))
    }
}

impl RateTable {
    pub fn hit(&self, client: IpAddr, rate: Rate, now: Instant) -> Result<(), Tripped> {
        self.lock().hit(client_key(client), rate, now)
    }

    pub fn admit(&self, client: IpAddr, rate: Rate, now: Instant) -> Result<Instant, Tripped> {
        self.lock().admit(client_key(client), rate, now)
    }

    pub fn refund(&self, client: IpAddr, counted_in: Instant) {
        self.lock().refund(client_key(client), counted_in)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The tables of every limit, in `Context`: they outlive settings generations, so a reload
/// neither forgets a client's count nor starts one anew.
#[derive(Debug, Default)]
pub struct RateTables {
    pub connections: RateTable,
    pub messages: RateTable,
    pub recipients: RateTable,
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn rate(count: u32, secs: u64) -> Rate {
        Rate { count, period: Duration::from_secs(secs) }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn tripped_at_exactly_count_plus_one_and_reset_after_the_period() {
        let mut windows = Windows::new(10);
        let t0 = Instant::now();
        let limit = rate(3, 10);
        for i in 0..3 {
            assert_eq!(windows.hit(A, limit, t0 + secs(i)), Ok(()), "event {}", i + 1);
        }
        assert_eq!(windows.hit(A, limit, t0 + secs(4)), Err(Tripped { first: true, retry_after: secs(6) }));
        assert_eq!(windows.hit(A, limit, t0 + secs(9)), Err(Tripped { first: false, retry_after: secs(1) }));
        // Another client has its own window.
        assert_eq!(windows.hit(B, limit, t0 + secs(9)), Ok(()));
        // The window opened at the first event: 10 s later it is over, whatever came since.
        let later = t0 + secs(10);
        assert_eq!(windows.hit(A, limit, later), Ok(()));
        assert_eq!(windows.hit(A, limit, later), Ok(()));
        assert_eq!(windows.hit(A, limit, later), Ok(()));
        assert_eq!(windows.hit(A, limit, later), Err(Tripped { first: true, retry_after: secs(10) }));
    }

    #[test]
    fn a_refund_frees_room_in_the_open_window_only() {
        let mut windows = Windows::new(10);
        let t0 = Instant::now();
        let limit = rate(1, 10);
        let first = windows.admit(A, limit, t0).unwrap();
        windows.refund(A, first);
        assert_eq!(windows.hit(A, limit, t0 + secs(2)), Ok(()));
        assert!(windows.hit(A, limit, t0 + secs(3)).is_err());
        // An event counted in one window and refunded once the next is open changes nothing
        // in the next one.
        let counted_in = first;
        assert_eq!(windows.hit(A, limit, t0 + secs(10)), Ok(()));
        windows.refund(A, counted_in);
        assert!(windows.hit(A, limit, t0 + secs(11)).is_err());
    }

    #[test]
    fn windows_over_are_swept_and_the_table_never_exceeds_its_cap() {
        let mut windows = Windows::new(100);
        let t0 = Instant::now();
        let limit = rate(5, 60);
        for i in 0..1000u32 {
            let client = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(windows.hit(client, limit, t0 + Duration::from_millis(u64::from(i))), Ok(()));
            assert!(windows.open.len() <= 100);
        }
        // The oldest went first: the newest 100 are tracked (the last one is counted).
        let last = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + 999));
        for _ in 0..4 {
            windows.hit(last, limit, t0 + secs(2)).unwrap();
        }
        assert!(windows.hit(last, limit, t0 + secs(2)).is_err());
        assert!(windows.order.len() <= 101, "{}", windows.order.len());
        // Once every window is over, one event sweeps them all.
        windows.hit(A, limit, t0 + secs(120)).unwrap();
        assert_eq!(windows.open.len(), 1);
        assert_eq!(windows.order.len(), 1);
    }

    #[test]
    fn a_reopened_window_leaves_no_stale_entry_behind() {
        let mut windows = Windows::new(10);
        let t0 = Instant::now();
        let limit = rate(2, 1);
        for i in 0..50 {
            windows.hit(A, limit, t0 + secs(i)).unwrap();
        }
        assert_eq!((windows.open.len(), windows.order.len()), (1, 1));
    }

    #[test]
    fn clients_are_keyed_by_ipv4_address_and_ipv6_slash_64() {
        let key = |text: &str| client_key(text.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.1"), "192.0.2.1");
        assert_eq!(key("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::1"), "::");
    }
}
