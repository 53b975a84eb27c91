"""asyncio workflows (perdure.aio): async steps and every operation as a
coroutine, many executions on one event loop, replay without re-running
step bodies, the same history as the sync API, the caller's event loop
(run_async / start_async / result_async, Engine(event_loop=...)), close()
with async executions in flight, bad input, and a SIGKILL in the middle of
an async workflow. Workflows live in ``tests/async_workflows.py``."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import async_workflows as aw
import perdure
import pytest
from perdure import (
    AsyncCallback,
    AsyncDurableContext,
    Engine,
    ExecutionFailedError,
    ValidationError,
)
from perdure.aio import is_async
from perdure.testing import TimeSkippingClock
from support import store_exists, wait_for

HERE = Path(__file__).resolve().parent
TIMEOUT = 30


@pytest.fixture(autouse=True)
def _reset() -> Any:
    aw.reset()
    yield
    aw.GATE.open = True  # let anything still blocked go
    aw.FLAG.set()
    aw.FLAG.clear()


@pytest.fixture
def engine(store: str) -> Any:
    with Engine(store, durability="none", workers=4, clock=TimeSkippingClock()) as e:
        aw.ENGINE.append(e)
        yield e


def shape(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What the history says, without times, ids of executions or payload details."""
    out = []
    for event in events:
        kind = event["EventType"]
        if kind.startswith("Execution"):
            out.append((kind,))
        else:
            out.append((kind, event.get("SubType"), event.get("Id"), event.get("Name")))
    return out


def step_successes(engine: Engine, execution_id: str) -> list[str]:
    return [e["Name"] for e in engine.history(execution_id) if e["EventType"] == "StepSucceeded"]


# region operations


def test_an_async_workflow_runs_every_operation(engine: Engine) -> None:
    result = engine.run(aw.tour, 4, execution_id="t", timeout=TIMEOUT)
    assert result == {
        "first": 5,
        "second": 10,
        "kid": 110,
        "squares": [1, 4, 9, 16],
        "sides": ["L", "R"],
        "polled": 3,
        "attempts": 3,
    }
    # every step body ran once, the flaky one once per attempt
    assert aw.CALLS == {("t", "first"): 1, ("t", "second"): 1, ("t", "flaky"): 3}
    events = engine.history("t")
    names = [(e["EventType"], e.get("Name")) for e in events]
    assert ("WaitSucceeded", "week") in names
    assert ("ContextSucceeded", "squares") in names and ("ContextSucceeded", "sides") in names
    # the week-long wait, the hour in the child and the polls' delays were skipped
    assert sum(1 for e in events if e["EventType"] == "InvocationCompleted") > 3


def test_callbacks_are_answered_from_outside(engine: Engine) -> None:
    handle = engine.start(aw.approval, "o-1", execution_id="cb")
    wait_for(lambda: "cb" in aw.CALLBACK_IDS, "the approval callback")
    wait_for(lambda: handle.status() == "SUSPENDED", "the workflow to suspend")
    engine.send_callback_success(aw.CALLBACK_IDS["cb"], {"approved": True})
    wait_for(lambda: "cb/ship" in aw.CALLBACK_IDS, "the async submitter")
    engine.send_callback_success(aw.CALLBACK_IDS["cb/ship"], "tracking-7")
    assert handle.result(timeout=TIMEOUT) == {
        "order": "o-1",
        "verdict": {"approved": True},
        "shipped": "tracking-7",
    }
    # a failed answer raises in the workflow, and the workflow fails with it
    failing = engine.start(aw.approval, "o-2", execution_id="cb-2")
    wait_for(lambda: "cb-2" in aw.CALLBACK_IDS, "the second approval callback")
    engine.send_callback_failure(aw.CALLBACK_IDS["cb-2"], "declined", error_type="Declined")
    with pytest.raises(ExecutionFailedError) as info:
        failing.result(timeout=TIMEOUT)
    assert "declined" in str(info.value)


