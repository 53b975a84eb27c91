"""Replay verification throughput with pytest-benchmark (issue 4).

    python -m pytest bench/test_bench_replay.py --benchmark-only

A store of 10,000 finished executions of 100 steps each (durability "none",
all in flight at once; ``PERDURE_BENCH_REPLAY_EXECUTIONS`` changes the
count) is replayed with ``Engine.replay(verify=True)`` on an ``owner=False``
engine, as ``perdure replay`` does, and the command itself runs once as a
subprocess, end to end. Executions/s and operations/s are in each
benchmark's ``extra_info``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from perdure import Engine, bench_replay

EXECUTIONS = int(os.environ.get("PERDURE_BENCH_REPLAY_EXECUTIONS", "10000"))
STEPS = 100


@pytest.fixture(scope="module")
def verify_store(bench_dir: Path) -> Path:
    path = Path(tempfile.mkdtemp(prefix="replay-verify-", dir=bench_dir))
    bench_replay.build_replay_store(path, EXECUTIONS, STEPS)
    return path


def test_replay_verify_store(benchmark, verify_store: Path) -> None:
    """``replay(verify=True)`` over every stored execution."""
    with Engine(verify_store, owner=False) as engine:

        def one_round() -> None:
            report = engine.replay(verify=True)
            assert report.ok and report.executions == EXECUTIONS
            assert report.operations == EXECUTIONS * STEPS

        benchmark.pedantic(one_round, rounds=3, iterations=1, warmup_rounds=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info["executions"] = EXECUTIONS
    benchmark.extra_info["steps"] = STEPS
    benchmark.extra_info["executions_per_s"] = EXECUTIONS / median
    benchmark.extra_info["operations_per_s"] = EXECUTIONS * STEPS / median


def test_perdure_replay_command(benchmark, verify_store: Path) -> None:
    """``perdure replay --verify --json`` once, as a subprocess: interpreter
    start, imports, opening the store, the replay and the report."""
    out = benchmark.pedantic(
        bench_replay.cli_replay, args=(verify_store, EXECUTIONS, STEPS), rounds=1, iterations=1
    )
    benchmark.extra_info["executions"] = EXECUTIONS
    benchmark.extra_info["steps"] = STEPS
    benchmark.extra_info["wall_s"] = out["wall_s"]
    benchmark.extra_info["executions_per_s"] = out["executions_per_s"]
    benchmark.extra_info["operations_per_s"] = out["operations_per_s"]
    benchmark.extra_info["replay_operations_per_s"] = out["replay_operations_per_s"]
