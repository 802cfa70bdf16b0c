//! Pre-flight checks: what a config needs from the machine before anything is served. Every
//! file the config names exists and can be read, the admin token is not empty, and the
//! directories Sluice writes to (spool, maildir) are writable; and the config exposes nothing
//! it should not: no open relay, no admin API off loopback without a token. `serve` (before it
//! binds a port) and every reload run `check`, then check the filters as they build the chain
//! (`context::load_stages`: compiled, linked against the contract, their configuration
//! accepted); `check-config` runs both as `check_all`. Problems name the file, line and key.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;

use crate::chain::answer::ContentRules;
use crate::context::load_stages;

use crate::config::{Config, FILTER_DIR_VAR};

const TOKEN_KEY: &str = "admin.token_file";

/// Everything wrong, one problem per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct Problems(pub Vec<String>);

/// The whole validation, as `check-config` runs it: `check`, then every stage loaded as the
/// chain would be (filters compiled, linked, their configuration checked) and dropped. Returns
/// the warnings (`[stage.config]` keys a filter does not use).
pub async fn check_all(config: &Config) -> anyhow::Result<Vec<String>> {
    check(config)?;
    let content = ContentRules {
        max_message_size: config.server.max_message_size.0,
        bare_line_endings: config.server.bare_line_endings,
    };
    let (_, warnings) = load_stages(config, content, &Arc::default()).await?;
    Ok(warnings)
}

/// Runs every check on the machine and reports all problems found, not only the first.
pub fn check(config: &Config) -> Result<(), Problems> {
    let mut problems = Vec::new();
    let mut unreadable_keys = Vec::new();
    for (key, path) in named_files(config) {
        if let Err(why) = readable(&path) {
            problems.push(format!("{}: {why}{}", config.locate(&key), build_hint(config, &key)));
            unreadable_keys.push(key);
        }
    }
    if !unreadable_keys.iter().any(|key| key == TOKEN_KEY) {
        if let Err(problem) = admin_token(config) {
            problems.push(problem);
        }
    }
    // Readable certificate files must also hold certificates (and the key that fits).
    if !unreadable_keys.iter().any(|key| key.starts_with("tls.")) {
        if let Err(problem) = crate::inbound_tls::acceptor(config) {
            problems.push(problem);
        }
    }
    if let (Some(relay), false) = (&config.relay, unreadable_keys.iter().any(|key| key == "relay.ca_file")) {
        if let Err(problem) = crate::relay::TlsPolicy::from_config(config, relay) {
            problems.push(problem.to_string());
        }
    }
    problems.extend(open_relay(config));
    problems.extend(open_proxy(config));
    problems.extend(unguarded_admin(config));
    if let Some(dir) = &config.spool.directory {
        if let Err(why) = writable_dir(dir, false) {
            let hint = "; create it, or leave spool.directory out to use the system's temporary directory";
            problems.push(format!("{}: {why}{hint}", config.locate("spool.directory")));
        }
    }
    if config.relay.is_none() {
        if let Err(why) = writable_dir(&config.maildir.path, true) {
            problems.push(format!("{}: {why}", config.locate("maildir.path")));
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(Problems(problems)),
    }
}

/// The files the config names, each with its dotted key, resolved against the config's
/// directory. Keys that name files (a stage's `[stage.files]` and `[stage.keys]`, TLS
/// certificates) belong here.
fn named_files(config: &Config) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    for (index, stage) in config.stage.iter().enumerate() {
        if let Some(path) = &stage.path {
            files.push((format!("stage[{index}].path"), config.resolve(path)));
        }
        for (name, path) in stage.files.iter().flatten() {
            files.push((format!("stage[{index}].files.{name}"), config.resolve(path)));
        }
        for (name, path) in stage.keys.iter().flatten() {
            files.push((format!("stage[{index}].keys.{name}"), config.resolve(path)));
        }
    }
    if let Some(file) = config.admin.as_ref().and_then(|admin| admin.token_file.as_ref()) {
        files.push((TOKEN_KEY.to_string(), config.resolve(file)));
    }
    if let Some(ca_file) = config.relay.as_ref().and_then(|relay| relay.ca_file.as_ref()) {
        files.push(("relay.ca_file".to_string(), config.resolve(ca_file)));
    }
    if let Some(tls) = &config.tls {
        files.push(("tls.cert_file".to_string(), config.resolve(&tls.cert_file)));
        files.push(("tls.key_file".to_string(), config.resolve(&tls.key_file)));
    }
    files
}

