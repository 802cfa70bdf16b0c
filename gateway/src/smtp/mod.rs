//! The SMTP front end: pure protocol core (`parser`, `command`, `session`, `reply`) and the one
//! async loop per connection that drives it (`conn`).

pub mod command;
pub mod conn;
pub mod parser;
pub mod reply;
pub mod session;
