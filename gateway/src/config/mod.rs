//! The configuration file: its types (the public interface operators write), defaults, and
//! validation that reports errors as `FILE:LINE:COLUMN: key: what is wrong`, and where the
//! embedded default finds its filters. A loaded config keeps its source text, so checks made
//! later (files, filters: `preflight`, `context`) point at the line of the key too.
//!
//! Loading is pure (text in, `Config` or `ConfigError` out) so every error path is unit-tested;
//! only `load_file` and `embedded_default` touch the filesystem.

pub mod dns;
pub mod policy;
pub mod relay;
pub mod stages;
pub mod tls;
mod units;
pub mod wasm;
mod wording;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::chain::headers::HEADER_LIMIT;
pub use relay::{RelayConfig, RelayTls};
use stages::{FlowConfig, StageConfig};
pub use units::{ByteSize, Span};

/// The config `sluice serve` runs when given no `--config`: loopback listener, local maildir.
pub const EMBEDDED_DEFAULT: &str = include_str!("embedded_default.toml");

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub relay: Option<RelayConfig>,
    #[serde(default)]
    pub maildir: MaildirConfig,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub flow: FlowConfig,
    /// The chain, in order (`[[stage]]` tables).
    #[serde(default)]
    pub stage: Vec<StageConfig>,
    /// The admin HTTP API; disabled when absent.
    pub admin: Option<AdminConfig>,
    /// The resolver for stages granted the `dns` capability.
    #[serde(default)]
    pub dns: dns::DnsConfig,
    /// The wasm host's own settings (the compiled-component cache).
    #[serde(default)]
    pub wasm: wasm::WasmConfig,
    /// STARTTLS for clients; not offered when absent.
    pub tls: Option<tls::TlsConfig>,
    /// Relay policy and rate limits (`[policy]`).
    #[serde(default)]
    pub policy: policy::PolicyConfig,
    /// Relative paths in the config (filter files) are relative to this directory (absolute).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Where the config came from, for errors found after parsing.
    #[serde(skip)]
    pub source: Source,
}

/// The text a config was parsed from and its name in errors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Source {
    /// The file as shown in errors (absolute), or `(embedded default)`.
    pub name: String,
    text: Arc<str>,
    /// The embedded default, whose filters are built with Sluice (`make filters`).
    pub embedded: bool,
}

impl Config {
    /// A path from the config, made absolute against the config's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }

    /// `FILE:LINE: KEY` for a dotted key of this config (`stage[1].config.rules` is shown as
    /// `stage "rules": [stage.config] rules`), to begin an error found after parsing. The line
    /// is the key's or, for a key the file does not have, that of the nearest table it has.
    pub fn locate(&self, dotted: &str) -> String {
        let text = &self.source.text;
        let mut path = dotted;
        let offset = loop {
            if let Some(offset) = key_offset(text, path) {
                break offset;
            }
            match path.rsplit_once('.') {
                Some((table, _)) => path = table,
                None => break 0,
            }
        };
        let line = text[..offset.min(text.len())].matches('\n').count() + 1;
        format!("{}:{line}: {}", self.source.name, wording::shown_key(text, dotted))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    /// Name in the greeting and EHLO reply; the machine's host name when absent.
    pub hostname: Option<String>,
    pub max_message_size: ByteSize,
    /// Largest header section; a larger one is refused with 552 5.3.4 once the content is read.
    pub max_header_size: ByteSize,
    pub max_recipients: usize,
    pub max_sessions: usize,
    pub max_sessions_per_ip: usize,
    /// Idle bound on each wait for a command, and total bound on reading one command line.
    pub command_timeout: Span,
    /// Idle bound on each wait for message content.
    pub data_timeout: Span,
    /// Bytes per second message content must average once `min_data_rate_grace` is used up.
    pub min_data_rate: ByteSize,
    pub min_data_rate_grace: Span,
    /// How long SIGTERM waits for sessions in a transaction before closing them with 421.
    pub shutdown_timeout: Span,
    /// What to do with a bare CR or LF in a message body (SMTP smuggling defence).
    pub bare_line_endings: BareLineEndings,
    /// Every connection begins with a PROXY header (v1 or v2) naming the real client; needs
    /// `proxy_trusted`.
    pub proxy_protocol: bool,
    /// The load balancers allowed to connect when `proxy_protocol` is on (CIDRs or addresses,
    /// written as `policy.trusted_networks` is).
    pub proxy_trusted: Vec<policy::Network>,
    /// MAIL only after STARTTLS (530 5.7.0 before); needs `[tls]`.
    pub require_tls: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            hostname: None,
            max_message_size: ByteSize(50 << 20),
            max_header_size: ByteSize(256 << 10),
            max_recipients: 100,
            max_sessions: 1000,
            max_sessions_per_ip: 100,
            command_timeout: Span(Duration::from_secs(300)),
            data_timeout: Span(Duration::from_secs(600)),
            min_data_rate: ByteSize(500),
            min_data_rate_grace: Span(Duration::from_secs(30)),
            shutdown_timeout: Span(Duration::from_secs(30)),
            bare_line_endings: BareLineEndings::Normalize,
            proxy_protocol: false,
            proxy_trusted: Vec::new(),
            require_tls: false,
        }
    }
}

