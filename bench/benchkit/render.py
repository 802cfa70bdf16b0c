"""bench/RESULTS.md from a report: the machine and date, the issue's targets, one table per cell."""
from .results import fmt_ratio, human, num, ratio, summary

TARGETS = [  # (what, gateway a, gateway b, size, concurrency, threshold); a ÷ b per repeat
    ("no stage ÷ direct", "sluice", "direct", 256 << 10, 10, 0.9),
    ("no stage ÷ direct", "sluice", "direct", 4 << 10, 10, 0.8),
    ("no stage ÷ direct", "sluice", "direct", 4 << 10, 50, 0.8),
    ("3 wasm ÷ no stage", "sluice 3 wasm", "sluice", 4 << 10, 10, 0.8),
    ("3 wasm ÷ no stage", "sluice 3 wasm", "sluice", 256 << 10, 10, 0.9),
    ("clamd stage ÷ clamsmtpd", "sluice clamd", "clamsmtpd", 256 << 10, 10, 2.0),
    ("clamd stage ÷ ceiling 1/(1/direct + 1/clamd alone)", "sluice clamd", "ceiling", 256 << 10, 10, 0.8),
]
# Reported without a threshold. The in-line floor: what a hop doing no SMTP work at all (HAProxy
# copying bytes) reaches against direct, and Sluice against it, in the no-stage targets' cells.
# Issue 15: the same milter behind Sluice and behind Postfix. Postfix queues, so it is given both
# ways: msg/s (smtp-source's wall time: Postfix's intake), and the rates until the sink had every
# message (the in-line gateways: the same).
FLOOR = [(256 << 10, 10), (4 << 10, 10), (4 << 10, 50)]
REPORTED = [  # (what, gateway a, gateway b, size, concurrency, why it is reported)
    *[("in-line TCP hop (HAProxy) ÷ direct", "tcp hop", "direct", size, conc, "the floor") for size, conc in FLOOR],
    *[("no stage ÷ in-line TCP hop", "sluice", "tcp hop", size, conc, "the floor") for size, conc in FLOOR],
    ("sluice+clamav-milter ÷ postfix+clamav-milter", "sluice+clamav-milter", "postfix+clamav-milter", 256 << 10, 10,
     "issue 15"),
    ("sluice+rspamd ÷ postfix+rspamd", "sluice+rspamd", "postfix+rspamd", 256 << 10, 10, "issue 15"),
]


def ceiling_runs(cell):
    """Per repeat, the rate if relaying and scanning could not overlap at all, each at the rate it
    has alone on this machine: 1/(1/direct + 1/clamd alone), as pseudo-runs of one message."""
    out = []
    for d, c in zip(cell["runs"].get("direct", []), cell["clamd_alone"]):
        ok = d["error"] is None and c["error"] is None and d["seconds"] and c["seconds"]
        secs = d["seconds"] / d["count"] + c["seconds"] / c["count"] if ok else None
        out.append({"error": None if ok else "no pair", "count": 1, "seconds": secs})
    return out


def runs_of(cell, name):
    return ceiling_runs(cell) if name == "ceiling" else cell["runs"].get(name, [])


