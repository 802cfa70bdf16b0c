//! Body canonicalisation (RFC 6376 §3.4.3 simple, §3.4.4 relaxed) and the body hash (`bh=`),
//! streaming: chunks of any size in, state carried across chunk boundaries, memory independent of
//! the body's size.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Body canonicalisation algorithm (the part of `c=` after the slash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyCanon {
    Simple,
    Relaxed,
}

/// What one body hash depends on: a verifier needs one [`BodyHasher`] per distinct spec among
/// the signatures of a message, not one per signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BodyHashSpec {
    pub canon: BodyCanon,
    /// `l=`: only this many canonical octets are hashed.
    pub limit: Option<u64>,
}

/// A finished body hash (SHA-256 of the canonical body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyHash {
    pub digest: [u8; 32],
    /// Octets of the canonical body, counted beyond `l=` too: a body shorter than `l=` is visible.
    pub canonical_len: u64,
}

impl BodyHash {
    /// The `bh=` value.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.digest)
    }
}

/// Streams a body into its canonical form and hashes it. Only pending line ends and whitespace
/// are held between chunks: empty lines are held back until non-empty content follows (the
/// empty lines at the end are not part of the canonical body), a CR until the next byte shows
/// whether it ends a line, and for relaxed a whitespace run until the line goes on.
pub struct BodyHasher {
    spec: BodyHashSpec,
    hasher: Sha256,
    hashed: u64,
    canonical_len: u64,
    /// Line ends (CRLF) seen but not yet emitted.
    pending_crlfs: u64,
    /// A CR seen as the last byte so far.
    pending_cr: bool,
    /// Relaxed: whitespace seen since the last emitted byte of this line.
    pending_wsp: bool,
    /// Something was emitted after the last emitted CRLF (the line is open).
    line_open: bool,
    emitted_any: bool,
}

impl BodyHasher {
    pub fn new(spec: BodyHashSpec) -> BodyHasher {
        BodyHasher {
            spec,
            hasher: Sha256::new(),
            hashed: 0,
            canonical_len: 0,
            pending_crlfs: 0,
            pending_cr: false,
            pending_wsp: false,
            line_open: false,
            emitted_any: false,
        }
    }

    pub fn spec(&self) -> BodyHashSpec {
        self.spec
    }

    /// Feeds the next chunk of the body (after dot-unstuffing, CRLF line ends).
    pub fn update(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if self.pending_cr {
                self.pending_cr = false;
                if chunk[0] == b'\n' {
                    self.pending_crlfs += 1;
                    self.pending_wsp = false;
                    chunk = &chunk[1..];
                    continue;
                }
                // A bare CR is line content.
                self.emit_content(b"\r");
            }
            let special = chunk.iter().position(|&b| matches!(b, b'\r' | b' ' | b'\t'));
            let plain = &chunk[..special.unwrap_or(chunk.len())];
            if !plain.is_empty() {
                self.emit_content(plain);
            }
            let Some(at) = special else { break };
            match chunk[at] {
                b'\r' => self.pending_cr = true,
                wsp => match self.spec.canon {
                    BodyCanon::Relaxed => self.pending_wsp = true,
                    BodyCanon::Simple => self.emit_content(&[wsp]),
                },
            }
            chunk = &chunk[at + 1..];
        }
    }

    /// The body ended: settles what is pending and returns the hash.
    pub fn finish(mut self) -> BodyHash {
        if self.pending_cr {
            self.pending_cr = false;
            self.emit_content(b"\r");
        }
        // Trailing whitespace of the last line goes with its (implied) line end.
        self.pending_wsp = false;
        let empty_body = !self.emitted_any;
        if self.line_open || (empty_body && self.spec.canon == BodyCanon::Simple) {
            // Simple: the body ends in exactly one CRLF, an empty one is CRLF. Relaxed: a
            // non-empty body gets its final CRLF, an empty one stays empty.
            self.emit(b"\r\n");
        }
        BodyHash { digest: self.hasher.finalize().into(), canonical_len: self.canonical_len }
    }

    /// Line content: the held line ends and whitespace it follows come first.
    fn emit_content(&mut self, bytes: &[u8]) {
        while self.pending_crlfs > 0 {
            self.pending_crlfs -= 1;
            self.emit(b"\r\n");
            self.line_open = false;
        }
        if std::mem::take(&mut self.pending_wsp) {
            self.emit(b" ");
        }
        self.emit(bytes);
        self.line_open = true;
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.emitted_any = true;
        self.canonical_len += bytes.len() as u64;
        let room = match self.spec.limit {
            Some(limit) => limit.saturating_sub(self.hashed).min(bytes.len() as u64) as usize,
            None => bytes.len(),
        };
        if room > 0 {
            self.hasher.update(&bytes[..room]);
            self.hashed += room as u64;
        }
    }
}

