"""wait_for_condition: durable polling with a wait strategy, end to end.

Each poll's state is checkpointed (a RETRY record, shown in history as
StepSucceeded with RetryDetails, as the AWS SDK records it), the waits
between polls are durable timers, and a check that fails or runs out of
attempts raises WaitForConditionError, the same on the first run and on
replay. The crash tests SIGKILL child processes between polls and inside a
check (workflows in ``tests/condition_workflows.py``).
"""

from __future__ import annotations

import collections
import json
import math
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import perdure
import pytest
from perdure import (
    DurableContext,
    Duration,
    ExecutionFailedError,
    JitterStrategy,
    JsonSerDes,
    MapConfig,
    PayloadTooLargeError,
    SerDes,
    SerDesContext,
    ValidationError,
    WaitForConditionCheckContext,
    WaitForConditionConfig,
    WaitForConditionDecision,
    WaitForConditionError,
    WaitStrategyConfig,
    create_wait_strategy,
)
from perdure.errors import DurableOperationError
from support import wait_for

HERE = Path(__file__).resolve().parent
WORKFLOWS = HERE / "condition_workflows.py"
TIMEOUT = 30

# Polls made, counted across invocations (and engines) of one test.
calls: collections.Counter[str] = collections.Counter()
# What each invocation of a workflow saw, for comparing first runs and replays.
seen: list[Any] = []


# The real classes, typed loosely, for the tests that misuse them on purpose.
LOOSE_DECISION: Any = WaitForConditionDecision
LOOSE_CONFIG: Any = WaitForConditionConfig


def ms(value: float) -> Duration:
    return Duration.from_milliseconds(value)


def fixed(delay_ms: float, until: int) -> Any:
    """A strategy: stop when the state reaches ``until``, else poll again
    after ``delay_ms``."""

    def strategy(state: int, attempt: int) -> WaitForConditionDecision:
        if state >= until:
            return WaitForConditionDecision.stop_polling()
        return WaitForConditionDecision.continue_waiting(ms(delay_ms))

    return strategy


def count_up(state: int, check_ctx: WaitForConditionCheckContext) -> int:
    calls["poll"] += 1
    calls[f"attempt-{check_ctx.attempt}"] += 1
    return state + 1


@pytest.fixture
def engine(store: str) -> Iterator[perdure.Engine]:
    calls.clear()
    seen.clear()
    with perdure.Engine(store, durability="none", workers=4) as engine:
        yield engine


def event_types(history: list[dict[str, Any]]) -> list[str]:
    return [event["EventType"] for event in history]


def step_events(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in history if e["EventType"].startswith("Step")]


# region decisions, strategies and configs


def test_decision_constructors() -> None:
    go_on = WaitForConditionDecision.continue_waiting(Duration.from_seconds(1.5))
    assert go_on.should_continue is True
    assert go_on.delay == ms(1500)
    assert go_on.delay_seconds == 1.5
    stop = WaitForConditionDecision.stop_polling()
    assert stop.should_continue is False
    assert stop.delay.to_millis() == 0
    assert stop.delay_seconds == 0


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda: WaitForConditionDecision.continue_waiting(Duration()), "longer than zero"),
        (lambda: WaitForConditionDecision.continue_waiting(ms(0)), "longer than zero"),
        (lambda: LOOSE_DECISION.continue_waiting(5), "needs a Duration"),
        (lambda: LOOSE_DECISION.continue_waiting(None), "needs a Duration"),
        (lambda: WaitForConditionDecision.continue_waiting(ms(-5)), "must not be negative"),
        (lambda: WaitForConditionDecision(True, Duration()), "delay must be longer than zero"),
        (lambda: LOOSE_DECISION(1, ms(5)), "should_continue must be a bool"),
        (lambda: LOOSE_DECISION(True, 5), "delay must be a Duration"),
    ],
)
def test_bad_decisions_are_refused(make: Any, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        make()


def test_wait_strategy_config_defaults_match_aws() -> None:
    config: WaitStrategyConfig[Any] = WaitStrategyConfig(lambda state: True)
    assert config.max_attempts == 60
    assert config.initial_delay == Duration.from_seconds(5)
    assert config.max_delay == Duration.from_minutes(5)
    assert config.backoff_rate == 1.5
    assert config.jitter_strategy is JitterStrategy.FULL
    assert config.initial_delay_seconds == 5
    assert config.max_delay_seconds == 300
    # a jitter strategy given by its value is normalised to the enum
    half = WaitStrategyConfig(bool, jitter_strategy="HALF")  # type: ignore[arg-type]
    assert half.jitter_strategy is JitterStrategy.HALF


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"should_continue_polling": 3}, "should_continue_polling must be a callable"),
        ({"should_continue_polling": None}, "should_continue_polling must be a callable"),
        ({"max_attempts": 0}, "max_attempts must be at least 1"),
        ({"max_attempts": -2}, "max_attempts must be at least 1"),
        ({"max_attempts": "3"}, "max_attempts must be an int"),
        ({"max_attempts": True}, "max_attempts must be an int"),
        ({"initial_delay": 5}, "initial_delay must be a Duration"),
        ({"initial_delay": Duration()}, "initial_delay must be longer than zero"),
        ({"max_delay": ms(0)}, "max_delay must be longer than zero"),
        ({"max_delay": "1m"}, "max_delay must be a Duration"),
        ({"backoff_rate": 0.5}, "backoff_rate must be a finite number >= 1"),
        ({"backoff_rate": math.inf}, "backoff_rate must be a finite number >= 1"),
        ({"backoff_rate": math.nan}, "backoff_rate must be a finite number >= 1"),
        ({"backoff_rate": "2"}, "backoff_rate must be a number"),
        ({"backoff_rate": True}, "backoff_rate must be a number"),
        ({"jitter_strategy": "SOME"}, "jitter_strategy must be one of NONE, FULL, HALF"),
    ],
)
def test_bad_wait_strategy_configs_are_refused(kwargs: dict[str, Any], problem: str) -> None:
    fields: dict[str, Any] = {"should_continue_polling": lambda state: True, **kwargs}
    with pytest.raises(ValidationError, match=f"WaitStrategyConfig.{problem}"):
        WaitStrategyConfig(**fields)


