"""The programming model end to end, through a real engine and store."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import perdure
import pytest
from perdure import (
    CallbackConfig,
    DurableContext,
    Duration,
    JitterStrategy,
    RetryDecision,
    RetryStrategyConfig,
    StepConfig,
    StepSemantics,
    WaitForCallbackConfig,
    create_retry_strategy,
)
from perdure.testing import TimeSkippingClock
from support import wait_for

TIMEOUT = 20
runs: Counter[str] = Counter()


def fast_retry(attempts: int = 3, **kwargs: Any) -> Any:
    return create_retry_strategy(
        RetryStrategyConfig(
            max_attempts=attempts,
            initial_delay=Duration.from_milliseconds(5),
            jitter_strategy=JitterStrategy.NONE,
            **kwargs,
        )
    )


@pytest.fixture
def engine(store: str) -> Any:
    runs.clear()
    with perdure.Engine(store, durability="none", workers=4) as engine:
        yield engine


def event_types(history: list[dict[str, Any]]) -> list[str]:
    return [event["EventType"] for event in history]


# -- steps ---------------------------------------------------------------------


@perdure.durable(name="test.steps_and_wait")
def steps_and_wait(ctx: DurableContext, n: int) -> list[int]:
    def body(step: perdure.StepContext) -> int:
        runs[f"step{step.operation_id}"] += 1
        return n * 10

    first = ctx.step(body, name="first")
    ctx.wait(Duration.from_milliseconds(30), name="pause")
    second = ctx.step(lambda _: first + 1, name="second")
    return [first, second]


def test_completed_steps_are_replayed_not_rerun(engine: perdure.Engine) -> None:
    handle = engine.start(steps_and_wait, 4)
    assert handle.result(TIMEOUT) == [40, 41]
    # The wait split the execution into two invocations; the first step ran once.
    assert runs["step1"] == 1
    types = event_types(handle.history())
    assert types == [
        "ExecutionStarted",
        "StepStarted",
        "StepSucceeded",
        "WaitStarted",
        "InvocationCompleted",
        "WaitSucceeded",
        "StepStarted",
        "StepSucceeded",
        "InvocationCompleted",
        "ExecutionSucceeded",
    ]


@perdure.durable_step
def add(step: perdure.StepContext, a: int, b: int) -> int:
    return a + b


@perdure.durable(name="test.durable_step")
def uses_durable_step(ctx: DurableContext, _: Any) -> int:
    return ctx.step(add(2, 3)) + ctx.step(add(1, 1), name="explicit")


def test_durable_step_names_the_step(engine: perdure.Engine) -> None:
    handle = engine.start(uses_durable_step)
    assert handle.result(TIMEOUT) == 7
    names = [e.get("Name") for e in handle.history() if e["EventType"] == "StepSucceeded"]
    assert names == ["add", "explicit"]


@perdure.durable(name="test.extended_types")
def extended_types(ctx: DurableContext, _: Any) -> Any:
    value = {
        "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "day": date(2026, 1, 2),
        "amount": Decimal("12.30"),
        "id": uuid.UUID(int=7),
        "raw": b"\x00\xff",
        "pair": (1, 2),
        "tags": {"a", "b"},
    }
    stored = ctx.step(lambda _: value)
    ctx.wait(Duration.from_milliseconds(5))
    replayed = ctx.step(lambda _: stored)
    return {"same": replayed == value, "value": replayed}


def test_extended_types_round_trip_through_steps(engine: perdure.Engine) -> None:
    result = engine.run(extended_types, timeout=TIMEOUT)
    assert result["same"] is True
    assert type(result["value"]["pair"]) is tuple
    assert type(result["value"]["tags"]) is set


class Opaque:
    def __init__(self, value: int) -> None:
        self.value = value


@perdure.durable(name="test.pickle_on_request")
def pickle_on_request(ctx: DurableContext, _: Any) -> int:
    obj = ctx.step(lambda _: Opaque(5), config=StepConfig(serdes=perdure.PickleSerDes()))
    return obj.value


def test_pickle_only_when_asked(engine: perdure.Engine) -> None:
    assert engine.run(pickle_on_request, timeout=TIMEOUT) == 5


# -- retries -------------------------------------------------------------------


@perdure.durable(name="test.flaky")
def flaky(ctx: DurableContext, fail_times: int) -> str:
    def body(step: perdure.StepContext) -> str:
        runs["flaky"] += 1
        if step.attempt <= fail_times:
            raise ConnectionError(f"attempt {step.attempt} failed")
        return f"ok on {step.attempt}"

    return ctx.step(body, name="flaky", config=StepConfig(retry_strategy=fast_retry(4)))


def test_retry_suspends_and_succeeds(engine: perdure.Engine) -> None:
    handle = engine.start(flaky, 2)
    assert handle.result(TIMEOUT) == "ok on 3"
    history = handle.history()
    steps = [e for e in history if e["EventType"].startswith("Step")]
    assert [e["EventType"] for e in steps] == [
        "StepStarted",
        "StepFailed",
        "StepStarted",
        "StepFailed",
        "StepStarted",
        "StepSucceeded",
    ]
    failed = steps[1]["StepFailedDetails"]
    assert failed["Error"]["Payload"]["ErrorType"] == "ConnectionError"
    assert failed["Error"]["Payload"]["ErrorMessage"] == "attempt 1 failed"
    assert failed["RetryDetails"] == {"CurrentAttempt": 1, "NextAttemptDelaySeconds": 0.005}
    assert steps[5]["StepSucceededDetails"]["RetryDetails"] == {"CurrentAttempt": 3}
    # Each retry ended its invocation.
    assert event_types(history).count("InvocationCompleted") == 3
    assert runs["flaky"] == 3


def test_exhausted_retries_fail_the_execution(engine: perdure.Engine) -> None:
    handle = engine.start(flaky, 10)
    with pytest.raises(perdure.ExecutionFailedError) as failure:
        handle.result(TIMEOUT)
    assert failure.value.error_type == "perdure.errors.StepError"
    assert "attempt 4 failed" in str(failure.value)
    last_step = [e for e in handle.history() if e["EventType"] == "StepFailed"][-1]
    assert last_step["StepFailedDetails"]["RetryDetails"] == {
        "CurrentAttempt": 4,
        "NextAttemptDelaySeconds": 0,
    }


@perdure.durable(name="test.retry_filters")
def retry_filters(ctx: DurableContext, error: str) -> Any:
    def body(step: perdure.StepContext) -> None:
        runs["filtered"] += 1
        raise (KeyError if error == "key" else TimeoutError)("nope")

    strategy = fast_retry(3, retryable_error_types=[TimeoutError])
    try:
        ctx.step(body, config=StepConfig(retry_strategy=strategy))
    except perdure.StepError as exc:
        return [exc.error_type, runs["filtered"]]
    return None


def test_only_retryable_errors_are_retried(engine: perdure.Engine) -> None:
    assert engine.run(retry_filters, "key", timeout=TIMEOUT) == ["KeyError", 1]
    runs.clear()
    assert engine.run(retry_filters, "timeout", timeout=TIMEOUT) == ["TimeoutError", 3]


@perdure.durable(name="test.custom_strategy")
def custom_strategy(ctx: DurableContext, _: Any) -> int:
    seen: list[int] = []

    def strategy(error: BaseException, attempt: int) -> RetryDecision:
        seen.append(attempt)
        return (
            RetryDecision.retry(Duration.from_milliseconds(1))
            if attempt < 2
            else RetryDecision.no_retry()
        )

    def body(step: perdure.StepContext) -> int:
        if step.attempt == 1:
            raise ValueError("first")
        return step.attempt

    return ctx.step(body, config=StepConfig(retry_strategy=strategy))


def test_custom_retry_strategy(engine: perdure.Engine) -> None:
    assert engine.run(custom_strategy, timeout=TIMEOUT) == 2


@perdure.durable(name="test.at_most_once")
def at_most_once(ctx: DurableContext, _: Any) -> str:
    config = StepConfig(
        step_semantics=StepSemantics.AT_MOST_ONCE_PER_RETRY, retry_strategy=fast_retry(1)
    )
    return ctx.step(lambda _: "charged", name="charge", config=config)


def test_at_most_once_records_start_before_running(engine: perdure.Engine) -> None:
    handle = engine.start(at_most_once)
    assert handle.result(TIMEOUT) == "charged"
    journal = engine._core.journal(handle._exec_key)
    # A durable START record precedes the result; an at-least-once step has none.
    assert [(r[0], r[3]) for r in journal if r[1] == 1] == [(1, "1"), (2, "1")]


class Crash(BaseException):
    """Stands in for the process dying in the middle of a step body."""


@perdure.durable(name="test.interrupted")
def interrupted(ctx: DurableContext, _: Any) -> Any:
    def body(_: perdure.StepContext) -> str:
        runs["charge"] += 1
        if runs["charge"] == 1:
            raise Crash()
        return "charged twice"

    config = StepConfig(
        step_semantics=StepSemantics.AT_MOST_ONCE_PER_RETRY, retry_strategy=fast_retry(1)
    )
    try:
        return ctx.step(body, name="charge", config=config)
    except perdure.StepError as exc:
        return exc.error_type


def test_interrupted_at_most_once_attempt_is_not_rerun(store: str) -> None:
    runs.clear()
    with perdure.Engine(store, durability="none") as engine:
        handle = engine.start(interrupted, execution_id="amo")
        for _ in range(2000):
            if runs["charge"] == 1 and not engine._core.is_running(handle._exec_key):
                break
            threading.Event().wait(0.005)
    # A new engine finds the START without a result: the attempt is treated as
    # failed with StepInterruptedError, and the body does not run again.
    with perdure.Engine(store, durability="none") as engine:
        assert engine.get("amo").result(TIMEOUT) == "perdure.errors.StepInterruptedError"
    assert runs["charge"] == 1


# -- waits and recovery --------------------------------------------------------------


@perdure.durable(name="test.long_wait")
def long_wait(ctx: DurableContext, millis: int) -> str:
    ctx.wait(Duration.from_milliseconds(millis), name="nap")
    return "awake"


def test_waiting_execution_is_suspended_and_survives_reopen(store: str) -> None:
    with perdure.Engine(store, durability="full") as engine:
        handle = engine.start(long_wait, 400, execution_id="sleeper")
        for _ in range(400):
            if handle.status() == "SUSPENDED":
                break
            threading.Event().wait(0.005)
        assert handle.status() == "SUSPENDED"
        assert engine._core.pending_timers >= 1
    with perdure.Engine(store, durability="full") as engine:
        handle = engine.get("sleeper")
        assert handle.result(TIMEOUT) == "awake"
        waits = [e for e in handle.history() if e["EventType"].startswith("Wait")]
        assert [e["EventType"] for e in waits] == ["WaitStarted", "WaitSucceeded"]
        assert waits[0]["WaitStartedDetails"]["Duration"] == 0.4


def test_pending_execution_resumes_when_store_reopens(store: str) -> None:
    # An engine that runs nothing: the execution stays pending in the store.
    with perdure.Engine(store, owner=False) as client:
        client.start(steps_and_wait, 1, execution_id="left-behind")
    with perdure.Engine(store) as engine:
        assert engine.get("left-behind").result(TIMEOUT) == [10, 11]


def test_unregistered_function_is_left_pending(store: str) -> None:
    with perdure.Engine(store, owner=False) as client:
        client._core.start("orphan", "test.not_registered_anywhere", b"null")
    with perdure.Engine(store) as engine:
        for _ in range(400):
            if engine.unregistered():
                break
            threading.Event().wait(0.005)
        assert engine.unregistered() == ["orphan"]
        assert engine.get("orphan").status() == "PENDING"


# -- callbacks -----------------------------------------------------------------------

callback_ids: dict[str, str] = {}
callback_seen = threading.Condition()


def remember(key: str, callback_id: str) -> None:
    with callback_seen:
        callback_ids[key] = callback_id
        callback_seen.notify_all()


def wait_for_id(key: str) -> str:
    with callback_seen:
        assert callback_seen.wait_for(lambda: key in callback_ids, TIMEOUT)
        return callback_ids.pop(key)


@perdure.durable(name="test.approval")
def approval(ctx: DurableContext, key: str) -> Any:
    config = WaitForCallbackConfig(
        timeout=Duration.from_milliseconds(300) if key.startswith("timeout") else None,
        heartbeat_timeout=Duration.from_milliseconds(150) if key.startswith("heartbeat") else None,
    )
    try:
        answer = ctx.wait_for_callback(
            lambda cid, _: remember(key, cid), name="approve", config=config
        )
    except perdure.CallbackTimeoutError as exc:
        return ["timeout", str(exc)]
    except perdure.CallbackExternalError as exc:
        return ["failed", exc.error_type, exc.error_message]
    return ["ok", answer]


def test_callback_success(engine: perdure.Engine) -> None:
    handle = engine.start(approval, "ok")
    engine.send_callback_success(wait_for_id("ok"), {"approved": True})
    assert handle.result(TIMEOUT) == ["ok", {"approved": True}]
    types = event_types(handle.history())
    assert types[1:3] == ["ContextStarted", "CallbackStarted"]
    # The answer may land while the submitter step is still running, or after
    # the invocation suspended; either way the context completes after both.
    done = types.index("ContextSucceeded")
    assert types.index("StepStarted") < types.index("StepSucceeded") < done
    assert types.index("CallbackSucceeded") < done
    assert types[-3:] == ["ContextSucceeded", "InvocationCompleted", "ExecutionSucceeded"]


def test_callback_failure(engine: perdure.Engine) -> None:
    handle = engine.start(approval, "fail")
    engine.send_callback_failure(wait_for_id("fail"), "denied", error_type="Rejected")
    # The workflow sees the answerer's error type, as create_callback's
    # result() would show it.
    assert handle.result(TIMEOUT) == ["failed", "Rejected", "denied"]
    failed = next(e for e in handle.history() if e["EventType"] == "CallbackFailed")
    assert failed["CallbackFailedDetails"]["Error"]["Payload"] == {
        "ErrorType": "Rejected",
        "ErrorMessage": "denied",
    }


def test_callback_timeout_is_enforced_by_a_durable_timer(engine: perdure.Engine) -> None:
    handle = engine.start(approval, "timeout")
    callback_id = wait_for_id("timeout")
    assert handle.result(TIMEOUT) == ["timeout", "Callback timed out"]
    with pytest.raises(perdure.CallbackAlreadyCompletedError, match="timed out"):
        engine.send_callback_success(callback_id, 1)
    timed_out = [e for e in handle.history() if e["EventType"] == "CallbackTimedOut"]
    assert (
        timed_out[0]["CallbackTimedOutDetails"]["Error"]["Payload"]["ErrorType"]
        == "Callback.Timeout"
    )


def test_heartbeats_keep_a_callback_alive(store: str) -> None:
    # Time moves only when the test says so, so a slow machine cannot let a
    # 150 ms heartbeat lapse between two sends.
    clock = TimeSkippingClock(auto_skip=False)
    with perdure.Engine(store, durability="none", clock=clock) as engine:
        handle = engine.start(approval, "heartbeat-kept")
        callback_id = wait_for_id("heartbeat-kept")
        wait_for(lambda: handle.status() == "SUSPENDED", "suspended on the callback")
        for _ in range(6):  # 6 x 100 ms = 600 ms, four times the 150 ms heartbeat timeout
            clock.advance(Duration.from_milliseconds(100))
            engine.send_callback_heartbeat(callback_id)
        assert handle.status() == "SUSPENDED"
        clock.advance(Duration.from_milliseconds(200))  # one lapse is enough
        assert handle.result(TIMEOUT) == ["timeout", "Callback timed out on heartbeat"]


def test_missing_heartbeat_times_the_callback_out(engine: perdure.Engine) -> None:
    handle = engine.start(approval, "heartbeat-lost")
    wait_for_id("heartbeat-lost")
    assert handle.result(TIMEOUT) == ["timeout", "Callback timed out on heartbeat"]


@perdure.durable(name="test.create_callback")
def direct_callback(ctx: DurableContext, _: Any) -> Any:
    callback = ctx.create_callback(
        name="direct", config=CallbackConfig(timeout=Duration.from_seconds(60))
    )
    ctx.step(lambda _: remember("direct", callback.callback_id), name="publish")
    return callback.result()


def test_create_callback_and_result(engine: perdure.Engine) -> None:
    handle = engine.start(direct_callback)
    callback_id = wait_for_id("direct")
    assert len(callback_id) == 32 and int(callback_id, 16) >= 0  # 128 random bits
    engine.send_callback_success(callback_id, [1, 2])
    assert handle.result(TIMEOUT) == [1, 2]
    started = next(e for e in handle.history() if e["EventType"] == "CallbackStarted")
    assert started["CallbackStartedDetails"] == {"CallbackId": callback_id, "Timeout": 60}


# -- child contexts, logging, replay state -------------------------------------------


@perdure.durable(name="test.child")
def child_workflow(ctx: DurableContext, _: Any) -> Any:
    def child(c: DurableContext) -> int:
        runs["child-body"] += 1
        return c.step(lambda _: 5, name="inner") + c.step(lambda _: 6, name="inner2")

    total = ctx.run_in_child_context(child, name="kid")
    ctx.wait(Duration.from_milliseconds(5))
    again = ctx.run_in_child_context(child, name="kid")
    return [total, again]


def test_completed_child_is_not_rerun(engine: perdure.Engine) -> None:
    handle = engine.start(child_workflow)
    assert handle.result(TIMEOUT) == [11, 11]
    # Two children ran once each; the replay after the wait ran neither.
    assert runs["child-body"] == 2
    inner = [
        e
        for e in handle.history()
        if e.get("Name") == "inner" and e["EventType"] == "StepSucceeded"
    ]
    assert [(e["Id"], e["ParentId"]) for e in inner] == [("1-1", "1"), ("3-1", "3")]


@perdure.durable(name="test.logging")
def logging_workflow(ctx: DurableContext, _: Any) -> list[bool]:
    states = [ctx.is_replaying()]
    ctx.logger.info("before the wait")
    ctx.step(lambda _: 1)
    ctx.wait(Duration.from_milliseconds(5))
    states.append(ctx.is_replaying())
    ctx.logger.info("after the wait")
    return states


def test_logger_is_silent_while_replaying(
    engine: perdure.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="perdure.workflow"):
        # The result comes from the last invocation: it starts replaying, then runs new code.
        assert engine.run(logging_workflow, timeout=TIMEOUT) == [True, False]
    messages = [r.getMessage() for r in caplog.records if r.name == "perdure.workflow"]
    assert messages == ["before the wait", "after the wait"]


# -- determinism ---------------------------------------------------------------------


def test_changed_code_raises_non_deterministic_error(store: str) -> None:

    @perdure.durable(name="test.evolving")
    def version_one(ctx: DurableContext, _: Any) -> str:
        ctx.step(lambda _: 1, name="charge")
        ctx.wait(Duration.from_milliseconds(200))
        return "v1"

    with perdure.Engine(store) as engine:
        handle = engine.start(version_one, execution_id="evolving")
        for _ in range(400):
            if handle.status() == "SUSPENDED":
                break
            threading.Event().wait(0.005)

    @perdure.durable(name="test.evolving")
    def version_two(ctx: DurableContext, _: Any) -> str:
        ctx.step(lambda _: 1, name="refund")
        ctx.wait(Duration.from_milliseconds(200))
        return "v2"

    with perdure.Engine(store) as engine, pytest.raises(perdure.ExecutionFailedError) as failure:
        engine.get("evolving").result(TIMEOUT)
    assert failure.value.error_type == "perdure.errors.NonDeterministicExecutionError"
    message = str(failure.value)
    assert "'evolving'" in message and "operation 1" in message
    assert "Step 'charge'" in message and "Step 'refund'" in message


# -- engine API ----------------------------------------------------------------------


def test_start_is_idempotent_by_execution_id(engine: perdure.Engine) -> None:
    first = engine.start(steps_and_wait, 1, execution_id="once")
    second = engine.start(steps_and_wait, 99, execution_id="once")
    assert first.result(TIMEOUT) == second.result(TIMEOUT) == [10, 11]
    with pytest.raises(perdure.ValidationError, match="already belongs to function"):
        engine.start(long_wait, 1, execution_id="once")


def test_get_list_and_status_filters(engine: perdure.Engine) -> None:
    engine.run(steps_and_wait, 1, execution_id="done-1", timeout=TIMEOUT)
    waiting = engine.start(long_wait, 60_000, execution_id="waiting-1")
    for _ in range(400):
        if waiting.status() == "SUSPENDED":
            break
        threading.Event().wait(0.005)
    assert [i.execution_id for i in engine.list()] == ["done-1", "waiting-1"]
    assert [i.execution_id for i in engine.list(status="SUSPENDED")] == ["waiting-1"]
    assert [i.execution_id for i in engine.list(status="SUCCEEDED")] == ["done-1"]
    assert [i.execution_id for i in engine.list(name="test.long_wait")] == ["waiting-1"]
    assert len(engine.list(limit=1)) == 1
    with pytest.raises(perdure.ExecutionNotFoundError):
        engine.get("missing")
    with pytest.raises(perdure.ValidationError, match="status must be one of"):
        engine.list(status="SLEEPY")


def test_cancel_ends_execution_and_refuses_late_callbacks(engine: perdure.Engine) -> None:
    handle = engine.start(approval, "cancel-me")
    callback_id = wait_for_id("cancel-me")
    engine.cancel(handle.execution_id)
    with pytest.raises(perdure.ExecutionCancelledError):
        handle.result(TIMEOUT)
    assert handle.status() == "CANCELLED"
    with pytest.raises(perdure.ExecutionFinishedError, match="CANCELLED"):
        engine.send_callback_success(callback_id, 1)
    assert event_types(handle.history())[-1] == "ExecutionStopped"
    with pytest.raises(perdure.ExecutionFinishedError):
        engine.cancel(handle.execution_id)


def test_result_timeout(engine: perdure.Engine) -> None:
    handle = engine.start(long_wait, 60_000)
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.05)


def test_history_event_shape(engine: perdure.Engine) -> None:
    handle = engine.start(steps_and_wait, 2)
    handle.result(TIMEOUT)
    history = handle.history()
    assert [e["EventId"] for e in history] == list(range(1, len(history) + 1))
    for event in history:
        details = f"{event['EventType']}Details"
        assert details in event and isinstance(event[details], dict)
        assert event["EventTimestamp"].endswith("Z")
    started = history[0]
    assert started["ExecutionStartedDetails"] == {"Input": {"Payload": "2"}}
    assert "ParentId" not in started
    assert history[-1]["ExecutionSucceededDetails"] == {"Result": {"Payload": "[20,21]"}}


def test_two_engines_in_one_process_share_a_store(store: str) -> None:
    first = perdure.Engine(store, workers=2)
    second = perdure.Engine(store, workers=2)
    try:
        assert first.owner_id != second.owner_id
        release = threading.Event()

        @perdure.durable(name="test_engine.two_engines")
        def held(ctx: perdure.DurableContext, _: None) -> str:
            ctx.step(lambda _: release.wait(30), name="hold")
            return "done"

        handle = first.start(held, None, execution_id="shared-1")
        wait_for(lambda: first._core.is_running(handle._exec_key), "the first engine to run it")
        assert second._core.lease(handle._exec_key) == first.owner_id
        release.set()
        assert second.get("shared-1").result(timeout=30) == "done"
        with perdure.Engine(store, owner=False) as client:
            assert [i.execution_id for i in client.list()] == ["shared-1"]
    finally:
        release.set()
        first.close()
        second.close()


def test_closed_engine_refuses_work(store: str) -> None:
    engine = perdure.Engine(store)
    engine.close()
    with pytest.raises(perdure.EngineClosedError):
        engine.start(steps_and_wait, 1)


def test_the_engine_names_its_store(store: str, store_kind: str) -> None:
    with perdure.Engine(store, owner=False) as engine:
        assert engine.store == store
        assert engine.path == (Path(store) if store_kind == "lmdb" else None)


@pytest.mark.pg_only("a directory has no password to hide")
def test_a_password_in_the_store_url_is_never_shown(store: str) -> None:
    # The test server trusts its socket, so any password opens it.
    user, rest = store.split("://", 1)[1].split("@", 1)
    secret = f"postgresql://{user}:s3cret-word@{rest}"
    engine = perdure.Engine(secret, owner=False)
    engine.close()
    assert engine.store == f"postgresql://{user}:***@{rest}"
    with pytest.raises(perdure.EngineClosedError) as info:
        engine.list()
    assert "s3cret-word" not in str(info.value) and "***" in str(info.value)
