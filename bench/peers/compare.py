"""perdure beside its peers, same machine, same run.

    python bench/peers/compare.py [--steps 1000] [--repeats 3] [--store-dir DIR] [--json]

Measures, in this order: perdure (raw LMDB synced/unsynced commits,
sequential steps at full and process, replay of 1,000- and 10,000-step
executions), then DBOS and the AWS local runner, each in a subprocess of its
own. Prints medians and the ratios perdure / peer. A peer that is not
installed is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _peer(module: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(HERE / f"{module}.py"), *args],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"available": False, "error": f"{module} failed: {proc.stderr[-1500:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _perdure(store_dir: str, steps: int, repeats: int) -> dict[str, Any]:
    from perdure import bench

    raw_sync, raw_nosync, full, process = [], [], [], []
    for _ in range(repeats):
        raw_sync.append(bench.raw_lmdb_commit_rate(store_dir, steps, sync=True) or 0.0)
        full.append(bench.sequential_step_rate(store_dir, steps, "full"))
        raw_nosync.append(bench.raw_lmdb_commit_rate(store_dir, steps * 10, sync=False) or 0.0)
        process.append(bench.sequential_step_rate(store_dir, steps * 10, "process"))
    scaling = bench.measure_replay_scaling(store_dir, (1_000, 10_000))
    return {
        "machine": bench.machine_info(store_dir),
        "raw_synced_commits_per_s": bench.stats(raw_sync),
        "raw_unsynced_commits_per_s": bench.stats(raw_nosync),
        "full_steps_per_s": bench.stats(full),
        "process_steps_per_s": bench.stats(process),
        "replay_1000_ops_per_s": scaling[0]["ops_per_s"],
        "replay_10000_ops_per_s": scaling[1]["ops_per_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="steps per sample (default 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="samples per figure (default 3)")
    parser.add_argument("--store-dir", help="where scratch stores go (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    root = args.store_dir or tempfile.mkdtemp(prefix="perdure-compare-")
    os.makedirs(root, exist_ok=True)
    n, r = str(args.steps), str(args.repeats)
    out = {"perdure": _perdure(root, args.steps, args.repeats)}
    out["dbos"] = _peer("dbos_peer", n, r)
    out["aws_local_runner"] = _peer("aws_peer", n, r)

    p = out["perdure"]
    med = lambda s: s["median"]  # noqa: E731
    ratios: dict[str, Any] = {
        "perdure_full_vs_raw_synced": med(p["full_steps_per_s"])
        / med(p["raw_synced_commits_per_s"]),
        "perdure_process_vs_raw_unsynced": med(p["process_steps_per_s"])
        / med(p["raw_unsynced_commits_per_s"]),
    }
    d = out["dbos"]
    if d.get("available"):
        ratios["perdure_full_vs_dbos_steps"] = med(p["full_steps_per_s"]) / med(d["steps_per_s"])
        ratios["perdure_replay_1000_vs_dbos_recovery_replay"] = med(
            p["replay_1000_ops_per_s"]
        ) / med(d["replay_steps_per_s"])
    a = out["aws_local_runner"]
    if a.get("available"):
        ratios["perdure_full_vs_aws_local_steps"] = med(p["full_steps_per_s"]) / med(
            a["steps_per_s"]
        )
        ratios["perdure_process_vs_aws_local_steps"] = med(p["process_steps_per_s"]) / med(
            a["steps_per_s"]
        )
        ratios["perdure_replay_1000_vs_aws_local_replay"] = med(p["replay_1000_ops_per_s"]) / med(
            a["replay_steps_per_s"]
        )
    out["ratios"] = ratios
    if args.json:
        print(json.dumps(out, indent=2))
        return 0

    def row(label: str, s: dict[str, Any] | None) -> None:
        if not s:
            print(f"  {label:<44} n/a")
            return
        print(
            f"  {label:<44} {s['median']:>14,.0f}  "
            f"[{min(s['samples']):,.0f} .. {max(s['samples']):,.0f}]"
        )

    m = p["machine"]
    print(f"{m['date']}  {m['cpu']} x{m['cores']}  {m['kernel']}  {m['filesystem']['type']}")
    print(f"steps per sample {args.steps}, {args.repeats} samples; medians [min .. max]")
    row("raw LMDB synced commits/s", p["raw_synced_commits_per_s"])
    row("raw LMDB unsynced commits/s", p["raw_unsynced_commits_per_s"])
    row("perdure steps/s, full", p["full_steps_per_s"])
    row("perdure steps/s, process", p["process_steps_per_s"])
    row("perdure replay ops/s, 1,000 steps", p["replay_1000_ops_per_s"])
    row("perdure replay ops/s, 10,000 steps", p["replay_10000_ops_per_s"])
    for key, label in (("dbos", "DBOS"), ("aws_local_runner", "AWS local runner")):
        peer = out[key]
        if not peer.get("available"):
            print(f"  {label}: not measured: {peer.get('error')}")
            continue
        row(f"{label} {peer.get('version')} steps/s", peer["steps_per_s"])
        row(f"{label} replay steps/s", peer["replay_steps_per_s"])
    for key, value in ratios.items():
        print(f"  {key:<44} {value:>14.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