def target_rows(report):
    rows = []
    for what, a, b, size, conc, threshold in TARGETS:
        cell = next((c for c in report["cells"] if c["size"] == size and c["concurrency"] == conc), None)
        if cell is None:
            rows.append(f"| {what} | {human(size)} × {conc} | ≥ {threshold} | not in this run | |")
            continue
        r = ratio(runs_of(cell, a), runs_of(cell, b))
        verdict = "—" if r is None else "met" if r[0] >= threshold else "**missed**"
        rows.append(f"| {what} | {human(size)} × {conc} | ≥ {threshold} | {fmt_ratio(r)} | {verdict} |")
    rows += reported_rows(report)
    rss = [summary(c["runs"]["sluice"], c["size"], False).get("hwm_mib")
           for c in report["cells"] if c["size"] == 2 << 20 and c["concurrency"] == 50 and "sluice" in c["runs"]]
    if not rss:
        rows.append("| peak RSS, no stage | 2MiB × 50 | ≤ 64 MiB | not in this run | |")
    else:
        rows.append(f"| peak RSS, no stage | 2MiB × 50 | ≤ 64 MiB | {num(rss[0])} MiB | "
                    f"{'**missed** (no good run)' if rss[0] is None else 'met' if rss[0] <= 64 else '**missed**'} |")
    bare = report.get("scale", {}).get("sluice")
    if bare:
        rss, all_up = bare.get("idle_rss_mib"), bare.get("idle_error") is None
        rows.append(f"| RSS with 1,000 idle sessions (after EHLO), no stage | — | < 100 MiB | "
                    f"{num(rss)} MiB, {bare.get('idle_sessions', 0)} greeted | "
                    f"{'met' if all_up and rss is not None and rss < 100 else '**missed**'} |")
        ok = bare.get("bodies_error") is None
        rows.append(f"| 200 sessions × 2 MiB at once, no stage | — | all delivered | "
                    f"{bare.get('delivered', 0)}/{bare.get('bodies', 200)} delivered | {'met' if ok else '**missed**'} |")
    return rows


def reported_rows(report):
    """REPORTED's ratios, median (min–max) per repeat: of msg/s, and of the rates to the sink."""
    rows = []
    for what, a, b, size, conc, why in REPORTED:
        cell = next((c for c in report["cells"] if c["size"] == size and c["concurrency"] == conc), None)
        if cell is None or a not in cell["runs"] or b not in cell["runs"]:
            rows.append(f"| {what} | {human(size)} × {conc} | none ({why}) | not in this run | reported |")
            continue
        intake = fmt_ratio(ratio(cell["runs"][a], cell["runs"][b]))
        if any(g.startswith("postfix") for g in (a, b)):
            drain = ratio(cell["runs"][a], cell["runs"][b], "drain_seconds", "drain_seconds")
            intake += f"; to the sink {fmt_ratio(drain)}"
        rows.append(f"| {what} | {human(size)} × {conc} | none ({why}) | {intake} | reported |")
    return rows


