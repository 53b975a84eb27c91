"""`perdure bench --quick` runs end to end and reports every figure issues 2 to 4 ask for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from support import lmdb_only

# Until perdure bench takes a --store URL.
pytestmark = lmdb_only("perdure bench runs on LMDB directories (--store-dir) only")


def _bench_quick(tmp_path: Path, *suite: str) -> tuple[dict[str, Any], str]:
    """Runs ``perdure bench --quick --json`` in a fresh interpreter; returns
    the figures and what went to stderr."""
    command = ["bench", *suite, "--quick", "--json", "--store-dir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "perdure", *command],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def test_bench_quick_reports_every_figure(tmp_path: Path) -> None:
    figures, stderr = _bench_quick(tmp_path)
    assert figures["raw_lmdb"]["synced_commits_per_s"]["median"] > 0
    for durability in ("full", "process"):
        sequential = figures[f"sequential_{durability}"]
        assert sequential["steps_per_s"]["median"] > 0
        assert sequential["ratio_to_raw"] > 0
    assert figures["replay"]["ops_per_s"]["median"] > 0
    assert 20 < figures["bytes_per_step"]["journal"]["bytes_per_step"] <= 64
    assert 20 < figures["bytes_per_step"]["data_mdb_growth_per_step"] <= 64
    assert "replay ops/s" in stderr  # the readable table goes to stderr with --json


def _positive(figure: dict[str, object], *keys: str) -> None:
    for key in keys:
        value = figure[key]
        median = value["median"] if isinstance(value, dict) else value
        assert isinstance(median, int | float) and median > 0, (key, value)


def test_bench_concurrency_quick_reports_every_figure(tmp_path: Path) -> None:
    figures, stderr = _bench_quick(tmp_path, "--suite", "concurrency")
    # 1. steps/s with 1, 8, 64, 512 executions in flight, beside the raw commit rates
    for durability in ("full", "process"):
        steps = figures[f"steps_{durability}"]
        assert steps["durability"] == durability
        _positive(steps["raw_lmdb"], "commits_per_s")
        assert [row["concurrency"] for row in steps["rows"]] == [1, 8, 64, 512]
        for row in steps["rows"]:
            _positive(row, "steps_per_s", "ratio_to_raw", "workers")
    # 2. steps blocking 1 ms, as the workers grow
    io = figures["io_steps"]
    assert len(io["rows"]) >= 2
    for row in io["rows"]:
        _positive(row, "steps_per_s", "workers")
    # 3. map items/s at full and process
    assert [row["durability"] for row in figures["map"]["rows"]] == ["full", "process"]
    for row in figures["map"]["rows"]:
        _positive(row, "items_per_s")
    # 4. many executions at once, every result checked
    many = figures["many_executions"]
    assert many["all_results_correct"] is True
    _positive(many, "executions_per_s")
    # 5. suspended executions: threads and memory
    for key in ("suspended_wait", "suspended_callback"):
        suspended = figures[key]
        _positive(
            suspended,
            "threads_engine_idle",
            "threads_all_suspended",
            "VmRSS_bytes_per_execution",
            "max_rss_kib",
            "start_and_suspend_per_s",
        )
    # 6. timers due together: resume rate and lateness
    timers = figures["timers"]
    _positive(timers, "resumes_per_s")
    for key in ("p50", "p99", "max"):
        _positive(timers["lateness_ms"], key)
    assert "timers due at the same moment" in stderr  # the table goes to stderr


def test_bench_replay_quick_reports_every_figure(tmp_path: Path) -> None:
    figures, stderr = _bench_quick(tmp_path, "--suite", "replay")
    assert figures["config"]["executions"] == 200 and figures["config"]["steps"] == 100
    assert figures["replay"]["operations_per_s"]["median"] > 0
    assert figures["replay"]["executions_per_s"]["median"] > 0
    assert figures["cli"]["wall_s"] > 0 and figures["cli"]["operations_per_s"] > 0
    assert "perdure replay --verify" in stderr