def test_negative_durations_are_refused_where_they_are_made() -> None:
    with pytest.raises(ValidationError, match="must not be negative"):
        WaitStrategyConfig(bool, initial_delay=ms(-1))


def test_create_wait_strategy_refuses_other_configs() -> None:
    with pytest.raises(ValidationError, match="needs a WaitStrategyConfig, got NoneType"):
        create_wait_strategy(None)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="got dict"):
        create_wait_strategy({"max_attempts": 3})  # type: ignore[arg-type]


def test_wait_strategy_backs_off_and_caps_without_jitter() -> None:
    strategy = create_wait_strategy(
        WaitStrategyConfig[int](
            lambda state: state < 100,
            max_attempts=10,
            initial_delay=ms(100),
            max_delay=ms(350),
            backoff_rate=2,
            jitter_strategy=JitterStrategy.NONE,
        )
    )
    delays = [strategy(0, attempt).delay.to_millis() for attempt in range(1, 6)]
    assert delays == [100, 200, 350, 350, 350]
    assert all(strategy(0, attempt).should_continue for attempt in range(1, 10))
    assert strategy(100, 1) == WaitForConditionDecision.stop_polling()
    assert strategy.config.max_attempts == 10  # type: ignore[attr-defined]


def test_wait_strategy_keeps_fractional_milliseconds_rounded_up() -> None:
    strategy = create_wait_strategy(
        WaitStrategyConfig(
            bool,
            initial_delay=ms(3),
            backoff_rate=1.5,
            jitter_strategy=JitterStrategy.NONE,
        )
    )
    # 3, 4.5, 6.75 ms: whole milliseconds, rounded up
    assert [strategy(1, n).delay.to_millis() for n in (1, 2, 3)] == [3, 5, 7]


@pytest.mark.parametrize("jitter", [JitterStrategy.FULL, JitterStrategy.HALF])
def test_jittered_delays_stay_in_bounds_and_never_reach_zero(jitter: JitterStrategy) -> None:
    strategy = create_wait_strategy(
        WaitStrategyConfig(bool, max_attempts=1000, initial_delay=ms(1), jitter_strategy=jitter)
    )
    tiny = [strategy(1, 1).delay.to_millis() for _ in range(300)]
    assert set(tiny) == {1}  # a 1 ms base never jitters down to 0
    wide = create_wait_strategy(
        WaitStrategyConfig(bool, initial_delay=ms(1000), max_delay=ms(1000), jitter_strategy=jitter)
    )
    samples = [wide(1, 3).delay.to_millis() for _ in range(300)]
    low = 500 if jitter is JitterStrategy.HALF else 1
    assert all(low <= d <= 1000 for d in samples)
    assert len(set(samples)) > 10  # jitter spreads the delays


