"""Replay verification throughput: ``perdure bench --suite replay`` and
``bench/test_bench_replay.py``.

A store of ``executions`` finished executions of ``steps`` steps each is
built fast (durability "none", all in flight at once); then

- ``Engine.replay(verify=True)`` on an ``owner=False`` engine (what the CLI
  opens) re-runs every execution, ``repeats`` times: executions/s and
  operations/s (recorded operations replayed per second);
- the ``perdure replay --verify`` command runs once as a subprocess, end to
  end (interpreter start, imports, opening the store, the replay, the JSON
  report): its wall time, and the figures it reports itself.

The default size is issue 4's: 10,000 executions of 100 steps; ``quick`` is
200 x 100.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from perdure.bench import (
    _load_average,
    _scratch,
    _settle,
    bench_root,
    machine_info,
    report_header,
    stats,
)
from perdure.context import DurableContext
from perdure.engine import Engine
from perdure.registry import durable

__all__ = [
    "build_replay_store",
    "cli_replay",
    "format_replay_report",
    "replay_steps_workflow",
    "replay_store",
    "run_replay",
]

WORKFLOW = "perdure.bench.replay_steps"
MODULE = "perdure.bench_replay"


@durable(name=WORKFLOW)
def replay_steps_workflow(ctx: DurableContext, steps: int) -> int:
    """``steps`` steps returning their index; returns their sum."""
    total = 0
    for i in range(steps):
        total += ctx.step(lambda _, i=i: i)  # type: ignore[misc]
    return total


def build_replay_store(path: str | os.PathLike[str], executions: int, steps: int) -> float:
    """Runs ``executions`` executions of ``steps`` steps to completion, all
    started at once; returns the seconds it took."""
    started = time.perf_counter()
    with Engine(path, durability="none") as engine:
        handles = [
            engine.start(replay_steps_workflow, steps, execution_id=f"replay-{i:06d}")
            for i in range(executions)
        ]
        expected = steps * (steps - 1) // 2
        for handle in handles:
            if handle.result(timeout=3600) != expected:
                raise AssertionError(f"{handle.execution_id} returned a wrong result")
    return time.perf_counter() - started


def replay_store(
    path: str | os.PathLike[str],
    executions: int,
    steps: int,
    *,
    workers: int | None = None,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """One ``replay(verify=True)`` over the store, on an ``owner=False`` engine."""
    from perdure.verify import replay_executions

    with Engine(path, owner=False) as engine:
        report = replay_executions(engine, verify=True, workers=workers, chunk_size=chunk_size)
    if not report.ok or report.executions != executions or report.operations != executions * steps:
        raise AssertionError(f"unexpected replay report:\n{report.summary()}")
    return {
        "seconds": report.seconds,
        "executions_per_s": report.executions_per_s,
        "operations_per_s": report.operations_per_s,
    }


def cli_replay(path: str | os.PathLike[str], executions: int, steps: int) -> dict[str, Any]:
    """``perdure replay --verify --json`` once, as a subprocess, end to end."""
    command = [
        sys.executable, "-m", "perdure", "replay", "--store", str(path),
        "--verify", "--import", MODULE, "--json",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise AssertionError(f"perdure replay exited {done.returncode}: {done.stderr}")
    report = json.loads(done.stdout)
    if report["executions"] != executions or report["operations"] != executions * steps:
        raise AssertionError(f"perdure replay replayed the wrong executions: {report}")
    return {
        "wall_s": wall,
        "executions_per_s": executions / wall,
        "operations_per_s": executions * steps / wall,
        "replay_s": report["seconds"],
        "replay_executions_per_s": report["executions_per_s"],
        "replay_operations_per_s": report["operations_per_s"],
    }


def run_replay(
    quick: bool = False,
    *,
    store_dir: str | os.PathLike[str] | None = None,
    executions: int | None = None,
    steps: int = 100,
    repeats: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Builds the store, then measures replay(verify=True) and the CLI."""
    say = progress or (lambda _: None)
    if executions is None:
        executions = 200 if quick else 10_000
    if repeats is None:
        repeats = 1 if quick else 3
    with bench_root(store_dir) as root:
        results: dict[str, Any] = {
            "machine": machine_info(root),
            "config": {
                "quick": quick,
                "executions": executions,
                "steps": steps,
                "repeats": repeats,
                "workers": os.cpu_count() or 1,
            },
        }
        with _scratch(root, "replay-verify-") as path:
            say(f"building {executions:,} executions of {steps} steps (durability none)")
            build_s = build_replay_store(path, executions, steps)
            results["build"] = {
                "seconds": build_s,
                "steps_per_s": executions * steps / build_s,
            }
            _settle()
            samples = []
            for r in range(repeats + 1):
                label = "warm-up" if r == 0 else f"round {r}/{repeats}"
                say(f"{label}: replay(verify=True) of {executions:,} executions")
                sample = replay_store(path, executions, steps)
                if r:
                    samples.append(sample)
            results["replay"] = {
                "seconds": stats([s["seconds"] for s in samples]),
                "executions_per_s": stats([s["executions_per_s"] for s in samples]),
                "operations_per_s": stats([s["operations_per_s"] for s in samples]),
            }
            say("perdure replay --verify, as a subprocess")
            results["cli"] = cli_replay(path, executions, steps)
        results["machine"]["load_average_end"] = _load_average()
        return results


def format_replay_report(results: dict[str, Any]) -> str:
    """A readable table of :func:`run_replay`'s results."""
    from perdure.bench import _fmt, _spread

    lines = report_header(results, "perdure bench --suite replay")
    cfg = results["config"]
    lines.append(
        f"  config      {cfg['executions']:,} executions x {cfg['steps']} steps, "
        f"repeats={cfg['repeats']}, workers={cfg['workers']}, quick={cfg['quick']}; "
        "medians [min .. max]"
    )
    lines.append("")
    rep = results["replay"]
    cli = results["cli"]
    build = results["build"]
    rows = [
        (
            "build: steps/s (durability none)",
            _fmt(build["steps_per_s"]),
            f"{_fmt(build['seconds'], 2)} s",
        ),
        ("replay(verify=True): executions/s", _spread(rep["executions_per_s"]), ""),
        (
            "replay(verify=True): operations/s",
            _spread(rep["operations_per_s"]),
            f"{_fmt(rep['seconds']['median'], 2)} s per replay of the store",
        ),
        (
            "perdure replay --verify: executions/s",
            _fmt(cli["executions_per_s"]),
            f"end to end, {_fmt(cli['wall_s'], 2)} s wall",
        ),
        (
            "perdure replay --verify: operations/s",
            _fmt(cli["operations_per_s"]),
            f"the replay itself: {_fmt(cli['replay_operations_per_s'])} ops/s "
            f"in {_fmt(cli['replay_s'], 2)} s",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    for label, value, note in rows:
        lines.append(f"  {label:<{width}}  {value:>{vwidth}}  {note}".rstrip())
    return "\n".join(lines)
