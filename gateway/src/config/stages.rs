//! `[flow]` and `[[stage]]`: the chain's configuration.

use std::time::Duration;

use serde::Deserialize;

use super::{ByteSize, Span};
pub use crate::chain::stage::StageEvent;
use crate::chain::OnError;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowConfig {
    /// Bytes queued in the chain at which the client is paused.
    pub high_watermark: ByteSize,
    /// Bytes queued at which a paused client is resumed (below `high_watermark`).
    pub low_watermark: ByteSize,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig { high_watermark: ByteSize(256 << 10), low_watermark: ByteSize(64 << 10) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    /// Built-in stage for tests and demonstrations (`[stage.test]` says what it does).
    Test,
    /// A WebAssembly component implementing `sluice:filter` (`path`, limits, `[stage.config]`).
    Wasm,
    /// The ClamAV scanner bridge (`address`, `action`, `max_size`, `oversize`).
    Clamd,
    /// A milter (`address`, `call_limit`, `macros`, `quarantine`, `replace_body`).
    Milter,
}

/// What a milter stage does with a message its milter quarantines (SMFIR_QUARANTINE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuarantineAction {
    /// 451: the message stays with the sender until someone looks (the default).
    #[default]
    Tempfail,
    /// Deliver it with "[QUARANTINE] " before its Subject.
    Tag,
    /// Deliver it with an `X-Quarantined:` field giving the milter's reason.
    Header,
}

/// What the clamd stage does with an infected message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VirusAction {
    /// 554 5.7.1 naming the signature.
    #[default]
    Reject,
    /// Add X-Virus-Status / X-Virus-Name headers and pass it on.
    Tag,
    /// Answer 250 and drop it (logged).
    Discard,
}

/// What the clamd stage does with a message too large to be scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OversizeAction {
    /// 451: the sender retries (and an operator raises the limits).
    #[default]
    Tempfail,
    /// 554: refuse it.
    Reject,
    /// Pass it on unscanned, with X-Virus-Status: Unscanned.
    Accept,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    pub name: String,
    pub kind: StageKind,
    #[serde(default)]
    pub on_error: OnError,
    /// Bound on each call into the stage.
    #[serde(default = "default_stage_timeout")]
    pub timeout: Span,
    /// Behaviour of a `kind = "test"` stage; absent, it passes everything.
    pub test: Option<TestStageConfig>,
    /// `kind = "wasm"`: the component file (relative paths are relative to the config file).
    pub path: Option<std::path::PathBuf>,
    /// `kind = "wasm"`: linear memory bound of one instance (default 64MiB).
    pub memory_limit: Option<ByteSize>,
    /// `kind = "wasm"`: CPU time one call may use before it is stopped (default 1s).
    pub cpu_limit: Option<Span>,
    /// `kind = "wasm"`: wall time all calls for one message may take together (default 60s).
    pub message_timeout: Option<Span>,
    /// `kind = "wasm"`: key/values handed to the filter (non-strings as their TOML text).
    pub config: Option<toml::Table>,
    /// `kind = "wasm"`: `[stage.files]`, name → file (relative to the config file), read by the
    /// host at load and handed to the filter as bytes (it has no filesystem).
    pub files: Option<std::collections::BTreeMap<String, std::path::PathBuf>>,
    /// `kind = "wasm"`: `[stage.keys]`, name → private key file, read and parsed by the host at
    /// load; the filter signs with a key by name (the contract's `keys`) and never reads it.
    pub keys: Option<std::collections::BTreeMap<String, std::path::PathBuf>>,
    /// `kind = "wasm"`: what the filter may reach beyond its message (`["dns"]`); a filter
    /// importing a capability it was not granted fails to load.
    pub capabilities: Option<Vec<Capability>>,
    /// `kind = "clamd"`: "host:port" or "unix:/path/to/clamd.ctl"; `kind = "milter"`:
    /// "inet:host:port" or "unix:/path/to/socket".
    pub address: Option<String>,
    /// `kind = "clamd"`: what to do with infected mail (default reject).
    pub action: Option<VirusAction>,
    /// `kind = "clamd"`: largest message sent to clamd (default 25MiB, clamd's StreamMaxLength
    /// default); keep it at or below clamd's own limit.
    pub max_size: Option<ByteSize>,
    /// `kind = "clamd"`: what to do with a message too large to scan (default tempfail).
    pub oversize: Option<OversizeAction>,
    /// `kind = "milter"`: bound on one call however long the milter keeps it alive with progress
    /// packets (default 5m; `timeout` bounds each wait for a packet).
    pub call_limit: Option<Span>,
    /// `kind = "milter"`: `[stage.macros]`, more macros (or other values for the built-in ones),
    /// sent with the connection's: `"{daemon_name}" = "mx1"`.
    pub macros: Option<std::collections::BTreeMap<String, String>>,
    /// `kind = "milter"`: what a quarantine request does (default tempfail).
    pub quarantine: Option<QuarantineAction>,
    /// `kind = "milter"`: offer the milter body replacement; the stage then holds the body until
    /// the milter's end-of-message answer (default false).
    pub replace_body: Option<bool>,
}

