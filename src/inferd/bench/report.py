"""Turning latencies and /metrics scrapes into the numbers `inferd bench` prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(slots=True)
class Row:
    concurrency: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    server_queue_ms: float | None = None  # mean per request, from inferd's /metrics
    server_compute_ms: float | None = None
    failures: dict[str, list[object]] = field(default_factory=dict)  # kind -> [count, a sample message]

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def summarize(concurrency: int, latencies_ns: list[int], errors: int, seconds: float,
              failures: dict[str, list[object]] | None = None) -> Row:
    """Latencies and throughput are of the successful answers only: errors are counted apart."""
    lat = np.asarray(latencies_ns, dtype=np.float64) / 1e6 if latencies_ns else np.full(1, np.nan)
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    return Row(concurrency, len(latencies_ns), errors, len(latencies_ns) / seconds if seconds else 0.0,
               float(p50), float(p90), float(p99), failures=dict(failures or {}))


def failures(rows: list[Row]) -> list[str]:
    """One line per kind of error per concurrency, with how many and a sample message."""
    lines = []
    for r in rows:
        for kind, (count, message) in sorted(r.failures.items()):
            lines.append(f"errors at concurrency {r.concurrency}: {kind} x {count}: {message}")
    return lines


def histogram_totals(metrics_text: str, name: str, model: str) -> tuple[float, float]:
    """(sum, count) of a histogram for one model, summed over versions, from exposition text."""
    total = count = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith(name) or f'model="{model}"' not in line:
            continue
        key, _, value = line.rpartition(" ")
        if key.startswith(f"{name}_sum"):
            total += float(value)
        elif key.startswith(f"{name}_count"):
            count += float(value)
    return total, count


def server_split(before: str, after: str, model: str) -> tuple[float | None, float | None]:
    """Mean queue and compute milliseconds per request between two scrapes."""
    means = []
    for name in ("inferd_queue_duration_seconds", "inferd_compute_duration_seconds"):
        s0, c0 = histogram_totals(before, name, model)
        s1, c1 = histogram_totals(after, name, model)
        means.append((s1 - s0) / (c1 - c0) * 1000 if c1 > c0 else None)
    return means[0], means[1]


def table(rows: list[Row]) -> str:
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    header = ("| concurrency | req/s | p50 ms | p90 ms | p99 ms | errors | server queue ms "
              "| server compute ms |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.concurrency} | {r.rps:,.0f} | {r.p50_ms:.3f} | {r.p90_ms:.3f} | {r.p99_ms:.3f} | "
                     f"{r.errors} | {fmt(r.server_queue_ms)} | {fmt(r.server_compute_ms)} |")
    return "\n".join(lines)


def plot(rows: list[Row], model: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    rps = [r.rps for r in rows]
    for label, values in (("p50", [r.p50_ms for r in rows]), ("p99", [r.p99_ms for r in rows])):
        axes.plot(rps, values, marker="o", label=label)
    for r in rows:
        axes.annotate(f"c={r.concurrency}", (r.rps, r.p99_ms), textcoords="offset points", xytext=(4, 4))
    axes.margins(x=0.2, y=0.15)  # room for the c=N labels inside the axes
    axes.set_xlabel("requests/s")
    axes.set_ylabel("latency (ms)")
    axes.set_yscale("log")
    axes.set_title(f"inferd bench: {model}")
    axes.legend()
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
