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

use anyhow::{bail, Context as _};
use clap::Subcommand;
use serde::de::DeserializeOwned;

use crate::admin::views::{ErrorView, ReloadView, SessionView, StatsView, TraceView};
use crate::config::{self, Config};

#[derive(clap::Args)]
pub struct CtlArgs {
    /// Find the admin API (and its token file) in this config's [admin] section. Without it
    /// and --admin: the embedded default's address, 127.0.0.1:8025.
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with = "admin")]
    config: Option<PathBuf>,
    /// The admin API's base URL, e.g. http://127.0.0.1:8025.
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
    /// A file holding the bearer token (overrides [admin] token_file).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Print the server's JSON instead of tables (before or after the subcommand).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Show counters (`stats`), open sessions (`sessions`) or one session (`session ID`).
    #[command(subcommand)]
    Show(Show),
    /// Reload the config file and rebuild the filter chain.
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
    let json = args.json;
    let text = match &args.command {
        CtlCommand::Show(Show::Stats) => client.send("GET", "/stats")?.answer(json, render_stats)?,
        CtlCommand::Show(Show::Sessions) => {
            client.send("GET", "/sessions")?.answer(json, |sessions: &Vec<SessionView>| render_sessions(sessions))?
        }
        CtlCommand::Show(Show::Session { id }) => {
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                bail!("invalid session ID {id:?}: `sluice ctl show sessions` lists them");
            }
            let reply = client.send("GET", &format!("/sessions/{id}"))?;
            if reply.status == 404 {
                bail!("no session {id} (it may have ended): `sluice ctl show sessions` lists the open ones");
            }
            reply.answer(json, render_session)?
        }
        CtlCommand::Reload => {
            let reply = client.send("POST", "/reload")?;
            if reply.status == 422 {
                bail!("reload failed, the running chain stays: {}", reply.error_text());
            }
            reply.answer(json, |reload: &ReloadView| {
                let stages = if reload.stages.is_empty() { "none".to_string() } else { reload.stages.join(", ") };
                format!("reloaded: chain generation {} (stages: {stages})\n", reload.generation)
            })?
        }
        CtlCommand::Trace { subsystem, state } => {
            client.send("POST", &format!("/trace/{subsystem}/{state}"))?.answer(json, |trace: &TraceView| {
                format!("trace {}: {}\n", trace.subsystem, if trace.enabled { "on" } else { "off" })
            })?
        }
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// Where the admin API is, the file holding the token it wants, and where the address came
/// from (for the error when nothing answers there).
#[derive(Debug, PartialEq)]
struct Target {
    url: String,
    token_file: Option<PathBuf>,
    source: String,
}

/// What the admin API's address is taken from when `--admin` is absent: the `--config` file,
/// or the embedded default (what `sluice serve` without --config runs).
struct ConfigSource<'a> {
    name: String,
    config: &'a Config,
}

/// Resolves the base URL and token file from `--admin`, the config and `--token-file`.
fn target(admin: Option<&str>, config: Option<ConfigSource<'_>>, token_file: Option<&Path>) -> anyhow::Result<Target> {
    let (url, config_token, source) = match (admin, config) {
        (Some(url), _) => (base_url(url)?, None, "--admin".to_string()),
        (None, Some(ConfigSource { name, config })) => {
            let Some(admin) = config.admin.as_ref() else {
                bail!("the admin API is not enabled in {name}: add\n[admin]\nlisten = \"127.0.0.1:8025\"")
            };
            let mut listen = admin.listen;
            if listen.ip().is_unspecified() {
                // Listening on every address: talk to it over loopback.
                listen.set_ip(match listen {
                    SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                });
            }
            let token = admin.token_file.as_deref().map(|file| config.resolve(file));
            (format!("http://{listen}"), token, format!("[admin] listen in {name}"))
        }
        (None, None) => bail!("no admin API address: pass --admin URL or --config FILE"),
    };
    Ok(Target { url, token_file: token_file.map(Path::to_path_buf).or(config_token), source })
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
    target: Target,
    token: Option<String>,
}

/// An HTTP reply other than 401 (which is always an error).
struct Reply {
    status: u16,
    status_text: String,
    body: String,
}