impl StageConfig {
    /// `[stage.config]` as the filter sees it: strings as they are, other values as TOML text.
    pub fn filter_config(&self) -> Vec<(String, String)> {
        let Some(table) = &self.config else { return Vec::new() };
        table
            .iter()
            .map(|(key, value)| {
                let text = match value {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (key.clone(), text)
            })
            .collect()
    }
}

/// A capability a wasm stage can be granted (`capabilities = [...]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// TXT lookups through the gateway's resolver (`[dns]`).
    Dns,
}

impl StageConfig {
    pub fn granted(&self, capability: Capability) -> bool {
        self.capabilities.iter().flatten().any(|c| *c == capability)
    }
}

fn default_stage_timeout() -> Span {
    Span(Duration::from_secs(30))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestVerdict {
    Accept,
    Reject,
    Tempfail,
    Discard,
}

/// Where the test stage panics outside its calls (`panic_in`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PanicSite {
    /// In `interests()`, once the header section has passed: when the runner asks whether the
    /// stage wants the body, between calls.
    Interests,
}

/// What the built-in test stage does; every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestStageConfig {
    /// Sleep this long on every body chunk: a deliberately slow stage.
    pub delay: Option<Span>,
    /// Do not finish any body call before the client's end of data has been read, so the
    /// chunks stay queued (the OpenSMTPD 6.1 regression scenario).
    #[serde(default)]
    pub hold_until_end_of_data: bool,
    /// Answer `verdict` at event `at` (with `reply`, e.g. "550 5.7.1 No thanks").
    pub verdict: Option<TestVerdict>,
    pub at: Option<StageEvent>,
    pub reply: Option<String>,
    /// With `at = "rcpt"`: only for recipients containing this text.
    pub rcpt_contains: Option<String>,
    /// Return an error at this event.
    pub fail_at: Option<StageEvent>,
    /// Never answer at this event (the stage timeout must stop it).
    pub hang_at: Option<StageEvent>,
    /// Panic at this event.
    pub panic_at: Option<StageEvent>,
    /// Panic outside any call, here.
    pub panic_in: Option<PanicSite>,
    /// "Name: value" fields added when the header section passes, and at the end.
    pub add_header: Option<String>,
    pub end_header: Option<String>,
    /// A field name removed (all occurrences) when the header section passes.
    pub remove_header: Option<String>,
    /// Text appended to the body at the end (replacement chunks).
    pub append: Option<String>,
}

