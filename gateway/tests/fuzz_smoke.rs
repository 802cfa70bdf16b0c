//! A short run of the `config`, `header_section`, `proxy_header` and `milter_reply` fuzz targets
//! on every `make test`, without nightly or libFuzzer: the corpus kept in gateway/fuzz/seeds/ and
//! mutations of it from a fixed seed go through the targets' own checks
//! (gateway/fuzz/src/checks.rs, included here), so a finding once fixed stays fixed.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::Path;

const SEEDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds");
/// Mutated inputs per kept file: enough to stray off the corpus, few enough to take seconds.
const MUTATIONS: usize = 20;

/// The kept corpus of a target, in a stable order.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(SEEDS).join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus", dir.display());
    files.iter().map(|file| std::fs::read(file).unwrap()).collect()
}

/// xorshift64*: a fixed sequence, so a failure here reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A few of libFuzzer's simple mutations: flip, overwrite, insert, delete, splice.
    fn mutate(&mut self, input: &[u8], other: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(out.len() + 1);
            match self.below(5) {
                0 if at < out.len() => out[at] ^= 1 << self.below(8),
                1 if at < out.len() => out[at] = self.next() as u8,
                2 => out.insert(at, self.next() as u8),
                3 if at < out.len() => {
                    out.remove(at);
                }
                _ => {
                    let from = self.below(other.len());
                    let take = self.below(other.len() - from + 1).min(64);
                    out.splice(at..at, other[from..from + take].iter().copied());
                }
            }
        }
        out
    }
}

fn smoke(target: &str, check: fn(&[u8])) {
    let corpus = corpus(target);
    let mut rng = Rng(0x5eed_f055_a1c0);
    for (i, input) in corpus.iter().enumerate() {
        check(input);
        for _ in 0..MUTATIONS {
            let other = &corpus[rng.below(corpus.len())];
            let mutated = rng.mutate(input, other);
            let result = std::panic::catch_unwind(|| check(&mutated));
            assert!(result.is_ok(), "{target}: mutation of corpus file {i} fails: {mutated:?}");
        }
    }
}

#[test]
fn config_corpus() {
    smoke("config", checks::config);
}

#[test]
fn header_section_corpus() {
    smoke("header_section", checks::header_section);
}

#[test]
fn proxy_header_corpus() {
    smoke("proxy_header", checks::proxy_header);
}

#[test]
fn milter_reply_corpus() {
    smoke("milter_reply", checks::milter_reply);
}
