//! `sluice ctl`: the operator's client for the admin HTTP API of a running `sluice serve`.
//!
//! The API is found with `--admin URL` or from the `[admin]` section of `--config FILE` (whose
//! `token_file` also supplies the bearer token unless `--token-file` is given), or without
//! either at the embedded default's address. Answers are read into the API's own types
//! (`admin::views`), so an answer without the fields ctl shows is an error, never a blank; they
//! are printed for people (`render`) or, with `--json`, as the server sent them.

mod render;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use serde::de::DeserializeOwned;

use crate::admin::views::{ErrorView, ReloadReport, SessionView, TraceView};
use crate::config::{self, Config};
use render::{render_session, render_sessions, render_stats};

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
                bail!("reload failed, the running config stays: {}", reply.error_text());
            }
            reply.answer(json, |reload: &ReloadReport| reload.to_string())?
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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