/// Policy for a bare CR or LF inside message content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareLineEndings {
    /// Rewrite it to CRLF, so no next hop can read it as a line end of its own.
    Normalize,
    /// Refuse the message with 550 after reading it.
    Reject,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin API listens (keep it on loopback).
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// A file holding a bearer token the API requires (relative to the config file).
    pub token_file: Option<PathBuf>,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8025))
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaildirConfig {
    pub path: PathBuf,
}

impl Default for MaildirConfig {
    fn default() -> Self {
        MaildirConfig { path: PathBuf::from("./mail") }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Bytes of one message held in memory before it spills to a temporary file.
    pub memory_limit: ByteSize,
    /// Bytes all messages together hold in memory; beyond it a message spills even below
    /// `memory_limit`, so memory stays bounded however many sessions are receiving.
    pub total_memory_limit: ByteSize,
    /// Where spilled messages go; the system temporary directory when absent.
    pub directory: Option<PathBuf>,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig { memory_limit: ByteSize(1 << 20), total_memory_limit: ByteSize(32 << 20), directory: None }
    }
}

/// A config error located in its source text.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read config")]
    Read { file: String, source: std::io::Error },
    #[error("{file}:{line}:{column}: {key}: {message}")]
    Invalid { file: String, line: usize, column: usize, key: String, message: String },
}

/// Reads and validates a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    // Paths in errors are absolute, so an operator sees which file was meant wherever they ran it.
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let file = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { file: file.clone(), source })?;
    let mut config = parse(&file, &text)?;
    config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(config)
}

/// The environment variable naming the directory of the embedded default's filters.
pub const FILTER_DIR_VAR: &str = "SLUICE_FILTER_DIR";

/// The embedded default; its filter paths are relative to the directory `filter_dirs` finds.
pub fn embedded_default() -> Result<Config, ConfigError> {
    let mut config = parse("(embedded default)", EMBEDDED_DEFAULT)?;
    config.source.embedded = true;
    let env = std::env::var_os(FILTER_DIR_VAR).map(PathBuf::from);
    let candidates = filter_dirs(env.as_deref(), std::env::current_exe().ok().as_deref());
    // The first that holds the filters; else the first, so a missing filter is reported there.
    let holds_filters =
        |dir: &&PathBuf| config.stage.iter().filter_map(|s| s.path.as_ref()).all(|p| dir.join(p).is_file());
    let dir = candidates.iter().find(holds_filters).or(candidates.first()).cloned().unwrap_or_default();
    config.base_dir = std::path::absolute(&dir).unwrap_or(dir);
    Ok(config)
}

