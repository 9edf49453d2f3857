"""Two builds of inferd side by side in one run: did a change make the server slower?

    python benchmarks/ab_commits.py --before REV [--after WORKTREE_OR_REV] [--rounds 3] [--seconds 8]

Each build (a git revision checked out into a temporary worktree, or the working tree) serves the
peers' `mlp` and `tiny` TorchScript models with dynamic batching (server on CPU 0); wrk loads v2 JSON
and v2 binary bodies at c=1 and c=64 from CPU 1. The builds alternate round by round (before, after,
after, before, ...) so the machine's drift hits both alike; the report gives per-build medians, the
after/before ratio of req/s and of server CPU per request (the steadier figure on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from common import HERE, bodies, free_port, make_mlp_models, measure, start_inferd, stop, write_model

ROOT = HERE.parent
CASES = [("mlp", 512, "json", 1), ("mlp", 512, "json", 64), ("mlp", 512, "binary", 64),
         ("tiny", 16, "json", 1), ("tiny", 16, "json", 64), ("tiny", 16, "binary", 64)]


def checkout(revision: str, into: Path) -> Path:
    """A source tree of ``revision`` (the working tree for "."), returned as the folder holding src/."""
    if revision == ".":
        return ROOT
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(into), revision], check=True)
    return into


def run_build(src_root: Path, repo: Path, body_dir: Path, seconds: int, log: Path) -> dict[str, dict]:
    port = free_port()
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(src_root / "src")
    try:
        process, _ = start_inferd(repo, port, log)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    results = {}
    try:
        for model, _, kind, concurrency in CASES:
            url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
            body = body_dir / f"{model}.{'json' if kind == 'json' else 'bin'}"
            header_len = json.loads((body_dir / "header_lengths.json").read_text())[model] if kind == "binary" else None
            results[f"{model} {kind} c={concurrency}"] = measure(url, body, concurrency, seconds, process.pid,
                                                                 header_len)
    finally:
        stop(process)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="git revision of the baseline")
    parser.add_argument("--after", default=".", help="git revision to compare ('.' = the working tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ab_commits.json")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="inferd-ab-"))
    make_mlp_models(scratch / "artifacts")
    lengths = {}
    for model, dim, _, _ in CASES:
        write_model(scratch / "repo", model, scratch / "artifacts" / f"{model}.pt", dim, 10 if model == "mlp" else 4,
                    batching=True)
        _, _, lengths[model] = bodies(scratch / "bodies", model, dim)
    (scratch / "bodies" / "header_lengths.json").write_text(json.dumps(lengths))
    builds = {"before": checkout(args.before, scratch / "before"), "after": checkout(args.after, scratch / "after")}
    runs: dict[str, list[dict[str, dict]]] = {"before": [], "after": []}
    try:
        for round_ in range(args.rounds):
            order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
            for name in order:
                runs[name].append(run_build(builds[name], scratch / "repo", scratch / "bodies", args.seconds,
                                            scratch / f"{name}-{round_}.log"))
                print(f"round {round_ + 1} {name} done", flush=True)
    finally:
        for path in builds.values():
            if path != ROOT:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)
    report = {"before": args.before, "after": args.after, "rounds": args.rounds, "seconds": args.seconds, "cases": {}}
    print(f"{'case':24} {'before req/s':>13} {'after req/s':>12} {'ratio':>6} {'CPU ms/req b→a':>18} {'ratio':>6}")
    for case in runs["before"][0]:
        med = {name: {key: statistics.median(r[case][key] for r in runs[name]) for key in ("rps", "cpu_ms_per_req")}
               for name in runs}
        errors = sum(r[case]["errors"] for name in runs for r in runs[name])
        rps_ratio = med["after"]["rps"] / med["before"]["rps"]
        cpu_ratio = med["after"]["cpu_ms_per_req"] / med["before"]["cpu_ms_per_req"]
        report["cases"][case] = {**{f"{n}_{k}": v for n in med for k, v in med[n].items()}, "rps_ratio": rps_ratio,
                                 "cpu_ratio": cpu_ratio, "errors": errors}
        print(f"{case:24} {med['before']['rps']:13,.0f} {med['after']['rps']:12,.0f} {rps_ratio:6.2f} "
              f"{med['before']['cpu_ms_per_req']:8.3f} → {med['after']['cpu_ms_per_req']:.3f} {cpu_ratio:6.2f}"
              + (f"  errors: {errors}" if errors else ""))
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
