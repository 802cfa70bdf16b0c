//! DKIM checked against an independent implementation, dkimpy (in the tests' venv, made by
//! `.ci/setup`), with keys made by the openssl CLI in the PEM forms operators have: the
//! `sluice-dkim` crate's signatures verify with dkimpy and dkimpy's with the crate, for both
//! algorithms and all four canonicalisations, bodies fed in odd chunk sizes; a changed body or
//! signed header fails in both. Then `sluice dkim keygen` end to end.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_dkim::{
    split_header_section, verify, BodyCanon, BodyHashers, Canonicalization, HeaderCanon, KeyRecord, KeyType, Signature,
    Signer, SigningKey, Verdict,
};

const DOMAIN: &str = "example.test";
const SELECTOR: &str = "s1";

/// dkimpy, driven by a file of cases (one per line, tab-separated):
/// `verify CASES` — `PATH RECORD`: prints `PATH pass|fail`, the record served for any name;
/// `sign CASES` — `PATH KEY HCANON BCANON ALGORITHM [l]`: writes PATH.signed, prints `PATH signed`
/// (with `l`, the signature has `l=`, the body length).
const DKIMPY: &str = r#"
import sys, logging, dkim
logging.disable(logging.CRITICAL)
mode, cases = sys.argv[1], sys.argv[2]
for line in open(cases, encoding="utf-8").read().splitlines():
    parts = line.split("\t")
    message = open(parts[0], "rb").read()
    if mode == "verify":
        record = parts[1].encode()
        ok = dkim.verify(message, dnsfunc=lambda name, timeout=5: record)
        print(parts[0], "pass" if ok else "fail")
    else:
        path, key, hcanon, bcanon, algorithm = parts[:5]
        field = dkim.sign(message, b"s1", b"example.test", open(key, "rb").read(),
                          canonicalize=(hcanon.encode(), bcanon.encode()),
                          signature_algorithm=algorithm.encode(), length=parts[5:] == ["l"])
        open(path + ".signed", "wb").write(field + message)
        print(path, "signed")
"#;

/// Runs dkimpy over `cases`, returning its line per case.
fn dkimpy(mode: &str, dir: &Path, cases: &[String]) -> Vec<String> {
    let file = dir.join(format!("{mode}-cases.txt"));
    std::fs::write(&file, cases.join("\n")).unwrap();
    let (status, output) = support::python(DKIMPY, &[mode, file.to_str().unwrap()]);
    assert!(status.success(), "dkimpy {mode} failed (is it in target/python? run .ci/setup):\n{output}");
    let lines: Vec<String> = output.lines().map(str::to_string).collect();
    assert_eq!(lines.len(), cases.len(), "{output}");
    lines
}

