//! Logging into the gateway's log (subsystem `filters`, with the stage and session attached).
//! Natively (unit tests) lines are kept for `testing` to return.

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

#[cfg(target_arch = "wasm32")]
pub fn log(level: Level, message: &str) {
    use crate::bindings::sluice::filter::host::{self, Level as HostLevel};
    let level = match level {
        Level::Trace => HostLevel::Trace,
        Level::Debug => HostLevel::Debug,
        Level::Info => HostLevel::Info,
        Level::Warn => HostLevel::Warn,
        Level::Error => HostLevel::Error,
    };
    host::log(level, message);
}

#[cfg(not(target_arch = "wasm32"))]
thread_local! {
    pub(crate) static CAPTURED: std::cell::RefCell<Vec<(Level, String)>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(not(target_arch = "wasm32"))]
pub fn log(level: Level, message: &str) {
    CAPTURED.with(|lines| lines.borrow_mut().push((level, message.to_string())));
}

pub fn debug(message: &str) {
    log(Level::Debug, message);
}

pub fn info(message: &str) {
    log(Level::Info, message);
}

pub fn warn(message: &str) {
    log(Level::Warn, message);
}

pub fn error(message: &str) {
    log(Level::Error, message);
}
