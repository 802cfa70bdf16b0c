//! Sluice: a streaming SMTP gateway. The modules follow the data path: `smtp` receives,
//! `spool` holds, `relay`/`maildir` deliver; `config` describes it all.

pub mod config;
pub mod smtp;