/// Runs dkimpy's verifier over (message path, record, expected "pass" or "fail") cases and
/// lists only the cases where it disagrees, so a failure shows what broke.
fn dkimpy_verifies(dir: &Path, cases: &[(String, String, &str)]) {
    let lines: Vec<String> = cases.iter().map(|(path, record, _)| format!("{path}\t{record}")).collect();
    let answers = dkimpy("verify", dir, &lines);
    let wrong: Vec<String> = cases
        .iter()
        .zip(&answers)
        .filter(|((path, _, expected), answer)| **answer != format!("{path} {expected}"))
        .map(|((_, _, expected), answer)| format!("expected {expected}, dkimpy says: {answer}"))
        .collect();
    assert!(wrong.is_empty(), "dkimpy disagrees on {} of {} messages:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
}

/// Runs a shell pipeline (openssl | base64 …), returning its stdout.
fn sh(script: &str) -> String {
    let output = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(output.status.success(), "{script}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

struct TestKey {
    name: &'static str,
    pem: PathBuf,
    /// What dkimpy signs with: the PEM for RSA, the base64 seed for Ed25519.
    dkimpy_key: PathBuf,
    /// The record, made from the public key by openssl (not by the crate).
    record: String,
    algorithm: &'static str,
}

/// RSA PKCS#1 (`openssl genrsa -traditional`), RSA PKCS#8 and Ed25519 PKCS#8 (`openssl genpkey`).
fn openssl_keys(dir: &Path) -> Vec<TestKey> {
    let d = dir.display();
    sh(&format!("openssl genrsa -traditional -out {d}/rsa1.pem 2048 2>/dev/null"));
    sh(&format!("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out {d}/rsa8.pem"));
    sh(&format!("openssl genpkey -algorithm ed25519 -out {d}/ed.pem"));
    sh(&format!("openssl pkey -in {d}/ed.pem -outform DER | tail -c 32 | base64 -w0 > {d}/ed.seed"));
    let rsa_record = |pem: &str| {
        format!("v=DKIM1; k=rsa; p={}", sh(&format!("openssl pkey -in {d}/{pem} -pubout -outform DER | base64 -w0")))
    };
    let ed_record = format!(
        "v=DKIM1; k=ed25519; p={}",
        sh(&format!("openssl pkey -in {d}/ed.pem -pubout -outform DER | tail -c 32 | base64 -w0"))
    );
    vec![
        TestKey {
            name: "rsa-pkcs1",
            pem: dir.join("rsa1.pem"),
            dkimpy_key: dir.join("rsa1.pem"),
            record: rsa_record("rsa1.pem"),
            algorithm: "rsa-sha256",
        },
        TestKey {
            name: "rsa-pkcs8",
            pem: dir.join("rsa8.pem"),
            dkimpy_key: dir.join("rsa8.pem"),
            record: rsa_record("rsa8.pem"),
            algorithm: "rsa-sha256",
        },
        TestKey {
            name: "ed25519",
            pem: dir.join("ed.pem"),
            dkimpy_key: dir.join("ed.seed"),
            record: ed_record,
            algorithm: "ed25519-sha256",
        },
    ]
}

const HEAD: &str = "From: Joe SixPack <joe@example.test>\r\nTo: Suzie Q <suzie@example.net>\r\nDate: Wed, 2 Dec 2026 04:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n";

fn messages() -> Vec<(&'static str, Vec<u8>)> {
    let mut long_line = String::new();
    for i in 0..4000 {
        long_line.push(char::from(b'a' + (i % 26) as u8));
        if i % 97 == 0 {
            long_line.push_str(" \t ");
        }
    }
    let with = |subject: &str, body: &[u8]| [HEAD.as_bytes(), subject.as_bytes(), b"\r\n", body].concat();
    vec![
        ("short", with("Subject: short\r\n", b"Hello.\r\n")),
        ("empty", with("Subject: empty\r\n", b"")),
        (
            "8bit",
            with(
                "Subject: Caf\u{e9} cr\u{e8}me\r\n",
                "Gr\u{fc}\u{df}e, caf\u{e9} \u{2014} \u{fc}n\u{ef}c\u{f6}d\u{e9}\r\n".as_bytes(),
            ),
        ),
        ("long-line", with("Subject: long\r\n", format!("{long_line}\r\nend\r\n").as_bytes())),
        ("trailing-blank", with("Subject: blanks\r\n", b"text  \r\n\r\n \r\n\t\r\n\r\n")),
        (
            "folded",
            with(
                "Subject: a very\r\n long\r\n\tfolded   subject  \r\nCc: a@example.net,\r\n   b@example.net\r\n",
                b"a \t b\t\r\n  lead\r\n\r\nlast",
            ),
        ),
    ]
}

const CANONICALIZATIONS: [(HeaderCanon, BodyCanon, &str, &str); 4] = [
    (HeaderCanon::Simple, BodyCanon::Simple, "simple", "simple"),
    (HeaderCanon::Simple, BodyCanon::Relaxed, "simple", "relaxed"),
    (HeaderCanon::Relaxed, BodyCanon::Simple, "relaxed", "simple"),
    (HeaderCanon::Relaxed, BodyCanon::Relaxed, "relaxed", "relaxed"),
];

/// Chunk sizes from 1 to 97 octets, different for each seed (xorshift: deterministic).
fn chunks(body: &[u8], seed: u64) -> Vec<&[u8]> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut rest = body;
    let mut out = Vec::new();
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let (chunk, tail) = rest.split_at(((state % 97) as usize + 1).min(rest.len()));
        out.push(chunk);
        rest = tail;
    }
    out
}

fn split_message(message: &[u8]) -> (&[u8], &[u8]) {
    let at = message.windows(4).position(|w| w == b"\r\n\r\n").expect("a header section") + 2;
    (&message[..at], &message[at + 2..])
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Signs with the crate: the body streamed in chunks, the field prepended.
fn sign_ours(key: &SigningKey, canon: Canonicalization, message: &[u8], seed: u64) -> Vec<u8> {
    let (head, body) = split_message(message);
    let signer = Signer::new(SigningKey::from_pem(&key.to_pkcs8_pem().unwrap()).unwrap(), DOMAIN, SELECTOR)
        .with_canonicalization(canon)
        .with_expiration(3600);
    let mut hasher = signer.body_hasher();
    for chunk in chunks(body, seed) {
        hasher.update(chunk);
    }
    let field = signer.sign(&split_header_section(head), &hasher.finish(), now()).unwrap();
    [field.to_field().as_bytes(), message].concat()
}

/// Verifies the message's first signature with the crate, the body streamed in chunks.
fn verify_ours(message: &[u8], record: &str, seed: u64) -> Verdict {
    let (head, body) = split_message(message);
    let fields = split_header_section(head);
    let field = fields.iter().find(|f| f.to_ascii_lowercase().starts_with(b"dkim-signature:")).expect("signed");
    let signature = Signature::parse_field(field).unwrap();
    let mut hashers = BodyHashers::new();
    hashers.want(signature.body_hash_spec());
    for chunk in chunks(body, seed) {
        hashers.update(chunk);
    }
    let body_hash = *hashers.finish().get(signature.body_hash_spec()).unwrap();
    verify(&signature, &fields, &body_hash, record, now())
}

/// The same message with its body, or a signed header field, changed.
fn tampered(message: &[u8]) -> [(&'static str, Vec<u8>); 2] {
    let text = message.to_vec();
    let at = text.windows(9).position(|w| w == b"From: Joe").unwrap();
    let mut header = text.clone();
    header[at + 6..at + 9].copy_from_slice(b"Jim");
    [("body", [&text[..], b"tampered\r\n"].concat()), ("header", header)]
}

#[test]
fn signatures_interoperate_with_dkimpy() {
    let dir = tempfile::tempdir().unwrap();
    let keys = openssl_keys(dir.path());
    for key in &keys {
        // The crate publishes the same record as openssl's public key gives.
        let loaded = SigningKey::from_pem(&std::fs::read_to_string(&key.pem).unwrap()).unwrap();
        assert_eq!(loaded.key_record().to_string(), key.record, "{}", key.name);
    }

    // (a) signed by the crate, verified by dkimpy; (c) changed copies fail in both.
    let mut verify_cases = Vec::new();
    let mut seed = 1;
    for key in &keys {
        let signing = SigningKey::from_pem(&std::fs::read_to_string(&key.pem).unwrap()).unwrap();
        for (header, body, hname, bname) in CANONICALIZATIONS {
            for (name, message) in messages() {
                seed += 1;
                let canon = Canonicalization { header, body };
                let signed = sign_ours(&signing, canon, &message, seed);
                let case = format!("{}-{hname}-{bname}-{name}", key.name);
                assert_eq!(verify_ours(&signed, &key.record, seed * 7), Verdict::Pass, "ours: {case}");
                let path = dir.path().join(format!("ours-{case}.eml"));
                std::fs::write(&path, &signed).unwrap();
                verify_cases.push((path.display().to_string(), key.record.clone(), "pass"));
                for (change, changed) in tampered(&signed) {
                    assert!(
                        matches!(verify_ours(&changed, &key.record, seed), Verdict::Fail(_)),
                        "ours, {change} changed: {case}"
                    );
                    let path = dir.path().join(format!("ours-{case}-{change}.eml"));
                    std::fs::write(&path, &changed).unwrap();
                    verify_cases.push((path.display().to_string(), key.record.clone(), "fail"));
                }
            }
        }
    }
    dkimpy_verifies(dir.path(), &verify_cases);

    // (b) signed by dkimpy, verified by the crate; (c) again.
    let mut sign_cases = Vec::new();
    let mut signed_by_dkimpy = Vec::new();
    for key in &keys {
        for (header, body, hname, bname) in CANONICALIZATIONS {
            for (name, message) in messages() {
                let path = dir.path().join(format!("plain-{}-{hname}-{bname}-{name}.eml", key.name));
                std::fs::write(&path, &message).unwrap();
                sign_cases.push(format!(
                    "{}\t{}\t{hname}\t{bname}\t{}",
                    path.display(),
                    key.dkimpy_key.display(),
                    key.algorithm
                ));
                signed_by_dkimpy.push((path, key, Canonicalization { header, body }));
            }
        }
    }
    dkimpy("sign", dir.path(), &sign_cases);
    let mut verify_cases = Vec::new();
    for (i, (path, key, canon)) in signed_by_dkimpy.iter().enumerate() {
        let signed = std::fs::read(format!("{}.signed", path.display())).unwrap();
        let (head, _) = split_message(&signed);
        let signature = Signature::parse_field(split_header_section(head)[0]).unwrap();
        assert_eq!(signature.canonicalization, *canon, "{}", path.display());
        assert_eq!(verify_ours(&signed, &key.record, i as u64), Verdict::Pass, "dkimpy's: {}", path.display());
        for (change, changed) in tampered(&signed) {
            assert!(
                matches!(verify_ours(&changed, &key.record, i as u64), Verdict::Fail(_)),
                "dkimpy's, {change} changed: {}",
                path.display()
            );
            let changed_path = format!("{}.{change}", path.display());
            std::fs::write(&changed_path, &changed).unwrap();
            verify_cases.push((changed_path, key.record.clone(), "fail"));
        }
    }
    dkimpy_verifies(dir.path(), &verify_cases);
}

/// `l=` (a signature covering only the first octets of the body): text appended after signing
/// leaves dkimpy's signature valid for the crate, as for dkimpy; a changed header still fails.
#[test]
fn body_length_limits_interoperate_with_dkimpy() {
    let dir = tempfile::tempdir().unwrap();
    let keys = openssl_keys(dir.path());
    let mut sign_cases = Vec::new();
    let mut signed = Vec::new();
    for key in &keys {
        for (_, _, hname, bname) in CANONICALIZATIONS {
            for (name, message) in messages().into_iter().filter(|(name, _)| ["short", "trailing-blank"].contains(name))
            {
                let path = dir.path().join(format!("limited-{}-{hname}-{bname}-{name}.eml", key.name));
                std::fs::write(&path, &message).unwrap();
                let (dkimpy_key, algorithm) = (key.dkimpy_key.display(), key.algorithm);
                sign_cases.push(format!("{}\t{dkimpy_key}\t{hname}\t{bname}\t{algorithm}\tl", path.display()));
                signed.push((path, key));
            }
        }
    }
    dkimpy("sign", dir.path(), &sign_cases);
    let mut verify_cases = Vec::new();
    for (path, key) in &signed {
        let message = std::fs::read(format!("{}.signed", path.display())).unwrap();
        let signature = Signature::parse_field(split_header_section(split_message(&message).0)[0]).unwrap();
        assert!(signature.body_length.is_some(), "{}", path.display());
        let [(_, appended), (_, header_changed)] = tampered(&message);
        assert_eq!(verify_ours(&appended, &key.record, 5), Verdict::Pass, "{}", path.display());
        assert!(matches!(verify_ours(&header_changed, &key.record, 5), Verdict::Fail(_)), "{}", path.display());
        for (suffix, changed, expected) in [("appended", appended, "pass"), ("header", header_changed, "fail")] {
            let changed_path = format!("{}.{suffix}", path.display());
            std::fs::write(&changed_path, changed).unwrap();
            verify_cases.push((changed_path, key.record.clone(), expected));
        }
    }
    dkimpy_verifies(dir.path(), &verify_cases);
}

/// The quoted strings of a zone-file TXT entry, concatenated: the record as DNS serves it.
fn record_of(entry: &str) -> String {
    let strings: Vec<&str> = entry.split('"').skip(1).step_by(2).collect();
    assert!(strings.iter().all(|s| s.len() <= 255), "{entry}");
    strings.concat()
}

fn keygen(args: &[&str]) -> std::process::Output {
    Command::new(support::sluice_bin()).args(["dkim", "keygen"]).args(args).output().unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn keygen_writes_a_private_key_and_prints_its_record() {
    let dir = tempfile::tempdir().unwrap();
    for (algorithm, key_type, bits) in [("rsa", KeyType::Rsa, Some(2048)), ("ed25519", KeyType::Ed25519, None)] {
        let out = dir.path().join(format!("{algorithm}.pem"));
        let output = keygen(&[
            "--domain",
            DOMAIN,
            "--selector",
            SELECTOR,
            "--algorithm",
            algorithm,
            "--out",
            out.to_str().unwrap(),
        ]);
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(mode(&out), 0o600);
        assert!(stdout.starts_with("s1._domainkey.example.test. IN TXT ( \"v=DKIM1; "), "{stdout}");
        let record = record_of(&stdout);
        assert_eq!(KeyRecord::parse(&record).unwrap().key_type, key_type);

        // The file is PKCS#8 as openssl reads it, of the default size.
        sh(&format!("openssl pkey -in {} -noout", out.display()));
        let pem = std::fs::read_to_string(&out).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        let key = SigningKey::from_pem(&pem).unwrap();
        assert_eq!(key.rsa_bits(), bits);

        // Signed with the written key, verified by dkimpy against the printed record.
        let (_, message) = &messages()[0];
        let canon = Canonicalization { header: HeaderCanon::Relaxed, body: BodyCanon::Relaxed };
        let signed = dir.path().join(format!("{algorithm}.eml"));
        std::fs::write(&signed, sign_ours(&key, canon, message, 3)).unwrap();
        dkimpy_verifies(dir.path(), &[(signed.display().to_string(), record.clone(), "pass")]);

        // An existing key is kept, unless --force (which also restores the mode).
        let again = keygen(&[
            "--domain",
            DOMAIN,
            "--selector",
            SELECTOR,
            "--algorithm",
            algorithm,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("--force"), "{:?}", again);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), pem);
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
        let forced = keygen(&[
            "--domain",
            DOMAIN,
            "--selector",
            SELECTOR,
            "--algorithm",
            algorithm,
            "--out",
            out.to_str().unwrap(),
            "--force",
        ]);
        assert!(forced.status.success());
        assert_ne!(std::fs::read_to_string(&out).unwrap(), pem);
        assert_eq!(mode(&out), 0o600);
    }

    // Sizes: 1024 works with a warning, outside 1024–4096 is refused, --bits is RSA's only.
    let out = dir.path().join("small.pem");
    let small = keygen(&["--domain", DOMAIN, "--selector", SELECTOR, "--bits", "1024", "--out", out.to_str().unwrap()]);
    assert!(small.status.success());
    assert!(String::from_utf8_lossy(&small.stderr).contains("warning: a 1024-bit RSA key is weak"));
    assert_eq!(SigningKey::from_pem(&std::fs::read_to_string(&out).unwrap()).unwrap().rsa_bits(), Some(1024));
    for (args, complaint) in [
        (&["--bits", "512"][..], "RSA keys must have 1024 to 4096 bits"),
        (&["--bits", "2048", "--algorithm", "ed25519"], "--bits applies to RSA keys only"),
    ] {
        let refused = dir.path().join("refused.pem");
        let output =
            keygen(&[&["--domain", DOMAIN, "--selector", SELECTOR, "--out", refused.to_str().unwrap()], args].concat());
        assert!(!output.status.success());
        assert!(String::from_utf8_lossy(&output.stderr).contains(complaint), "{output:?}");
        assert!(!refused.exists());
    }
    let output =
        keygen(&["--domain", "exa mple", "--selector", SELECTOR, "--out", dir.path().join("x.pem").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("--domain \"exa mple\" is not a DNS name"));
}
