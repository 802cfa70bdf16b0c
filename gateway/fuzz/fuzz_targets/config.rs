#![no_main]
//! Config text through `sluice::config::parse` (parsing and validation): see `checks::config`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::checks::config(data));
