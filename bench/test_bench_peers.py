"""Peers side by side with pytest-benchmark: DBOS (SQLite) and the AWS SDK's
local runner. Skipped where the peer is not installed (they are bench-only,
not project dependencies):

    pip install dbos aws-durable-execution-sdk-python-testing
    python -m pytest bench/ --benchmark-only

``python bench/peers/compare.py`` prints the same figures with ratios to perdure.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import aws_peer, dbos_peer

PEER_STEPS = 500


def _rate(benchmark: object, operations: int) -> float:
    return operations / benchmark.stats.stats.median  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def dbos_launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if dbos_peer.AVAILABLE_ERROR:
        pytest.skip(dbos_peer.AVAILABLE_ERROR)
    dbos_peer.launch(tmp_path_factory.mktemp("dbos"))
    yield
    dbos_peer.destroy()


def test_dbos_sequential_steps(benchmark, dbos_launched: None) -> None:
    """One DBOS workflow per round doing PEER_STEPS steps (SQLite, synchronous=FULL)."""
    steady: list[float] = []
    benchmark.pedantic(
        lambda: steady.append(dbos_peer.sequential_rate(PEER_STEPS)),
        rounds=3,
        iterations=1,
        warmup_rounds=1,
    )
    benchmark.extra_info["steps_per_round"] = PEER_STEPS
    benchmark.extra_info["steps_per_s"] = _rate(benchmark, PEER_STEPS)
    benchmark.extra_info["steady_steps_per_s"] = sorted(steady)[len(steady) // 2]


def test_dbos_recovery_replay(benchmark, tmp_path: Path) -> None:
    """A PENDING workflow with PEER_STEPS recorded steps recovered by a new
    process. The round time includes both processes; ``replay_steps_per_s``
    is timed inside the recovered workflow."""
    if dbos_peer.AVAILABLE_ERROR:
        pytest.skip(dbos_peer.AVAILABLE_ERROR)
    out = benchmark.pedantic(
        dbos_peer.measure,
        kwargs={"steps": 10, "repeats": 1, "replay_steps": PEER_STEPS, "store_dir": tmp_path},
        rounds=1,
        iterations=1,
    )
    benchmark.extra_info["replay_steps"] = PEER_STEPS
    benchmark.extra_info["replay_steps_per_s"] = out["replay_steps_per_s"]["median"]


def test_aws_local_runner_steps_and_replay(benchmark) -> None:
    """One AWS local-runner execution per round: PEER_STEPS steps, a wait,
    and a second invocation that replays them. Rates are timed inside the handler."""
    if aws_peer.AVAILABLE_ERROR:
        pytest.skip(aws_peer.AVAILABLE_ERROR)
    samples: list[dict[str, float]] = []
    benchmark.pedantic(
        lambda: samples.append(aws_peer.run_once(PEER_STEPS)),
        rounds=3,
        iterations=1,
        warmup_rounds=1,
    )
    seq = sorted(s["steps_per_s"] for s in samples[1:])
    rep = sorted(s["replay_steps_per_s"] for s in samples[1:])
    benchmark.extra_info["steps_per_round"] = PEER_STEPS
    benchmark.extra_info["steps_per_s"] = seq[len(seq) // 2]
    benchmark.extra_info["replay_steps_per_s"] = rep[len(rep) // 2]
