//! What a reload changes, decided without I/O: the running config compared with the new one —
//! which keys new sessions get at once, which need a restart (and so keep their running value),
//! which stages were added, removed or changed — and the report of it that the admin API sends,
//! `sluice ctl reload` prints and the reload log line carries.
//!
//! Live: every `[server]` limit and timeout, `server.hostname`, `[relay]` settings, `[maildir]`,
//! `[flow]`, the spool's memory limits and the chain. Restart: `server.listen`, `[admin]`,
//! `spool.directory`, and switching between a relay and the maildir (a reload must not quietly
//! turn a gateway into a local mailbox because `[relay]` was commented out, nor the reverse).

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::dns::DnsConfig;
use crate::config::policy::PolicyConfig;
use crate::config::stages::FlowConfig;
use crate::config::wasm::WasmConfig;
use crate::config::{Config, MaildirConfig, RelayConfig, ServerConfig, SpoolConfig};

/// A digest of each stage's filter file content, by stage name (stages without one are absent).
pub type FileDigests = HashMap<String, u64>;

/// What changed between the running config and the reloaded one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// Keys (`server.max_message_size`) whose new value new sessions use.
    pub applied: Vec<String>,
    /// Keys that changed but keep their running value until the gateway is restarted.
    pub restart_needed: Vec<String>,
    pub stages_added: Vec<String>,
    pub stages_removed: Vec<String>,
    /// Same name, but its table, its filter file's content or its place among the stages kept
    /// differs.
    pub stages_changed: Vec<String>,
}

/// One successful reload: the answer to `POST /reload`, printed by `sluice ctl reload`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The generation new sessions now get.
    pub generation: u64,
    /// The chain new sessions now get, in order.
    pub stages: Vec<String>,
    #[serde(flatten)]
    pub changes: Changes,
}

/// The config to run after a reload (the new one, with what needs a restart as it runs now) and
/// what changed.
#[derive(Debug)]
pub struct Plan {
    pub config: Config,
    pub changes: Changes,
}

/// Compares the running config (and its filter files) with the new one.
pub fn plan(running: &Config, running_files: &FileDigests, new: Config, new_files: &FileDigests) -> Plan {
    let mut diff = Diff::default();
    let mut next = new;
    // Every section, named (see `Diff`): a new one must be sorted in below to compile.
    // (`base_dir` and `source` say where the config came from; they are not settings.)
    let Config {
        server: _,
        relay: _,
        maildir: _,
        spool: _,
        flow: _,
        stage: _,
        admin: _,
        dns: _,
        wasm: _,
        tls: _,
        policy: _,
        base_dir: _,
        source: _,
    } = &next;
    diff.restart("server.listen", &running.server.listen, &mut next.server.listen);
    diff.restart("spool.directory", &running.spool.directory, &mut next.spool.directory);
    match (&running.admin, &mut next.admin) {
        (Some(old), Some(new)) => {
            diff.restart("admin.listen", &old.listen, &mut new.listen);
            diff.restart("admin.token_file", &old.token_file, &mut new.token_file);
        }
        (old, new) => diff.restart("admin", old, new),
    }
    match (&running.relay, &next.relay) {
        (Some(old), Some(new)) => diff.relay(old, new),
        (old, _) => diff.restart("relay", old, &mut next.relay),
    }
    diff.server(&running.server, &next.server);
    diff.maildir(&running.maildir, &next.maildir);
    diff.spool(&running.spool, &next.spool);
    diff.flow(&running.flow, &next.flow);
    diff.dns(&running.dns, &next.dns);
    diff.wasm(&running.wasm, &next.wasm);
    diff.policy(&running.policy, &next.policy);
    // The certificate files are re-read at every reload; this reports a change of the paths.
    diff.live("tls", &running.tls, &next.tls);
    diff.stages(running, running_files, &next, new_files);
    Plan { config: next, changes: diff.changes }
}

#[derive(Default)]
struct Diff {
    changes: Changes,
}

impl Diff {
    fn live<T: PartialEq>(&mut self, key: &str, old: &T, new: &T) {
        if old != new {
            self.changes.applied.push(key.to_string());
        }
    }

    /// A key that cannot change while running: reported, and the running value kept.
    fn restart<T: PartialEq + Clone>(&mut self, key: &str, old: &T, new: &mut T) {
        if old != new {
            self.changes.restart_needed.push(key.to_string());
            *new = old.clone();
        }
    }