/// One [`BodyHasher`] per distinct spec, all fed the same chunks: what a verifier streams the
/// body through when a message has several signatures.
#[derive(Default)]
pub struct BodyHashers {
    hashers: Vec<BodyHasher>,
}

impl BodyHashers {
    pub fn new() -> BodyHashers {
        BodyHashers::default()
    }

    /// Makes sure a hash for `spec` is computed (once, however many signatures need it).
    pub fn want(&mut self, spec: BodyHashSpec) {
        if !self.hashers.iter().any(|hasher| hasher.spec == spec) {
            self.hashers.push(BodyHasher::new(spec));
        }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        for hasher in &mut self.hashers {
            hasher.update(chunk);
        }
    }

    pub fn finish(self) -> BodyHashes {
        BodyHashes(self.hashers.into_iter().map(|hasher| (hasher.spec, hasher.finish())).collect())
    }
}

/// The finished hashes of [`BodyHashers`], by spec.
pub struct BodyHashes(Vec<(BodyHashSpec, BodyHash)>);

impl BodyHashes {
    pub fn get(&self, spec: BodyHashSpec) -> Option<&BodyHash> {
        self.0.iter().find(|(have, _)| *have == spec).map(|(_, hash)| hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hash(canon: BodyCanon, limit: Option<u64>, body: &[u8]) -> BodyHash {
        let mut hasher = BodyHasher::new(BodyHashSpec { canon, limit });
        hasher.update(body);
        hasher.finish()
    }

    fn canonical(canon: BodyCanon, body: &[u8]) -> [u8; 32] {
        hash(canon, None, body).digest
    }

    fn sha(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    #[test]
    fn empty_body_hashes_are_the_rfcs() {
        // RFC 6376 §3.4.3/§3.4.4 (the well-known values): simple hashes CRLF, relaxed nothing.
        for body in [&b""[..], b"\r\n", b"\r\n\r\n\r\n"] {
            assert_eq!(hash(BodyCanon::Simple, None, body).to_base64(), "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=");
            assert_eq!(
                hash(BodyCanon::Relaxed, None, body).to_base64(),
                "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
            );
        }
        // Lines of whitespace only are empty lines to relaxed.
        assert_eq!(canonical(BodyCanon::Relaxed, b" \t\r\n \r\n"), sha(b""));
        assert_eq!(canonical(BodyCanon::Simple, b" \t\r\n"), sha(b" \t\r\n"));
    }

    #[test]
    fn canonical_forms() {
        use BodyCanon::*;
        let table: &[(BodyCanon, &[u8], &[u8])] = &[
            // RFC 6376 §3.4.5's example body.
            (Relaxed, b" C \r\nD \t E\r\n\r\n\r\n", b" C\r\nD E\r\n"),
            (Simple, b" C \r\nD \t E\r\n\r\n\r\n", b" C \r\nD \t E\r\n"),
            (Simple, b"no final line end", b"no final line end\r\n"),
            (Relaxed, b"no final line end  ", b"no final line end\r\n"),
            (Relaxed, b"a\r\n\r\nb\r\n\r\n", b"a\r\n\r\nb\r\n"),
            (Simple, b"a\r\n \r\n", b"a\r\n \r\n"),
            (Relaxed, b"a\r\n \r\n", b"a\r\n"),
            (Relaxed, b"a \rb\r\n", b"a \rb\r\n"),
            (Simple, b"a\r\r\n", b"a\r\r\n"),
            (Relaxed, b"\tlead\r\n", b" lead\r\n"),
            (Relaxed, "8-bit \u{e9}t\u{e9}  \r\n".as_bytes(), "8-bit \u{e9}t\u{e9}\r\n".as_bytes()),
        ];
        for (canon, body, expected) in table {
            assert_eq!(canonical(*canon, body), sha(expected), "{canon:?} {:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn length_limit_hashes_a_prefix_and_counts_all() {
        let body = b"Hello\r\nWorld\r\n";
        let limited = hash(BodyCanon::Simple, Some(5), body);
        assert_eq!(limited.digest, sha(b"Hello"));
        assert_eq!(limited.canonical_len, 14);
        assert_eq!(hash(BodyCanon::Simple, Some(100), body).digest, sha(body));
        assert_eq!(hash(BodyCanon::Relaxed, Some(0), body).digest, sha(b""));
    }

    #[test]
    fn every_two_way_split_hashes_the_same() {
        let body = b"a  b \t\r\n\r\n c\r\r\n \r\n\t\r\nend  \r\n\r\n";
        for canon in [BodyCanon::Simple, BodyCanon::Relaxed] {
            let whole = canonical(canon, body);
            for at in 0..=body.len() {
                let mut hasher = BodyHasher::new(BodyHashSpec { canon, limit: None });
                hasher.update(&body[..at]);
                hasher.update(&body[at..]);
                assert_eq!(hasher.finish().digest, whole, "{canon:?} split at {at}");
            }
        }
    }

    #[test]
    fn one_hasher_per_distinct_spec() {
        let body = b"Hello  world\r\n\r\n";
        let specs = [
            BodyHashSpec { canon: BodyCanon::Relaxed, limit: None },
            BodyHashSpec { canon: BodyCanon::Simple, limit: None },
            BodyHashSpec { canon: BodyCanon::Relaxed, limit: None },
            BodyHashSpec { canon: BodyCanon::Relaxed, limit: Some(5) },
        ];
        let mut hashers = BodyHashers::new();
        for spec in specs {
            hashers.want(spec);
        }
        assert_eq!(hashers.hashers.len(), 3);
        hashers.update(&body[..7]);
        hashers.update(&body[7..]);
        let hashes = hashers.finish();
        for spec in specs {
            assert_eq!(hashes.get(spec), Some(&hash(spec.canon, spec.limit, body)), "{spec:?}");
        }
        assert_eq!(hashes.get(BodyHashSpec { canon: BodyCanon::Simple, limit: Some(1) }), None);
    }

    proptest! {
        #[test]
        fn any_chunking_hashes_the_same(
            body in proptest::collection::vec(prop_oneof![
                Just(b'\r'), Just(b'\n'), Just(b' '), Just(b'\t'), Just(b'x'), Just(0xe9u8)
            ], 0..200),
            cuts in proptest::collection::vec(1usize..17, 0..40),
            limit in proptest::option::of(0u64..120),
        ) {
            for canon in [BodyCanon::Simple, BodyCanon::Relaxed] {
                let whole = hash(canon, limit, &body);
                let mut hasher = BodyHasher::new(BodyHashSpec { canon, limit });
                let mut rest = &body[..];
                for cut in &cuts {
                    let (chunk, tail) = rest.split_at((*cut).min(rest.len()));
                    hasher.update(chunk);
                    rest = tail;
                }
                hasher.update(rest);
                prop_assert_eq!(hasher.finish(), whole);
            }
        }
    }
}
