"""Summarize one compare_peers.sh run: a table per scenario and the issue's targets as ratios.

    python3 benchmarks/summarize_peers.py results/peers-STAMP.jsonl [results/ceiling-STAMP.txt]
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def load(path: Path) -> tuple[dict[tuple, dict], dict[str, dict]]:
    runs: dict[tuple, list[dict]] = defaultdict(list)
    cold: dict[str, list[dict]] = defaultdict(list)
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "load":
            runs[(record["server"], record["model"], record["batching"], record["conc"])].append(record)
        elif record.get("kind") == "cold":
            cold[record["server"]].append(record)
    return ({key: _median(records) for key, records in runs.items()},
            {server: _median(records) for server, records in cold.items()})


def _median(records: list[dict]) -> dict:
    keys = [k for k, v in records[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    merged = dict(records[0])
    merged.update({k: statistics.median(r[k] for r in records if r.get(k) is not None) for k in keys
                   if all(r.get(k) is not None for r in records)})
    return merged


def ceiling(path: Path | None) -> dict[tuple[str, int], float]:
    """(body, concurrency) -> req/s of the bare uvicorn ASGI app that parses the body."""
    found: dict[tuple[str, int], float] = {}
    if path is None or not path.exists():
        return found
    for line in path.read_text().splitlines():
        body, name, conc, _, payload = line.split(" ", 4)
        if name == "uvicorn-parse":
            data = json.loads(payload)
            found[(body.split("_")[0], int(conc.split("=")[1]))] = data["requests"] / (data["duration_us"] / 1e6)
    return found


def best_peer(runs: dict[tuple, dict], model: str, conc: int) -> dict | None:
    peers = [r for (server, m, _, c), r in runs.items() if server != "inferd" and m == model and c == conc]
    return max(peers, key=lambda r: r["rps"]) if peers else None


def main() -> None:
    runs, cold = load(Path(sys.argv[1]))
    ceilings = ceiling(Path(sys.argv[2]) if len(sys.argv) > 2 else None)
    print("| server | model | batching | conc | req/s | p50 ms | p99 ms | errors | CPU ms/req |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (server, model, batching, conc), r in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][3], kv[0][0])):
        print(f"| {server} | {model} | {'yes' if batching else 'no'} | {conc} | {r['rps']:,.0f} | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | {r['cpu_s_per_1k']:.3f} |")
    print()
    print("| target | measured | met |")
    print("|---|---|---|")
    for line in targets(runs, cold, ceilings):
        print(line)
    if cold:
        print("\n| server | cold start s | PSS MiB |\n|---|---|---|")
        for server, r in sorted(cold.items()):
            print(f"| {server} | {r['cold_start_s']:.2f} | {r['pss_mib']:.0f} |")


def targets(runs: dict[tuple, dict], cold: dict[str, dict], ceilings: dict) -> list[str]:
    lines = []

    def row(text: str, measured: str, ok: bool) -> None:
        lines.append(f"| {text} | {measured} | {'yes' if ok else '**no**'} |")

    for model, factor in (("mlp", 2.5), ("tiny", 2.0)):
        ours, peer = runs.get(("inferd", model, True, 64)), best_peer(runs, model, 64)
        if ours and peer:
            ratio = ours["rps"] / peer["rps"]
            row(f"{model} c=64 batched ≥ {factor}× best peer ({peer['server']})",
                f"{ours['rps']:,.0f} vs {peer['rps']:,.0f} = {ratio:.2f}×", ratio >= factor)
            if model == "mlp":
                row("mlp c=64 p99 ≤ best peer's p99", f"{ours['p99_ms']:.1f} vs {peer['p99_ms']:.1f} ms",
                    ours["p99_ms"] <= peer["p99_ms"])
    tiny = runs.get(("inferd", "tiny", True, 64))
    for body in ("tiny", "mlp"):
        if tiny and (body, 64) in ceilings:
            share = tiny["rps"] / ceilings[(body, 64)]
            row(f"tiny c=64 ≥ 75 % of bare-ASGI ceiling ({body} body)",
                f"{tiny['rps']:,.0f} vs {ceilings[(body, 64)]:,.0f} = {share:.0%}", share >= 0.75)
    for model in ("mlp", "tiny"):
        for conc in (1, 8):
            on, off = runs.get(("inferd", model, True, conc)), runs.get(("inferd", model, False, conc))
            if on and off:
                ratio = on["rps"] / off["rps"]
                row(f"{model} c={conc} batching on ≥ 0.95× off", f"{ratio:.2f}×", ratio >= 0.95)
    peers_c1 = [r for (s, m, _, c), r in runs.items() if s != "inferd" and m == "tiny" and c == 1]
    for batching in (False, True):
        ours = runs.get(("inferd", "tiny", batching, 1))
        if ours and peers_c1:
            best = min(peers_c1, key=lambda r: r["p50_ms"])
            row(f"tiny c=1 p50 ≤ 0.5× best peer's (inferd batching {'on' if batching else 'off'})",
                f"{ours['p50_ms']:.3f} vs {best['p50_ms']:.3f} ms ({best['server']}) = "
                f"{ours['p50_ms'] / best['p50_ms']:.2f}×", ours["p50_ms"] <= 0.5 * best["p50_ms"])
        fastapi = runs.get(("fastapi", "tiny", False, 1))
        if ours and fastapi:
            ratio = ours["cpu_s_per_1k"] / fastapi["cpu_s_per_1k"]
            row(f"tiny c=1 CPU/request ≤ 0.4× FastAPI's (batching {'on' if batching else 'off'})",
                f"{ours['cpu_s_per_1k']:.3f} vs {fastapi['cpu_s_per_1k']:.3f} ms = {ratio:.2f}×", ratio <= 0.4)
    for (server, model, batching, conc), r in sorted(runs.items()):
        if server == "inferd" and conc == 64:
            ratio = r["p99_ms"] / r["p50_ms"]
            row(f"{model} batching {'on' if batching else 'off'} c=64 p99 ≤ 3× p50", f"{ratio:.2f}×", ratio <= 3)
    if "inferd" in cold and "fastapi" in cold:
        ours, base = cold["inferd"], cold["fastapi"]
        row("cold start ≤ FastAPI's", f"{ours['cold_start_s']:.2f} vs {base['cold_start_s']:.2f} s",
            ours["cold_start_s"] <= base["cold_start_s"])
        row("memory (PSS) ≤ FastAPI's", f"{ours['pss_mib']:.0f} vs {base['pss_mib']:.0f} MiB",
            ours["pss_mib"] <= base["pss_mib"])
    return lines


if __name__ == "__main__":
    main()
