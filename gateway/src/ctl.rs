//! `sluice ctl`: the operator's client for the admin HTTP API of a running `sluice serve`.
//!
//! The API is found with `--admin URL` or from the `[admin]` section of `--config FILE` (whose
//! `token_file` also supplies the bearer token unless `--token-file` is given). Replies are
//! printed as aligned tables and `key: value` lines laid out by the tables below, or as the
//! server's JSON with `--json`. Fields missing from a reply print as `-`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::Subcommand;
use serde_json::Value;

use crate::config::{self, Config};
use crate::reload::ReloadReport;

#[derive(clap::Args)]
pub struct CtlArgs {
    /// Find the admin API (and its token file) in this config's [admin] section.
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with = "admin")]
    config: Option<PathBuf>,
    /// The admin API's base URL, e.g. http://127.0.0.1:8025.
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
    /// A file holding the bearer token (overrides [admin] token_file).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Print the server's JSON instead of tables.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Show counters (`stats`), open sessions (`sessions`) or one session (`session ID`).
    #[command(subcommand)]
    Show(Show),
    /// Reload the config file: apply what can change live, list what needs a restart.
    Reload,
    /// Switch trace logging of a subsystem on or off.
    Trace {
        #[arg(value_parser = ["smtp", "io", "filters", "flow", "scanner", "relay", "reload", "admin", "all"])]
        subsystem: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

#[derive(Subcommand)]
enum Show {
    /// Uptime, session, transaction, byte, flow and per-stage counters.
    Stats,
    /// One line per open session.
    Sessions,
    /// Everything about one session, with its queue per stage.
    Session { id: String },
}

pub fn run(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args)?;
    let json = match &args.command {
        CtlCommand::Show(Show::Stats) => client.send("GET", "/stats")?.json()?,
        CtlCommand::Show(Show::Sessions) => client.send("GET", "/sessions")?.json()?,
        CtlCommand::Show(Show::Session { id }) => {
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                bail!("invalid session ID {id:?}");
            }
            let reply = client.send("GET", &format!("/sessions/{id}"))?;
            if reply.status == 404 {
                bail!("no session {id}");
            }
            reply.json()?
        }
        CtlCommand::Reload => {
            let reply = client.send("POST", "/reload")?;
            if reply.status == 422 {
                let json: Value = serde_json::from_str(&reply.body).unwrap_or_default();
                bail!("reload failed: {}", json["error"].as_str().unwrap_or(reply.body.trim()));
            }
            reply.json()?
        }
        CtlCommand::Trace { subsystem, state } => {
            client.send("POST", &format!("/trace/{subsystem}/{state}"))?.json()?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!(
        "{}",
        match &args.command {
            CtlCommand::Show(Show::Stats) => render_stats(&json),
            CtlCommand::Show(Show::Sessions) => {
                render_sessions(json.as_array().context("the admin API sent no session list (try --json)")?)
            }
            CtlCommand::Show(Show::Session { .. }) => render_session(&json),
            CtlCommand::Reload => serde_json::from_value::<ReloadReport>(json)
                .context("the admin API's reload answer is not a reload report (try --json)")?
                .to_string(),
            CtlCommand::Trace { subsystem, state } => format!("trace {subsystem}: {state}\n"),
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Where the admin API is and the file holding the token it wants.
#[derive(Debug, PartialEq)]
struct Target {
    url: String,
    token_file: Option<PathBuf>,
}

/// Resolves the base URL and token file from `--admin`, `--config` and `--token-file`.
fn target(admin: Option<&str>, config: Option<(&Path, &Config)>, token_file: Option<&Path>) -> anyhow::Result<Target> {
    let (url, config_token) = match (admin, config) {
        (Some(url), _) => (base_url(url)?, None),
        (None, Some((path, config))) => {
            let admin = config.admin.as_ref().ok_or_else(|| {
                anyhow!("the admin API is not enabled in {}: add\n[admin]\nlisten = \"127.0.0.1:8025\"", path.display())
            })?;
            let mut listen = admin.listen;
            if listen.ip().is_unspecified() {
                // Listening on every address: talk to it over loopback.
                listen.set_ip(match listen {
                    SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                });
            }
            (format!("http://{listen}"), admin.token_file.as_deref().map(|file| config.resolve(file)))
        }
        (None, None) => bail!("no admin API address: pass --admin URL or --config FILE"),
    };
    Ok(Target { url, token_file: token_file.map(Path::to_path_buf).or(config_token) })
}

/// `http://host:port` from what the operator typed (a bare `host:port` is taken as http).
fn base_url(text: &str) -> anyhow::Result<String> {
    let text = text.trim();
    let rest = match text.split_once("://") {
        None => text,
        Some(("http", rest)) => rest,
        Some(("https", _)) => bail!("{text}: `sluice ctl` speaks plain http only (keep the admin API on loopback)"),
        Some(_) => "",
    };
    match rest.trim_end_matches('/') {
        "" => bail!("{text}: expected an admin API URL such as http://127.0.0.1:8025"),
        rest => Ok(format!("http://{rest}")),
    }
}

fn read_token(file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read token file {}", file.display()))?;
    match text.trim() {
        "" => bail!("token file {} is empty", file.display()),
        token => Ok(token.to_string()),
    }
}

struct Client {
    agent: ureq::Agent,
    url: String,
    token: Option<String>,
}

/// An HTTP reply other than 401 (which is always an error).
struct Reply {
    status: u16,
    status_text: String,
    body: String,
}

impl Reply {
    /// The body as JSON, or an error naming the status for anything but 2xx.
    fn json(self) -> anyhow::Result<Value> {
        if !(200..300).contains(&self.status) {
            bail!("the admin API answered {} {}: {}", self.status, self.status_text, self.body.trim());
        }
        serde_json::from_str(&self.body).context("the admin API sent malformed JSON")
    }
}

impl Client {
    fn new(args: &CtlArgs) -> anyhow::Result<Client> {
        let config = args.config.as_deref().map(|path| config::load_file(path).map(|c| (path, c))).transpose()?;
        let config = config.as_ref().map(|(path, config)| (*path, config));
        let target = target(args.admin.as_deref(), config, args.token_file.as_deref())?;
        let token = target.token_file.as_deref().map(read_token).transpose()?;
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(120)) // a reload compiles every filter
            .build();
        Ok(Client { agent, url: target.url, token })
    }

    fn send(&self, method: &str, path: &str) -> anyhow::Result<Reply> {
        let mut request = self.agent.request(method, &format!("{}{path}", self.url));
        if let Some(token) = &self.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let response = match request.call() {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(ureq::Error::Transport(err)) if err.kind() == ureq::ErrorKind::ConnectionFailed => {
                let cause = std::error::Error::source(&err).map_or_else(|| err.to_string(), ToString::to_string);
                let url = &self.url;
                bail!("cannot reach the admin API at {url}: is `sluice serve` running with [admin] enabled? ({cause})")
            }
            Err(err) => bail!("admin API request {method} {}{path} failed: {err}", self.url),
        };
        if response.status() == 401 {
            bail!("the admin API refused the token: pass --token-file or set [admin] token_file");
        }
        let (status, status_text) = (response.status(), response.status_text().to_string());
        let body = response.into_string().context("cannot read the admin API's reply")?;
        Ok(Reply { status, status_text, body })
    }
}

/// How a JSON value is shown.
#[derive(Clone, Copy)]
enum Format {
    /// Strings unquoted, booleans yes/no, null `-`.
    Plain,
    /// A byte count as `1.2MiB`.
    Size,
    /// A byte count as `1234567 (1.2MiB)`.
    Bytes,
    /// Seconds as `4m12s`.
    Time,
    /// The sum of `bytes` over a list of per-stage queues, as `Size`.
    Queued,
}
use Format::{Bytes, Plain, Queued, Size, Time};

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}
use Align::{Left, Right};

/// A `key: value` line: label, JSON pointer into the reply, format.
type Field = (&'static str, &'static str, Format);
/// A table column: header, alignment, JSON pointer into each row, format.
type Column = (&'static str, Align, &'static str, Format);

const STATS: &[(&str, &[Field])] = &[
    ("", &[("uptime", "/uptime_seconds", Time), ("chain generation", "/chain_generation", Plain)]),
    ("sessions", &[("current", "/sessions/current", Plain), ("total", "/sessions/total", Plain)]),
    (
        "transactions",
        &[
            ("accepted", "/transactions/accepted", Plain),
            ("rejected", "/transactions/rejected", Plain),
            ("tempfailed", "/transactions/tempfailed", Plain),
            ("discarded", "/transactions/discarded", Plain),
            ("refused", "/transactions/refused", Plain),
        ],
    ),
    ("bytes", &[("in", "/bytes/in", Bytes), ("out", "/bytes/out", Bytes)]),
    (
        "flow",
        &[
            ("pauses", "/flow/pauses", Plain),
            ("resumes", "/flow/resumes", Plain),
            ("paused now", "/flow/paused_now", Plain),
        ],
    ),
];

const STAGE_COLUMNS: &[Column] = &[
    ("NAME", Left, "/name", Plain),
    ("KIND", Left, "/kind", Plain),
    ("CALLS", Right, "/calls", Plain),
    ("FAILURES", Right, "/failures", Plain),
];

const SESSION_COLUMNS: &[Column] = &[
    ("ID", Left, "/id", Plain),
    ("PEER", Left, "/peer", Plain),
    ("STATE", Left, "/state", Plain),
    ("FROM", Left, "/transaction/from", Plain),
    ("RCPTS", Right, "/transaction/rcpts", Plain),
    ("IN", Right, "/bytes_in", Size),
    ("OUT", Right, "/bytes_out", Size),
    ("PAUSED", Left, "/paused", Plain),
    ("BY", Left, "/paused_by", Plain),
    ("QUEUED", Right, "/queued", Queued),
    ("AGE", Right, "/age_seconds", Time),
];

const SESSION_FIELDS: &[Field] = &[
    ("id", "/id", Plain),
    ("peer", "/peer", Plain),
    ("local port", "/local_port", Plain),
    ("state", "/state", Plain),
    ("from", "/transaction/from", Plain),
    ("recipients", "/transaction/rcpts", Plain),
    ("bytes in", "/bytes_in", Bytes),
    ("bytes out", "/bytes_out", Bytes),
    ("paused", "/paused", Plain),
    ("paused by", "/paused_by", Plain),
    ("pauses", "/pauses", Plain),
    ("resumes", "/resumes", Plain),
    ("age", "/age_seconds", Time),
    ("queued", "/queued", Queued),
];

fn show(value: &Value, format: Format) -> String {
    match (format, value) {
        (Size, Value::Number(n)) => human_size(n.as_u64().unwrap_or(0)),
        (Bytes, Value::Number(n)) => format!("{n} ({})", human_size(n.as_u64().unwrap_or(0))),
        (Time, Value::Number(n)) => human_duration(n.as_f64().unwrap_or(0.0)),
        (Queued, Value::Array(queues)) => human_size(queues.iter().filter_map(|q| q["bytes"].as_u64()).sum()),
        (_, Value::String(s)) => s.clone(),
        (_, Value::Bool(b)) => if *b { "yes" } else { "no" }.to_string(),
        (_, Value::Null) => "-".to_string(),
        (_, other) => other.to_string(),
    }
}

fn field<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    value.pointer(pointer).unwrap_or(&Value::Null)
}

fn fields(indent: &str, value: &Value, layout: &[Field]) -> String {
    let pairs: Vec<(&str, String)> =
        layout.iter().map(|&(label, at, format)| (label, show(field(value, at), format))).collect();
    key_values(indent, &pairs)
}

fn value_table(columns: &[Column], items: &[Value]) -> String {
    let row = |item: &Value| columns.iter().map(|&(_, _, at, format)| show(field(item, at), format)).collect();
    let rows: Vec<Vec<String>> = items.iter().map(row).collect();
    let headers: Vec<(&str, Align)> = columns.iter().map(|&(name, align, _, _)| (name, align)).collect();
    table(&headers, &rows)
}

fn render_stats(stats: &Value) -> String {
    let mut out = String::new();
    for &(group, layout) in STATS {
        match group {
            "" => out += &fields("", stats, layout),
            group => out += &format!("{group}\n{}", fields("  ", stats, layout)),
        }
    }
    out += "stages\n";
    match stats["stages"].as_array() {
        Some(stages) if !stages.is_empty() => {
            out.extend(value_table(STAGE_COLUMNS, stages).lines().map(|line| format!("  {line}\n")))
        }
        _ => out += "  (none)\n",
    }
    out
}

fn render_sessions(sessions: &[Value]) -> String {
    match sessions {
        [] => "no sessions\n".to_string(),
        sessions => value_table(SESSION_COLUMNS, sessions),
    }
}

fn render_session(session: &Value) -> String {
    let queues: Vec<(&str, String)> = (session["queued"].as_array().into_iter().flatten())
        .map(|q| (q["stage"].as_str().unwrap_or("?"), show(&q["bytes"], Size)))
        .collect();
    fields("", session, SESSION_FIELDS) + &key_values("  ", &queues)
}

/// A table with a header row; columns are as wide as their widest cell, two spaces apart.
fn table(headers: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|(name, _)| name.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = headers.iter().map(|(name, _)| name.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = (row.iter().zip(headers).zip(&widths))
            .map(|((cell, (_, align)), &w)| match align {
                Left => format!("{cell:<w$}"),
                Right => format!("{cell:>w$}"),
            })
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}

/// `key: value` lines with the values aligned, each line starting with `indent`.
fn key_values(indent: &str, pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(key, _)| key.chars().count() + 1).max().unwrap_or(0);
    pairs.iter().map(|(key, value)| format!("{indent}{:<width$}  {value}\n", format!("{key}:"))).collect()
}

/// Bytes in binary units: `512B`, `1.2KiB`, `12MiB` (one decimal below 10).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let (mut value, mut unit) = (bytes as f64 / 1024.0, 0);
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let decimals = if value < 9.95 { 1 } else { 0 };
    format!("{value:.decimals$}{}", UNITS[unit])
}