def test_wait_strategy_raises_after_max_attempts_while_the_condition_fails() -> None:
    strategy = create_wait_strategy(
        WaitStrategyConfig[str](lambda state: state != "done", max_attempts=3)
    )
    assert strategy("pending", 2).should_continue
    with pytest.raises(WaitForConditionError, match="after 3 polls") as failure:
        strategy("pending", 3)
    assert "max_attempts=3" in str(failure.value)
    # the last poll may still find the condition met
    assert strategy("done", 3).should_continue is False
    once = create_wait_strategy(WaitStrategyConfig[Any](lambda state: True, max_attempts=1))
    with pytest.raises(WaitForConditionError, match="after 1 poll "):
        once(None, 1)


@pytest.mark.parametrize("attempt", [0, -1, 1.0, "1", True])
def test_wait_strategy_refuses_bad_attempt_numbers(attempt: Any) -> None:
    strategy = create_wait_strategy(WaitStrategyConfig(bool))
    with pytest.raises(ValidationError, match="attempt must be an int >= 1"):
        strategy(1, attempt)


def test_wait_strategy_survives_huge_attempt_numbers() -> None:
    strategy = create_wait_strategy(
        WaitStrategyConfig(
            bool,
            max_attempts=10**6,
            initial_delay=ms(5),
            max_delay=ms(40),
            backoff_rate=50,
            jitter_strategy=JitterStrategy.NONE,
        )
    )
    assert strategy(1, 100_000).delay.to_millis() == 40


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"wait_strategy": None}, "wait_strategy must be a callable"),
        ({"wait_strategy": WaitStrategyConfig(bool)}, "wait_strategy must be a callable"),
        ({"serdes": JsonSerDes}, "serdes must be a SerDes instance, got the class JsonSerDes"),
        ({"serdes": "json"}, "serdes must be a SerDes"),
    ],
)
def test_bad_wait_for_condition_configs_are_refused(kwargs: dict[str, Any], problem: str) -> None:
    fields: dict[str, Any] = {"wait_strategy": fixed(1, 1), **kwargs}
    with pytest.raises(ValidationError, match=f"WaitForConditionConfig.{problem}"):
        WaitForConditionConfig(**fields)


def test_wait_for_condition_config_fields() -> None:
    strategy = fixed(1, 1)
    config = WaitForConditionConfig(strategy, initial_state={"a": 1}, serdes=JsonSerDes())
    assert config.wait_strategy is strategy
    assert config.initial_state == {"a": 1}
    assert WaitForConditionConfig(strategy).initial_state is None


# endregion
# region polling end to end


@perdure.durable(name="test_wfc.count_to")
def count_to(ctx: DurableContext, event: dict[str, Any]) -> dict[str, Any]:
    strategy = create_wait_strategy(
        WaitStrategyConfig[dict[str, Any]](
            lambda state: state["n"] < event["target"],
            max_attempts=event.get("max_attempts", 60),
            initial_delay=ms(10),
            backoff_rate=2,
            jitter_strategy=JitterStrategy.NONE,
        )
    )

    def check(state: dict[str, Any], check_ctx: WaitForConditionCheckContext) -> dict[str, Any]:
        calls["poll"] += 1
        seen.append((state, check_ctx.attempt, check_ctx.logger is not None))
        return {"n": state["n"] + 1, "seen": [*state["seen"], check_ctx.attempt]}

    config = WaitForConditionConfig(strategy, initial_state={"n": 0, "seen": []})
    final = ctx.wait_for_condition(check, config, name="count")
    # One more invocation, so the finished wait_for_condition is replayed too.
    ctx.wait(ms(5), name="after")
    return final


