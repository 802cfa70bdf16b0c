//! Write [Sluice](https://example.org/sluice) mail filters in Rust.
//!
//! A filter is a WebAssembly component (target `wasm32-wasip2`) implementing the WIT world
//! `sluice:filter/filter` (`wit/filter.wit`; `filter-with-dns` once it calls [`dns::txt`]: the
//! component imports only the interfaces the filter uses). With this crate you implement one trait, whose
//! hooks all default to "continue", and export it with one macro; you never touch the raw
//! bindings. Each message gets a fresh instance of your type: keep per-message state in it.
//!
//! # A complete filter
//!
//! ```
//! use sluice_filter_sdk::{export_filter, Config, ConfigError, Filter, Headers, Reaction, Verdict};
//!
//! /// Refuses mail whose Subject contains a configured word; tags the rest.
//! pub struct NoWord {
//!     word: String,
//! }
//!
//! impl Filter for NoWord {
//!     fn new(config: &Config) -> Result<Self, ConfigError> {
//!         Ok(NoWord { word: config.require("word")? })
//!     }
//!
//!     fn on_headers(&mut self, headers: &Headers) -> Reaction {
//!         match headers.get("Subject") {
//!             Some(subject) if subject.contains(&self.word) => {
//!                 Verdict::reject(550, "5.7.1", format!("No {} here", self.word)).into()
//!             }
//!             _ => Reaction::carry_on().add_header("X-No-Word", "checked"),
//!         }
//!     }
//! }
//!
//! export_filter!(NoWord);
//!
//! // Natively, in a unit test:
//! use sluice_filter_sdk::testing::{run, TestMessage};
//! let outcome = run::<NoWord>(&[("word", "lottery")], &TestMessage::new("Subject: lottery win\r\n\r\nhi\r\n")).unwrap();
//! assert_eq!(outcome.verdict, Verdict::reject(550, "5.7.1", "No lottery here"));
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type `cdylib`) and point a
//! stage at the `.wasm` file:
//!
//! ```toml
//! [[stage]]
//! name = "no-word"
//! kind = "wasm"
//! path = "target/wasm32-wasip2/release/no_word.wasm"
//! [stage.config]
//! word = "lottery"
//! ```
//!
//! `sluice filter-test FILTER.wasm --eml MESSAGE --config word=lottery` runs it offline in the
//! real host and prints every verdict and change.
//!
//! # Configuration
//! Read every key in `new` (or `interests`) and refuse what you cannot use with a `ConfigError`
//! naming the key. The host runs both once when it loads the filter (`validate-config` in the
//! contract), so `sluice check-config`, the start and every reload report
//! `FILE:LINE: stage "NAME": [stage.config] KEY: MESSAGE`, and warn about keys you never read.
//! [`check_config`] shows in a unit test what the host would see.
//!
//! # Files, keys and DNS
//! A filter has no filesystem: the operator names files in `[stage.files]` and the host hands
//! their bytes to [`Config::file`] (read them in `new`, refuse a bad one with
//! [`ConfigError::file`]). Private keys go in `[stage.keys]`: the host holds them and signs with
//! them ([`Config::key`], [`keys::HostKey::sign`]); the filter never gets their bytes.
//! [`dns::txt`] looks up TXT records through the host's resolver, for a stage granted
//! `capabilities = ["dns"]`. [`Headers::raw_section`] gives the header section byte for byte.
//! [`testing::TestHost`] supplies all four in unit tests.
//!
//! # Semantics in short
//! Calls come in order: connect, helo, mail-from, each rcpt-to, headers, body chunks, end. A
//! verdict other than `Continue` ends calls for the message (`Accept` passes it on; reject,
//! tempfail and discard decide it). A reject or tempfail at rcpt-to refuses only that recipient.
//! Header changes at `on_headers` are seen by later filters; at `on_end` they apply before relay.
//! A panic, running past the CPU or memory bounds, or a malformed answer is a failure of the stage,
//! handled by its `on_error` policy. Flow control is the host's: just answer each call.

mod config;
pub mod dns;
pub mod keys;
pub mod log;
mod raw;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
mod types;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod adapter;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "filter-with-dns",
        pub_export_macro: true,
        export_macro_name: "__export_filter_world",
        default_bindings_module: "::sluice_filter_sdk::bindings",
    });
}

pub use config::{Config, ConfigError};
pub use types::{BodyOutput, Event, Header, HeaderChange, Headers, Interests, Reaction, Reply, Verdict};

/// A mail filter. One value per message; every hook defaults to "continue, no changes".
pub trait Filter: Sized + 'static {
    /// The events this filter needs, decided from the configuration alone (the host asks once
    /// per load). Leave out `Event::Body` if you never look at the body: the host then skips
    /// copying it into the filter.
    fn interests(_config: &Config) -> Interests {
        Interests::ALL
    }

    /// Starts a message. Read every configuration key you use here (or in `interests`), and
    /// refuse a configuration you cannot work with by returning an error naming the key: the host
    /// runs `interests` and `new` once when it loads the filter (see [`check_config`]), so the
    /// error reaches the operator at start, `check-config` or reload, never at a message, and
    /// keys neither read are reported as unknown.
    fn new(config: &Config) -> Result<Self, ConfigError>;

    /// The client's address, `ip:port`.
    fn on_connect(&mut self, _peer: &str) -> Verdict {
        Verdict::Continue
    }

    /// The HELO/EHLO name.
    fn on_helo(&mut self, _name: &str) -> Verdict {
        Verdict::Continue
    }

    /// The sender, without angle brackets; empty for the null sender.
    fn on_mail_from(&mut self, _address: &str) -> Verdict {
        Verdict::Continue
    }

    /// One recipient; a reject or tempfail refuses only this recipient.
    fn on_rcpt_to(&mut self, _address: &str) -> Verdict {
        Verdict::Continue
    }

    /// The complete header section.
    fn on_headers(&mut self, _headers: &Headers) -> Reaction {
        Reaction::carry_on()
    }

    /// The next piece of the body (CRLF line endings; pieces are not aligned to lines).
    fn on_body_chunk(&mut self, _chunk: &[u8]) -> Reaction {
        Reaction::carry_on()
    }

    /// End of the message: last chance to decide, sign (header changes) or append to the body.
    fn on_end(&mut self) -> Reaction {
        Reaction::carry_on()
    }
}

/// The filter's check of its configuration, as the host runs it once at load
/// (`validate-config`): `F::interests` and `F::new` on `config`, the value dropped. Returns the
/// keys neither read (unknown or misspelt keys, which the host warns about), or the filter's
/// refusal. Call it in unit tests to see what an operator would see.
pub fn check_config<F: Filter>(config: &Config) -> Result<Vec<String>, ConfigError> {
    F::interests(config);
    drop(F::new(config)?);
    Ok(config.unread_keys())
}

/// Exports a `Filter` type as the component's implementation of `sluice:filter/filter`.
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct SluiceFilterComponent;
            impl $crate::bindings::exports::sluice::filter::handler::Guest for SluiceFilterComponent {
                type Message = $crate::adapter::Adapter<$filter>;
                fn wants() -> $crate::bindings::exports::sluice::filter::handler::Interests {
                    $crate::adapter::wants::<$filter>()
                }
                fn validate_config() -> Result<
                    $crate::bindings::sluice::filter::types::ConfigReport,
                    $crate::bindings::sluice::filter::types::ConfigProblem,
                > {
                    $crate::adapter::validate_config::<$filter>()
                }
            }
    $crate::bindings::__export_filter_world!(SluiceFilterComponent with_types_in $crate::bindings);
        };
    };
}
