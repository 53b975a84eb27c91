"""Workflows recorded and then replayed by tests/test_replay_verify.py.

Importable as a module (pytest puts tests/ on sys.path) and by path, as
``perdure replay --import tests/replay_workflows.py`` does. Every step body
goes through :func:`body`, which counts its calls (``BODY_CALLS``) and, when
``PERDURE_TEST_BODY_MARKER`` names a file, appends a byte to it: a replay
must leave both alone.

``python replay_workflows.py live STORE`` runs an owner engine that starts
``live-1`` (a step, then a callback), prints ``ready``, and prints the
execution's result once someone answers the callback.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from perdure import (
    DurableContext,
    Duration,
    Engine,
    JitterStrategy,
    MapConfig,
    RetryStrategyConfig,
    StepConfig,
    create_retry_strategy,
    durable,
    register,
)

BODY_CALLS: list[int] = []  # one entry per step body run in this process
_lock = threading.Lock()

NO_RETRY = StepConfig(
    retry_strategy=create_retry_strategy(
        RetryStrategyConfig(max_attempts=1, jitter_strategy=JitterStrategy.NONE)
    )
)


class Declined(Exception):
    """What ``rv.failing`` fails with."""


def body(value: Any) -> Any:
    with _lock:
        BODY_CALLS.append(1)
    marker = os.environ.get("PERDURE_TEST_BODY_MARKER")
    if marker:
        with open(marker, "a") as f:
            f.write("x")
    return value


@durable(name="rv.linear")
def linear(ctx: DurableContext, n: int) -> int:
    """Three named steps; finishes."""
    a = ctx.step(lambda _: body(n), name="a")
    b = ctx.step(lambda _: body(a + 1), name="b")
    c = ctx.step(lambda _: body(b + 1), name="c")
    return a + b + c


@durable(name="rv.waiting")
def waiting(ctx: DurableContext, n: int) -> dict[str, Any]:
    """A step, then a callback nobody answers: stays suspended."""
    a = ctx.step(lambda _: body(n), name="a")
    answer = ctx.create_callback(name="approval").result()
    return {"a": a, "answer": answer}


@durable(name="rv.sleeper")
def sleeper(ctx: DurableContext, n: int) -> int:
    """A step, then an hour's wait: stays suspended on a timer."""
    a = ctx.step(lambda _: body(n), name="a")
    ctx.wait(Duration.from_hours(1), name="nap")
    return int(ctx.step(lambda _: body(a), name="after"))


@durable(name="rv.failing")
def failing(ctx: DurableContext, n: int) -> int:
    """A step, then a step that fails: the execution fails."""
    a = ctx.step(lambda _: body(n), name="a")

    def declined(_: Any) -> int:
        body(None)
        raise Declined(f"declined {a}")

    return int(ctx.step(declined, name="decline", config=NO_RETRY))


def _item(ctx: DurableContext, item: int, index: int, items: Any) -> int:
    return int(ctx.step(lambda _: body(item * 10), name="square"))


@durable(name="rv.fanout")
def fanout(ctx: DurableContext, n: int) -> dict[str, Any]:
    """A map and a parallel, both finished."""
    mapped = ctx.map([n, n + 1, n + 2], _item, name="items", config=MapConfig(max_concurrency=2))
    branches = ctx.parallel(
        [
            lambda c: c.step(lambda _: body("left"), name="left"),
            lambda c: c.step(lambda _: body("right"), name="right"),
        ],
        name="sides",
    )
    return {"mapped": mapped.get_results(), "sides": branches.get_results()}


def _branch_item(ctx: DurableContext, item: int, index: int, items: Any) -> int:
    value = int(ctx.step(lambda _: body(item), name="first"))
    if index == 1:
        ctx.create_callback(name="hold").result()  # branch 2 never finishes
    return value


@durable(name="rv.fanwait")
def fanwait(ctx: DurableContext, n: int) -> list[int]:
    """A map whose second branch waits for a callback: stays suspended, and a
    replay re-runs its branches."""
    return ctx.map([n, n + 1, n + 2], _branch_item, name="items").get_results()


@durable(name="rv.gone")
def gone(ctx: DurableContext, n: int) -> int:
    """Recorded, then unregistered before the replay (as if deleted from the code)."""
    return int(ctx.step(lambda _: body(n), name="a"))


@register(name="rv.plain")
def plain(n: int) -> int:
    """A plain function run as an execution: nothing to replay, and a replay
    must not call it."""
    return int(body(n))


@durable(name="rv.invoker")
def invoker(ctx: DurableContext, n: int) -> int:
    """Invokes rv.plain as a child execution, then a step."""
    child = int(ctx.invoke("rv.plain", n, name="call"))
    return child + int(ctx.step(lambda _: body(1), name="after"))


def _live(store: str) -> None:
    with Engine(store, durability="process") as engine:
        handle = engine.start(waiting, 7, execution_id="live-1")
        print("ready", flush=True)
        print(repr(handle.result(timeout=60)), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["live"]:
        _live(sys.argv[2])
