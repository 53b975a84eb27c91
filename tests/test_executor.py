"""Invocations run on the Rust work-stealing pool: a fixed set of threads that
keep their Python thread state, run many executions at once, and go away on
close."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import perdure
import pytest
from perdure import DurableContext, Duration

_local = threading.local()
_lock = threading.Lock()
_seen: list[tuple[int, bool]] = []
_running = 0
_most_running = 0


@perdure.durable(name="test_executor.io_bound")
def io_bound(ctx: DurableContext, n: int) -> int:
    def body(_: perdure.StepContext) -> int:
        global _running, _most_running
        with _lock:
            # A thread state that lived through earlier tasks still has its
            # thread-local marker; one made afresh per task would not.
            _seen.append((threading.get_native_id(), getattr(_local, "marker", False)))
            _local.marker = True
            _running += 1
            _most_running = max(_most_running, _running)
        time.sleep(0.005)  # I/O: releases the GIL
        with _lock:
            _running -= 1
        return n

    total = 0
    for _ in range(3):
        total += ctx.step(body)
    ctx.wait(Duration.from_milliseconds(2))
    return total


def _perdure_threads() -> list[str]:
    """The process's OS threads named by the executor (Linux truncates names to 15 bytes)."""
    names = [(task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir()]
    return [name for name in names if name.startswith("perdure-worker")]


def test_many_executions_run_on_a_fixed_pool(store: str) -> None:
    _seen.clear()
    with perdure.Engine(store, durability="none", workers=4) as engine:
        handles = [engine.start(io_bound, i) for i in range(60)]
        assert [h.result(timeout=60) for h in handles] == [3 * i for i in range(60)]
    threads = {native_id for native_id, _ in _seen}
    assert 1 <= len(threads) <= 4, threads
    # Every thread kept its Python thread state from one task to the next.
    first_seen: set[int] = set()
    for native_id, had_marker in _seen:
        assert had_marker == (native_id in first_seen)
        first_seen.add(native_id)
    # Steps that release the GIL overlap across executions.
    assert _most_running > 1


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads thread names from /proc")
def test_close_leaves_no_worker_thread_behind(store: str) -> None:
    before = len(_perdure_threads())
    engine = perdure.Engine(store, durability="none", workers=3)
    assert engine.run(io_bound, 1, timeout=30) == 3
    assert len(_perdure_threads()) == before + 3
    engine.close()
    deadline = time.monotonic() + 10
    while _perdure_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(_perdure_threads()) == before


@perdure.durable(name="test_executor.slow_then_fast")
def slow_then_fast(ctx: DurableContext, delay: float) -> Any:
    ctx.step(lambda _: time.sleep(delay))
    return "done"


def test_close_waits_for_running_invocations_and_keeps_their_work(store: str) -> None:
    with perdure.Engine(store, durability="process", workers=2) as engine:
        engine.start(slow_then_fast, 0.3, execution_id="slow")
        time.sleep(0.05)
    # The invocation finished during close; nothing was lost or left pending.
    with perdure.Engine(store, owner=False) as client:
        assert client.get("slow").result(timeout=5) == "done"
