//! Read deadlines as totals, so a client cannot hold a session by trickling bytes (slow-loris).
//! Pure: the driver tells it the instants and byte counts, then waits for input with a timer set
//! to the deadline it returns (`tokio::time::timeout_at`), so every bound holds even when no byte
//! ever arrives.
//!
//! The earliest of three bounds applies to each wait:
//! * idle: one wait lasts at most `command_timeout` (`data_timeout` inside message content);
//! * a command line: all the waits for one line, once its first byte is in, add up to at most
//!   `command_timeout`;
//! * content (DATA; a BDAT message with its chunks and the commands between them; refused BDAT
//!   octets): all its waits add up to at most `min_data_rate_grace` plus one second per
//!   `min_data_rate` bytes received — after the grace period the client's average rate must stay
//!   above the minimum (Postfix's smtpd_min_data_rate works the same way).
//!
//! Only time spent waiting for the client is charged: while the chain holds the reader (flow
//! control) or the next hop answers, the client's clock stands still.

use std::time::{Duration, Instant};

use super::session::Phase;

/// Beyond any real deadline; keeps `Instant` arithmetic from overflowing on absurd configs.
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    /// Bytes per second, greater than zero.
    pub min_data_rate: u64,
    pub min_data_rate_grace: Duration,
}

/// What the session waits for (`Session::waiting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub phase: Phase,
    /// The command line being read, numbered within the session, once part of it has arrived.
    pub line: Option<u64>,
    /// The content being read, numbered within the session (between BDAT chunks too).
    pub content: Option<u64>,
}

/// Which bound a deadline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Idle,
    CommandLine,
    DataRate,
}

impl Expiry {
    pub fn as_str(self) -> &'static str {
        match self {
            Expiry::Idle => "idle",
            Expiry::CommandLine => "command_line",
            Expiry::DataRate => "data_rate",
        }
    }
}

/// The waiting charged to one command line or one content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Account {
    id: u64,
    waited: Duration,
    bytes: u64,
}

#[derive(Debug)]
pub struct ReadClock {
    limits: ReadLimits,
    line: Option<Account>,
    content: Option<Account>,
    /// When the wait in progress began.
    since: Option<Instant>,
}

impl ReadClock {
    pub fn new(limits: ReadLimits) -> ReadClock {
        ReadClock { limits, line: None, content: None, since: None }
    }

    /// Starts a wait for input at `now`: the instant it must end by, and which bound that is.
    pub fn deadline(&mut self, waiting: Waiting, now: Instant) -> (Instant, Expiry) {
        self.line = continued(self.line, waiting.line);
        self.content = continued(self.content, waiting.content);
        self.since = Some(now);
        let idle = match waiting.phase {
            Phase::Command => self.limits.command_timeout,
            Phase::Content => self.limits.data_timeout,
        };
        let mut bound = (idle, Expiry::Idle);
        if let Some(line) = self.line {
            bound = earlier(bound, (self.limits.command_timeout.saturating_sub(line.waited), Expiry::CommandLine));
        }
        if let Some(content) = self.content {
            let allowed = self.limits.min_data_rate_grace.saturating_add(self.earned(content.bytes));
            bound = earlier(bound, (allowed.saturating_sub(content.waited), Expiry::DataRate));
        }
        (now + bound.0.min(FAR), bound.1)
    }

    /// Ends the wait at `now`, `bytes` having arrived: it is charged to the line and the content
    /// in progress.
    pub fn received(&mut self, bytes: usize, now: Instant) {
        let waited = self.since.take().map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        for account in [&mut self.line, &mut self.content].into_iter().flatten() {
            account.waited = account.waited.saturating_add(waited);
            account.bytes = account.bytes.saturating_add(bytes as u64);
        }
    }

