//! Milter stages: the filters operators already run (OpenDKIM, clamav-milter, rspamd's proxy),
//! spoken to over the Sendmail/Postfix milter protocol as stages of the chain, beside wasm
//! filters. `codec` is the protocol as bytes (pure), `link` one connection with its deadlines,
//! `stage` the chain's events as milter commands, `translate` the pure mapping both ways, `modifications`
//! the end-of-message changes as the chain's.

pub mod address;
pub mod codec;
pub mod link;
pub mod modifications;
pub mod stage;
pub mod translate;