def test_condition_met_after_polls_returns_state_and_records_each_poll(
    engine: perdure.Engine,
) -> None:
    handle = engine.start(count_to, {"target": 4})
    assert handle.result(TIMEOUT) == {"n": 4, "seen": [1, 2, 3, 4]}
    # Once per poll, across five invocations: the state came back from the
    # journal each time, never recomputed from the initial state.
    assert calls["poll"] == 4
    assert seen == [
        ({"n": 0, "seen": []}, 1, True),
        ({"n": 1, "seen": [1]}, 2, True),
        ({"n": 2, "seen": [1, 2]}, 3, True),
        ({"n": 3, "seen": [1, 2, 3]}, 4, True),
    ]
    history = handle.history()
    assert event_types(history) == [
        "ExecutionStarted",
        *["StepStarted", "StepSucceeded", "InvocationCompleted"] * 3,
        "StepStarted",
        "StepSucceeded",
        "WaitStarted",
        "InvocationCompleted",
        "WaitSucceeded",
        "InvocationCompleted",
        "ExecutionSucceeded",
    ]
    polls = step_events(history)
    assert {(e["SubType"], e["Id"], e["Name"]) for e in polls} == {
        ("WaitForCondition", "1", "count")
    }
    succeeded = [e["StepSucceededDetails"] for e in polls if e["EventType"] == "StepSucceeded"]
    assert [d["RetryDetails"] for d in succeeded] == [
        {"CurrentAttempt": 1, "NextAttemptDelaySeconds": 0.01},
        {"CurrentAttempt": 2, "NextAttemptDelaySeconds": 0.02},
        {"CurrentAttempt": 3, "NextAttemptDelaySeconds": 0.04},
        {"CurrentAttempt": 4},
    ]
    # every poll's payload is the state it checkpointed
    assert [json.loads(d["Result"]["Payload"]) for d in succeeded] == [
        {"n": n, "seen": list(range(1, n + 1))} for n in range(1, 5)
    ]


def slow_first(state: int, attempt: int) -> WaitForConditionDecision:
    """Stops at 3; the first wait is long enough to watch the suspension."""
    if state >= 3:
        return WaitForConditionDecision.stop_polling()
    return WaitForConditionDecision.continue_waiting(ms(400 if attempt == 1 else 5))


@perdure.durable(name="test_wfc.slow_first")
def slow_first_workflow(ctx: DurableContext, _: Any) -> int:
    config = WaitForConditionConfig(slow_first, initial_state=0)
    return ctx.wait_for_condition(count_up, config, name="slow")


def test_waits_between_polls_are_durable(store: str) -> None:
    calls.clear()
    with perdure.Engine(store, durability="full", workers=2) as engine:
        handle = engine.start(slow_first_workflow, execution_id="slow")
        wait_for(lambda: handle.status() == "SUSPENDED", "the first poll to suspend the execution")
        # Between polls nothing runs: no invocation holds a worker, a durable
        # timer is armed, and the first poll's state is in the journal.
        assert calls["poll"] == 1
        assert not engine._core.is_running(handle._exec_key)
        assert engine._core.pending_timers >= 1
        history = handle.history()
        assert event_types(history) == [
            "ExecutionStarted",
            "StepStarted",
            "StepSucceeded",
            "InvocationCompleted",
        ]
        assert history[2]["StepSucceededDetails"] == {
            "Result": {"Payload": "1"},
            "RetryDetails": {"CurrentAttempt": 1, "NextAttemptDelaySeconds": 0.4},
        }
    # A new engine on the store (nothing of the first one is left in memory)
    # makes the remaining polls from the checkpointed state.
    with perdure.Engine(store, durability="full", workers=2) as engine:
        assert engine.get("slow").result(TIMEOUT) == 3
    assert calls["poll"] == 3
    assert [calls[f"attempt-{n}"] for n in (1, 2, 3)] == [1, 1, 1]


@perdure.durable(name="test_wfc.fan_out")
def fan_out(ctx: DurableContext, targets: list[int]) -> list[int]:
    def branch(child: DurableContext, target: int, index: int, _items: Any) -> int:
        config = WaitForConditionConfig(fixed(5, target), initial_state=0)
        return child.wait_for_condition(count_up, config, name=f"poll-{index}")

    return ctx.map(targets, branch, name="polls", config=MapConfig(max_concurrency=3)).get_results()


def test_polls_in_map_branches_each_keep_their_own_state(engine: perdure.Engine) -> None:
    handle = engine.start(fan_out, [2, 4, 1])
    assert handle.result(TIMEOUT) == [2, 4, 1]
    assert calls["poll"] == 7
    finals = [
        (e["ParentId"], e["Name"], e["StepSucceededDetails"]["RetryDetails"])
        for e in handle.history()
        if e["EventType"] == "StepSucceeded"
        and "NextAttemptDelaySeconds" not in e["StepSucceededDetails"]["RetryDetails"]
    ]
    assert sorted(finals) == [
        ("1-1", "poll-0", {"CurrentAttempt": 2}),
        ("1-2", "poll-1", {"CurrentAttempt": 4}),
        ("1-3", "poll-2", {"CurrentAttempt": 1}),
    ]


