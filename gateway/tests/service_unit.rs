//! `examples/sluice.service`: a unit systemd accepts (`systemd-analyze verify`, where systemd is
//! installed), running the gateway unprivileged, reloading with SIGHUP, hardened. Where
//! `systemd-analyze` is missing, the unit is still parsed here: every line a section, a comment
//! or a `Key=value` setting.

mod support;

use std::path::Path;

use support::{run_tool, sluice_bin};

const UNIT: &str = include_str!("../../examples/sluice.service");
const INSTALLED: &str = "/usr/local/bin/sluice";

/// (section, key, value) for every setting; panics on a line that is none of the unit syntax.
fn settings(text: &str) -> Vec<(String, String, String)> {
    let mut section = None;
    let mut out = Vec::new();
    for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_string());
            continue;
        }
        let section = section.clone().unwrap_or_else(|| panic!("line {number}: a setting before any [section]"));
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("line {number}: not Key=value: {line}"));
        assert!(!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric()), "line {number}: key {key:?}");
        out.push((section, key.to_string(), value.to_string()));
    }
    out
}

fn service(key: &str) -> Vec<String> {
    let found = settings(UNIT).into_iter().filter(|(s, k, _)| s == "Service" && k == key);
    found.map(|(_, _, value)| value).collect()
}

#[test]
fn the_unit_runs_sluice_unprivileged_and_hardened() {
    let sections: Vec<String> = settings(UNIT).into_iter().map(|(s, _, _)| s).collect();
    for section in ["Unit", "Service", "Install"] {
        assert!(sections.iter().any(|s| s == section), "[{section}] missing");
    }
    assert_eq!(service("ExecStart"), [format!("{INSTALLED} serve --config /etc/sluice/sluice.toml")]);
    assert_eq!(service("ExecStartPre"), [format!("{INSTALLED} check-config /etc/sluice/sluice.toml")]);
    assert_eq!(service("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    let user = service("User");
    assert!(user.len() == 1 && user[0] != "root" && !user[0].is_empty(), "an unprivileged user: {user:?}");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("StateDirectory", "sluice"),
        ("PrivateTmp", "yes"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
    ] {
        assert_eq!(service(key), [value], "{key}");
    }
    // The wasm host writes machine code at start and reload.
    assert!(service("MemoryDenyWriteExecute").is_empty());
}

#[test]
fn systemd_accepts_the_unit() {
    let Some(analyze) =
        ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].into_iter().find(|p| Path::new(p).is_file())
    else {
        eprintln!("systemd-analyze is not installed: the unit was only parsed (the other test)");
        return;
    };
    // verify checks that the programs exist: point them at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("sluice.service");
    std::fs::write(&unit, UNIT.replace(INSTALLED, sluice_bin())).unwrap();
    let (status, output) = run_tool(analyze, &["verify", unit.to_str().unwrap()], None);
    // Any complaint (an unknown key, a bad value) is printed, even when the exit status is 0.
    assert!(status.success() && output.trim().is_empty(), "systemd-analyze verify:\n{output}");
}
