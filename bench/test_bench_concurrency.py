"""Concurrency figures with pytest-benchmark (issue 3, DESIGN.md section 7).

    python -m pytest bench/test_bench_concurrency.py --benchmark-only

A round starts a batch of executions in an engine opened once per test and
waits for every result; the per-second figures are in each benchmark's
``extra_info`` (``--benchmark-json`` keeps them). ``perdure bench --suite
concurrency`` measures the same figures and more (many suspended executions,
timers due together).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from perdure import Engine, bench
from perdure import bench_concurrency as bc

STEPS_PER_ROUND = 10_000
IO_EXECUTIONS = 512
IO_STEPS = 2
MAP_ITEMS = 10_000

_ids = itertools.count()


def _rate(benchmark: Any, operations: int) -> float:
    return operations / benchmark.stats.stats.median  # type: ignore[no-any-return]


def _run_all(engine: Engine, function: Any, inputs: list[Any], expected: Any) -> None:
    """Starts one execution per input, then waits for every result."""
    handles = [engine.start(function, x, execution_id=f"b{next(_ids)}") for x in inputs]
    for handle in handles:
        result = handle.result(timeout=bc.RESULT_TIMEOUT)
        assert result == expected, (handle.execution_id, result)


@pytest.mark.parametrize("concurrency", bc.CONCURRENCIES)
def test_concurrent_steps_full(benchmark: Any, store_dir: Path, concurrency: int) -> None:
    """Figure 1: ``concurrency`` executions in flight at durability "full",
    about STEPS_PER_ROUND sequential steps per round split between them, on
    one worker per execution; beside the raw LMDB synced commit rate of the
    same filesystem, measured just before."""
    per = max(1, STEPS_PER_ROUND // concurrency)
    raw = bench.raw_lmdb_commit_rate(store_dir, 1_000, sync=True)
    with Engine(store_dir / "store", durability="full", workers=min(concurrency, 512)) as engine:
        benchmark.pedantic(
            _run_all,
            args=(engine, bc.steps_workflow, [per] * concurrency, per),
            rounds=3,
            iterations=1,
            warmup_rounds=1,
        )
    steps_per_s = _rate(benchmark, per * concurrency)
    benchmark.extra_info["concurrency"] = concurrency
    benchmark.extra_info["workers"] = min(concurrency, 512)
    benchmark.extra_info["steps_per_round"] = per * concurrency
    benchmark.extra_info["steps_per_s"] = steps_per_s
    if raw is not None:
        benchmark.extra_info["raw_synced_commits_per_s"] = raw
        benchmark.extra_info["ratio_to_raw_synced"] = steps_per_s / raw


@pytest.mark.parametrize("workers", [1, 8, 128])
def test_io_steps(benchmark: Any, store_dir: Path, workers: int) -> None:
    """Figure 2: IO_EXECUTIONS executions of IO_STEPS steps that each block
    1 ms in time.sleep (releasing the GIL), at "full", on ``workers`` workers."""
    spec = {"steps": float(IO_STEPS), "block_s": 0.001}
    with Engine(store_dir / "store", durability="full", workers=workers) as engine:
        benchmark.pedantic(
            _run_all,
            args=(engine, bc.io_steps_workflow, [spec] * IO_EXECUTIONS, IO_STEPS),
            rounds=3,
            iterations=1,
            warmup_rounds=1,
        )
    benchmark.extra_info["executions"] = IO_EXECUTIONS
    benchmark.extra_info["workers"] = workers
    benchmark.extra_info["steps_per_round"] = IO_EXECUTIONS * IO_STEPS
    benchmark.extra_info["steps_per_s"] = _rate(benchmark, IO_EXECUTIONS * IO_STEPS)
    benchmark.extra_info["sleep_bound_steps_per_s"] = workers * 1000.0


@pytest.mark.parametrize("durability", ["full", "process"])
def test_map(benchmark: Any, store_dir: Path, durability: str) -> None:
    """Figure 3: one execution mapping MAP_ITEMS items (``item * 2``), on the
    engine's default number of workers."""
    expected = MAP_ITEMS * (MAP_ITEMS - 1)
    with Engine(store_dir / "store", durability=durability, workers=bc.DEFAULT_WORKERS) as engine:
        benchmark.pedantic(
            _run_all,
            args=(engine, bc.map_workflow, [MAP_ITEMS], expected),
            rounds=3,
            iterations=1,
            warmup_rounds=1,
        )
    benchmark.extra_info["durability"] = durability
    benchmark.extra_info["items"] = MAP_ITEMS
    benchmark.extra_info["workers"] = bc.DEFAULT_WORKERS
    benchmark.extra_info["items_per_s"] = _rate(benchmark, MAP_ITEMS)
