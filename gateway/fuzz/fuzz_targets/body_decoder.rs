#![no_main]
//! Fuzzes `BodyDecoder`, the DATA/BDAT content decoder, against the naive reference model in
//! `sluice_fuzz` (see src/lib.rs):
//!
//! - `Raw`: arbitrary wire bytes, fed in arbitrary pieces. The output must be CRLF-clean, equal to
//!   the reference (content, end of DATA, bytes consumed, bare line-ending count), and the same
//!   whatever the piece sizes. DATA may only end on `CRLF.CRLF` (or `.CRLF` at the very start).
//! - `RoundTrip`: content built from lines, dot-stuffed and terminated with `.CRLF`, followed by
//!   whatever the client pipelines next. Decoding must give the content back exactly when its lines
//!   have no bare CR/LF (and its normalized form otherwise), and consume exactly up to `.CRLF`.

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sluice::smtp::parser::{BodyDecoder, Framing};
use sluice_fuzz::{
    crlf_clean, dot_stuff, ends_with_line_end, normalize, pieces, reference_counted, reference_data, Decoded,
};

#[derive(Arbitrary, Debug)]
enum Case {
    Raw { wire: Vec<u8>, splits: Vec<u8>, framing: WireFraming },
    RoundTrip { lines: Vec<Vec<u8>>, trailer: Vec<u8>, splits: Vec<u8> },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum WireFraming {
    Data,
    Bdat,
}

/// Runs the decoder over `wire` cut into `splits` pieces, stopping at the end of DATA.
fn decode<T: Copy + Into<usize>>(framing: Framing, wire: &[u8], splits: &[T]) -> Decoded {
    let mut decoder = BodyDecoder::new(framing);
    let mut out = Vec::new();
    let mut consumed = 0;
    let mut ended = false;
    for piece in pieces(wire.len(), splits) {
        let len = piece.len();
        let (used, done) = decoder.decode(&wire[piece], &mut out);
        consumed += used;
        // Every byte of a piece is used unless DATA ended inside it.
        assert!(used == len || (done && used < len), "used {used} of {len} bytes, done = {done}");
        assert!(used > 0, "no progress on a non-empty piece");
        if done {
            ended = true;
            break;
        }
    }
    if framing == Framing::Counted {
        assert!(!ended, "counted content never ends by itself");
        decoder.finish(&mut out);
    }
    Decoded { out, consumed, ended, bare: decoder.bare_line_endings() }
}

fn check_data(wire: &[u8], splits: &[u8]) -> Decoded {
    let got = decode(Framing::DotTerminated, wire, splits);
    assert!(crlf_clean(&got.out), "bare CR or LF in decoded content: {:?}", got.out);
    assert_eq!(got, reference_data(wire), "decoder and reference disagree");
    let whole = decode(Framing::DotTerminated, wire, &[wire.len()]);
    assert_eq!(got, whole, "result depends on the piece sizes");
    if got.ended {
        // The smuggling guard: only CRLF.CRLF (or .CRLF as the very first line) ends DATA.
        let used = &wire[..got.consumed];
        assert!(used == b".\r\n" || used.ends_with(b"\r\n.\r\n"), "DATA ended on {used:?}");
        assert!(ends_with_line_end(&got.out));
    }
    got
}

fn check_bdat(wire: &[u8], splits: &[u8]) {
    let got = decode(Framing::Counted, wire, splits);
    assert!(crlf_clean(&got.out), "bare CR or LF in decoded content: {:?}", got.out);
    assert!(ends_with_line_end(&got.out), "counted content must end with CRLF: {:?}", got.out);
    assert_eq!(got.consumed, wire.len());
    assert_eq!((got.out, got.bare), reference_counted(wire), "decoder and reference disagree");
}

fuzz_target!(|case: Case| match case {
    Case::Raw { wire, splits, framing: WireFraming::Data } => {
        check_data(&wire, &splits);
    }
    Case::Raw { wire, splits, framing: WireFraming::Bdat } => check_bdat(&wire, &splits),
    Case::RoundTrip { lines, trailer, splits } => {
        let mut content = Vec::new();
        for line in &lines {
            content.extend_from_slice(line);
            content.extend_from_slice(b"\r\n");
        }
        let mut wire = dot_stuff(&content);
        let end = wire.len() + 3;
        wire.extend_from_slice(b".\r\n");
        wire.extend_from_slice(&trailer);
        let got = check_data(&wire, &splits);
        assert!(got.ended, "dot-stuffed content did not end at its .CRLF");
        assert_eq!(got.consumed, end, "DATA ended early or late");
        let (normalized, bare) = normalize(&content);
        if bare == 0 {
            assert_eq!(got.out, content, "round trip changed the content");
        }
        assert_eq!((got.out, got.bare), (normalized, bare));
    }
});
