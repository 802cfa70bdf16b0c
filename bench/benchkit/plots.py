"""The report's plots, drawn with matplotlib: throughput by size, latency and RSS by concurrency."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .results import human, summary  # noqa: E402


def series(report, x_key, fixed_key, fixed, figure):
    """gateway name -> ([x], [y]) over the cells with cell[fixed_key] == fixed."""
    out = {}
    for g in report["gateways"]:
        xs, ys = [], []
        for c in sorted(report["cells"], key=lambda c: c[x_key]):
            if c[fixed_key] != fixed or g["name"] not in c["runs"]:
                continue
            s = summary(c["runs"][g["name"]], c["size"], g["queues"])
            # a queueing gateway's throughput is the rate until the sink had every message
            v = s.get("drain_msgs_per_s", 0) * c["size"] / 1e6 if figure == "mb_per_s" and g["queues"] else s.get(figure)
            if v is not None:
                xs.append(c[x_key])
                ys.append(v)
        if xs:
            out[g["name"] + (" (to the sink)" if g["queues"] and figure == "mb_per_s" else "")] = (xs, ys)
    return out


def chart(path, title, xlabel, ylabel, data, xticks, logy=False):
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name, (xs, ys) in data.items():
        ax.plot(xs, ys, marker="o", label=name, linestyle="--" if name == "direct" else "-")
    ax.set_xscale("log")
    ax.set_xticks(list(xticks), [xticks[x] for x in xticks])
    ax.minorticks_off()
    if logy:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def draw(report, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    sizes = sorted({c["size"] for c in report["cells"]})
    concs = sorted({c["concurrency"] for c in report["cells"]})
    conc = 10 if 10 in concs else concs[-1]
    size = 256 << 10 if 256 << 10 in sizes else sizes[-1]
    rss_size = 2 << 20 if 2 << 20 in sizes else sizes[-1]
    made = []
    if len(sizes) > 1:
        chart(os.path.join(out_dir, "throughput-by-size.png"), f"Throughput by message size, {conc} sessions",
              "message size", "MB/s", series(report, "size", "concurrency", conc, "mb_per_s"),
              {s: human(s) for s in sizes}, logy=True)
        made.append("throughput-by-size.png")
    if len(concs) > 1:
        chart(os.path.join(out_dir, "latency-by-concurrency.png"), f"p99 latency by concurrency, {human(size)}",
              "concurrent sessions", "p99 ms (probe)", series(report, "concurrency", "size", size, "p99_ms"),
              {c: str(c) for c in concs}, logy=True)
        chart(os.path.join(out_dir, "rss-by-concurrency.png"), f"Peak memory by concurrency, {human(rss_size)}",
              "concurrent sessions", "MiB (PSS of the process tree)", series(report, "concurrency", "size", rss_size, "peak_pss_mib"),
              {c: str(c) for c in concs})
        made += ["latency-by-concurrency.png", "rss-by-concurrency.png"]
    return made
