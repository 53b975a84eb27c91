"""perdure's own figures with pytest-benchmark (DESIGN.md section 7, issue 2).

    python -m pytest bench/ --benchmark-only

A round is a fixed number of operations (``STEPS_PER_ROUND`` steps or
commits); the per-second figures are in each benchmark's ``extra_info``
(``--benchmark-json`` keeps them). The raw LMDB baselines run on the same
filesystem as the stores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from perdure import Engine, bench

STEPS_PER_ROUND = 1_000
REPLAY_STEPS = 10_000


def _rate(benchmark: object, operations: int) -> float:
    return operations / benchmark.stats.stats.median  # type: ignore[attr-defined]


@pytest.fixture
def raw_lmdb(store_dir: Path, request: pytest.FixtureRequest) -> Iterator[bench.RawLmdb]:
    pytest.importorskip("lmdb")
    raw = bench.RawLmdb(store_dir / "raw", sync=request.param)
    yield raw
    raw.close()


@pytest.mark.parametrize("raw_lmdb", [True, False], ids=["synced", "unsynced"], indirect=True)
def test_raw_lmdb_commits(benchmark, raw_lmdb: bench.RawLmdb) -> None:
    """Baseline: one small put per LMDB write transaction, synced (LMDB's
    default, fsync per commit) and unsynced."""
    benchmark.pedantic(
        raw_lmdb.commit, args=(STEPS_PER_ROUND,), rounds=5, iterations=1, warmup_rounds=1
    )
    benchmark.extra_info["commits_per_round"] = STEPS_PER_ROUND
    benchmark.extra_info["commits_per_s"] = _rate(benchmark, STEPS_PER_ROUND)


@pytest.fixture
def engine(store_dir: Path, request: pytest.FixtureRequest) -> Iterator[Engine]:
    with Engine(store_dir / "store", durability=request.param, workers=1) as e:
        yield e


@pytest.mark.parametrize("engine", ["full", "process"], indirect=True)
def test_sequential_steps(benchmark, engine: Engine) -> None:
    """One execution per round doing STEPS_PER_ROUND sequential steps that
    return small ints. The round time includes starting and finishing the
    execution; ``steady_steps_per_s`` is timed inside the workflow."""
    steady: list[float] = []

    def one_round() -> None:
        spec = {"steps": STEPS_PER_ROUND, "warmup": 0}
        started, ended = engine.run(bench.sequential_workflow, spec, timeout=600)
        steady.append(STEPS_PER_ROUND / (ended - started))

    rounds = 5 if engine.durability == "full" else 20
    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["durability"] = engine.durability
    benchmark.extra_info["steps_per_round"] = STEPS_PER_ROUND
    benchmark.extra_info["steps_per_s"] = _rate(benchmark, STEPS_PER_ROUND)
    benchmark.extra_info["steady_steps_per_s"] = bench.stats(steady[1:])


@pytest.fixture(scope="module")
def replay_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, int]]:
    path = tmp_path_factory.mktemp("replay")
    with Engine(path, durability="none", workers=1) as e:
        yield e, bench.replay_execution(e, REPLAY_STEPS)


def test_replay_10000_steps(benchmark, replay_store: tuple[Engine, int]) -> None:
    """Replay of one stored 10,000-step execution with small results: the
    Rust load + index and the Python re-run, with nothing new to do."""
    engine, exec_key = replay_store
    benchmark.pedantic(
        bench.replay_once,
        args=(engine, exec_key, REPLAY_STEPS),
        rounds=20,
        iterations=1,
        warmup_rounds=2,
    )
    benchmark.extra_info["steps"] = REPLAY_STEPS
    benchmark.extra_info["ops_per_s"] = _rate(benchmark, REPLAY_STEPS)


def test_replay_10000_load_index(benchmark, replay_store: tuple[Engine, int]) -> None:
    """The Rust half alone: load the journal in one read transaction and build the index."""
    engine, exec_key = replay_store
    benchmark.pedantic(
        bench.replay_load, args=(engine, exec_key), rounds=50, iterations=1, warmup_rounds=2
    )
    benchmark.extra_info["steps"] = REPLAY_STEPS
    benchmark.extra_info["ops_per_s"] = _rate(benchmark, REPLAY_STEPS)


def test_replay_10000_python_rerun(benchmark, replay_store: tuple[Engine, int]) -> None:
    """The Python half alone: the workflow re-run against an index loaded in setup."""
    engine, exec_key = replay_store

    def setup() -> tuple[tuple[object, ...], dict[str, object]]:
        return (engine, bench.replay_load(engine, exec_key), REPLAY_STEPS), {}

    benchmark.pedantic(bench.replay_rerun, setup=setup, rounds=20, warmup_rounds=2)
    benchmark.extra_info["steps"] = REPLAY_STEPS
    benchmark.extra_info["ops_per_s"] = _rate(benchmark, REPLAY_STEPS)


@pytest.mark.parametrize("steps", [100, 1_000, 10_000, 100_000])
def test_replay_scaling(benchmark, store_dir: Path, steps: int) -> None:
    """Replay ops/s must stay flat as the history grows (DESIGN.md section 7)."""
    with Engine(store_dir / "store", durability="none", workers=1) as engine:
        exec_key = bench.replay_execution(engine, steps)
        benchmark.pedantic(
            bench.replay_once,
            args=(engine, exec_key, steps),
            rounds=max(5, min(100, 200_000 // steps)),
            iterations=1,
            warmup_rounds=1,
        )
    benchmark.extra_info["steps"] = steps
    benchmark.extra_info["ops_per_s"] = _rate(benchmark, steps)


def test_bytes_per_step(benchmark, store_dir: Path) -> None:
    """Bytes on disk per completed step with a small int result (100,000
    steps in 4 executions). The time is that of running them at durability
    "none"; the figures are in extra_info."""
    out = benchmark.pedantic(
        bench.bytes_per_step, args=(store_dir, 100_000, 4), rounds=1, iterations=1
    )
    benchmark.extra_info["data_mdb_growth_per_step"] = out["data_mdb_growth_per_step"]
    journal = out["journal"]
    if journal["available"]:
        for key in ("bytes_per_entry", "bytes_per_step", "logical_bytes_per_entry"):
            benchmark.extra_info[f"journal_{key}"] = journal[key]
        benchmark.extra_info["all_dbs_bytes_per_step"] = journal["all_dbs_bytes_per_step"]
