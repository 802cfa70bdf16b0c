//! How `sluice ctl` shows the admin API's answers to people: aligned tables and `key: value`
//! lines, sizes in binary units, durations in the largest sensible units, `-` for nothing.

use crate::admin::views::{SessionView, StatsView};

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

pub(super) fn render_stats(stats: &StatsView) -> String {
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

pub(super) fn render_sessions(sessions: &[SessionView]) -> String {
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

pub(super) fn render_session(s: &SessionView) -> String {
    let fields = [
        ("id", s.id.clone()),
        ("peer", s.peer.clone()),
        ("local port", s.local_port.to_string()),
        ("state", s.state.clone()),
        ("tls", or_dash(s.tls.as_ref().map(|t| format!("{} {}", t.version, t.cipher)))),
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
        ByteCounts, FlowCounts, QueueView, SessionCounts, StageStats, TlsView, TransactionCounts, TransactionView,
    };
    use crate::config::stages::StageKind;

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
            tls: Some(TlsView { version: "TLSv1.3".into(), cipher: "TLS13_AES_256_GCM_SHA384".into() }),
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
}
