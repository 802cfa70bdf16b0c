//! Certificates for the TLS tests, made by the openssl CLI as operators make theirs: a private
//! CA and, signed by it, a server certificate for `localhost` / 127.0.0.1 / ::1 (PEM files).

use std::path::{Path, PathBuf};

use super::dkim_keys::sh;

pub struct Certs {
    /// The CA's certificate: what a client trusts (`ca_file`).
    pub ca: PathBuf,
    /// The server's certificate chain (leaf, then the CA) and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    /// A CA and a server certificate for `name` (plus localhost and the loopback addresses),
    /// written into `dir` under `prefix`-named files.
    pub fn make(dir: &Path, prefix: &str, name: &str) -> Certs {
        let d = dir.display();
        let p = format!("{d}/{prefix}");
        sh(&format!(
            "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=Sluice test CA {prefix}' \
             -keyout {p}-ca.key -out {p}-ca.pem 2>/dev/null"
        ));
        sh(&format!(
            "openssl req -newkey rsa:2048 -nodes -subj '/CN={name}' -keyout {p}.key -out {p}.csr 2>/dev/null && \
             printf 'subjectAltName=DNS:{name},DNS:localhost,IP:127.0.0.1,IP:::1\\nextendedKeyUsage=serverAuth\\n' > {p}.ext && \
             openssl x509 -req -in {p}.csr -CA {p}-ca.pem -CAkey {p}-ca.key -CAcreateserial -days 2 \
             -extfile {p}.ext -out {p}.leaf 2>/dev/null && cat {p}.leaf {p}-ca.pem > {p}.pem"
        ));
        Certs {
            ca: dir.join(format!("{prefix}-ca.pem")),
            cert: dir.join(format!("{prefix}.pem")),
            key: dir.join(format!("{prefix}.key")),
        }
    }
}