    // The destructuring below names every field (no `..`): a key added to the config does not
    // compile until it is sorted into live or restart here.

    fn server(&mut self, old: &ServerConfig, new: &ServerConfig) {
        let ServerConfig {
            listen: _, // restart, above
            hostname,
            max_message_size,
            max_header_size,
            max_recipients,
            max_sessions,
            max_sessions_per_ip,
            command_timeout,
            data_timeout,
            min_data_rate,
            min_data_rate_grace,
            shutdown_timeout,
            bare_line_endings,
            require_tls,
            proxy_protocol,
            proxy_trusted,
        } = new;
        self.live("server.hostname", &old.hostname, hostname);
        self.live("server.max_message_size", &old.max_message_size, max_message_size);
        self.live("server.max_header_size", &old.max_header_size, max_header_size);
        self.live("server.max_recipients", &old.max_recipients, max_recipients);
        self.live("server.max_sessions", &old.max_sessions, max_sessions);
        self.live("server.max_sessions_per_ip", &old.max_sessions_per_ip, max_sessions_per_ip);
        self.live("server.command_timeout", &old.command_timeout, command_timeout);
        self.live("server.data_timeout", &old.data_timeout, data_timeout);
        self.live("server.min_data_rate", &old.min_data_rate, min_data_rate);
        self.live("server.min_data_rate_grace", &old.min_data_rate_grace, min_data_rate_grace);
        self.live("server.shutdown_timeout", &old.shutdown_timeout, shutdown_timeout);
        self.live("server.bare_line_endings", &old.bare_line_endings, bare_line_endings);
        self.live("server.require_tls", &old.require_tls, require_tls);
        self.live("server.proxy_protocol", &old.proxy_protocol, proxy_protocol);
        self.live("server.proxy_trusted", &old.proxy_trusted, proxy_trusted);
    }

    fn relay(&mut self, old: &RelayConfig, new: &RelayConfig) {
        let RelayConfig {
            address,
            helo_name,
            connect_timeout,
            command_timeout,
            tls,
            ca_file,
            server_name,
            add_received,
        } = new;
        self.live("relay.address", &old.address, address);
        self.live("relay.helo_name", &old.helo_name, helo_name);
        self.live("relay.connect_timeout", &old.connect_timeout, connect_timeout);
        self.live("relay.command_timeout", &old.command_timeout, command_timeout);
        self.live("relay.tls", &old.tls, tls);
        self.live("relay.ca_file", &old.ca_file, ca_file);
        self.live("relay.server_name", &old.server_name, server_name);
        self.live("relay.add_received", &old.add_received, add_received);
    }

    fn maildir(&mut self, old: &MaildirConfig, new: &MaildirConfig) {
        let MaildirConfig { path } = new;
        self.live("maildir.path", &old.path, path);
    }

    fn spool(&mut self, old: &SpoolConfig, new: &SpoolConfig) {
        let SpoolConfig { memory_limit, total_memory_limit, directory: _ /* restart, above */ } = new;
        self.live("spool.memory_limit", &old.memory_limit, memory_limit);
        self.live("spool.total_memory_limit", &old.total_memory_limit, total_memory_limit);
    }

    fn flow(&mut self, old: &FlowConfig, new: &FlowConfig) {
        let FlowConfig { high_watermark, low_watermark } = new;
        self.live("flow.high_watermark", &old.high_watermark, high_watermark);
        self.live("flow.low_watermark", &old.low_watermark, low_watermark);
    }

    /// The chain is loaded anew at every reload, its resolver with it.
    fn dns(&mut self, old: &DnsConfig, new: &DnsConfig) {
        let DnsConfig { servers, timeout } = new;
        self.live("dns.servers", &old.servers, servers);
        self.live("dns.timeout", &old.timeout, timeout);
    }

    /// Every reload compiles (or finds in the cache) the chain anew.
    fn wasm(&mut self, old: &WasmConfig, new: &WasmConfig) {
        let WasmConfig { cache, cache_dir } = new;
        self.live("wasm.cache", &old.cache, cache);
        self.live("wasm.cache_dir", &old.cache_dir, cache_dir);
    }