/// A duration for people: `3.2s`, `4m12s`, `2h03m`, `3d04h`.
fn human_duration(seconds: f64) -> String {
    let s = seconds as u64;
    match s {
        0..60 => format!("{seconds:.1}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[test]
    fn sizes_and_durations_are_human() {
        let sizes = [0, 1023, 1024, 12345, 1_258_291, 256 << 20, 3 << 30, u64::MAX].map(human_size);
        assert_eq!(sizes, ["0B", "1023B", "1.0KiB", "12KiB", "1.2MiB", "256MiB", "3.0GiB", "16384PiB"]);
        let durations = [3.24, 252.0, 7380.0, 3.0 * 86400.0 + 4.0 * 3600.0].map(human_duration);
        assert_eq!(durations, ["3.2s", "4m12s", "2h03m", "3d04h"]);
    }

    #[test]
    fn tables_and_key_values_align() {
        let rows = [["a", "1", "x"], ["long-name", "12345", ""]].map(|row| row.map(String::from).to_vec());
        let text = table(&[("NAME", Left), ("N", Right), ("LAST", Left)], &rows);
        assert_eq!(text, "NAME           N  LAST\na              1  x\nlong-name  12345\n");
        let text = key_values("  ", &[("id", "1".into()), ("local port", "25".into())]);
        assert_eq!(text, "  id:          1\n  local port:  25\n");
    }

    fn session() -> Value {
        json!({"id": "0000000a", "peer": "127.0.0.1:5555", "local_port": 2525, "state": "data",
            "transaction": {"from": "a@b", "rcpts": 1}, "bytes_in": 1234, "bytes_out": 300, "paused": true,
            "paused_by": "slow", "queued": [{"stage": "slow", "bytes": 12345}, {"stage": "spool", "bytes": 0}],
            "pauses": 1, "resumes": 0, "age_seconds": 3.2})
    }

    #[test]
    fn sessions_render_as_a_table() {
        let idle = json!({"id": "b", "peer": "[::1]:1", "state": "idle", "transaction": null, "paused": false,
            "paused_by": null, "queued": [], "bytes_in": 0, "bytes_out": 0, "age_seconds": 75});
        let text = render_sessions(&[session(), idle]);
        assert_eq!(
            text,
            "\
ID        PEER            STATE  FROM  RCPTS      IN   OUT  PAUSED  BY    QUEUED    AGE
0000000a  127.0.0.1:5555  data   a@b       1  1.2KiB  300B  yes     slow   12KiB   3.2s
b         [::1]:1         idle   -         -      0B    0B  no      -         0B  1m15s
"
        );
        assert_eq!(render_sessions(&[]), "no sessions\n");
    }

    #[test]
    fn one_session_lists_its_queues() {
        let text = render_session(&session());
        assert!(text.starts_with("id:          0000000a\npeer:        127.0.0.1:5555\n"), "{text}");
        assert!(text.contains("\nbytes in:    1234 (1.2KiB)\n"), "{text}");
        assert!(text.ends_with("\nqueued:      12KiB\n  slow:   12KiB\n  spool:  0B\n"), "{text}");
    }

    #[test]
    fn stats_render_grouped() {
        let stats = json!({"uptime_seconds": 12, "chain_generation": 1, "sessions": {"current": 2, "total": 10},
            "transactions": {"accepted": 5, "rejected": 1, "tempfailed": 0, "discarded": 0, "refused": 0},
            "bytes": {"in": 12345, "out": 12000}, "flow": {"pauses": 3, "resumes": 3, "paused_now": 0},
            "stages": [{"name": "antivirus", "kind": "clamd", "calls": 10, "failures": 0}]});
        let text = render_stats(&stats);
        let start = "uptime:            12.0s\nchain generation:  1\nsessions\n  current:  2\n";
        assert!(text.starts_with(start), "{text}");
        assert!(text.contains("bytes\n  in:   12345 (12KiB)\n"), "{text}");
        let end = "stages\n  NAME       KIND   CALLS  FAILURES\n  antivirus  clamd     10         0\n";
        assert!(text.ends_with(end), "{text}");
        assert!(render_stats(&json!({})).ends_with("paused now:  -\nstages\n  (none)\n"));
    }

    #[test]
    fn urls_are_normalised() {
        assert_eq!(base_url("http://127.0.0.1:8025/").unwrap(), "http://127.0.0.1:8025");
        assert_eq!(base_url("127.0.0.1:8025").unwrap(), "http://127.0.0.1:8025");
        assert!(base_url("https://gw:8025").unwrap_err().to_string().contains("plain http"));
        assert!(base_url("ftp://gw").is_err() && base_url("http://").is_err());
    }

    #[test]
    fn target_comes_from_arguments_or_config() {
        let mut config = config::parse("test.toml", "").unwrap();
        config.base_dir = PathBuf::from("/etc/sluice");
        let path = Path::new("/etc/sluice/sluice.toml");
        let err = target(None, Some((path, &config)), None).unwrap_err().to_string();
        assert!(err.starts_with("the admin API is not enabled in /etc/sluice/sluice.toml: add\n[admin]\n"), "{err}");
        let listen = "0.0.0.0:8025".parse().unwrap();
        config.admin = Some(config::AdminConfig { listen, token_file: Some("t".into()) });
        let expected = Target { url: "http://127.0.0.1:8025".into(), token_file: Some("/etc/sluice/t".into()) };
        assert_eq!(target(None, Some((path, &config)), None).unwrap(), expected);
        let mine = Some(Path::new("my.token"));
        assert_eq!(target(None, Some((path, &config)), mine).unwrap().token_file, Some("my.token".into()));
        let expected = Target { url: "http://[::1]:8025".into(), token_file: Some("my.token".into()) };
        assert_eq!(target(Some("[::1]:8025"), None, mine).unwrap(), expected);
        let err = target(None, None, None).unwrap_err().to_string();
        assert_eq!(err, "no admin API address: pass --admin URL or --config FILE");
    }

    #[test]
    fn tokens_are_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret\n").unwrap();
        assert_eq!(read_token(&file).unwrap(), "s3cret");
        std::fs::write(&file, "\n").unwrap();
        assert!(read_token(&file).unwrap_err().to_string().contains("is empty"));
        assert!(read_token(&dir.path().join("none")).unwrap_err().to_string().starts_with("cannot read token file"));
    }

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: CtlArgs,
    }

    #[test]
    fn command_line_shape() {
        let parse = |line: &str| Wrapper::try_parse_from(line.split(' ')).map(|w| w.args);
        let args = parse("x --admin http://h:1 --json show session 0a").unwrap();
        assert!(args.json && matches!(args.command, CtlCommand::Show(Show::Session { id }) if id == "0a"));
        assert!(matches!(parse("x -c f trace flow on").unwrap().command, CtlCommand::Trace { .. }));
        assert!(parse("x trace flows on").is_err() && parse("x trace flow maybe").is_err());
        assert!(parse("x --admin u -c f reload").is_err());
    }
}
