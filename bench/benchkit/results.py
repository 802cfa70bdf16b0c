"""Turning runs into figures: medians, paired ratios with their spread, and bench/RESULTS.md.

A cell is one (size, concurrency); in it every gateway ran `repeat` times, interleaved, so run i
of one gateway and run i of another saw the same background load: a ratio is taken per repeat
(rate of A in repeat i ÷ rate of B in repeat i) and reported as the median with its min–max.
Each run records its own message count (`count`): a slow gateway sends fewer per run."""
import statistics

MB = 1e6


def human(size):
    for unit, n in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= n and size % n == 0:
            return f"{size // n}{unit}"
    return f"{size}B"


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def rates(runs, key="seconds"):
    """msg/s per repeat, smtp-source's and the probe's messages (None for a failed run)."""
    return [(r["count"] + r.get("probed", 0)) / r[key] if r["error"] is None and r.get(key) else None for r in runs]


def summary(runs, size, queues):
    """One gateway in one cell: medians over its good runs."""
    ok = [r for r in runs if r["error"] is None]
    out = {"runs": len(runs), "failed": len(runs) - len(ok),
           "errors": sorted({r["error"] for r in runs if r["error"]})[:3],
           "delivered": sum(r["delivered"] for r in runs), "sent": sum(r["sent"] for r in runs)}
    if not ok:
        return out
    rate = statistics.median(x for x in rates(runs) if x)
    out.update(msgs_per_s=rate, mb_per_s=rate * size / MB, count=statistics.median(r["count"] for r in ok))
    if queues:
        out["drain_msgs_per_s"] = statistics.median(x for x in rates(runs, "drain_seconds") if x)
    lat = [x for r in ok for x in r["latencies"]]
    # with fewer than 100 samples the 99th percentile is the maximum: say so (render.py)
    out.update(p50_ms=1000 * percentile(lat, 0.5) if lat else None, p99_ms=1000 * percentile(lat, 0.99) if lat else None,
               latency_samples=len(lat))
    pss = [r["peak_pss_kib"] for r in runs if r.get("peak_pss_kib")]
    out["peak_pss_mib"] = max(pss) / 1024 if pss else None
    hwm = [r["hwm_kib"] for r in runs if r.get("hwm_kib")]
    out["hwm_mib"] = max(hwm) / 1024 if hwm else None
    cpus = [r["cpu"] for r in ok if r.get("cpu") is not None]
    out["cpu_s"] = statistics.median(cpus) if cpus else None
    sent = statistics.median(r["sent"] for r in ok)
    out["cpu_ms_per_msg"] = 1000 * out["cpu_s"] / sent if out["cpu_s"] else None
    clamd = [r["clamd_cpu"] for r in ok if r.get("clamd_cpu") is not None]
    out["clamd_ms_per_msg"] = 1000 * statistics.median(clamd) / sent if clamd else None
    return out


def ratio(a_runs, b_runs, a_key="seconds", b_key="seconds"):
    """(median, min, max) of per-repeat a/b msg/s ratios, or None without a pair of good runs."""
    pairs = [x / y for x, y in zip(rates(a_runs, a_key), rates(b_runs, b_key)) if x and y]
    return (statistics.median(pairs), min(pairs), max(pairs)) if pairs else None


def fmt_ratio(r):
    return "—" if r is None else f"{r[0]:.2f} ({r[1]:.2f}–{r[2]:.2f})"


def num(v, digits=1):
    return "—" if v is None else f"{v:.{digits}f}" if v < 1000 else f"{v:.0f}"