    /// Every session's checks read the policy of its generation; the rate tables stay.
    fn policy(&mut self, old: &PolicyConfig, new: &PolicyConfig) {
        let PolicyConfig {
            relay_domains,
            trusted_networks,
            allow_open_relay,
            connection_rate,
            message_rate,
            recipient_rate,
            max_messages_per_session,
        } = new;
        self.live("policy.relay_domains", &old.relay_domains, relay_domains);
        self.live("policy.trusted_networks", &old.trusted_networks, trusted_networks);
        self.live("policy.allow_open_relay", &old.allow_open_relay, allow_open_relay);
        self.live("policy.connection_rate", &old.connection_rate, connection_rate);
        self.live("policy.message_rate", &old.message_rate, message_rate);
        self.live("policy.recipient_rate", &old.recipient_rate, recipient_rate);
        self.live("policy.max_messages_per_session", &old.max_messages_per_session, max_messages_per_session);
    }

    fn stages(&mut self, old: &Config, old_files: &FileDigests, new: &Config, new_files: &FileDigests) {
        let named = |config: &Config, name: &str| config.stage.iter().find(|stage| stage.name == name).cloned();
        let changes = &mut self.changes;
        for stage in &new.stage {
            if named(old, &stage.name).is_none() {
                changes.stages_added.push(stage.name.clone());
            }
        }
        for stage in &old.stage {
            if named(new, &stage.name).is_none() {
                changes.stages_removed.push(stage.name.clone());
            }
        }
        let kept = |config: &Config, other: &Config| -> Vec<String> {
            config.stage.iter().filter(|s| named(other, &s.name).is_some()).map(|s| s.name.clone()).collect()
        };
        let (old_kept, new_kept) = (kept(old, new), kept(new, old));
        for (place, name) in new_kept.iter().enumerate() {
            let moved = old_kept.get(place) != Some(name);
            let table = named(old, name) != named(new, name);
            let file = old_files.get(name) != new_files.get(name);
            if moved || table || file {
                changes.stages_changed.push(name.clone());
            }
        }
    }
}

/// Stage names as the log and ctl show a list: comma-separated, `-` for none.
pub fn list(names: &[String]) -> String {
    if names.is_empty() {
        "-".to_string()
    } else {
        names.join(",")
    }
}

