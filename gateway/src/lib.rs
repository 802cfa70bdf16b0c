//! Sluice: a streaming SMTP gateway. The modules follow the data path: `server` accepts, `smtp`
//! speaks the protocol, `spool` holds the content, `next_hop` hands it to `relay` or `maildir`;
//! `config` describes it all and `cli` is the command line.

pub mod admin;
pub mod allocator;
pub mod chain;
pub mod cli;
pub mod config;
pub mod context;
pub mod ctl;
pub mod dkim_keygen;
pub mod dns;
pub mod filter_test;
pub mod flow;
pub mod inbound_tls;
pub mod logging;
pub mod maildir;
pub mod message_book;
pub mod metrics;
pub mod milter;
pub mod next_hop;
pub mod policy;
pub mod preflight;
pub mod proxy_header;
pub mod relay;
pub mod reload;
pub mod scanner;
pub mod server;
pub mod sessions;
pub mod settings;
pub mod smtp;
pub mod spool;
pub mod wasm;
