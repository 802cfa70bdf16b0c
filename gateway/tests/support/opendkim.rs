//! OpenDKIM (Debian 12: 2.11.0~beta2, libopendkim built with OpenSSL 3 and libunbound) as an
//! independent DKIM signer and verifier, its keys looked up in a real DNS server on loopback
//! ([`DnsServer`]).
//!
//! # How
//! Both directions run the `opendkim` filter binary (package `opendkim`) in its **test mode**,
//! `opendkim -x CONF -t FILE`: it reads the message from FILE and feeds it through the filter's
//! own milter callbacks, with no MTA, socket or daemon (opendkim/test.c), then prints one line
//! per message to stdout (exit status 0 either way; non-zero only for errors such as a bad
//! config, which panic here). CONF is a config file we write into a temp dir:
//! - verify: `Mode v`, `Syslog no`, `DNSTimeout 5`, and `ResolverConfiguration unbound.conf`, a
//!   libunbound config (the build has `USE_UNBOUND`, see `opendkim -V`) that forwards every
//!   query, `forward-zone: name "."`, to `forward-addr: 127.0.0.1@PORT` of the test's server, with
//!   `do-not-query-localhost: no` (libunbound refuses to query 127.0.0.0/8 otherwise),
//!   `module-config: "iterator"` (no DNSSEC validator, so no trust anchor), and `local-zone: …
//!   nodefault` for unbound's built-in RFC 6761 zones (`test.`, `invalid.`, …), which it would
//!   otherwise answer NXDOMAIN itself. Nothing is ever sent off the loopback.
//!   Output: `opendkim: FILE: verification (s=S, d=D, 2048-bit key) succeeded`, or
//!   `… verification (s=S d=D, 2048-bit key, insecure) failed: REASON` (REASON e.g. `signature
//!   verification failed`, also for a changed body, since libopendkim records a body hash
//!   mismatch as a bad signature; `key not found in DNS` for NXDOMAIN; `key DNS query failed`
//!   for a timeout, REFUSED or SERVFAIL), or `… message not signed`. Only the first signature is
//!   reported.
//! - sign: `Mode s`, `Syslog no`, `KeyTable` (one entry `sig DOMAIN:SELECTOR:KEY.pem`),
//!   `SigningTable refile:` (`* sig`: every sender, whatever its From domain), `Canonicalization`,
//!   `SignatureAlgorithm`, and `RequireSafeKeys no` (the key is under /tmp, which is world
//!   writable, and OpenDKIM refuses keys in such a path otherwise). The key is a PEM file as
//!   `openssl genpkey` writes it, RSA or Ed25519 (PKCS#8; PKCS#1 RSA works too). Output:
//!   `opendkim: FILE:` then the `DKIM-Signature: …` field, folded with CRLF TAB; we prepend it
//!   (CRLF-terminated) to the message, as the MTA would insert it. The default `SignHeaders`
//!   list applies, and a `t=` with the current time.
//!
//! # What does not work, and why not another way
//! - `opendkim-testmsg` (package `opendkim-tools`) has no option for the algorithm or the
//!   canonicalisation (hard-coded rsa-sha1, relaxed/simple) and no DNS option: it verifies with
//!   the system resolver only (/etc/resolv.conf, port 53). So it is not used. `TestDNSData`
//!   (a file instead of DNS) exists but would bypass the DNS path we want to test.
//! - **ed25519-sha256 with simple header canonicalisation** signs a different folding of the
//!   DKIM-Signature field than it outputs: libopendkim's `dkim_getsighdr_d` forces "b=" onto
//!   its own line only for RSA keys (it reserves room for the RSA signature length), so with the
//!   empty b= it hashes `h=…; b=` on one line and then prints `h=…;` CRLF TAB `b=…`. OpenDKIM
//!   itself and dkimpy reject such signatures. `opendkim_sign` refuses that combination.
//!   Ed25519 with relaxed header canonicalisation, and ed25519 verification, work (dkimpy's
//!   ed25519 signatures verify).
//! - Test mode parses the message line by line (64 KiB line buffer): a bare LF ends a line like
//!   CRLF (it is verified as if CRLF), a NUL ends the line, body lines must be shorter than
//!   64 KiB, and a header field with no space after its colon is seen *with* one (`Subject:x`
//!   as `Subject: x`, the milter protocol's default), which matters for simple header
//!   canonicalisation. `opendkim_sign` asserts the message has none of these.

use std::path::Path;

use super::dns_server::DnsServer;
use super::run_tool;

const OPENDKIM: &str = "/usr/sbin/opendkim";

/// OpenDKIM's verdict on a message's (first) signature, with its own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// e.g. `verification (s=s1, d=example.test, 2048-bit key) succeeded`
    Pass(String),
    /// e.g. `verification (s=s1 d=example.test, 2048-bit key, insecure) failed: signature
    /// verification failed`, or `message not signed`
    Fail(String),
}

impl Verification {
    pub fn passed(&self) -> bool {
        matches!(self, Verification::Pass(_))
    }

    pub fn text(&self) -> &str {
        match self {
            Verification::Pass(text) | Verification::Fail(text) => text,
        }
    }
}