/// Where the embedded default looks for its filters, in order: `$SLUICE_FILTER_DIR` alone when
/// set; else the build's output (`target/wasm32-wasip2/release` beside the binary's
/// `target/<profile>`, as `make run` has it), `../lib/sluice/filters` beside the binary's
/// directory (an install under a prefix: `/usr/local/bin/sluice` →
/// `/usr/local/lib/sluice/filters`), and `/usr/lib/sluice/filters`.
fn filter_dirs(env: Option<&Path>, exe: Option<&Path>) -> Vec<PathBuf> {
    if let Some(dir) = env {
        return vec![dir.to_path_buf()];
    }
    let mut dirs = Vec::new();
    if let Some(bin) = exe.and_then(Path::parent) {
        dirs.push(bin.join("../wasm32-wasip2/release"));
        dirs.push(bin.join("../lib/sluice/filters"));
    }
    dirs.push(PathBuf::from("/usr/lib/sluice/filters"));
    dirs
}

/// Parses and validates config text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let deserializer = toml::Deserializer::new(text);
    let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let key = err.path().to_string();
        let inner = err.into_inner();
        let offset = inner.span().map(|span| span.start).unwrap_or(0);
        let key = if key == "." { "(top level)".into() } else { key };
        invalid(file, text, offset, &key, wording::plain(inner.message()))
    })?;
    validate(&config).map_err(|(key, message)| {
        let offset = key_offset(text, &key).unwrap_or(0);
        invalid(file, text, offset, &key, message)
    })?;
    config.source = Source { name: file.to_string(), text: Arc::from(text), embedded: false };
    Ok(config)
}

fn invalid(file: &str, text: &str, offset: usize, key: &str, message: String) -> ConfigError {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    ConfigError::Invalid { file: file.to_string(), line, column, key: wording::shown_key(text, key), message }
}

/// Byte offset of a dotted key (`server.max_recipients`) in the text, for semantic errors.
fn key_offset(text: &str, dotted: &str) -> Option<usize> {
    let doc: toml_edit::ImDocument<&str> = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = doc.as_item();
    let mut span = None;
    for part in dotted.split('.') {
        // "stage[2]" is the third table of the array `stage`.
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let (key, value) = item.as_table_like()?.get_key_value(name)?;
        span = key.span().or_else(|| value.span());
        item = value;
        if let Some(index) = index {
            let table = item.as_array_of_tables()?.get(index)?;
            span = table.span().or(span);
            item = item.get(index)?;
        }
    }
    span.map(|s| s.start)
}

