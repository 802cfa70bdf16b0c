//! Keys and independent checks for the DKIM filter tests: RSA-2048 and Ed25519 keys made by the
//! openssl CLI (PEM as operators have them) with their DNS records, and dkimpy verifying or
//! signing with its keys looked up in a real DNS server (`DnsServer`), through dnspython.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::dns_server::DnsServer;

/// One key: its PEM, what dkimpy signs with, its record and algorithm.
pub struct Key {
    pub pem: PathBuf,
    /// The PEM for RSA; the base64 seed for Ed25519 (what dkimpy takes).
    pub dkimpy_key: PathBuf,
    pub record: String,
    pub algorithm: &'static str,
}

pub struct Keys {
    pub rsa: Key,
    pub ed25519: Key,
}

/// Runs a shell pipeline, returning its stdout.
pub fn sh(script: &str) -> String {
    let output = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(output.status.success(), "{script}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

impl Keys {
    pub fn openssl(dir: &Path) -> Keys {
        let d = dir.display();
        sh(&format!("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out {d}/rsa.pem"));
        sh(&format!("openssl genpkey -algorithm ed25519 -out {d}/ed.pem"));
        sh(&format!("openssl pkey -in {d}/ed.pem -outform DER | tail -c 32 | base64 -w0 > {d}/ed.seed"));
        let rsa_public = sh(&format!("openssl pkey -in {d}/rsa.pem -pubout -outform DER | base64 -w0"));
        let ed_public = sh(&format!("openssl pkey -in {d}/ed.pem -pubout -outform DER | tail -c 32 | base64 -w0"));
        Keys {
            rsa: Key {
                pem: dir.join("rsa.pem"),
                dkimpy_key: dir.join("rsa.pem"),
                record: format!("v=DKIM1; k=rsa; p={rsa_public}"),
                algorithm: "rsa-sha256",
            },
            ed25519: Key {
                pem: dir.join("ed.pem"),
                dkimpy_key: dir.join("ed.seed"),
                record: format!("v=DKIM1; k=ed25519; p={ed_public}"),
                algorithm: "ed25519-sha256",
            },
        }
    }
}

/// dkimpy over files: `verify PORT PATH…` prints `PATH pass|fail` with keys from the DNS server
/// on 127.0.0.1:PORT; `sign PATH KEY DOMAIN SELECTOR HCANON BCANON ALGORITHM` writes
/// PATH.signed.
const DKIMPY: &str = r#"
import sys, logging, dkim, dns.resolver
logging.disable(logging.CRITICAL)
if sys.argv[1] == "verify":
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = int(sys.argv[2])
    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        try:
            answer = resolver.resolve(name, "TXT", lifetime=timeout)
        except dns.resolver.NXDOMAIN:
            return None
        return b"".join(b"".join(record.strings) for record in answer)
    for path in sys.argv[3:]:
        ok = dkim.verify(open(path, "rb").read(), dnsfunc=dnsfunc)
        print(path, "pass" if ok else "fail")
else:
    path, key, domain, selector, hcanon, bcanon, algorithm = sys.argv[2:9]
    message = open(path, "rb").read()
    field = dkim.sign(message, selector.encode(), domain.encode(), open(key, "rb").read(),
                      canonicalize=(hcanon.encode(), bcanon.encode()), signature_algorithm=algorithm.encode())
    open(path + ".signed", "wb").write(field + message)
"#;

/// dkimpy's verdict on each message file, keys from `dns`: "pass" or "fail".
pub fn dkimpy_verify(dns: &DnsServer, paths: &[PathBuf]) -> Vec<String> {
    let port = dns.port().to_string();
    let mut args = vec!["verify", port.as_str()];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    let (status, output) = super::python(DKIMPY, &args);
    assert!(status.success(), "dkimpy failed (is it in target/python? run .ci/setup):\n{output}");
    let verdicts: Vec<String> = output.lines().map(|l| l.rsplit(' ').next().unwrap().to_string()).collect();
    assert_eq!(verdicts.len(), paths.len(), "{output}");
    verdicts
}

/// `message` signed by dkimpy with `key` (`canon` as "relaxed/simple").
pub fn dkimpy_sign(dir: &Path, message: &[u8], key: &Key, domain: &str, selector: &str, canon: &str) -> Vec<u8> {
    static SIGNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SIGNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("to-sign-{n}"));
    std::fs::write(&path, message).unwrap();
    let (hcanon, bcanon) = canon.split_once('/').unwrap();
    let args = [
        "sign",
        path.to_str().unwrap(),
        key.dkimpy_key.to_str().unwrap(),
        domain,
        selector,
        hcanon,
        bcanon,
        key.algorithm,
    ];
    let (status, output) = super::python(DKIMPY, &args);
    assert!(status.success(), "dkimpy sign failed:\n{output}");
    std::fs::read(dir.join(format!("to-sign-{n}.signed"))).unwrap()
}
