"""perdure.testing.TimeSkippingClock: a week-long workflow, tested end to
end through the real engine and store, without waiting."""

from __future__ import annotations

import queue
from datetime import UTC, datetime
from typing import Any

import perdure
import pytest
from perdure import (
    CallbackConfig,
    Duration,
    JitterStrategy,
    RetryStrategyConfig,
    StepConfig,
    WaitForCallbackConfig,
    create_retry_strategy,
)
from perdure.testing import TimeSkippingClock
from support import wait_for

TIMEOUT = 30
CALLBACKS: queue.Queue[tuple[str, str]] = queue.Queue()
attempts = {"reserve": 0}

BACKOFF = create_retry_strategy(
    RetryStrategyConfig(
        max_attempts=5,
        initial_delay=Duration.from_minutes(2),
        backoff_rate=2.0,
        jitter_strategy=JitterStrategy.NONE,
    )
)


@perdure.durable(name="clock.place_order")
def place_order(ctx: perdure.DurableContext, order: dict[str, Any]) -> dict[str, Any]:
    def reserve(_step: perdure.StepContext) -> str:
        attempts["reserve"] += 1
        if attempts["reserve"] <= 2:
            raise ConnectionError("inventory service is down")
        return f"reservation-{order['id']}"

    reservation = ctx.step(reserve, name="reserve", config=StepConfig(retry_strategy=BACKOFF))
    approval = ctx.wait_for_callback(
        lambda callback_id, _: CALLBACKS.put(("approval", callback_id)),
        name="approval",
        config=WaitForCallbackConfig(timeout=Duration.from_days(7)),
    )
    ctx.wait(Duration.from_days(2), name="cool-off")
    receipt = ctx.create_callback(
        name="receipt", config=CallbackConfig(timeout=Duration.from_days(1))
    )
    ctx.step(lambda _: CALLBACKS.put(("receipt", receipt.callback_id)), name="ask for receipt")
    try:
        signed = receipt.result()
    except perdure.CallbackTimeoutError:
        signed = "no receipt within a day"
    return {"reservation": reservation, "approved": approval["approved"], "receipt": signed}


@pytest.fixture
def clock() -> TimeSkippingClock:
    attempts["reserve"] = 0
    while not CALLBACKS.empty():
        CALLBACKS.get_nowait()
    return TimeSkippingClock(datetime(2026, 1, 5, 9, 0, tzinfo=UTC))


def next_callback(kind: str) -> str:
    got, callback_id = CALLBACKS.get(timeout=TIMEOUT)
    assert got == kind
    return callback_id


def test_a_week_of_workflow_in_a_test(store: str, clock: TimeSkippingClock) -> None:
    start = clock.now()
    with perdure.Engine(store, durability="none", clock=clock) as engine:
        run = engine.start(place_order, {"id": "o-1"}, execution_id="o-1")
        # Two retries (2 and 4 minutes of backoff) were skipped; the
        # approval's 7-day timeout is not: the clock waits for the test.
        approval = next_callback("approval")
        assert clock.now() - start == Duration.from_minutes(6).to_timedelta()
        clock.advance(Duration.from_days(3))  # the approver takes three days
        engine.send_callback_success(approval, {"approved": True})
        receipt = next_callback("receipt")  # after the 2-day cool-off, skipped
        # The step that hands out the receipt id runs before the execution
        # suspends on it; once suspended, nothing is due but the deadline.
        wait_for(lambda: run.status() == "SUSPENDED", "suspended on the receipt")
        assert clock.now() - start == (
            Duration.from_minutes(6).to_timedelta() + Duration.from_days(5).to_timedelta()
        )
        clock.advance(Duration.from_days(1))  # nobody signs: the callback times out
        assert run.result(TIMEOUT) == {
            "reservation": "reservation-o-1",
            "approved": True,
            "receipt": "no receipt within a day",
        }
        with pytest.raises(perdure.CallbackAlreadyCompletedError, match="timed out"):
            engine.send_callback_success(receipt, "signed too late")
        events = run.history()
    # The history carries the skipped time: the wait ended two days after it began.
    started = next(e for e in events if e["EventType"] == "WaitStarted")
    ended = next(e for e in events if e["EventType"] == "WaitSucceeded")
    assert started["WaitStartedDetails"]["Duration"] == 172_800
    assert ended["EventTimestamp"] == started["WaitStartedDetails"]["ScheduledEndTimestamp"]
    assert [e["EventType"] for e in events].count("StepFailed") == 2
    assert "CallbackTimedOut" in [e["EventType"] for e in events]


def test_without_auto_skip_time_moves_only_when_advanced(
    store: str, clock: TimeSkippingClock
) -> None:
    clock.auto_skip = False
    with perdure.Engine(store, durability="none", clock=clock) as engine:
        run = engine.start(place_order, {"id": "o-2"})
        with pytest.raises(TimeoutError):
            run.result(0.3)  # the first retry's 2 minutes have not passed
        assert attempts["reserve"] == 1
        clock.advance(Duration.from_minutes(2))
        # Attempt 2 fails and arms its retry 4 minutes after *its* failure.
        wait_for(lambda: attempts["reserve"] == 2 and run.status() == "SUSPENDED", "attempt 2")
        clock.advance(Duration.from_minutes(4))
        approval = next_callback("approval")
        assert attempts["reserve"] == 3
        clock.advance(Duration.from_days(8))  # past the approval's 7-day timeout
        with pytest.raises(perdure.ExecutionFailedError, match="CallbackTimeoutError"):
            run.result(TIMEOUT)
        with pytest.raises(perdure.CallbackAlreadyCompletedError, match="already timed out"):
            engine.send_callback_success(approval, {"approved": True})


def test_bad_clock_input() -> None:
    with pytest.raises(perdure.ValidationError, match="timezone-aware"):
        TimeSkippingClock(datetime(2026, 1, 1))
    with pytest.raises(perdure.ValidationError, match="start must be a datetime"):
        TimeSkippingClock(12345)  # type: ignore[arg-type]
    clock = TimeSkippingClock()
    with pytest.raises(perdure.ValidationError, match="advance needs a Duration"):
        clock.advance(5)  # type: ignore[arg-type]
    with pytest.raises(perdure.ValidationError, match="auto_skip must be a bool"):
        clock.auto_skip = "yes"  # type: ignore[assignment]
    with pytest.raises(perdure.ValidationError, match=r"clock must be a perdure\.testing"):
        perdure.Engine("/nonexistent/never", clock=object())  # type: ignore[arg-type]