/// Semantic checks for the chain; errors name the key.
pub(super) fn validate(flow: &FlowConfig, stages: &[StageConfig]) -> Result<(), (String, String)> {
    let fail = |key: String, message: &str| Err((key, message.to_string()));
    if flow.high_watermark.0 == 0 {
        return fail("flow.high_watermark".into(), "must be greater than zero");
    }
    if flow.low_watermark >= flow.high_watermark {
        return fail("flow.low_watermark".into(), "must be below flow.high_watermark");
    }
    for (i, stage) in stages.iter().enumerate() {
        if stage.name.is_empty() || !stage.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return fail(format!("stage[{i}].name"), "must be non-empty letters, digits, '-', '_' or '.'");
        }
        if stages[..i].iter().any(|other| other.name == stage.name) {
            return fail(format!("stage[{i}].name"), "another stage has this name; names must be unique");
        }
        if stage.timeout.0.is_zero() {
            return fail(format!("stage[{i}].timeout"), "must be greater than zero");
        }
        // Each kind's own keys; a key of another kind is an error naming it.
        let keys: [(&str, bool, &[StageKind]); 17] = [
            ("test", stage.test.is_some(), &[StageKind::Test]),
            ("path", stage.path.is_some(), &[StageKind::Wasm]),
            ("memory_limit", stage.memory_limit.is_some(), &[StageKind::Wasm]),
            ("cpu_limit", stage.cpu_limit.is_some(), &[StageKind::Wasm]),
            ("message_timeout", stage.message_timeout.is_some(), &[StageKind::Wasm]),
            ("config", stage.config.is_some(), &[StageKind::Wasm]),
            ("files", stage.files.is_some(), &[StageKind::Wasm]),
            ("keys", stage.keys.is_some(), &[StageKind::Wasm]),
            ("capabilities", stage.capabilities.is_some(), &[StageKind::Wasm]),
            ("address", stage.address.is_some(), &[StageKind::Clamd, StageKind::Milter]),
            ("action", stage.action.is_some(), &[StageKind::Clamd]),
            ("max_size", stage.max_size.is_some(), &[StageKind::Clamd]),
            ("oversize", stage.oversize.is_some(), &[StageKind::Clamd]),
            ("call_limit", stage.call_limit.is_some(), &[StageKind::Milter]),
            ("macros", stage.macros.is_some(), &[StageKind::Milter]),
            ("quarantine", stage.quarantine.is_some(), &[StageKind::Milter]),
            ("replace_body", stage.replace_body.is_some(), &[StageKind::Milter]),
        ];
        if let Some((key, _, kinds)) = keys.iter().find(|(_, set, kinds)| *set && !kinds.contains(&stage.kind)) {
            let names: Vec<String> = kinds.iter().map(|k| format!("kind = \"{k}\"")).collect();
            return fail(format!("stage[{i}].{key}"), &format!("only for {}", names.join(" or ")));
        }
        match stage.kind {
            StageKind::Clamd => match stage.address.as_deref() {
                None => {
                    return fail(
                        format!("stage[{i}].kind"),
                        "a clamd stage needs address = \"127.0.0.1:3310\" or \"unix:/path\"",
                    )
                }
                Some(a)
                    if a.strip_prefix("unix:").is_none_or(str::is_empty)
                        && a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() =>
                {
                    return fail(format!("stage[{i}].address"), "must be host:port or unix:/path/to/socket");
                }
                Some(_) => {}
            },
            StageKind::Milter => validate_milter(i, stage)?,
            StageKind::Wasm => {
                if stage.path.is_none() {
                    return fail(format!("stage[{i}].kind"), "a wasm stage needs path = \"FILE.wasm\"");
                }
                if stage.files.iter().flatten().any(|(name, _)| name.is_empty()) {
                    return fail(format!("stage[{i}].files"), "a file's name must not be empty");
                }
                if stage.keys.iter().flatten().any(|(name, _)| name.is_empty()) {
                    return fail(format!("stage[{i}].keys"), "a key's name must not be empty");
                }
                let in_files = |path: &std::path::PathBuf| stage.files.iter().flatten().any(|(_, file)| file == path);
                if let Some((name, _)) = stage.keys.iter().flatten().find(|(_, path)| in_files(path)) {
                    return fail(
                        format!("stage[{i}].keys.{name}"),
                        "is also in [stage.files], where the filter can read it: name a key only in [stage.keys]",
                    );
                }
                if stage.memory_limit.is_some_and(|m| m.0 < (1 << 20)) {
                    return fail(format!("stage[{i}].memory_limit"), "must be at least 1MiB");
                }
                if stage.cpu_limit.is_some_and(|c| c.0.is_zero())
                    || stage.message_timeout.is_some_and(|m| m.0.is_zero())
                {
                    return fail(format!("stage[{i}].cpu_limit"), "limits must be greater than zero");
                }
            }
            StageKind::Test => {}
        }
        if let Some(test) = &stage.test {
            if test.verdict.is_some() != test.at.is_some() {
                return fail(format!("stage[{i}].test.verdict"), "verdict and at go together");
            }
            if let Some(reply) = &test.reply {
                if crate::smtp::reply::Reply::parse_lines(std::slice::from_ref(reply)).is_none() {
                    return fail(format!("stage[{i}].test.reply"), "must be an SMTP reply such as \"550 5.7.1 text\"");
                }
            }
        }
    }
    Ok(())
}

/// A milter stage's keys: an address Sluice can reach (`inet:HOST:PORT` or `unix:PATH`), limits
/// above zero, macro names as milters spell them (`j`, `{daemon_name}`) and values without NUL.
fn validate_milter(i: usize, stage: &StageConfig) -> Result<(), (String, String)> {
    let fail = |key: &str, message: &str| Err((format!("stage[{i}].{key}"), message.to_string()));
    let Some(address) = stage.address.as_deref() else {
        return fail("kind", "a milter stage needs address = \"inet:127.0.0.1:PORT\" or \"unix:/path/to/socket\"");
    };
    if crate::milter::address::MilterAddress::parse(address).is_none() {
        return fail("address", "must be inet:HOST:PORT or unix:/path/to/socket (as Postfix writes milters)");
    }
    if stage.call_limit.is_some_and(|limit| limit.0 < stage.timeout.0) {
        return fail("call_limit", "must be at least the stage's timeout");
    }
    for (name, value) in stage.macros.iter().flatten() {
        let single = name.len() == 1 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let braced = name.len() > 2
            && name.starts_with('{')
            && name.ends_with('}')
            && name[1..name.len() - 1].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !single && !braced {
            return fail(&format!("macros.{name}"), "a macro name is one letter (j) or {name} in braces");
        }
        if value.contains('\0') {
            return fail(&format!("macros.{name}"), "a macro value cannot hold a NUL");
        }
    }
    Ok(())
}
