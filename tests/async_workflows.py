"""Async workflows for ``tests/test_asyncio.py``, and the child-process entry
point of its crash test.

``python tests/async_workflows.py child ARGS_JSON`` opens
``Engine(store, durability="process")``, starts the executions it is given
(idempotently, by their fixed ids) and waits for their results; the test
SIGKILLs it while a step body is blocked on a gate file. Step bodies and the
workflow write lines to an append-only side-effect log outside the store
(one ``os.write`` per line on an ``O_APPEND`` descriptor, so a SIGKILL cannot
lose a line that was written):

    proc  PID                 a process began
    body  EXEC NAME PID       a step body began to run
    ack   EXEC NAME PID       ``await ctx.step`` returned NAME to the workflow
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import perdure
from perdure import (
    AsyncDurableContext,
    CompletionConfig,
    DurableContext,
    Duration,
    JitterStrategy,
    MapConfig,
    ParallelConfig,
    RetryStrategyConfig,
    StepConfig,
    StepContext,
    WaitForConditionConfig,
    WaitForConditionDecision,
    create_retry_strategy,
)

# Step bodies run, by (execution id, step name).
CALLS: collections.Counter[tuple[str, str]] = collections.Counter()
# Callback ids published by workflows, by execution id.
CALLBACK_IDS: dict[str, str] = {}
# The engine whose callbacks the history workflows answer themselves.
ENGINE: list[perdure.Engine] = []

FAST_RETRY = create_retry_strategy(
    RetryStrategyConfig(
        max_attempts=3,
        initial_delay=Duration.from_milliseconds(1),
        jitter_strategy=JitterStrategy.NONE,
    )
)


def reset() -> None:
    CALLS.clear()
    CALLBACK_IDS.clear()
    ENGINE.clear()
    GATE.open = False
    GATE.entered.clear()
    GATE.cancelled.clear()


async def later(value: Any) -> Any:
    """An async step body's I/O: yields to the event loop once, then returns."""
    await asyncio.sleep(0)
    return value


def counted(eid: str, name: str, value: Any) -> Any:
    CALLS[(eid, name)] += 1
    return value


async def counted_async(eid: str, name: str, value: Any) -> Any:
    CALLS[(eid, name)] += 1
    await asyncio.sleep(0)
    return value


# region everything at once


@perdure.durable(name="aio.tour")
async def tour(ctx: AsyncDurableContext, n: int) -> dict[str, Any]:
    """Async and sync steps, a week-long wait, a child context, map, parallel,
    wait_for_condition with an async check, and a retried step."""
    eid = ctx.execution_id
    first = await ctx.step(lambda _: counted_async(eid, "first", n + 1), name="first")
    second = await ctx.step(lambda _: counted(eid, "second", first * 2), name="second")
    await ctx.wait(Duration.from_days(7), name="week")

    async def child(c: AsyncDurableContext) -> int:
        inner = await c.step(lambda _: later(second + 1), name="inner")
        await c.wait(Duration.from_hours(1))
        return int(inner) * 10

    kid = await ctx.run_in_child_context(child, name="kid")

    async def square(c: AsyncDurableContext, item: int, index: int, items: Any) -> int:
        return int(await c.step(lambda _: later(item * item), name=f"sq{index}"))

    squares = await ctx.map([1, 2, 3, 4], square, name="squares", config=MapConfig(2))

    async def left(c: AsyncDurableContext) -> str:
        return str(await c.step(lambda _: later("L"), name="left"))

    def right(c: AsyncDurableContext) -> Any:
        return c.step(lambda _: "R", name="right")  # a sync function giving a coroutine

    sides = await ctx.parallel([left, right], name="sides")

    async def poll(state: int, check: Any) -> int:
        return int(await later(state + 1))

    def strategy(state: int, attempt: int) -> WaitForConditionDecision:
        if state >= 3:
            return WaitForConditionDecision.stop_polling()
        return WaitForConditionDecision.continue_waiting(Duration.from_minutes(10))

    polled = await ctx.wait_for_condition(
        poll, WaitForConditionConfig(strategy, initial_state=0), name="poll"
    )

    async def flaky(step: StepContext) -> int:
        CALLS[(eid, "flaky")] += 1
        if step.attempt < 3:
            raise RuntimeError(f"attempt {step.attempt} fails")
        return await later(step.attempt)

    attempts = await ctx.step(flaky, name="flaky", config=StepConfig(retry_strategy=FAST_RETRY))
    return {
        "first": first,
        "second": second,
        "kid": kid,
        "squares": squares.get_results(),
        "sides": sides.get_results(),
        "polled": polled,
        "attempts": attempts,
    }