/// Semantic checks the types cannot express; the error names the offending key.
fn validate(config: &Config) -> Result<(), (String, String)> {
    let server = &config.server;
    let fail = |key: &str, message: &str| Err((key.to_string(), message.to_string()));
    if server.listen.is_empty() {
        return fail("server.listen", "at least one listen address is needed, e.g. [\"127.0.0.1:2525\"]");
    }
    if server.max_message_size.0 == 0 {
        return fail("server.max_message_size", "must be greater than zero");
    }
    if server.max_header_size.0 == 0 {
        return fail("server.max_header_size", "must be greater than zero");
    }
    if server.max_header_size.0 > HEADER_LIMIT as u64 {
        return fail("server.max_header_size", &format!("must be at most {}MiB", HEADER_LIMIT >> 20));
    }
    if server.max_recipients == 0 {
        return fail("server.max_recipients", "must be at least 1");
    }
    if server.max_sessions == 0 {
        return fail("server.max_sessions", "must be at least 1");
    }
    if server.max_sessions_per_ip == 0 {
        return fail("server.max_sessions_per_ip", "must be at least 1");
    }
    if server.command_timeout.0.is_zero() {
        return fail("server.command_timeout", "must be greater than zero");
    }
    if server.data_timeout.0.is_zero() {
        return fail("server.data_timeout", "must be greater than zero");
    }
    if server.min_data_rate.0 == 0 {
        return fail("server.min_data_rate", "must be greater than zero (bytes per second, e.g. 500)");
    }
    if server.min_data_rate_grace.0.is_zero() {
        return fail("server.min_data_rate_grace", "must be greater than zero");
    }
    if server.proxy_protocol && server.proxy_trusted.is_empty() {
        return fail(
            "server.proxy_protocol",
            "is true, but server.proxy_trusted lists no load balancer; add their addresses, e.g. proxy_trusted = [\"10.0.0.5/32\"]",
        );
    }
    if let Some(hostname) = &server.hostname {
        if hostname.is_empty() || hostname.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return fail("server.hostname", "must be a host name without spaces, e.g. \"gw.example.org\"");
        }
    }
    if let Some(relay) = &config.relay {
        relay.validate()?;
    }
    if server.require_tls && config.tls.is_none() {
        return fail(
            "server.require_tls",
            "needs a certificate to offer STARTTLS with: add a [tls] section with cert_file and key_file",
        );
    }
    if config.maildir.path.as_os_str().is_empty() {
        return fail("maildir.path", "must name a directory, e.g. \"./mail\"");
    }
    dns::validate(&config.dns)?;
    policy::validate(&config.policy)?;
    stages::validate(&config.flow, &config.stage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        parse("test.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn a_control_character_in_a_comment_is_named() {
        // Fuzzing finding: toml's error had no message, so the line ended after the key.
        let shown = error("# a\x0cb\n[server]\n");
        assert!(shown.starts_with("test.toml:1:"), "{shown}");
        assert!(shown.contains("a control character other than tab"), "{shown}");
    }

    #[test]
    fn embedded_default_is_valid() {
        let config = parse("embedded", EMBEDDED_DEFAULT).unwrap();
        assert!(config.relay.is_none());
        assert_eq!(config.maildir.path, PathBuf::from("./mail"));
        assert_eq!(config.server.listen, vec![SocketAddr::from(([127, 0, 0, 1], 2525))]);
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../../examples/sluice.toml");
        let config = parse("examples/sluice.toml", text).unwrap();
        assert_eq!(config.server.max_message_size, ByteSize(50 << 20));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = error("[server]\nhostname = \"a\"\nmax_mesage_size = \"1MiB\"\n");
        assert!(err.starts_with("test.toml:3:1: server.max_mesage_size: unknown key \"max_mesage_size\"; the keys here are listen, hostname,"), "{err}");
    }

    #[test]
    fn bad_size_names_key_and_line() {
        let err = error("[server]\n\nmax_message_size = \"50XB\"\n");
        assert!(err.starts_with("test.toml:3:"), "{err}");
        assert!(err.contains("server.max_message_size"), "{err}");
        assert!(err.contains("KiB"), "{err}");
    }

    #[test]
    fn bad_duration_and_type() {
        let err = error("[server]\ncommand_timeout = \"5 minutes\"\n");
        assert!(err.starts_with("test.toml:2:") && err.contains("server.command_timeout"), "{err}");
        let err = error("[server]\nmax_recipients = \"many\"\n");
        assert_eq!(err, "test.toml:2:18: server.max_recipients: must be a whole number, not \"many\"");
    }

    #[test]
    fn semantic_errors_point_at_the_key() {
        let err = error("[server]\nlisten = [\"127.0.0.1:1\"]\n\nmax_recipients = 0\n");
        assert!(err.starts_with("test.toml:4:1: server.max_recipients: must be at least 1"), "{err}");
        let err = error("[relay]\naddress = \"nohost\"\n");
        assert!(err.starts_with("test.toml:2:1: relay.address:"), "{err}");
    }

    #[test]
    fn limits_must_be_positive_and_bounded() {
        let err = error("[server]\nmax_header_size = 0\n");
        assert!(err.starts_with("test.toml:2:1: server.max_header_size: must be greater than zero"), "{err}");
        let err = error("[server]\nmax_header_size = \"8MiB\"\n");
        assert!(err.starts_with("test.toml:2:1: server.max_header_size: must be at most 4MiB"), "{err}");
        let err = error("[server]\n\nmin_data_rate = 0\n");
        assert!(err.starts_with("test.toml:3:1: server.min_data_rate: must be greater than zero"), "{err}");
        let err = error("[server]\nmin_data_rate = -500\n");
        assert!(
            err.starts_with("test.toml:2:") && err.contains("server.min_data_rate: a size cannot be negative"),
            "{err}"
        );
        let err = error("[server]\nmin_data_rate_grace = \"0s\"\n");
        assert!(err.starts_with("test.toml:2:1: server.min_data_rate_grace: must be greater than zero"), "{err}");
        let err = error("[server]\nmin_data_rate_grace = \"-5s\"\n");
        assert!(err.starts_with("test.toml:2:") && err.contains("server.min_data_rate_grace"), "{err}");
        let server =
            parse("test.toml", "[server]\nmax_header_size = \"1MiB\"\nmin_data_rate = \"1KiB\"\n").unwrap().server;
        assert_eq!((server.max_header_size, server.min_data_rate), (ByteSize(1 << 20), ByteSize(1024)));
    }

    #[test]
    fn milter_stage_keys() {
        let stage = |lines: &str| error(&format!("[[stage]]\nname = \"m\"\nkind = \"milter\"\n{lines}"));
        let cases = [
            ("", "@3@stage \"m\": kind: a milter stage needs address"),
            ("address = \"127.0.0.1:8891\"\n", "@4@stage \"m\": address: must be inet:HOST:PORT"),
            (
                "address = \"inet:127.0.0.1:8891\"\npath = \"x.wasm\"\n",
                "@5@stage \"m\": path: only for kind = \"wasm\"",
            ),
            (
                "address = \"inet:127.0.0.1:8891\"\naction = \"tag\"\n",
                "@5@stage \"m\": action: only for kind = \"clamd\"",
            ),
            (
                "address = \"inet:127.0.0.1:8891\"\ntimeout = \"10s\"\ncall_limit = \"5s\"\n",
                "@6@stage \"m\": call_limit: must be at least the stage's timeout",
            ),
            (
                "address = \"inet:127.0.0.1:8891\"\n[stage.macros]\n\"daemon_name\" = \"x\"\n",
                "@6@stage \"m\": [stage.macros] daemon_name: a macro name is one letter (j) or {name} in braces",
            ),
            (
                "address = \"inet:127.0.0.1:8891\"\nquarantine = \"hold\"\n",
                "stage \"m\": quarantine: unknown value \"hold\"",
            ),
        ];
        for (lines, expected) in cases {
            let err = stage(lines);
            // "@LINE@MESSAGE": the error is on that line.
            let (line, message) = match expected.strip_prefix('@').and_then(|e| e.split_once('@')) {
                Some((line, message)) => (Some(line), message),
                None => (None, expected),
            };
            assert!(err.contains(message), "{lines}: {err}");
            assert!(line.is_none_or(|line| err.starts_with(&format!("test.toml:{line}:"))), "{lines}: {err}");
        }
        let err =
            error("[[stage]]\nname = \"c\"\nkind = \"clamd\"\naddress = \"127.0.0.1:3310\"\nreplace_body = true\n");
        assert!(err.starts_with("test.toml:5:") && err.contains("replace_body: only for kind = \"milter\""), "{err}");
        let ok = "[[stage]]\nname = \"m\"\nkind = \"milter\"\naddress = \"unix:/run/m.sock\"\nquarantine = \"tag\"\n\
                  replace_body = true\n[stage.macros]\n\"{daemon_name}\" = \"mx1\"\nj = \"mx1.example\"\n";
        let stages = parse("test.toml", ok).unwrap().stage;
        assert_eq!(stages[0].macros.as_ref().map(|m| m.len()), Some(2));
    }

    #[test]
    fn syntax_error_has_a_line() {
        let err = error("[server\nlisten = 1\n");
        assert!(err.starts_with("test.toml:1:"), "{err}");
    }

    #[test]
    fn stage_errors_point_into_the_array() {
        let text = "[[stage]]\nname = \"a\"\nkind = \"test\"\n\n[[stage]]\nname = \"a\"\nkind = \"test\"\n";
        let err = error(text);
        assert!(err.starts_with("test.toml:6:1: stage \"a\": name: another stage has this name"), "{err}");
        let err = error("[[stage]]\nname = \"a\"\nkind = \"wasm2\"\n");
        assert_eq!(
            err,
            "test.toml:3:8: stage \"a\": kind: unknown value \"wasm2\"; use one of \"test\", \"wasm\", \"clamd\", \"milter\""
        );
        let err = error("[[stage]]\nname = \"a\"\nkind = \"test\"\n[stage.test]\ndelay = \"fast\"\n");
        assert!(
            err.starts_with("test.toml:5:") && err.contains("stage \"a\": [stage.test] delay: invalid duration"),
            "{err}"
        );
        let err = error("[[stage]]\nkind = \"test\"\n");
        assert!(err.starts_with("test.toml:1:1: [[stage]] number 1: the key name is required here"), "{err}");
        let err = error("[flow]\nhigh_watermark = \"64KiB\"\nlow_watermark = \"64KiB\"\n");
        assert!(err.starts_with("test.toml:3:1: flow.low_watermark: must be below"), "{err}");
    }

    #[test]
    fn located_keys_after_parsing() {
        let text = "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[[stage]]\nname = \"rules\"\nkind = \"wasm\"\npath = \"r.wasm\"\n[stage.config]\nrules = \"x\"\n";
        let config = parse("/etc/sluice.toml", text).unwrap();
        assert_eq!(config.locate("stage[0].config.rules"), "/etc/sluice.toml:9: stage \"rules\": [stage.config] rules");
        assert_eq!(config.locate("stage[0].path"), "/etc/sluice.toml:7: stage \"rules\": path");
        // A key the file lacks points at its table, or the stage.
        assert_eq!(config.locate("stage[0].files.key"), "/etc/sluice.toml:4: stage \"rules\": [stage.files] key");
        assert_eq!(config.locate("stage[0].keys.key"), "/etc/sluice.toml:4: stage \"rules\": [stage.keys] key");
        assert_eq!(
            config.locate("stage[0].config.absent"),
            "/etc/sluice.toml:8: stage \"rules\": [stage.config] absent"
        );
    }

    #[test]
    fn embedded_default_filter_dirs() {
        let env = Path::new("/opt/filters");
        assert_eq!(filter_dirs(Some(env), Some(Path::new("/usr/bin/sluice"))), vec![PathBuf::from("/opt/filters")]);
        let dirs = filter_dirs(None, Some(Path::new("/usr/local/bin/sluice")));
        assert_eq!(
            dirs,
            [
                "/usr/local/bin/../wasm32-wasip2/release",
                "/usr/local/bin/../lib/sluice/filters",
                "/usr/lib/sluice/filters"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn proxy_protocol_needs_trusted_balancers() {
        let err = error("[server]\nproxy_protocol = true\n");
        assert!(err.starts_with("test.toml:2:1: server.proxy_protocol: is true, but server.proxy_trusted"), "{err}");
        let err = error("[server]\nproxy_protocol = true\nproxy_trusted = [\"10.0.0.x\"]\n");
        assert!(err.starts_with("test.toml:3:") && err.contains("server.proxy_trusted"), "{err}");
        let text = "[server]\nproxy_protocol = true\nproxy_trusted = [\"10.0.0.5\", \"::1/128\"]\n";
        let server = parse("test.toml", text).unwrap().server;
        let networks: Vec<ipnet::IpNet> = server.proxy_trusted.iter().map(|network| network.0).collect();
        assert_eq!(networks, ["10.0.0.5/32".parse::<ipnet::IpNet>().unwrap(), "::1/128".parse().unwrap()]);
    }

    #[test]
    fn bad_listen_address() {
        let err = error("[server]\nlisten = [\"localhost\"]\n");
        assert!(err.starts_with("test.toml:2:") && err.contains("server.listen"), "{err}");
    }
}