    /// The waiting `bytes` of content pay for at the minimum rate.
    fn earned(&self, bytes: u64) -> Duration {
        let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(self.limits.min_data_rate.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// The account for `id`: the one in progress if it is the same line or content, else a new one.
fn continued(account: Option<Account>, id: Option<u64>) -> Option<Account> {
    match (account, id) {
        (Some(account), Some(id)) if account.id == id => Some(account),
        (_, id) => id.map(|id| Account { id, waited: Duration::ZERO, bytes: 0 }),
    }
}

/// The sooner bound; on a tie `b`, the total, which names what the client is slow at.
fn earlier(a: (Duration, Expiry), b: (Duration, Expiry)) -> (Duration, Expiry) {
    if b.0 <= a.0 {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ReadLimits = ReadLimits {
        command_timeout: Duration::from_secs(3),
        data_timeout: Duration::from_secs(10),
        min_data_rate: 100,
        min_data_rate_grace: Duration::from_secs(2),
    };

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn command(line: Option<u64>) -> Waiting {
        Waiting { phase: Phase::Command, line, content: None }
    }

    fn content(number: u64) -> Waiting {
        Waiting { phase: Phase::Content, line: None, content: Some(number) }
    }

    /// Feeds one byte every `pace` while `waiting` holds; returns the bytes fed before the
    /// deadline fell due and what it was.
    fn trickle(clock: &mut ReadClock, t0: Instant, waiting: Waiting, pace: Duration) -> (usize, Expiry) {
        let mut now = t0;
        for fed in 0.. {
            let (deadline, expiry) = clock.deadline(waiting, now);
            if now + pace > deadline {
                return (fed, expiry);
            }
            now += pace;
            clock.received(1, now);
        }
        unreachable!()
    }

    #[test]
    fn an_idle_wait_is_bounded_by_the_phase_timeout() {
        let mut clock = ReadClock::new(LIMITS);
        let t0 = Instant::now();
        assert_eq!(clock.deadline(command(None), t0), (t0 + ms(3000), Expiry::Idle));
        clock.received(5, t0 + ms(1000));
        // A wait never inherits the previous one's time.
        assert_eq!(clock.deadline(command(None), t0 + ms(2000)), (t0 + ms(5000), Expiry::Idle));
        let fast = Waiting { phase: Phase::Content, line: None, content: None };
        assert_eq!(clock.deadline(fast, t0), (t0 + ms(10_000), Expiry::Idle));
    }

    #[test]
    fn a_trickled_command_line_ends_at_the_command_timeout_in_total() {
        let mut clock = ReadClock::new(LIMITS);
        let t0 = Instant::now();
        // Each read is far inside the 3 s idle bound, yet the line gets 3 s in all.
        let (fed, expiry) = trickle(&mut clock, t0, command(Some(7)), ms(500));
        assert_eq!((fed, expiry), (6, Expiry::CommandLine));
        // The next line starts afresh.
        assert_eq!(clock.deadline(command(Some(8)), t0 + ms(9000)), (t0 + ms(12_000), Expiry::CommandLine));
    }

    #[test]
    fn content_below_the_minimum_rate_ends_after_the_grace_period() {
        let mut clock = ReadClock::new(LIMITS);
        let t0 = Instant::now();
        // 2 bytes/s against 100: the 2 s grace plus 10 ms per byte runs out after 4 bytes.
        assert_eq!(trickle(&mut clock, t0, content(1), ms(500)), (4, Expiry::DataRate));
        // At the minimum rate or above, only the idle bound is left.
        let mut clock = ReadClock::new(LIMITS);
        let mut now = t0;
        for _ in 0..1000 {
            let (deadline, expiry) = clock.deadline(content(2), now);
            assert!(deadline >= now + ms(2000), "{expiry:?}");
            now += ms(1000);
            clock.received(150, now);
        }
        assert_eq!(clock.deadline(content(2), now).1, Expiry::Idle);
    }

    #[test]
    fn a_bdat_message_is_one_content_across_chunks_and_commands() {
        let mut clock = ReadClock::new(LIMITS);
        let t0 = Instant::now();
        clock.deadline(content(3), t0);
        clock.received(1, t0 + ms(1000));
        // Between chunks: a command line, and still the same content.
        let between = Waiting { phase: Phase::Command, line: Some(4), content: Some(3) };
        let (deadline, expiry) = clock.deadline(between, t0 + ms(1000));
        assert_eq!((deadline, expiry), (t0 + ms(2010), Expiry::DataRate));
        // A new content starts with the whole grace period again.
        assert_eq!(clock.deadline(content(4), t0 + ms(3000)), (t0 + ms(5000), Expiry::DataRate));
    }

    #[test]
    fn only_time_spent_waiting_for_the_client_is_charged() {
        let mut clock = ReadClock::new(LIMITS);
        let t0 = Instant::now();
        clock.deadline(command(Some(1)), t0);
        clock.received(1, t0 + ms(1000));
        // 100 s pass in the chain or at the next hop before the next wait: not the client's.
        let (deadline, expiry) = clock.deadline(command(Some(1)), t0 + ms(101_000));
        assert_eq!((deadline, expiry), (t0 + ms(103_000), Expiry::CommandLine));
    }

    #[test]
    fn absurd_limits_do_not_overflow() {
        let endless = Duration::from_secs(u64::MAX);
        let limits = ReadLimits {
            command_timeout: endless,
            data_timeout: endless,
            min_data_rate: 1,
            min_data_rate_grace: endless,
        };
        let mut clock = ReadClock::new(limits);
        let t0 = Instant::now();
        clock.deadline(content(1), t0);
        clock.received(usize::MAX, t0 + ms(1000));
        assert_eq!(clock.deadline(content(1), t0).0, t0 + FAR);
    }
}