/// The admin API's bearer token, read from `[admin] token_file` (None without one).
pub fn admin_token(config: &Config) -> Result<Option<String>, String> {
    let Some(file) = config.admin.as_ref().and_then(|admin| admin.token_file.as_ref()) else { return Ok(None) };
    let path = config.resolve(file);
    let at = config.locate(TOKEN_KEY);
    let token = std::fs::read_to_string(&path).map_err(|err| format!("{at}: {}", unreadable(&path, &err)))?;
    let token = token.trim();
    match token.is_empty() {
        true => Err(format!("{at}: {} is empty; write the token into it", path.display())),
        false => Ok(Some(token.to_string())),
    }
}

/// A config that lets anyone relay: trusted networks covering every address of a family (a
/// `/0`, or smaller networks adding up to one) while clients can come from anywhere — a listener
/// off loopback, or the PROXY protocol, which hands over clients from beyond the proxy. Allowed
/// only when `allow_open_relay = true` says it is meant.
fn open_relay(config: &Config) -> Option<String> {
    let policy = &config.policy;
    if policy.allow_open_relay {
        return None;
    }
    let server = &config.server;
    let exposed = match server.listen.iter().find(|address| !address.ip().to_canonical().is_loopback()) {
        Some(address) => format!("Sluice listens on {address}, which is not loopback"),
        None if server.proxy_protocol => "server.proxy_protocol is on, so clients come from anywhere".to_string(),
        None => return None,
    };
    let networks: Vec<IpNet> = policy.trusted_networks.iter().map(|network| network.0.trunc()).collect();
    let all = IpNet::aggregate(&networks).into_iter().find(|network| network.prefix_len() == 0)?;
    let family = if all.addr().is_ipv4() { "IPv4" } else { "IPv6" };
    Some(format!(
        "{}: trusts every {family} address ({all}) and {exposed}: Sluice would be an open relay, passing \
         anyone's mail to any domain. List only your own clients' networks (e.g. \"192.0.2.0/24\") and put \
         the domains you receive mail for in relay_domains; or, if it is meant (say, a private network \
         whose firewall does the relay control), write allow_open_relay = true in [policy]",
        config.locate("policy.trusted_networks")
    ))
}

/// `proxy_trusted` covering every address lets any client write a PROXY header naming any
/// address — a trusted one too — so it is the same open relay, and spoofs every rate limit.
fn open_proxy(config: &Config) -> Option<String> {
    let server = &config.server;
    if !server.proxy_protocol || config.policy.allow_open_relay {
        return None;
    }
    let networks: Vec<IpNet> = server.proxy_trusted.iter().map(|network| network.0.trunc()).collect();
    let all = IpNet::aggregate(&networks).into_iter().find(|network| network.prefix_len() == 0)?;
    let family = if all.addr().is_ipv4() { "IPv4" } else { "IPv6" };
    Some(format!(
        "{}: takes PROXY headers from every {family} address ({all}), so any client could claim to be          any address, a trusted one too: Sluice would be an open relay and its rate limits void. List          only your load balancers' addresses (e.g. \"10.0.0.5/32\"); or, if it is meant, write          allow_open_relay = true in [policy]",
        config.locate("server.proxy_trusted")
    ))
}

/// An admin API off loopback without a token would let anyone who reaches it reload the config,
/// switch tracing on and list the sessions.
fn unguarded_admin(config: &Config) -> Option<String> {
    let admin = config.admin.as_ref().filter(|admin| admin.token_file.is_none())?;
    if admin.listen.ip().to_canonical().is_loopback() {
        return None;
    }
    Some(format!(
        "{}: {} is not a loopback address and [admin] has no token_file, so anyone who reaches it could \
         reload the config, switch tracing on and list the sessions; set token_file to a file holding a \
         secret token, or listen on 127.0.0.1",
        config.locate("admin.listen"),
        admin.listen
    ))
}

/// For the embedded default's own filters: how to get them.
fn build_hint(config: &Config, key: &str) -> String {
    match config.source.embedded && key.starts_with("stage[") {
        true => format!(
            "; it is one of the embedded default's filters: build them with `make filters`, or set \
             {FILTER_DIR_VAR} to the directory that holds them"
        ),
        false => String::new(),
    }
}

fn readable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(format!("{} is a directory, not a file", path.display())),
        Ok(_) => std::fs::File::open(path).map(drop).map_err(|err| unreadable(path, &err)),
        Err(err) => Err(unreadable(path, &err)),
    }
}

fn unreadable(path: &Path, err: &std::io::Error) -> String {
    match err.kind() {
        ErrorKind::NotFound => format!("{} does not exist", path.display()),
        ErrorKind::PermissionDenied => format!("{} cannot be read (permission denied)", path.display()),
        _ => format!("cannot read {}: {err}", path.display()),
    }
}