# endregion
# region failures


@perdure.durable(name="test_wfc.failing_check")
def failing_check(ctx: DurableContext, _: Any) -> str:
    def check(state: int, check_ctx: WaitForConditionCheckContext) -> int:
        calls["poll"] += 1
        if check_ctx.attempt == 2:
            raise LookupError(f"sensor {state} is gone")
        return state + 1

    config = WaitForConditionConfig(fixed(5, 10), initial_state=0)
    try:
        ctx.wait_for_condition(check, config, name="sensor")
    except WaitForConditionError as exc:
        cause = exc.__cause__
        assert isinstance(cause, DurableOperationError)
        seen.append(
            (
                type(exc).__name__,
                exc.error_type,
                exc.error_message,
                bool(exc.stack_trace),
                type(cause).__name__,
                cause.error_type,
            )
        )
    ctx.wait(ms(5), name="after")  # the next invocation replays the failure
    return "handled"


def test_failing_check_fails_the_operation_and_is_not_rerun_on_replay(
    engine: perdure.Engine,
) -> None:
    handle = engine.start(failing_check)
    assert handle.result(TIMEOUT) == "handled"
    assert calls["poll"] == 2  # poll 1, then the failing poll 2; never again
    expected = (
        "WaitForConditionError",
        "LookupError",
        "sensor 1 is gone",
        True,
        "DurableOperationError",
        "LookupError",
    )
    assert seen == [expected, expected]  # the first run and the replay alike
    history = handle.history()
    assert event_types(step_events(history)) == [
        "StepStarted",
        "StepSucceeded",
        "StepStarted",
        "StepFailed",
    ]
    failed = step_events(history)[-1]
    assert failed["SubType"] == "WaitForCondition"
    details = failed["StepFailedDetails"]
    assert details["RetryDetails"] == {"CurrentAttempt": 2, "NextAttemptDelaySeconds": 0}
    error = details["Error"]["Payload"]
    assert (error["ErrorType"], error["ErrorMessage"]) == ("LookupError", "sensor 1 is gone")
    assert error["StackTrace"]


def test_running_out_of_attempts_raises_wait_for_condition_error(engine: perdure.Engine) -> None:
    handle = engine.start(count_to, {"target": 100, "max_attempts": 3})
    with pytest.raises(ExecutionFailedError) as failure:
        handle.result(TIMEOUT)
    assert failure.value.error_type == "perdure.errors.WaitForConditionError"
    assert "after 3 polls" in (failure.value.error_message or "")
    assert calls["poll"] == 3
    polls = step_events(handle.history())
    assert [
        (e["EventType"], e.get(f"{e['EventType']}Details", {}).get("RetryDetails")) for e in polls
    ] == [
        ("StepStarted", None),
        ("StepSucceeded", {"CurrentAttempt": 1, "NextAttemptDelaySeconds": 0.01}),
        ("StepStarted", None),
        ("StepSucceeded", {"CurrentAttempt": 2, "NextAttemptDelaySeconds": 0.02}),
        ("StepStarted", None),
        ("StepFailed", {"CurrentAttempt": 3, "NextAttemptDelaySeconds": 0}),
    ]
    error = polls[-1]["StepFailedDetails"]["Error"]["Payload"]
    assert error["ErrorType"] == "perdure.errors.WaitForConditionError"
    assert "after 3 polls" in error["ErrorMessage"]


@perdure.durable(name="test_wfc.failing_strategy")
def failing_strategy(ctx: DurableContext, _: Any) -> list[Any]:
    def strategy(state: int, attempt: int) -> WaitForConditionDecision:
        if attempt == 2:
            raise RuntimeError("quota service unavailable")
        return WaitForConditionDecision.continue_waiting(ms(5))

    config = WaitForConditionConfig(strategy, initial_state=0)
    try:
        ctx.wait_for_condition(count_up, config, name="quota")
    except WaitForConditionError as exc:
        return [exc.error_type, exc.error_message]
    return ["no error"]


def test_failing_strategy_fails_the_operation(engine: perdure.Engine) -> None:
    handle = engine.start(failing_strategy)
    assert handle.result(TIMEOUT) == ["RuntimeError", "quota service unavailable"]
    assert calls["poll"] == 2
    assert event_types(step_events(handle.history()))[-1] == "StepFailed"


# endregion
# region serdes, payload limits, determinism


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