impl Reply {
    /// The body as a `T`, rendered, or as the server sent it with `json`; an error naming the
    /// status for anything but 2xx.
    fn answer<T: DeserializeOwned>(self, json: bool, render: impl FnOnce(&T) -> String) -> anyhow::Result<String> {
        if !(200..300).contains(&self.status) {
            bail!("the admin API answered {} {}: {}", self.status, self.status_text, self.error_text());
        }
        let view: T = serde_json::from_str(&self.body).context(
            "the admin API's answer does not have the expected fields: are `sluice ctl` and `sluice serve` the same version?",
        )?;
        Ok(if json { self.body } else { render(&view) })
    }

    /// The message of an error answer (its body as is if it is not the API's error JSON).
    fn error_text(&self) -> String {
        serde_json::from_str::<ErrorView>(&self.body).map_or_else(|_| self.body.trim().to_string(), |view| view.error)
    }
}

impl Client {
    fn new(args: &CtlArgs) -> anyhow::Result<Client> {
        let target = match (&args.admin, &args.config) {
            (Some(url), _) => target(Some(url), None, args.token_file.as_deref())?,
            (None, Some(path)) => {
                let config = config::load_file(path)?;
                let source = ConfigSource { name: path.display().to_string(), config: &config };
                target(None, Some(source), args.token_file.as_deref())?
            }
            (None, None) => {
                let config = config::embedded_default()?;
                let source = ConfigSource { name: "the embedded default".to_string(), config: &config };
                target(None, Some(source), args.token_file.as_deref())?
            }
        };
        let token = target.token_file.as_deref().map(read_token).transpose()?;
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(120)) // a reload compiles every filter
            .build();
        Ok(Client { agent, target, token })
    }

    fn send(&self, method: &str, path: &str) -> anyhow::Result<Reply> {
        let url = &self.target.url;
        let mut request = self.agent.request(method, &format!("{url}{path}"));
        if let Some(token) = &self.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let response = match request.call() {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(ureq::Error::Transport(err)) if err.kind() == ureq::ErrorKind::ConnectionFailed => {
                let cause = std::error::Error::source(&err).map_or_else(|| err.to_string(), ToString::to_string);
                let source = &self.target.source;
                bail!(
                    "cannot reach the admin API at {url} (from {source}): is `sluice serve` running with [admin] \
                     enabled? Pass --config FILE or --admin URL to talk to another one ({cause})"
                )
            }
            Err(err) => bail!("admin API request {method} {url}{path} failed: {err}"),
        };
        if response.status() == 401 {
            bail!("the admin API refused the token: pass --token-file or set [admin] token_file");
        }
        let (status, status_text) = (response.status(), response.status_text().to_string());
        let body = response.into_string().context("cannot read the admin API's reply")?;
        Ok(Reply { status, status_text, body })
    }
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}
use Align::{Left, Right};

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_string()
}

fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_string())
}

/// A byte count as `1234567 (1.2MiB)`.
fn bytes(count: u64) -> String {
    format!("{count} ({})", human_size(count))
}

fn render_stats(stats: &StatsView) -> String {
    let (t, b, f) = (&stats.transactions, &stats.bytes, &stats.flow);
    let mut out = key_values(
        "",
        &[
            ("uptime", human_duration(stats.uptime_seconds as f64)),
            ("chain generation", stats.chain_generation.to_string()),
        ],
    );
    let groups: [(&str, Vec<(&str, String)>); 4] = [
        (
            "sessions",
            vec![("current", stats.sessions.current.to_string()), ("total", stats.sessions.total.to_string())],
        ),
        (
            "transactions",
            vec![
                ("accepted", t.accepted.to_string()),
                ("rejected", t.rejected.to_string()),
                ("tempfailed", t.tempfailed.to_string()),
                ("discarded", t.discarded.to_string()),
                ("refused", t.refused.to_string()),
            ],
        ),
        ("bytes", vec![("in", bytes(b.received)), ("out", bytes(b.sent))]),
        (
            "flow",
            vec![
                ("pauses", f.pauses.to_string()),
                ("resumes", f.resumes.to_string()),
                ("paused now", f.paused_now.to_string()),
            ],
        ),
    ];
    for (group, pairs) in groups {
        out += &format!("{group}\n{}", key_values("  ", &pairs));
    }
    out += "stages\n";
    if stats.stages.is_empty() {
        return out + "  (none)\n";
    }
    let headers = [("NAME", Left), ("KIND", Left), ("CALLS", Right), ("FAILURES", Right)];
    let rows: Vec<Vec<String>> = (stats.stages.iter())
        .map(|s| vec![s.name.clone(), s.kind.to_string(), s.calls.to_string(), s.failures.to_string()])
        .collect();
    out.extend(table(&headers, &rows).lines().map(|line| format!("  {line}\n")));
    out
}

