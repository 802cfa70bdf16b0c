#![no_main]
//! Message content and header changes through `HeaderSplitter`, `HeaderMeter` and
//! `HeaderSection`: see `checks::header_section`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::checks::header_section(data));