# endregion
# region callbacks


@perdure.durable(name="aio.approval")
async def approval(ctx: AsyncDurableContext, order: str) -> dict[str, Any]:
    """create_callback answered from outside, then wait_for_callback with an
    async submitter."""
    eid = ctx.execution_id
    callback = await ctx.create_callback(name="approve")
    await ctx.step(lambda _: CALLBACK_IDS.__setitem__(eid, callback.callback_id), name="publish")
    verdict = await callback.result()

    async def submit(callback_id: str, _: Any) -> None:
        await asyncio.sleep(0)
        CALLBACK_IDS[eid + "/ship"] = callback_id

    shipped = await ctx.wait_for_callback(submit, name="ship")
    return {"order": order, "verdict": verdict, "shipped": shipped}


@perdure.durable(name="aio.counted")
async def counted_workflow(ctx: AsyncDurableContext, n: int) -> list[Any]:
    """Three counted steps (async and sync), a callback, one more step."""
    eid = ctx.execution_id
    a = await ctx.step(lambda _: counted_async(eid, "a", n), name="a")
    b = await ctx.step(lambda _: counted(eid, "b", a + 1), name="b")
    c = await ctx.run_in_child_context(
        lambda child: child.step(lambda _: counted_async(eid, "c", b + 1), name="c"), name="kid"
    )
    callback = await ctx.create_callback(name="go")
    await ctx.step(lambda _: CALLBACK_IDS.__setitem__(eid, callback.callback_id), name="publish")
    answer = await callback.result()
    d = await ctx.step(lambda _: counted_async(eid, "d", answer), name="d")
    return [a, b, c, d]


# endregion
# region invoke both ways


@perdure.register(name="aio.plain_double")
async def plain_double(payload: int) -> int:
    await asyncio.sleep(0)
    return payload * 2


@perdure.durable(name="aio.sync_leaf")
def sync_leaf(ctx: DurableContext, n: int) -> int:
    return int(ctx.step(lambda _: n + 100, name="leaf"))


@perdure.durable(name="aio.async_leaf")
async def async_leaf(ctx: AsyncDurableContext, n: int) -> int:
    return int(await ctx.step(lambda _: later(n + 1000), name="leaf"))


@perdure.durable(name="aio.async_calls")
async def async_calls(ctx: AsyncDurableContext, n: int) -> list[int]:
    """An async workflow invoking a sync one, an async one and a plain async function."""
    return [
        await ctx.invoke("aio.sync_leaf", n, name="sync"),
        await ctx.invoke(async_leaf, n, name="async"),
        await ctx.invoke("aio.plain_double", n, name="plain"),
    ]


@perdure.durable(name="aio.sync_calls")
def sync_calls(ctx: DurableContext, n: int) -> list[int]:
    """A sync workflow invoking an async one (which invokes others)."""
    return [ctx.invoke("aio.async_leaf", n, name="async"), ctx.invoke(async_calls, n, name="deep")]


# endregion
# region the same workflow, sync and async (history comparison)


def _answer_now(callback_id: str, _: Any) -> None:
    ENGINE[0].send_callback_success(callback_id, "answered")


async def _answer_now_async(callback_id: str, _: Any) -> None:
    await asyncio.sleep(0)
    _answer_now(callback_id, None)


def _stop_at_two(state: int, attempt: int) -> WaitForConditionDecision:
    if state >= 2:
        return WaitForConditionDecision.stop_polling()
    return WaitForConditionDecision.continue_waiting(Duration.from_seconds(5))


ONE_AT_A_TIME_MAP = MapConfig(max_concurrency=1)
ONE_AT_A_TIME = ParallelConfig(max_concurrency=1, completion_config=CompletionConfig())


@perdure.durable(name="aio.shape_sync")
def shape_sync(ctx: DurableContext, n: int) -> list[Any]:
    a = ctx.step(lambda _: n + 1, name="one")
    ctx.wait(Duration.from_seconds(30), name="pause")
    b = ctx.run_in_child_context(lambda c: c.step(lambda _: a * 2, name="inner"), name="child")
    m = ctx.map(
        [1, 2],
        lambda c, item, i, items: c.step(lambda _: item * 10, name="m"),
        name="fan",
        config=ONE_AT_A_TIME_MAP,
    )
    p = ctx.parallel(
        [lambda c: c.step(lambda _: "x", name="px"), lambda c: "y"],
        name="par",
        config=ONE_AT_A_TIME,
    )
    cond = ctx.wait_for_condition(
        lambda s, _: s + 1, WaitForConditionConfig(_stop_at_two, initial_state=0), name="cond"
    )
    k = ctx.invoke("aio.plain_double", 4, name="call")
    cb = ctx.wait_for_callback(_answer_now, name="cb")
    return [a, b, m.get_results(), p.get_results(), cond, k, cb]


