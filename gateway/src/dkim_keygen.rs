//! `sluice dkim keygen`: a new DKIM signing key, written as PKCS#8 PEM readable by its owner only
//! (an existing file is kept unless `--force`), and the DNS TXT record that publishes it, printed
//! zone-file ready. Keys and the record format are the `sluice-dkim` crate's.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use sluice_dkim::{zone_file_entry, SigningKey, MAX_RSA_BITS, MIN_RSA_BITS, WEAK_RSA_BITS};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyAlgorithm {
    /// rsa-sha256, verified everywhere.
    Rsa,
    /// ed25519-sha256 (RFC 8463): short keys, not yet verified by every receiver.
    Ed25519,
}

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// The signing domain (d=), e.g. example.org.
    #[arg(long)]
    domain: String,
    /// The selector (s=): the key is published at SELECTOR._domainkey.DOMAIN.
    #[arg(long)]
    selector: String,
    #[arg(long, value_enum, default_value = "rsa")]
    algorithm: KeyAlgorithm,
    /// RSA modulus size, 1024 to 4096 (below 2048 only with a warning). RSA only.
    #[arg(long)]
    bits: Option<usize>,
    /// Where to write the private key (PEM, mode 0600).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    force: bool,
}

const DEFAULT_RSA_BITS: usize = 2048;

/// Generates the key, writes it and prints the record on stdout (notes go to stderr).
pub fn run(args: KeygenArgs) -> anyhow::Result<()> {
    check_dns_label("--domain", &args.domain)?;
    check_dns_label("--selector", &args.selector)?;
    let key = match args.algorithm {
        KeyAlgorithm::Rsa => {
            let bits = args.bits.unwrap_or(DEFAULT_RSA_BITS);
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                bail!("--bits {bits}: RSA keys must have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits ({DEFAULT_RSA_BITS} is the usual size)");
            }
            if bits < WEAK_RSA_BITS {
                eprintln!("warning: a {bits}-bit RSA key is weak; RFC 8301 asks for {WEAK_RSA_BITS} bits or more");
            }
            SigningKey::generate_rsa(bits)?
        }
        KeyAlgorithm::Ed25519 => {
            if args.bits.is_some() {
                bail!("--bits applies to RSA keys only; Ed25519 keys have one size");
            }
            SigningKey::generate_ed25519()?
        }
    };
    let pem = key.to_pkcs8_pem()?;
    write_private(&args, pem.as_bytes())?;
    eprintln!("wrote the private key to {} (mode 0600); publish this DNS record:", args.out.display());
    println!("{}", zone_file_entry(&args.selector, &args.domain, &key.key_record().to_string()));
    Ok(())
}

/// Creates the file with mode 0600 from the start, so the key is never readable by others.
fn write_private(args: &KeygenArgs, pem: &[u8]) -> anyhow::Result<()> {
    let path = &args.out;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if args.force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            anyhow::anyhow!("{} exists: choose another --out, or add --force to replace it", path.display())
        }
        _ => anyhow::Error::new(e).context(format!("cannot create {}", path.display())),
    })?;
    // A file replaced with --force keeps its old mode unless it is set again.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} readable by its owner only", path.display()))?;
    file.write_all(pem).and_then(|()| file.sync_all()).with_context(|| format!("cannot write {}", path.display()))
}

/// Domains and selectors go into a DNS name and into d= / s=: letters, digits, "-", "_" and dots.
fn check_dns_label(option: &str, text: &str) -> anyhow::Result<()> {
    let name = text.trim_end_matches('.');
    let ok = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !ok {
        bail!("{option} {text:?} is not a DNS name (letters, digits, \"-\" and \"_\", labels separated by dots)");
    }
    Ok(())
}
