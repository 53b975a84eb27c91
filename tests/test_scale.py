"""Many executions at once (issue 3): 10,000 executions started together all
complete, each with its own correct result, every step run exactly once."""

from __future__ import annotations

import threading
from collections import Counter

import perdure
from perdure import DurableContext, Engine

EXECUTIONS = 10_000

_runs: Counter[tuple[int, str]] = Counter()
_runs_lock = threading.Lock()


def _ran(n: int, step: str) -> None:
    with _runs_lock:
        _runs[(n, step)] += 1


@perdure.durable(name="tests.scale.two_steps")
def two_steps(ctx: DurableContext, n: int) -> list[int]:
    def first(_: object) -> int:
        _ran(n, "first")
        return n * 3

    def second(_: object) -> int:
        _ran(n, "second")
        return n + 7

    return [ctx.step(first), ctx.step(second)]


def test_ten_thousand_executions_started_at_once_all_complete(store: str) -> None:
    _runs.clear()
    with Engine(store, durability="process") as engine:
        handles = [engine.start(two_steps, n, execution_id=f"scale-{n}") for n in range(EXECUTIONS)]
        results = [handle.result(timeout=300) for handle in handles]
        succeeded = engine.list(status="SUCCEEDED")
        active = engine.list(status="SUSPENDED") + engine.list(status="PENDING")
    assert results == [[n * 3, n + 7] for n in range(EXECUTIONS)]
    assert len(succeeded) == EXECUTIONS
    assert {info.execution_id for info in succeeded} == {f"scale-{n}" for n in range(EXECUTIONS)}
    assert active == []
    # Every step of every execution ran exactly once.
    assert len(_runs) == 2 * EXECUTIONS
    assert set(_runs.values()) == {1}