def test_invoke_goes_both_ways_between_sync_and_async(engine: Engine) -> None:
    assert engine.run(aw.async_calls, 3, execution_id="a", timeout=TIMEOUT) == [103, 1003, 6]
    assert engine.run(aw.sync_calls, 5, execution_id="s", timeout=TIMEOUT) == [
        1005,
        [105, 1005, 10],
    ]
    functions = {info.execution_id: info.function for info in engine.list()}
    assert functions["a/1"] == "aio.sync_leaf"
    assert functions["a/2"] == "aio.async_leaf"
    assert functions["a/3"] == "aio.plain_double"
    assert functions["s/2"] == "aio.async_calls"
    assert {info.status for info in engine.list()} == {"SUCCEEDED"}


def test_async_functions_are_recognised() -> None:
    assert is_async(aw.tour) and is_async(perdure.registry.lookup("aio.plain_double"))
    assert is_async(functools.partial(aw.tour))
    assert not is_async(aw.sync_leaf) and not is_async(perdure.registry.lookup("aio.sync_double"))

    class Handler:
        async def __call__(self, ctx: Any, event: Any) -> None: ...

    assert is_async(Handler())


# endregion
# region replay and history


def test_a_restart_replays_stored_results_without_running_step_bodies(store: str) -> None:
    with Engine(store, durability="process", workers=2) as first:
        handle = first.start(aw.counted_workflow, 7, execution_id="r")
        wait_for(lambda: "r" in aw.CALLBACK_IDS, "the callback id")
        wait_for(lambda: handle.status() == "SUSPENDED", "the workflow to suspend")
    assert aw.CALLS == {("r", "a"): 1, ("r", "b"): 1, ("r", "c"): 1}
    with Engine(store, durability="process", workers=2) as second:
        second.send_callback_success(aw.CALLBACK_IDS["r"], 40)
        assert second.get("r").result(timeout=TIMEOUT) == [7, 8, 9, 40]
        # a, b and c came from the journal: their bodies did not run again
        assert aw.CALLS == {("r", "a"): 1, ("r", "b"): 1, ("r", "c"): 1, ("r", "d"): 1}
        assert step_successes(second, "r") == ["a", "b", "c", "publish", "d"]


def test_the_history_is_the_same_as_the_sync_version(engine: Engine) -> None:
    sync_result = engine.run(aw.shape_sync, 1, execution_id="sx", timeout=TIMEOUT)
    async_result = engine.run(aw.shape_async, 1, execution_id="ax", timeout=TIMEOUT)
    assert sync_result == async_result == [2, 4, [10, 20], ["x", "y"], 2, 8, "answered"]
    sync_events = shape(engine.history("sx"))
    assert sync_events == shape(engine.history("ax"))
    kinds = {event[0] for event in sync_events}
    assert {"WaitSucceeded", "ChainedInvokeSucceeded", "CallbackSucceeded"} <= kinds
    # the invoked plain async function is a child execution of each
    assert engine.get("ax/7").result(timeout=TIMEOUT) == 8


def test_bulk_replay_verifies_async_executions(engine: Engine) -> None:
    assert engine.run(aw.versioned, 5, execution_id="v1", timeout=TIMEOUT) == 9
    assert engine.run(aw.tour, 1, execution_id="v2", timeout=TIMEOUT)["first"] == 2
    handle = engine.start(aw.counted_workflow, 1, execution_id="v3")  # stays at its callback
    wait_for(lambda: handle.status() == "SUSPENDED", "v3 to suspend")
    calls = dict(aw.CALLS)
    report = engine.replay(verify=True)
    assert report.ok, report.summary()
    assert (report.executions, report.finished, report.active) == (3, 2, 1)
    assert calls == aw.CALLS  # no step body ran

    @perdure.durable(name="aio.versioned")
    async def changed(ctx: AsyncDurableContext, n: int) -> int:
        a = await ctx.step(lambda _: aw.later(n), name="a")
        return int(await ctx.step(lambda _: aw.later(a + 1), name="b"))  # was a child context

    try:
        report = engine.replay("aio.versioned", verify=True)
    finally:
        perdure.durable(name="aio.versioned")(aw.versioned)
    assert [(d.execution_id, d.operation_id, d.kind) for d in report.divergences] == [
        ("v1", "2", "non-deterministic")
    ]