@perdure.durable(name="aio.shape_async")
async def shape_async(ctx: AsyncDurableContext, n: int) -> list[Any]:
    a = await ctx.step(lambda _: later(n + 1), name="one")
    await ctx.wait(Duration.from_seconds(30), name="pause")

    async def child(c: AsyncDurableContext) -> Any:
        return await c.step(lambda _: later(a * 2), name="inner")

    b = await ctx.run_in_child_context(child, name="child")

    async def each(c: AsyncDurableContext, item: int, i: int, items: Any) -> Any:
        return await c.step(lambda _: later(item * 10), name="m")

    m = await ctx.map([1, 2], each, name="fan", config=ONE_AT_A_TIME_MAP)

    async def px(c: AsyncDurableContext) -> Any:
        return await c.step(lambda _: "x", name="px")

    async def py(c: AsyncDurableContext) -> Any:
        return "y"

    p = await ctx.parallel([px, py], name="par", config=ONE_AT_A_TIME)

    async def check(s: int, _: Any) -> int:
        return s + 1

    cond = await ctx.wait_for_condition(
        check, WaitForConditionConfig(_stop_at_two, initial_state=0), name="cond"
    )
    k = await ctx.invoke("aio.plain_double", 4, name="call")
    cb = await ctx.wait_for_callback(_answer_now_async, name="cb")
    return [a, b, m.get_results(), p.get_results(), cond, k, cb]


# endregion
# region an event loop shared by many executions


class Barrier:
    """Opens once ``total`` step bodies are inside it at the same time."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.entered = 0
        self.event = asyncio.Event()


BARRIER: list[Barrier] = []


@perdure.durable(name="aio.meet")
async def meet(ctx: AsyncDurableContext, _: Any) -> int:
    async def body(_: StepContext) -> int:
        barrier = BARRIER[0]
        barrier.entered += 1
        if barrier.entered == barrier.total:
            barrier.event.set()
        await barrier.event.wait()  # holds no worker while it waits
        return barrier.entered

    return int(await ctx.step(body, name="meet"))


@perdure.durable(name="aio.loop_probe")
async def loop_probe(ctx: AsyncDurableContext, _: Any) -> dict[str, Any]:
    async def body(_: StepContext) -> dict[str, Any]:
        return {"loop": id(asyncio.get_running_loop()), "thread": threading.current_thread().name}

    return dict(await ctx.step(body, name="where"))


class _Gate:
    """A step body blocks while ``open`` is False (polling the flag, so that
    it works on whichever event loop runs it)."""

    def __init__(self) -> None:
        self.open = False
        self.entered: collections.Counter[str] = collections.Counter()
        self.cancelled: collections.Counter[str] = collections.Counter()


GATE = _Gate()
# Set by a user's loop while it awaits run_async: proves that loop was not blocked.
FLAG = threading.Event()


@perdure.durable(name="aio.gated")
async def gated(ctx: AsyncDurableContext, n: int) -> int:
    eid = ctx.execution_id
    before = await ctx.step(lambda _: counted(eid, "before", n), name="before")

    async def blocked(_: StepContext) -> int:
        CALLS[(eid, "blocked")] += 1
        GATE.entered[eid] += 1
        try:
            while not GATE.open:
                await asyncio.sleep(0.002)
        except asyncio.CancelledError:
            GATE.cancelled[eid] += 1
            raise
        return before + 1

    after = await ctx.step(blocked, name="blocked")
    return int(await ctx.step(lambda _: counted(eid, "after", after * 10), name="after"))


@perdure.durable(name="aio.flag")
async def wait_for_flag(ctx: AsyncDurableContext, _: Any) -> str:
    async def body(_: StepContext) -> str:
        while not FLAG.is_set():
            await asyncio.sleep(0.002)
        return "flag seen"

    return str(await ctx.step(body, name="flag"))


@perdure.durable(name="aio.sync_double")
def sync_double(ctx: DurableContext, n: int) -> int:
    return int(ctx.step(lambda _: n * 2, name="double"))


@perdure.durable(name="aio.left_behind")
async def left_behind(ctx: AsyncDurableContext, _: Any) -> str:
    """Runs a wait and a step concurrently (what the docs advise against):
    the wait suspends the execution while the step's body still runs."""
    eid = ctx.execution_id

    async def slow(_: StepContext) -> str:
        CALLS[(eid, "slow")] += 1
        if CALLS[(eid, "slow")] == 1:
            state = ctx._state
            while not getattr(state, "ended", False):  # until its invocation ended
                await asyncio.sleep(0.001)
        return "slow"

    results = await asyncio.gather(
        ctx.wait(Duration.from_seconds(1), name="w"), ctx.step(slow, name="slow")
    )
    return str(results[1])