/// What `sluice ctl reload` prints.
impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.changes;
        let stages = if self.stages.is_empty() { "none".to_string() } else { self.stages.join(", ") };
        writeln!(f, "reloaded: generation {} (stages: {stages})", self.generation)?;
        let lines = [
            ("stages added", &c.stages_added),
            ("stages removed", &c.stages_removed),
            ("stages changed", &c.stages_changed),
            ("applied", &c.applied),
            ("restart needed (not applied)", &c.restart_needed),
        ];
        let mut any = false;
        for (label, names) in lines {
            if !names.is_empty() {
                writeln!(f, "  {label}: {}", names.join(", "))?;
                any = true;
            }
        }
        if !any {
            writeln!(f, "  nothing changed in the config")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const BASE: &str = r#"
[server]
listen = ["127.0.0.1:2525"]
max_message_size = "10MiB"

[relay]
address = "127.0.0.1:10026"

[admin]
listen = "127.0.0.1:8025"

[[stage]]
name = "a"
kind = "test"

[[stage]]
name = "b"
kind = "test"

[[stage]]
name = "c"
kind = "test"
"#;

    fn config(text: &str) -> Config {
        parse("test.toml", text).unwrap()
    }

    fn plan_of(old: &str, new: &str) -> Plan {
        plan(&config(old), &FileDigests::new(), config(new), &FileDigests::new())
    }

    fn changes(old: &str, new: &str) -> Changes {
        plan_of(old, new).changes
    }

    #[test]
    fn the_same_config_changes_nothing() {
        assert_eq!(changes(BASE, BASE), Changes::default());
    }

    #[test]
    fn a_default_written_out_is_no_change() {
        // 100 is the default for max_recipients: the effective value is compared, not the text.
        let new = BASE.replace("max_message_size = \"10MiB\"", "max_message_size = \"10MiB\"\nmax_recipients = 100");
        assert_eq!(changes(BASE, &new), Changes::default());
    }

    #[test]
    fn limits_relay_and_flow_apply_live() {
        let new = BASE
            .replace("\"10MiB\"", "\"1MiB\"\ncommand_timeout = \"1m\"\nhostname = \"gw2.test\"")
            .replace("127.0.0.1:10026", "127.0.0.1:10027")
            + "\n[flow]\nhigh_watermark = \"128KiB\"\n\n[spool]\nmemory_limit = \"2MiB\"\n";
        let got = changes(BASE, &new);
        assert_eq!(
            got.applied,
            [
                "relay.address",
                "server.hostname",
                "server.max_message_size",
                "server.command_timeout",
                "spool.memory_limit",
                "flow.high_watermark"
            ]
        );
        assert!(got.restart_needed.is_empty(), "{got:?}");
    }

    #[test]
    fn listen_admin_and_spool_directory_need_a_restart_and_keep_their_running_value() {
        let new = BASE
            .replace("[\"127.0.0.1:2525\"]", "[\"127.0.0.1:2626\"]\nmax_sessions = 5")
            .replace("127.0.0.1:8025", "127.0.0.1:8026")
            + "\n[spool]\ndirectory = \"/var/tmp\"\n";
        let running = config(BASE);
        let plan = plan_of(BASE, &new);
        assert_eq!(plan.changes.restart_needed, ["server.listen", "spool.directory", "admin.listen"]);
        assert_eq!(plan.changes.applied, ["server.max_sessions"]);
        assert_eq!(plan.config.server.listen, running.server.listen);
        assert_eq!(plan.config.admin, running.admin);
        assert_eq!(plan.config.spool.directory, None);
        assert_eq!(plan.config.server.max_sessions, 5, "what can change live does");
    }

    #[test]
    fn switching_between_relay_and_maildir_needs_a_restart() {
        let without_relay = BASE.replace("[relay]\naddress = \"127.0.0.1:10026\"\n", "");
        let running = config(BASE);
        let plan = plan_of(BASE, &without_relay);
        assert_eq!(plan.changes.restart_needed, ["relay"]);
        assert_eq!(plan.config.relay, running.relay, "mail keeps going to the next hop");
        let plan = plan_of(&without_relay, BASE);
        assert_eq!(plan.changes.restart_needed, ["relay"]);
        assert_eq!(plan.config.relay, None, "mail keeps going to the maildir");
        assert_eq!(
            changes(&without_relay, &without_relay.replace("[admin]\nlisten = \"127.0.0.1:8025\"\n", ""))
                .restart_needed,
            ["admin"]
        );
    }

    #[test]
    fn stages_added_removed_and_changed() {
        // b removed, d added, c's table changed; a as it was.
        let new = BASE
            .replace("name = \"b\"", "name = \"d\"")
            .replace("name = \"c\"\nkind = \"test\"", "name = \"c\"\nkind = \"test\"\non_error = \"accept\"");
        let got = changes(BASE, &new);
        assert_eq!(got.stages_added, ["d"]);
        assert_eq!(got.stages_removed, ["b"]);
        assert_eq!(got.stages_changed, ["c"]);
        assert!(got.applied.is_empty() && got.restart_needed.is_empty(), "{got:?}");
    }

    #[test]
    fn a_stage_moved_or_with_a_new_filter_file_is_changed() {
        let swapped = BASE
            .replace("name = \"a\"", "name = \"x\"")
            .replace("name = \"b\"", "name = \"a\"")
            .replace("name = \"x\"", "name = \"b\"");
        assert_eq!(changes(BASE, &swapped).stages_changed, ["b", "a"]);
        let old_files = FileDigests::from([("a".to_string(), 1), ("b".to_string(), 7)]);
        let new_files = FileDigests::from([("a".to_string(), 2), ("b".to_string(), 7)]);
        let got = plan(&config(BASE), &old_files, config(BASE), &new_files).changes;
        assert_eq!(got.stages_changed, ["a"], "same table, new file content");
    }

    #[test]
    fn the_report_round_trips_and_reads_as_text() {
        let report = ReloadReport {
            generation: 3,
            stages: vec!["a".into(), "d".into()],
            changes: Changes {
                applied: vec!["server.max_message_size".into()],
                restart_needed: vec!["server.listen".into()],
                stages_added: vec!["d".into()],
                ..Changes::default()
            },
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["restart_needed"][0], "server.listen", "flat, as the API documents it: {json}");
        assert_eq!(serde_json::from_value::<ReloadReport>(json).unwrap(), report);
        let text = report.to_string();
        assert_eq!(
            text,
            "reloaded: generation 3 (stages: a, d)\n  stages added: d\n  applied: server.max_message_size\n  \
             restart needed (not applied): server.listen\n"
        );
        let quiet = ReloadReport { generation: 4, ..ReloadReport::default() };
        assert_eq!(quiet.to_string(), "reloaded: generation 4 (stages: none)\n  nothing changed in the config\n");
        assert_eq!(list(&[]), "-");
        assert_eq!(list(&report.stages), "a,d");
    }
}
