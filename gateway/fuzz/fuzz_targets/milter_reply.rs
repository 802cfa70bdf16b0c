#![no_main]
//! A milter's reply stream through `sluice::milter::codec::PacketReader`, in the pieces the
//! first byte picks: see `checks::milter_reply`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::checks::milter_reply(data));