fn queued_total(session: &SessionView) -> u64 {
    session.queued.iter().map(|q| q.bytes).sum()
}

fn render_sessions(sessions: &[SessionView]) -> String {
    if sessions.is_empty() {
        return "no sessions\n".to_string();
    }
    let headers = [
        ("ID", Left),
        ("PEER", Left),
        ("STATE", Left),
        ("FROM", Left),
        ("RCPTS", Right),
        ("IN", Right),
        ("OUT", Right),
        ("PAUSED", Left),
        ("BY", Left),
        ("QUEUED", Right),
        ("AGE", Right),
    ];
    let row = |s: &SessionView| {
        vec![
            s.id.clone(),
            s.peer.clone(),
            s.state.clone(),
            or_dash(s.transaction.as_ref().map(|t| t.from.clone())),
            or_dash(s.transaction.as_ref().map(|t| t.rcpts.to_string())),
            human_size(s.bytes_in),
            human_size(s.bytes_out),
            yes_no(s.paused),
            or_dash(s.paused_by.clone()),
            human_size(queued_total(s)),
            human_duration(s.age_seconds),
        ]
    };
    table(&headers, &sessions.iter().map(row).collect::<Vec<_>>())
}

fn render_session(s: &SessionView) -> String {
    let fields = [
        ("id", s.id.clone()),
        ("peer", s.peer.clone()),
        ("local port", s.local_port.to_string()),
        ("state", s.state.clone()),
        ("from", or_dash(s.transaction.as_ref().map(|t| t.from.clone()))),
        ("recipients", or_dash(s.transaction.as_ref().map(|t| t.rcpts.to_string()))),
        ("bytes in", bytes(s.bytes_in)),
        ("bytes out", bytes(s.bytes_out)),
        ("paused", yes_no(s.paused)),
        ("paused by", or_dash(s.paused_by.clone())),
        ("pauses", s.pauses.to_string()),
        ("resumes", s.resumes.to_string()),
        ("age", human_duration(s.age_seconds)),
        ("queued", human_size(queued_total(s))),
    ];
    let queues: Vec<(&str, String)> = s.queued.iter().map(|q| (q.stage.as_str(), human_size(q.bytes))).collect();
    key_values("", &fields) + &key_values("  ", &queues)
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
    use crate::admin::views::{
        ByteCounts, FlowCounts, QueueView, SessionCounts, StageStats, TransactionCounts, TransactionView,
    };
    use crate::config::stages::StageKind;
    use clap::Parser;

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

    fn session() -> SessionView {
        SessionView {
            id: "0000000a".into(),
            peer: "127.0.0.1:5555".into(),
            local_port: 2525,
            state: "data".into(),
            transaction: Some(TransactionView { from: "a@b".into(), rcpts: 1 }),
            bytes_in: 1234,
            bytes_out: 300,
            paused: true,
            paused_by: Some("slow".into()),
            queued: vec![
                QueueView { stage: "slow".into(), bytes: 12345 },
                QueueView { stage: "spool".into(), bytes: 0 },
            ],
            pauses: 1,
            resumes: 0,
            age_seconds: 3.2,
        }
    }

    #[test]
    fn sessions_render_as_a_table() {
        let idle = SessionView {
            id: "b".into(),
            peer: "[::1]:1".into(),
            state: "idle".into(),
            transaction: None,
            paused: false,
            paused_by: None,
            queued: vec![],
            bytes_in: 0,
            bytes_out: 0,
            age_seconds: 75.0,
            ..session()
        };
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
        let mut stats = StatsView {
            uptime_seconds: 12,
            chain_generation: 1,
            sessions: SessionCounts { current: 2, total: 10 },
            transactions: TransactionCounts { accepted: 5, rejected: 1, tempfailed: 0, discarded: 0, refused: 0 },
            bytes: ByteCounts { received: 12345, sent: 12000 },
            flow: FlowCounts { pauses: 3, resumes: 3, paused_now: 0 },
            stages: vec![
                StageStats { name: "antivirus".into(), kind: StageKind::Clamd, calls: 10, failures: 0 },
                StageStats { name: "eicar".into(), kind: StageKind::Wasm, calls: 7, failures: 1 },
            ],
        };
        let text = render_stats(&stats);
        let start = "uptime:            12.0s\nchain generation:  1\nsessions\n  current:  2\n";
        assert!(text.starts_with(start), "{text}");
        assert!(text.contains("bytes\n  in:   12345 (12KiB)\n"), "{text}");
        let end = "stages
  NAME       KIND   CALLS  FAILURES
  antivirus  clamd     10         0
  eicar      wasm       7         1
";
        assert!(text.ends_with(end), "{text}");
        stats.stages.clear();
        assert!(render_stats(&stats).ends_with("paused now:  0\nstages\n  (none)\n"));
    }

    #[test]
    fn answers_parse_into_views_or_report_the_api_error() {
        let reply = |status, body: &str| Reply { status, status_text: "X".into(), body: body.into() };
        let trace = r#"{"subsystem": "io", "enabled": true, "filter": "info,sluice::io=trace"}"#;
        let render = |t: &TraceView| format!("{} {}", t.subsystem, t.enabled);
        assert_eq!(reply(200, trace).answer(false, render).unwrap(), "io true");
        assert_eq!(reply(200, trace).answer(true, render).unwrap(), trace, "--json prints what the API sent");
        let missing = reply(200, r#"{"subsystem": "io"}"#).answer(false, render).unwrap_err();
        assert!(format!("{missing:#}").contains("expected fields"), "{missing:#}");
        let failed = reply(500, r#"{"error": "tracing is not set up"}"#).answer(false, render).unwrap_err();
        assert_eq!(failed.to_string(), "the admin API answered 500 X: tracing is not set up");
        assert_eq!(reply(502, "bad gateway\n").error_text(), "bad gateway");
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
        let file = || ConfigSource { name: "/etc/sluice/sluice.toml".into(), config: &config };
        let err = target(None, Some(file()), None).unwrap_err().to_string();
        assert!(err.starts_with("the admin API is not enabled in /etc/sluice/sluice.toml: add\n[admin]\n"), "{err}");
        let listen = "0.0.0.0:8025".parse().unwrap();
        config.admin = Some(config::AdminConfig { listen, token_file: Some("t".into()) });
        let file = || ConfigSource { name: "/etc/sluice/sluice.toml".into(), config: &config };
        let expected = Target {
            url: "http://127.0.0.1:8025".into(),
            token_file: Some("/etc/sluice/t".into()),
            source: "[admin] listen in /etc/sluice/sluice.toml".into(),
        };
        assert_eq!(target(None, Some(file()), None).unwrap(), expected);
        let mine = Some(Path::new("my.token"));
        assert_eq!(target(None, Some(file()), mine).unwrap().token_file, Some("my.token".into()));
        let expected =
            Target { url: "http://[::1]:8025".into(), token_file: Some("my.token".into()), source: "--admin".into() };
        assert_eq!(target(Some("[::1]:8025"), None, mine).unwrap(), expected);
        let err = target(None, None, None).unwrap_err().to_string();
        assert_eq!(err, "no admin API address: pass --admin URL or --config FILE");
    }

    #[test]
    fn without_arguments_ctl_talks_to_the_embedded_default() {
        let embedded = config::embedded_default().unwrap();
        let source = ConfigSource { name: "the embedded default".into(), config: &embedded };
        let found = target(None, Some(source), None).unwrap();
        assert_eq!(found.url, "http://127.0.0.1:8025");
        assert_eq!((found.token_file, found.source.as_str()), (None, "[admin] listen in the embedded default"));
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
        for after in ["x show stats --json", "x show --json sessions", "x reload --json", "x trace io on --json"] {
            assert!(parse(after).unwrap().json, "{after}");
        }
        assert!(!parse("x show stats").unwrap().json);
        assert!(parse("x show stats").unwrap().admin.is_none(), "no address given: the embedded default's");
        assert!(matches!(parse("x -c f trace flow on").unwrap().command, CtlCommand::Trace { .. }));
        assert!(parse("x trace flows on").is_err() && parse("x trace flow maybe").is_err());
        assert!(parse("x --admin u -c f reload").is_err());
    }
}