# endregion
# region one event loop


def test_awaiting_io_in_an_async_step_holds_no_worker(store: str) -> None:
    # 50 step bodies wait on one another on a single worker: with sync steps
    # the first would hold the only worker for ever.
    aw.BARRIER[:] = [aw.Barrier(50)]
    with Engine(store, durability="none", workers=1) as engine:
        handles = [engine.start(aw.meet, None, execution_id=f"m{i}") for i in range(50)]
        assert [h.result(timeout=TIMEOUT) for h in handles] == [50] * 50


def test_run_async_from_an_application_loop(store: str) -> None:
    async def main() -> dict[str, Any]:
        with Engine(store, durability="none") as engine:
            aw.ENGINE.append(engine)
            out: dict[str, Any] = {}
            out["async"] = await engine.run_async(aw.async_calls, 1, timeout=TIMEOUT)
            out["sync"] = await engine.run_async("aio.sync_double", 21, timeout=TIMEOUT)
            handles = await asyncio.gather(
                *(engine.start_async(aw.sync_double, i, execution_id=f"d{i}") for i in range(20))
            )
            out["many"] = await asyncio.gather(*(h.result_async(TIMEOUT) for h in handles))
            # the caller's loop keeps running while it awaits: it sets the
            # flag the workflow's step waits for
            waiting = asyncio.ensure_future(engine.run_async(aw.wait_for_flag, timeout=TIMEOUT))
            await asyncio.sleep(0)
            aw.FLAG.set()
            out["flag"] = await waiting
            # a result that does not come in time
            pending = await engine.start_async(aw.approval, "o", execution_id="never")
            with pytest.raises(TimeoutError):
                await pending.result_async(timeout=0.05)
            with pytest.raises(ExecutionFailedError):
                await engine.run_async(aw.object_result_uncaught, timeout=TIMEOUT)
            return out

    assert asyncio.run(main()) == {
        "async": [101, 1001, 2],
        "sync": 42,
        "many": [2 * i for i in range(20)],
        "flag": "flag seen",
    }


def test_result_async_sees_ends_nobody_announces(store: str) -> None:
    # A cancel, and an end seen only in the store (by an engine that does not
    # run the execution), reach result_async callers too.
    with Engine(store, durability="none") as engine, Engine(store, owner=False) as reader:
        engine.start(aw.approval, "o", execution_id="far")
        wait_for(lambda: "far" in aw.CALLBACK_IDS, "the callback id")

        async def main() -> None:
            waiters = [
                asyncio.ensure_future(reader.get("far").result_async(timeout=TIMEOUT)),
                asyncio.ensure_future(engine.get("far").result_async(timeout=TIMEOUT)),
            ]
            await asyncio.sleep(0.01)
            assert not any(w.done() for w in waiters)
            await asyncio.to_thread(engine.cancel, "far")
            for waiter in waiters:
                with pytest.raises(perdure.ExecutionCancelledError):
                    await waiter

        asyncio.run(main())