/// Runs `opendkim -x CONF -t MESSAGE`, returning its stdout line for the message, without the
/// `opendkim: PATH: ` prefix (and anything after that line, for signing).
fn test_mode(dir: &Path, conf: &str, message: &Path) -> String {
    let path = message.to_str().expect("a UTF-8 path");
    assert!(!path.contains(','), "opendkim -t takes a comma-separated list: {path}");
    let conf_path = dir.join("opendkim.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let (status, output) = run_tool(OPENDKIM, &["-x", conf_path.to_str().unwrap(), "-t", path], None);
    assert!(status.success(), "opendkim -t failed ({status}; the test command installs opendkim):\n{output}");
    let prefix = format!("opendkim: {path}:");
    let start = output.find(&prefix).unwrap_or_else(|| panic!("no result from opendkim for {path}:\n{output}"));
    output[start + prefix.len()..].to_string()
}

/// The libunbound config that sends every query to `dns` and nowhere else.
fn unbound_conf(dns: &DnsServer) -> String {
    let mut conf = String::from("server:\n");
    for zone in ["test.", "invalid.", "onion.", "home.arpa."] {
        conf.push_str(&format!("    local-zone: \"{zone}\" nodefault\n"));
    }
    conf.push_str("    do-not-query-localhost: no\n    module-config: \"iterator\"\n");
    conf.push_str(&format!("forward-zone:\n    name: \".\"\n    forward-addr: 127.0.0.1@{}\n", dns.port()));
    conf
}

/// Seconds OpenDKIM waits for a key query (`DNSTimeout`; a silent server fails after this).
pub const DNS_TIMEOUT_SECS: u32 = 5;

/// Verifies the message in `message` (bytes as delivered) with OpenDKIM, its keys looked up in
/// `dns` only.
pub fn opendkim_verify(message: &Path, dns: &DnsServer) -> Verification {
    let dir = tempfile::Builder::new().prefix("opendkim-").tempdir().unwrap();
    let unbound = dir.path().join("unbound.conf");
    std::fs::write(&unbound, unbound_conf(dns)).unwrap();
    let conf =
        format!("Mode v\nSyslog no\nDNSTimeout {DNS_TIMEOUT_SECS}\nResolverConfiguration {}\n", unbound.display());
    let result = test_mode(dir.path(), &conf, message);
    let line = result.lines().next().unwrap_or_default().trim().to_string();
    if line.starts_with("verification") && line.ends_with(" succeeded") {
        Verification::Pass(line)
    } else {
        Verification::Fail(line)
    }
}

/// Signs `message` with OpenDKIM: `key_pem` (RSA or Ed25519 PEM), `d=domain`, `s=selector`,
/// `canon` as `header/body` ("relaxed/relaxed", "simple/simple", "relaxed/simple" or
/// "simple/relaxed") and `algorithm` ("rsa-sha256", "rsa-sha1",
/// "ed25519-sha256"). Returns the message with OpenDKIM's DKIM-Signature field prepended.
pub fn opendkim_sign(
    message: &[u8],
    key_pem: &Path,
    domain: &str,
    selector: &str,
    canon: &str,
    algorithm: &str,
) -> Vec<u8> {
    let (header_canon, _) = canon.split_once('/').expect("canon is header/body, e.g. relaxed/simple");
    assert!(
        !(algorithm == "ed25519-sha256" && header_canon == "simple"),
        "OpenDKIM 2.11 makes invalid ed25519-sha256 signatures with simple header canonicalisation \
         (it hashes another folding of its DKIM-Signature field than it writes; see support/opendkim.rs)"
    );
    check_input(message, header_canon == "simple");
    let key = key_pem.to_str().expect("a UTF-8 path");
    assert!(!key.contains(':') && !key.contains(char::is_whitespace), "KeyTable cannot hold the path {key}");
    let dir = tempfile::Builder::new().prefix("opendkim-").tempdir().unwrap();
    let (key_table, signing_table) = (dir.path().join("key.table"), dir.path().join("signing.table"));
    std::fs::write(&key_table, format!("sig {domain}:{selector}:{key}\n")).unwrap();
    std::fs::write(&signing_table, "* sig\n").unwrap();
    let file = dir.path().join("message.eml");
    std::fs::write(&file, message).unwrap();
    let conf = format!(
        "Mode s\nSyslog no\nKeyTable {}\nSigningTable refile:{}\nCanonicalization {canon}\n\
         SignatureAlgorithm {algorithm}\nRequireSafeKeys no\n",
        key_table.display(),
        signing_table.display()
    );
    let result = test_mode(dir.path(), &conf, &file);
    let field = result.trim_start_matches(['\r', '\n']).trim_end();
    assert!(field.starts_with("DKIM-Signature: "), "opendkim did not sign:{result}");
    // Folded with CRLF TAB already, the last line ends with a bare LF: make every line end CRLF.
    let field = field.replace("\r\n", "\n").replace('\n', "\r\n");
    [field.as_bytes(), b"\r\n", message].concat()
}

/// Asserts the message reaches OpenDKIM's test mode unchanged (see the top of this file).
fn check_input(message: &[u8], simple_headers: bool) {
    assert!(!message.contains(&0), "OpenDKIM's test mode cannot read NUL bytes");
    let mut in_header = true;
    for (i, line) in message.split_inclusive(|&b| b == b'\n').enumerate() {
        assert!(
            line.ends_with(b"\r\n") || !line.ends_with(b"\n"),
            "line {} ends with a bare LF; OpenDKIM would sign it as CRLF",
            i + 1
        );
        assert!(line.len() < 65_000, "line {} is too long for OpenDKIM's test mode", i + 1);
        if in_header {
            if line == b"\r\n" {
                in_header = false;
            } else if simple_headers && !line.starts_with(b" ") && !line.starts_with(b"\t") {
                if let Some(colon) = line.iter().position(|&b| b == b':') {
                    assert!(
                        line.get(colon + 1) == Some(&b' '),
                        "header line {} has no space after its colon; OpenDKIM would sign it with one",
                        i + 1
                    );
                }
            }
        }
    }
}
