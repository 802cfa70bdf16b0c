#![no_main]
//! Connection bytes through `sluice::proxy_header::parse`, whole and as a listener reads them
//! in pieces: see `checks::proxy_header`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::checks::proxy_header(data));