def test_async_steps_run_on_the_event_loop_given(store: str) -> None:
    async def main() -> tuple[int, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        engine = Engine(store, durability="none", event_loop=loop)
        try:
            probe = await engine.run_async(aw.loop_probe, execution_id="probe", timeout=TIMEOUT)
            # close() called on that loop, with an async execution inside a step
            handle = await engine.start_async(aw.gated, 1, execution_id="g")
            while not aw.GATE.entered["g"]:
                await asyncio.sleep(0.002)
        finally:
            engine.close(timeout=5)
        # A closed engine's handles refuse; a reader shows where it stopped.
        with Engine(store, owner=False, durability="none") as reader:
            assert reader.get(handle.execution_id).status() in ("PENDING", "SUSPENDED")
        return id(loop), probe

    loop_id, probe = asyncio.run(main())
    assert probe == {"loop": loop_id, "thread": threading.main_thread().name}
    assert aw.GATE.cancelled["g"] == 1  # the step in flight was cancelled, not completed
    aw.GATE.open = True
    with Engine(store, durability="none") as engine:
        assert engine.get("g").result(timeout=TIMEOUT) == 20
    assert aw.CALLS == {("g", "before"): 1, ("g", "blocked"): 2, ("g", "after"): 1}


def test_close_leaves_async_executions_in_flight_resumable(store: str) -> None:
    ids = [f"c{i}" for i in range(5)]
    with Engine(store, durability="process", workers=2) as engine:
        for n, eid in enumerate(ids):
            engine.start(aw.gated, n, execution_id=eid)
        wait_for(lambda: all(aw.GATE.entered[eid] for eid in ids), "every step to block")
        engine.close(timeout=0.2)  # the blocked steps do not finish in time
    with Engine(store, owner=False, durability="process") as reader:
        assert {reader.get(eid).status() for eid in ids} <= {"PENDING", "SUSPENDED"}
    assert not [t for t in threading.enumerate() if t.name == "perdure-asyncio"]
    assert sum(aw.GATE.cancelled.values()) == 5
    aw.GATE.open = True
    with Engine(store, durability="process", workers=2) as engine:
        results = [engine.get(eid).result(timeout=TIMEOUT) for eid in ids]
    assert results == [(n + 1) * 10 for n in range(5)]
    for eid in ids:
        # acknowledged steps did not run again; the cut-off one ran once more
        assert aw.CALLS[(eid, "before")] == 1 and aw.CALLS[(eid, "after")] == 1
        assert aw.CALLS[(eid, "blocked")] == 2


def test_a_cancelled_execution_ends_inside_an_async_step(engine: Engine) -> None:
    handle = engine.start(aw.gated, 3, execution_id="cancel-me")
    wait_for(lambda: aw.GATE.entered["cancel-me"] == 1, "the step to block")
    engine.cancel("cancel-me")
    aw.GATE.open = True  # the step finishes; its commit is refused
    with pytest.raises(perdure.ExecutionCancelledError):
        handle.result(timeout=TIMEOUT)
    wait_for(lambda: not engine._core.is_running(handle._exec_key), "the invocation to end")
    assert step_successes(engine, "cancel-me") == ["before"]
    assert engine.run(aw.sync_double, 4, timeout=TIMEOUT) == 8  # the engine goes on


def test_a_step_left_running_after_its_invocation_ended_cannot_write(engine: Engine) -> None:
    assert engine.run(aw.left_behind, None, execution_id="lb", timeout=TIMEOUT) == "slow"
    # its first run finished after the wait had ended the invocation: that
    # result was refused, and the step ran again in the next invocation
    assert aw.CALLS[("lb", "slow")] == 2
    assert step_successes(engine, "lb") == ["slow"]


# endregion
# region bad input


def test_an_unserializable_async_step_result_names_the_operation(engine: Engine) -> None:
    result = engine.run(aw.object_result, None, execution_id="obj", timeout=TIMEOUT)
    caught = result["caught"]
    assert caught["type"] == "SerDesError" and caught["operation"] == "1"
    assert "operation '1'" in caught["message"] and "execution 'obj'" in caught["message"]
    assert result["after"] == "after"
    assert step_successes(engine, "obj") == ["after"]  # nothing recorded for the refused one
    with pytest.raises(ExecutionFailedError) as info:
        engine.run(aw.object_result_uncaught, None, execution_id="obj-2", timeout=TIMEOUT)
    assert info.value.error_type == "perdure.errors.SerDesError"
    assert "operation '1'" in (info.value.error_message or "")
    # the store is intact and usable
    assert engine.get("obj").result(timeout=TIMEOUT) == result
    assert engine.run(aw.async_leaf, 1, timeout=TIMEOUT) == 1001


@pytest.mark.parametrize("loop", ["a loop", 42, object()])
def test_event_loop_must_be_an_event_loop(store: str, loop: object) -> None:
    with pytest.raises(ValidationError, match="event_loop must be an open asyncio event loop"):
        Engine(store, event_loop=loop)  # type: ignore[arg-type]
    assert not store_exists(store)  # refused before the store was opened


def test_a_closed_event_loop_is_refused(store: str) -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    with pytest.raises(ValidationError, match="closed event loop"):
        Engine(store, event_loop=loop)


def test_the_async_api_types_are_exported() -> None:
    assert perdure.AsyncDurableContext is AsyncDurableContext
    assert issubclass(AsyncDurableContext, perdure.DurableContext)
    assert issubclass(AsyncCallback, perdure.Callback)


# endregion
# region crash


def read_log(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split(" ") for line in path.read_text().splitlines() if line]


def test_sigkill_in_an_async_step_resumes_with_each_step_acknowledged_once(
    tmp_path: Path, store: str
) -> None:
    log, gate, stderr = (tmp_path / n for n in ("log", "gate", "child.stderr"))
    gate.touch()
    executions = {
        "k1": {"gate": str(gate), "gate_step": 3},
        "k2": {"gate": str(gate), "gate_step": 1},
    }
    args = {"store": str(store), "log": str(log), "executions": executions, "timeout": 60}
    with stderr.open("w") as err:
        child = subprocess.Popen(
            [sys.executable, str(HERE / "async_workflows.py"), "child", json.dumps(args)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:

        def inside_gates() -> bool:
            lines = read_log(log)
            return ["body", "k1", "s3", str(child.pid)] in lines and [
                "body",
                "k2",
                "s1",
                str(child.pid),
            ] in lines

        wait_for(lambda: inside_gates() or child.poll() is not None, "both gated step bodies")
        assert child.poll() is None, stderr.read_text()[-3000:]
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    gate.unlink()
    aw.open_log(str(log))
    with Engine(store, durability="process", workers=2) as engine:
        for eid in executions:
            assert engine.get(eid).result(timeout=TIMEOUT) == [i * i for i in range(6)]
        for eid in executions:
            assert step_successes(engine, eid) == [f"s{i}" for i in range(6)]

    lines = read_log(log)
    for eid in executions:
        first_ack: dict[str, int] = {}
        for index, line in enumerate(lines):
            if line[0] == "ack" and line[1] == eid:
                first_ack.setdefault(line[2], index)
        assert sorted(first_ack) == [f"s{i}" for i in range(6)]
        for index, line in enumerate(lines):
            if line[0] == "body" and line[1] == eid:
                # no body ran after its step was acknowledged to the workflow
                assert index < first_ack[line[2]], f"{eid} {line[2]} ran again after its ack"
    gated = {eid: f"s{event['gate_step']}" for eid, event in executions.items()}
    for eid, name in gated.items():
        runs = [line for line in lines if line[:3] == ["body", eid, name]]
        assert len(runs) == 2  # cut off by the kill, run again after it
        assert runs[0][3] == str(child.pid) and runs[1][3] != str(child.pid)


# endregion


def test_with_retry_retries_an_async_block(engine: Engine) -> None:
    aw.block_runs.clear()
    handle = engine.start(aw.retried_block, 2)
    assert handle.result(30) == "done at 30"
    # Attempts 1 and 2 failed and were checkpointed; replays never ran them again.
    assert aw.block_runs.count(1) == aw.block_runs.count(2) == 1
    assert sorted(set(aw.block_runs)) == [1, 2, 3]
    names = [e.get("Name") for e in handle.history() if e["EventType"] == "WaitStarted"]
    assert names == ["blk-backoff-1", "blk-backoff-2"]
    with pytest.raises(perdure.ExecutionFailedError, match="attempt 4 fails"):
        engine.start(aw.retried_block, 9).result(30)