@perdure.durable(name="aio.versioned")
async def versioned(ctx: AsyncDurableContext, n: int) -> int:
    a = await ctx.step(lambda _: later(n), name="a")
    b = await ctx.run_in_child_context(lambda c: c.step(lambda _: later(a + 1), name="b"))
    squares = await ctx.map([1, 2], lambda c, item, i, items: c.step(lambda _: later(item)))
    return int(b) + sum(squares.get_results())


# endregion
# region bad input


@perdure.durable(name="aio.object_result")
async def object_result(ctx: AsyncDurableContext, _: Any) -> dict[str, Any]:
    caught: dict[str, Any] = {}
    try:
        await ctx.step(lambda _: later(object()), name="makes object")
    except perdure.SerDesError as exc:
        caught = {"type": type(exc).__name__, "message": str(exc), "operation": exc.operation}
    after = await ctx.step(lambda _: later("after"), name="after")
    return {"caught": caught, "after": after}


@perdure.durable(name="aio.object_result_uncaught")
async def object_result_uncaught(ctx: AsyncDurableContext, _: Any) -> Any:
    return await ctx.step(lambda _: later(object()), name="makes object")


# endregion
# region crash (child process)

CRASH_STEPS = 6
_log_fd: list[int] = []


def open_log(path: str) -> None:
    _log_fd[:] = [os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)]


def _log(*fields: object) -> None:
    if not _log_fd:
        raise RuntimeError("side-effect log is not open")
    os.write(_log_fd[0], (" ".join(str(f) for f in fields) + "\n").encode())


@perdure.durable(name="aio.crash")
async def crash(ctx: AsyncDurableContext, event: dict[str, Any]) -> list[int]:
    """CRASH_STEPS async steps; step ``event["gate_step"]`` blocks while the
    file ``event["gate"]`` exists (the test SIGKILLs the process there)."""
    eid = ctx.execution_id
    gate = Path(event["gate"])
    results = []
    for index in range(CRASH_STEPS):
        name = f"s{index}"

        async def body(_: StepContext, index: int = index, name: str = name) -> int:
            _log("body", eid, name, os.getpid())
            if index == event["gate_step"]:
                while gate.exists():
                    await asyncio.sleep(0.002)
            await asyncio.sleep(0)
            return index * index

        results.append(int(await ctx.step(body, name=name)))
        _log("ack", eid, name, os.getpid())
    return results


def child_main(args: dict[str, Any]) -> int:
    open_log(args["log"])
    _log("proc", os.getpid())
    with perdure.Engine(args["store"], durability="process", workers=2) as engine:
        handles = [
            engine.start("aio.crash", event, execution_id=eid)
            for eid, event in args["executions"].items()
        ]
        for handle in handles:
            handle.result(timeout=args["timeout"])
    return 0


def main(argv: list[str]) -> int:
    mode, args = argv
    if mode != "child":
        raise SystemExit(f"unknown mode {mode!r}")
    try:
        return child_main(json.loads(args))
    except Exception:  # shown to the test through the child's stderr
        traceback.print_exc()
        return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

# endregion


RETRY_FAST = perdure.create_retry_strategy(
    perdure.RetryStrategyConfig(
        max_attempts=4,
        initial_delay=perdure.Duration.from_milliseconds(5),
        jitter_strategy=perdure.JitterStrategy.NONE,
    )
)
block_runs: list[int] = []


@perdure.durable(name="aio.retried_block")
async def retried_block(ctx: AsyncDurableContext, fail_times: int) -> Any:
    async def block(child: AsyncDurableContext, attempt: int) -> str:
        block_runs.append(attempt)
        value = await child.step(lambda _: attempt * 10, name="inner")
        if attempt <= fail_times:
            raise ConnectionError(f"attempt {attempt} fails")
        return f"done at {value}"

    config = perdure.WithRetryConfig(retry_strategy=RETRY_FAST)
    return await perdure.with_retry(ctx, block, config, name="blk")
