"""Issue 10's figures with pytest-benchmark, over both stores where cheap.

    PERDURE_TEST_PG=postgresql://... python -m pytest bench/test_bench_pg.py --benchmark-only

The ``postgresql`` cases need a server (``source scripts/postgres.sh;
start_test_postgres`` exports ``PERDURE_TEST_PG``) and skip without one; each
case runs in a fresh schema, dropped afterwards. ``bench/pg_figures.py``
measures the same figures as same-run ratios (with pgbench and DBOS beside
them); the per-second figures here are in each benchmark's ``extra_info``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pg_figures as pf
import pytest
from perdure import Engine, bench

STEPS_PER_ROUND = 1_000
IN_FLIGHT = 64
STEPS_IN_FLIGHT = 10_000
REPLAY_STEPS = 10_000


def _url() -> str:
    url = os.environ.get("PERDURE_TEST_PG")
    if not url:
        pytest.skip("no PostgreSQL server: set PERDURE_TEST_PG (scripts/postgres.sh)")
    return url


@pytest.fixture(params=["lmdb", "postgresql"])
def location(request: pytest.FixtureRequest, store_dir: Path) -> Iterator[str]:
    """Where a fresh store goes: an LMDB directory or a PostgreSQL schema."""
    if request.param == "lmdb":
        yield str(store_dir / "store")
        return
    with pf.fresh_schema(_url(), "pgbench") as url:
        yield url


def _rate(benchmark: Any, operations: int) -> float:
    return operations / benchmark.stats.stats.median  # type: ignore[no-any-return]


def test_sequential_steps_full(benchmark: Any, location: str) -> None:
    """Figure 1: one execution's STEPS_PER_ROUND sequential steps at "full"
    per round (an execution per round, started and awaited in the round)."""
    with Engine(location, durability="full", workers=1) as engine:
        spec = {"steps": STEPS_PER_ROUND, "warmup": 0}
        benchmark.pedantic(
            engine.run,
            args=(bench.sequential_workflow, spec),
            kwargs={"timeout": 600},
            rounds=3,
            iterations=1,
            warmup_rounds=1,
        )
    benchmark.extra_info["steps_per_s"] = _rate(benchmark, STEPS_PER_ROUND)


def test_async_in_flight_full(benchmark: Any, location: str) -> None:
    """Figure 2: IN_FLIGHT async executions at "full", STEPS_IN_FLIGHT steps
    between them per round."""
    per = STEPS_IN_FLIGHT // IN_FLIGHT
    with Engine(location, durability="full", workers=2) as engine:
        benchmark.pedantic(
            pf.async_rate, args=(engine, IN_FLIGHT, per), rounds=3, iterations=1, warmup_rounds=1
        )
    benchmark.extra_info["steps_per_s"] = _rate(benchmark, IN_FLIGHT * per)


def test_replay_10000(benchmark: Any, location: str) -> None:
    """Figure 3: load + re-run of a stored 10,000-step history."""
    with Engine(location, durability="none", workers=1) as engine:
        key = bench.replay_execution(engine, REPLAY_STEPS)
        benchmark.pedantic(
            bench.replay_once,
            args=(engine, key, REPLAY_STEPS),
            rounds=10,
            iterations=1,
            warmup_rounds=1,
        )
    benchmark.extra_info["ops_per_s"] = _rate(benchmark, REPLAY_STEPS)


@pytest.mark.parametrize("clients", [1, 64])
def test_raw_postgresql_insert(benchmark: Any, clients: int) -> None:
    """The baseline of figures 1 and 2: pgbench, one 160-byte row per
    synced transaction, for 3 s per round."""
    url = _url()
    tps = benchmark.pedantic(pf.pgbench_tps, args=(url, clients, 3), rounds=1, iterations=1)
    benchmark.extra_info["clients"] = clients
    benchmark.extra_info["commits_per_s"] = tps


def test_cross_process_callback(benchmark: Any) -> None:
    """Figure 4: 50 callbacks answered by another process (owner=False);
    latency from the answer's call to the next step's body, in ms."""
    url = _url()
    out = benchmark.pedantic(pf.measure_callbacks, args=(url, 50), rounds=1, iterations=1)
    for part in ("total", "send_call", "to_invocation", "to_step_body"):
        benchmark.extra_info[f"{part}_p50_ms"] = out[part]["p50_ms"]
        benchmark.extra_info[f"{part}_p90_ms"] = out[part]["p90_ms"]