class PointSerDes(SerDes[Point]):
    def serialize(self, value: Point, context: SerDesContext) -> str:
        calls["serialize"] += 1
        assert context.operation_id == "1"
        return json.dumps({"x": value.x, "y": value.y})

    def deserialize(self, data: bytes, context: SerDesContext) -> Point:
        calls["deserialize"] += 1
        fields = json.loads(data)
        return Point(fields["x"], fields["y"])


@perdure.durable(name="test_wfc.points")
def points(ctx: DurableContext, use_serdes: bool) -> list[Any]:
    def check(state: Point, check_ctx: WaitForConditionCheckContext) -> Point:
        calls["poll"] += 1
        seen.append((type(state).__name__, state.x))
        return Point(state.x + 1, state.y)

    def strategy(state: Point, attempt: int) -> WaitForConditionDecision:
        if state.x >= 3:
            return WaitForConditionDecision.stop_polling()
        return WaitForConditionDecision.continue_waiting(ms(5))

    serdes = PointSerDes() if use_serdes else None
    config = WaitForConditionConfig(strategy, initial_state=Point(0, 7), serdes=serdes)
    final = ctx.wait_for_condition(check, config, name="walk")
    return [type(final).__name__, final.x, final.y]


def test_custom_serdes_checkpoints_the_state(engine: perdure.Engine) -> None:
    handle = engine.start(points, True)
    assert handle.result(TIMEOUT) == ["Point", 3, 7]
    # each poll received a Point: the first the initial state, the others
    # the state the custom serdes brought back from the journal
    assert seen == [("Point", 0), ("Point", 1), ("Point", 2)]
    assert calls["serialize"] == 3
    payloads = [
        e["StepSucceededDetails"]["Result"]["Payload"]
        for e in handle.history()
        if e["EventType"] == "StepSucceeded"
    ]
    assert [json.loads(p) for p in payloads] == [{"x": n, "y": 7} for n in (1, 2, 3)]


def test_state_the_default_serdes_cannot_encode_fails_clearly(engine: perdure.Engine) -> None:
    handle = engine.start(points, False)
    with pytest.raises(ExecutionFailedError) as failure:
        handle.result(TIMEOUT)
    assert failure.value.error_type == "perdure.errors.SerDesError"
    assert "Point" in str(failure.value)
    # the store is still usable
    assert engine.start(count_to, {"target": 2}).result(TIMEOUT)["n"] == 2


@perdure.durable(name="test_wfc.big_state")
def big_state(ctx: DurableContext, size: int) -> int:
    def check(state: str, check_ctx: WaitForConditionCheckContext) -> str:
        return "x" * size

    config = WaitForConditionConfig(
        lambda state, attempt: WaitForConditionDecision.stop_polling(), initial_state=""
    )
    return len(ctx.wait_for_condition(check, config, name="big"))


def test_state_over_the_payload_limit_is_refused(store: str) -> None:
    with perdure.Engine(store, durability="none", max_payload_size=1000) as engine:
        with pytest.raises(ExecutionFailedError) as failure:
            engine.start(big_state, 5000).result(TIMEOUT)
        assert failure.value.error_type == error_type_of(PayloadTooLargeError)
        assert "wait_for_condition big" in str(failure.value)
        assert engine.start(big_state, 10).result(TIMEOUT) == 10