def scale_table(report):
    rows = ["| gateway | idle sessions greeted | PSS with them open, MiB | 200 × 2 MiB at once: answered 250 | "
            "reached the sink | peak PSS MiB (sampled) | peak RSS MiB (VmHWM, whole life) | seconds | problem |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, s in report.get("scale", {}).items():
        problem = "; ".join(p for p in (s.get("idle_error"), s.get("bodies_error")) if p) or ""
        rows.append(f"| {name} | {s.get('idle_sessions', '—')} | {num(s.get('idle_pss_mib'))} | {s.get('accepted', '—')} | "
                    f"{s.get('delivered', '—')} | {num(s.get('bodies_peak_rss_mib'))} | {num(s.get('bodies_hwm_mib'))} | "
                    f"{num(s.get('bodies_seconds'))} | {problem[:160]} |")
    return "\n".join(rows)


def p99(s):
    """The probe's 99th percentile and its sample count; below 100 samples it is the maximum."""
    if s.get("p99_ms") is None:
        return "—"
    n = s["latency_samples"]
    return f"{num(s['p99_ms'])} ({n})" if n >= 100 else f"max {num(s['p99_ms'])} ({n})"


def cell_table(cell, gateways):
    count, size = cell["messages"], cell["size"]
    head = (f"### {human(size)} × {cell['concurrency']} (up to {count} messages per run)\n\n"
            "| gateway | msgs/run | msg/s | MB/s | ÷ direct (spread) | p50 ms | p99 ms (n) | peak PSS MiB | peak RSS MiB | CPU ms/msg | clamd ms/msg | failed runs |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    direct = cell["runs"].get("direct", [])
    for g in gateways:
        runs = cell["runs"].get(g["name"])
        if runs is None:
            continue
        s = summary(runs, size, g["queues"])
        rate = num(s.get("msgs_per_s"))
        vs = fmt_ratio(ratio(runs, direct)) if g["name"] != "direct" else "1"
        if g["queues"] and s.get("drain_msgs_per_s"):
            rate += f" intake, {num(s['drain_msgs_per_s'])} to the sink"
            vs += f"; to the sink {fmt_ratio(ratio(runs, direct, 'drain_seconds'))}"
        failed = f"{s['failed']}/{s['runs']}" + (f": {s['errors'][0][:120]}" if s["errors"] else "")
        sessions = "" if not s.get("count") or s["count"] >= cell["concurrency"] else f" (so {s['count']:.0f} sessions)"
        rows.append(f"| {g['name']} | {num(s.get('count'), 0)}{sessions} | {rate} | {num(s.get('mb_per_s'))} | {vs} | {num(s.get('p50_ms'))} | "
                    f"{p99(s)} | {num(s.get('peak_pss_mib'))} | {num(s.get('hwm_mib'))} | {num(s.get('cpu_ms_per_msg'), 2)} | {num(s.get('clamd_ms_per_msg'), 2) if (s.get('clamd_ms_per_msg') or 0) >= 0.01 else ''} | {failed} |")
    alone = [c for c in cell["clamd_alone"] if c["error"] is None]
    if alone:
        secs = sorted(c["seconds"] for c in alone)[len(alone) // 2]
        cpu = sorted(c["cpu"] for c in alone)[len(alone) // 2]
        rows.append(f"\nclamd alone (INSTREAM from {cell['concurrency']} clients, no gateway): "
                    f"{count / secs:.0f} msg/s, {1000 * cpu / count:.2f} ms of clamd CPU per message.")
    return "\n".join(rows)


def write_results(report, path, figures):
    gw_rows = "\n".join(f"| {g['name']} | {g['chain'] or ''} | {g['version'] or '—'} | {g['status']} |"
                        for g in report["gateways"])
    lb, la = report["load_before"], report["load_after"]
    text = f"""# Sluice against its peers

Generated by `{report['command']}` on {report['date']} (finished {report['finished']}).
Machine: {report['machine']}. Load average before: {lb[0]:.2f} {lb[1]:.2f} {lb[2]:.2f};
after: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}. Every figure below is from this one run; ratios are
taken per repeat ({report['repeat']} interleaved repeats per cell) and shown as median (min–max).
The load on every gateway: `smtp-source -s CONC -l SIZE` (one connection per message) plus our
latency probe (one message at a time, at most one every 20 ms, connect to the reply after the
data; its messages count in msg/s); the next hop: one `smtp-sink` per gateway. A gateway too slow
for a cell's message count in about 4 s gets fewer messages per run (msgs/run). p50/p99 are the probe's latencies under that load: end to end for the
in-line gateways (they answer after the next hop accepted), intake for Postfix, which queues; for
Postfix "to the sink" is the rate until the sink had every message. Memory is that of the
gateway's process tree: PSS summed over it (sampled every 50 ms; shared pages divided among the
processes sharing them) and, for one-process gateways, the kernel's peak RSS (VmHWM); CPU is the
tree's CPU time per message. clamd's own
CPU is not in the gateways' figures. How to read and re-run it: bench/README.md.

## Targets (issue 14; the milter ratios: issue 15)

| figure | cell | target | measured | |
|---|---|---|---|---|
{chr(10).join(target_rows(report))}

## Gateways

| gateway | chain | version | status |
|---|---|---|---|
{gw_rows}

## Plots

{chr(10).join(f"![{name}](plots/{name})" for name in figures)}

## Scale: 1,000 idle sessions, then 200 bodies of 2 MiB at once

{scale_table(report) if report.get("scale") else "Not run (--no-scale)."}

## Cells

{chr(10).join(cell_table(c, report['gateways']) + chr(10) for c in report['cells'])}"""
    with open(path, "w") as f:
        f.write(text)
