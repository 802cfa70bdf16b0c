//! The SMTP front end: pure protocol core (`parser`, `command`, `session` with its `content`
//! accounting and `header_meter`, `reply`, and the read `deadline`s) and the one async loop per
//! connection that drives it (`conn`), with its one log line per transaction (`transaction_log`).

pub mod command;
pub mod conn;
mod content;
pub mod deadline;
pub mod header_meter;
pub mod parser;
pub mod reply;
pub mod session;
mod transaction_log;