def error_type_of(cls: type[BaseException]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


mode = {"version": 1}


@perdure.durable(name="test_wfc.evolving")
def evolving(ctx: DurableContext, _: Any) -> str:
    if mode["version"] == 1:

        def check(state: int, check_ctx: WaitForConditionCheckContext) -> int:
            mode["version"] = 2  # the code "changes" before the next invocation
            return state + 1

        ctx.wait_for_condition(
            check, WaitForConditionConfig(fixed(5, 2), initial_state=0), name="probe"
        )
        return "v1"
    ctx.step(lambda _: 1, name="probe")
    return "v2"


def test_changed_code_is_detected_as_non_deterministic(engine: perdure.Engine) -> None:
    mode["version"] = 1
    with pytest.raises(ExecutionFailedError) as failure:
        engine.start(evolving).result(TIMEOUT)
    assert failure.value.error_type == "perdure.errors.NonDeterministicExecutionError"
    message = str(failure.value)
    assert "WaitForCondition 'probe'" in message and "Step 'probe'" in message


# endregion
# region bad input inside a workflow


def _good_config() -> WaitForConditionConfig[int]:
    return WaitForConditionConfig(fixed(1, 2), initial_state=0)


BAD_CALLS: dict[str, Any] = {
    "check not callable": lambda ctx: ctx.wait_for_condition(42, _good_config()),
    "config missing": lambda ctx: ctx.wait_for_condition(count_up),
    "config of the wrong type": lambda ctx: ctx.wait_for_condition(
        count_up, WaitStrategyConfig(bool)
    ),
    "name not a str": lambda ctx: ctx.wait_for_condition(count_up, _good_config(), name=7),
    "strategy returns a bool": lambda ctx: ctx.wait_for_condition(
        count_up, LOOSE_CONFIG(lambda state, attempt: True, initial_state=0)
    ),
    "strategy returns a RetryDecision": lambda ctx: ctx.wait_for_condition(
        count_up,
        LOOSE_CONFIG(lambda state, attempt: perdure.RetryDecision.retry(ms(5)), initial_state=0),
    ),
    "strategy continues with a zero delay": lambda ctx: ctx.wait_for_condition(
        count_up,
        WaitForConditionConfig(
            lambda state, attempt: WaitForConditionDecision.continue_waiting(Duration()),
            initial_state=0,
        ),
    ),
    "strategy continues with a negative delay": lambda ctx: ctx.wait_for_condition(
        count_up,
        WaitForConditionConfig(
            lambda state, attempt: WaitForConditionDecision.continue_waiting(ms(-3)),
            initial_state=0,
        ),
    ),
}
BAD_MESSAGES = {
    "check not callable": "wait_for_condition check needs a callable, got int",
    "config missing": "wait_for_condition needs a WaitForConditionConfig",
    "config of the wrong type": "config must be a WaitForConditionConfig, got WaitStrategyConfig",
    "name not a str": "wait_for_condition name must be a str or None, got int",
    "strategy returns a bool": "returned bool, not a WaitForConditionDecision",
    "strategy returns a RetryDecision": "returned RetryDecision, not a WaitForConditionDecision",
    "strategy continues with a zero delay": "continue_waiting delay must be longer than zero",
    "strategy continues with a negative delay": "Duration milliseconds must not be negative",
}


@perdure.durable(name="test_wfc.bad_input")
def bad_input(ctx: DurableContext, case: str) -> Any:
    return BAD_CALLS[case](ctx)


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_input_in_a_workflow_gives_a_validation_error(
    engine: perdure.Engine, case: str
) -> None:
    with pytest.raises(ExecutionFailedError) as failure:
        engine.start(bad_input, case).result(TIMEOUT)
    assert failure.value.error_type == "perdure.errors.ValidationError"
    assert BAD_MESSAGES[case] in (failure.value.error_message or "")
    # the store is still usable
    assert engine.start(count_to, {"target": 2}).result(TIMEOUT) == {"n": 2, "seen": [1, 2]}


@perdure.durable(name="test_wfc.recovers")
def recovers(ctx: DurableContext, _: Any) -> list[Any]:
    try:
        ctx.wait_for_condition(count_up, None, name="oops")
    except ValidationError as exc:
        message = str(exc)
    return [message, ctx.wait_for_condition(count_up, _good_config(), name="fine")]


def test_refused_call_takes_no_operation_id(engine: perdure.Engine) -> None:
    handle = engine.start(recovers)
    message, value = handle.result(TIMEOUT)
    assert "needs a WaitForConditionConfig" in message and value == 2
    assert {e["Id"] for e in step_events(handle.history())} == {"1"}


# endregion
# region crash and resume (SIGKILL)


def read_log(path: Path) -> list[tuple[str, ...]]:
    if not path.exists():
        return []
    return [tuple(line.split(" ")) for line in path.read_text().splitlines() if line]


def test_sigkill_between_polls_and_inside_a_check_keeps_polls_exactly_once(
    tmp_path: Path,
    store: str,
) -> None:
    log = tmp_path / "side-effects.log"
    gates = tmp_path / "gates"
    gates.mkdir()
    stderr = tmp_path / "children.stderr"
    # c-1 counts to 5; its first wait is long (a kill lands between polls 1
    # and 2) and its third poll blocks (a kill lands inside that check).
    # c-2 counts to 3; its first poll blocks (a kill lands before any poll
    # of it was checkpointed).
    executions = {
        "c-1": {"target": 5, "delay_ms": 5, "delays": {"1": 1000}, "gates": str(gates)},
        "c-2": {"target": 3, "delay_ms": 5, "delays": {}, "gates": str(gates)},
    }
    (gates / "c-1-block-3").touch()
    (gates / "c-2-block-1").touch()

    def spawn(tag: str) -> subprocess.Popen[bytes]:
        args = {
            "store": str(store),
            "log": str(log),
            "executions": executions,
            "results": str(tmp_path / f"results-{tag}.json"),
            "timeout": 60,
        }
        with stderr.open("a") as err:
            return subprocess.Popen(
                [sys.executable, str(WORKFLOWS), "child", json.dumps(args)],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def logged(*fields: object) -> bool:
        want = tuple(str(f) for f in fields)
        return any(line[: len(want)] == want for line in read_log(log))

    def kill(child: subprocess.Popen[bytes]) -> None:
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL, stderr.read_text()[-3000:]

    a = spawn("a")
    try:
        wait_for(lambda: logged("end", "c-1", 1) and logged("begin", "c-2", 1), "a's first polls")
        with perdure.Engine(store, owner=False) as client:
            wait_for(lambda: client.get("c-1").status() == "SUSPENDED", "c-1 to suspend")
            kill(a)  # c-1 is between polls 1 and 2; c-2 is inside its first check
            assert not logged("begin", "c-1", 2), "the kill came after the 1 s wait"
            # poll 1 of c-1 is durable; nothing of c-2's interrupted first poll is
            assert event_types(client.history("c-1")) == [
                "ExecutionStarted",
                "StepStarted",
                "StepSucceeded",
                "InvocationCompleted",
            ]
            assert event_types(client.history("c-2")) == ["ExecutionStarted"]

            (gates / "c-2-block-1").unlink()
            b = spawn("b")
            try:
                wait_for(
                    lambda: (
                        logged("begin", "c-1", 3, 2, b.pid)
                        and client.get("c-2").status() == "SUCCEEDED"
                    ),
                    "b to enter c-1's third check and to finish c-2",
                )
            finally:
                kill(b)  # inside c-1's third check
    finally:
        if a.poll() is None:
            kill(a)

    (gates / "c-1-block-3").unlink()
    c = spawn("c")
    assert c.wait(timeout=60) == 0, stderr.read_text()[-3000:]
    results = json.loads((tmp_path / "results-c.json").read_text())
    assert results == {
        "c-1": ["ok", {"n": 5, "trail": [1, 2, 3, 4, 5]}],
        "c-2": ["ok", {"n": 3, "trail": [1, 2, 3]}],
    }

    lines = read_log(log)
    pids = {"a": str(a.pid), "b": str(b.pid), "c": str(c.pid)}
    for eid, target in (("c-1", 5), ("c-2", 3)):
        ends = [(line[2], line[4]) for line in lines if line[0] == "end" and line[1] == eid]
        # every checkpointed poll's check completed exactly once, in order
        assert [attempt for attempt, _ in ends] == [str(n) for n in range(1, target + 1)]
        begins = [line[2:4] for line in lines if line[0] == "begin" and line[1] == eid]
        # each poll started from the state the previous poll checkpointed
        assert all(int(n) == int(attempt) - 1 for attempt, n in begins)
    c1 = {(line[0], line[2]): line[4] for line in lines if line[1] == "c-1" and line[0] == "end"}
    assert c1 == {
        ("end", "1"): pids["a"],
        ("end", "2"): pids["b"],
        ("end", "3"): pids["c"],
        ("end", "4"): pids["c"],
        ("end", "5"): pids["c"],
    }
    # the check cut off by each kill ran again in the next process, and only it
    c1_begins = [(line[2], line[4]) for line in lines if line[:2] == ("begin", "c-1")]
    assert c1_begins == [
        ("1", pids["a"]),
        ("2", pids["b"]),
        ("3", pids["b"]),
        ("3", pids["c"]),
        ("4", pids["c"]),
        ("5", pids["c"]),
    ]
    c2_begins = [(line[2], line[4]) for line in lines if line[:2] == ("begin", "c-2")]
    assert c2_begins == [("1", pids["a"]), ("1", pids["b"]), ("2", pids["b"]), ("3", pids["b"])]

    with perdure.Engine(store, owner=False) as client:
        for eid, target in (("c-1", 5), ("c-2", 3)):
            polls = [
                e["StepSucceededDetails"]["RetryDetails"]["CurrentAttempt"]
                for e in client.history(eid)
                if e["EventType"] == "StepSucceeded"
            ]
            assert polls == list(range(1, target + 1))
            assert client.get(eid).status() == "SUCCEEDED"


# endregion