/// `dir` is a directory Sluice can create files in; with `may_create`, a missing one is fine
/// when its nearest existing parent is writable (it is created at start).
fn writable_dir(dir: &Path, may_create: bool) -> Result<(), String> {
    // Shown absolute; used as written (relative to the working directory), as the gateway does.
    let shown = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let shown = shown.display();
    let mut existing = dir;
    if may_create {
        while !existing.exists() {
            existing = match existing.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
        }
    }
    match std::fs::metadata(existing) {
        Err(err) if err.kind() == ErrorKind::NotFound => return Err(format!("{shown} does not exist")),
        Err(err) => return Err(format!("cannot use {shown}: {err}")),
        Ok(meta) if !meta.is_dir() => return Err(format!("{} is not a directory", existing.display())),
        Ok(_) => {}
    }
    // Creating a file is the one test that holds for every reason (mode, read-only mount, ACLs).
    tempfile::tempfile_in(existing).map(drop).map_err(|err| match existing == dir {
        true => format!("{shown} is not writable: {err}"),
        false => format!("{shown} cannot be created: {} is not writable: {err}", existing.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn config_in(dir: &Path, text: &str) -> Config {
        let path = dir.join("sluice.toml");
        std::fs::write(&path, text).unwrap();
        config::load_file(&path).unwrap()
    }

    #[test]
    fn every_named_file_is_checked_and_every_problem_reported() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[[stage]]\nname = \"rules\"\nkind = \"wasm\"\npath = \"rules.wasm\"\n\n[admin]\ntoken_file = \"token\"\n";
        let config = config_in(dir.path(), text);
        let problems = check(&config).unwrap_err().0;
        let file = dir.path().join("sluice.toml");
        assert_eq!(
            problems,
            [
                format!(
                    "{}:7: stage \"rules\": path: {} does not exist",
                    file.display(),
                    dir.path().join("rules.wasm").display()
                ),
                format!(
                    "{}:10: admin.token_file: {} does not exist",
                    file.display(),
                    dir.path().join("token").display()
                ),
            ]
        );
        std::fs::write(dir.path().join("rules.wasm"), "").unwrap();
        std::fs::write(dir.path().join("token"), " \n").unwrap();
        let problems = check(&config).unwrap_err().0;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].ends_with("token is empty; write the token into it"), "{problems:?}");
        std::fs::write(dir.path().join("token"), "secret\n").unwrap();
        check(&config).unwrap();
        assert_eq!(admin_token(&config), Ok(Some("secret".to_string())));
    }

    #[test]
    fn stage_files_are_named_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.wasm"), "").unwrap();
        let text = "[[stage]]\nname = \"dkim\"\nkind = \"wasm\"\npath = \"f.wasm\"\n[stage.files]\nkey = \"keys/s1.pem\"\nother = \"other\"\n";
        let config = config_in(dir.path(), text);
        std::fs::write(dir.path().join("other"), "").unwrap();
        let problems = check(&config).unwrap_err().0;
        let file = dir.path().join("sluice.toml");
        let key = dir.path().join("keys/s1.pem");
        assert_eq!(
            problems,
            [format!("{}:6: stage \"dkim\": [stage.files] key: {} does not exist", file.display(), key.display())]
        );
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        std::fs::write(&key, "pem").unwrap();
        check(&config).unwrap();
    }

    #[test]
    fn the_spool_directory_must_exist_and_be_writable() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere");
        let config = config_in(dir.path(), &format!("[spool]\ndirectory = \"{}\"\n", missing.display()));
        let problems = check(&config).unwrap_err().0;
        assert!(
            problems[0].contains(":2: spool.directory: ") && problems[0].contains("nowhere does not exist"),
            "{problems:?}"
        );
        // /proc takes no new files, whoever runs the test (root ignores permission bits).
        let config = config_in(dir.path(), "[spool]\ndirectory = \"/proc\"\n");
        let problems = check(&config).unwrap_err().0;
        assert!(problems[0].contains("spool.directory: /proc is not writable"), "{problems:?}");
        let config = config_in(dir.path(), &format!("[spool]\ndirectory = \"{}\"\n", dir.path().display()));
        check(&config).unwrap();
    }

    #[test]
    fn trusting_every_address_off_loopback_is_an_open_relay() {
        let refusal = |server: &str, policy: &str| {
            let text = format!("[policy]\n{policy}\n\n[server]\n{server}\n");
            open_relay(&config::parse("/etc/sluice.toml", &text).unwrap())
        };
        let open = "listen = [\"0.0.0.0:25\"]";
        let start = "/etc/sluice.toml:2: policy.trusted_networks: trusts every";
        let cases = [
            (
                open,
                "trusted_networks = [\"0.0.0.0/0\"]",
                Some("IPv4 address (0.0.0.0/0) and Sluice listens on 0.0.0.0:25, which is not loopback: "),
            ),
            // Networks adding up to everything are everything.
            (open, "trusted_networks = [\"0.0.0.0/1\", \"128.0.0.0/1\"]", Some("IPv4 address (0.0.0.0/0)")),
            (
                "listen = [\"[::]:25\"]",
                "trusted_networks = [\"::1\", \"::/0\"]",
                Some("IPv6 address (::/0) and Sluice listens on [::]:25"),
            ),
            ("listen = [\"[::]:25\"]", "trusted_networks = [\"::ffff:0:0/96\"]", Some("IPv4 address (0.0.0.0/0)")),
            (
                "listen = [\"127.0.0.1:25\"]\nproxy_protocol = true\nproxy_trusted = [\"127.0.0.1/32\"]",
                "trusted_networks = [\"0.0.0.0/0\"]",
                Some("IPv4 address (0.0.0.0/0) and server.proxy_protocol is on, so clients come from anywhere"),
            ),
            ("listen = [\"127.0.0.1:25\", \"[::1]:25\"]", "trusted_networks = [\"0.0.0.0/0\", \"::/0\"]", None),
            (open, "trusted_networks = [\"0.0.0.0/0\"]\nallow_open_relay = true", None),
            (open, "trusted_networks = [\"10.0.0.0/8\", \"0.0.0.0/1\"]", None),
            (open, "relay_domains = [\"example.org\"]", None),
        ];
        for (server, policy, expected) in cases {
            let problem = refusal(server, policy);
            match expected {
                Some(expected) => {
                    let problem = problem.unwrap_or_else(|| panic!("{server} {policy}: no problem"));
                    assert!(problem.starts_with(start) && problem.contains(expected), "{problem}");
                    assert!(problem.ends_with("write allow_open_relay = true in [policy]"), "{problem}");
                }
                None => assert_eq!(problem, None, "{server} {policy}"),
            }
        }
    }

    #[test]
    fn taking_proxy_headers_from_everyone_is_an_open_relay() {
        let problem = |server: &str, policy: &str| {
            let text =
                format!("[server]\nlisten = [\"127.0.0.1:25\"]\nproxy_protocol = true\n{server}\n[policy]\n{policy}\n");
            open_proxy(&config::parse("/etc/sluice.toml", &text).unwrap())
        };
        let open = problem("proxy_trusted = [\"0.0.0.0/1\", \"128.0.0.0/1\"]", "").expect("refused");
        assert!(
            open.starts_with(
                "/etc/sluice.toml:4: server.proxy_trusted: takes PROXY headers from every IPv4 address (0.0.0.0/0)"
            ),
            "{open}"
        );
        assert!(problem("proxy_trusted = [\"::/0\"]", "").unwrap().contains("every IPv6 address (::/0)"));
        assert_eq!(problem("proxy_trusted = [\"10.0.0.5/32\"]", ""), None);
        assert_eq!(problem("proxy_trusted = [\"0.0.0.0/0\"]", "allow_open_relay = true"), None);
    }

    #[test]
    fn an_admin_api_off_loopback_needs_a_token() {
        let problem =
            |admin: &str| unguarded_admin(&config::parse("/etc/sluice.toml", &format!("[admin]\n{admin}\n")).unwrap());
        let expected =
            "/etc/sluice.toml:2: admin.listen: 0.0.0.0:8025 is not a loopback address and [admin] has no token_file";
        assert!(problem("listen = \"0.0.0.0:8025\"").unwrap().starts_with(expected));
        assert!(problem("listen = \"192.0.2.1:8025\"").unwrap().ends_with("or listen on 127.0.0.1"));
        assert_eq!(problem("listen = \"0.0.0.0:8025\"\ntoken_file = \"token\""), None);
        assert_eq!(problem("listen = \"[::1]:8025\""), None);
        assert_eq!(problem("listen = \"127.0.0.2:8025\""), None);
        assert_eq!(problem(""), None);
    }

    #[test]
    fn the_embedded_defaults_filters_come_with_a_hint() {
        let mut config = config::embedded_default().unwrap();
        config.base_dir = PathBuf::from("/nonexistent");
        config.maildir.path = std::env::temp_dir();
        let problems = check(&config).unwrap_err().0;
        let line = config::EMBEDDED_DEFAULT.lines().position(|l| l.starts_with("path = \"eicar.wasm\"")).unwrap() + 1;
        let expected = format!("(embedded default):{line}: stage \"eicar\": path: /nonexistent/eicar.wasm does not exist; it is one of the embedded default's filters: build them with `make filters`");
        assert!(problems[0].starts_with(&expected), "{problems:?}");
    }
}
