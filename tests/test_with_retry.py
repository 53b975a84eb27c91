"""with_retry: a whole block of durable code retried with a retry strategy.

Each attempt runs in its own child context, so a failed attempt is
checkpointed as failed and never run again on replay, its completed steps
are not re-run, and the backoff between attempts is a durable wait.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import perdure
import pytest
from perdure import (
    ChildConfig,
    ChildContextError,
    DurableContext,
    Duration,
    ExecutionFailedError,
    JitterStrategy,
    RetryDecision,
    RetryStrategyConfig,
    StepConfig,
    StepError,
    ValidationError,
    WithRetryConfig,
    create_retry_strategy,
    with_retry,
)

TIMEOUT = 30

# Side effects, counted across invocations of one test.
runs: collections.Counter[str] = collections.Counter()
NO_STEP_RETRY = StepConfig(retry_strategy=perdure.RetryPresets.none())


def fast_retry(attempts: int, **kwargs: Any) -> Any:
    """Backoff of 5, 10, 20 ... ms, no jitter."""
    return create_retry_strategy(
        RetryStrategyConfig(
            max_attempts=attempts,
            initial_delay=Duration.from_milliseconds(5),
            backoff_rate=2,
            jitter_strategy=JitterStrategy.NONE,
            **kwargs,
        )
    )


@pytest.fixture
def engine(store: str) -> Iterator[perdure.Engine]:
    runs.clear()
    with perdure.Engine(store, durability="none", workers=4) as engine:
        yield engine


def event_types(history: list[dict[str, Any]]) -> list[str]:
    return [event["EventType"] for event in history]


# region retrying a block


@perdure.durable(name="test_with_retry.transfer")
def transfer(ctx: DurableContext, failures: int) -> dict[str, Any]:
    def block(child: DurableContext, attempt: int) -> dict[str, Any]:
        runs[f"enter-{attempt}"] += 1

        def reserve(_: perdure.StepContext) -> str:
            runs["reserve"] += 1
            return f"hold-{attempt}"

        def commit(_: perdure.StepContext) -> str:
            runs["commit"] += 1
            if attempt <= failures:
                raise ConnectionError(f"bank unreachable on attempt {attempt}")
            return "committed"

        hold = child.step(reserve, name="reserve")
        done = child.step(commit, name="commit", config=NO_STEP_RETRY)
        return {"attempt": attempt, "hold": hold, "done": done}

    config = WithRetryConfig(retry_strategy=fast_retry(5))
    result = with_retry(ctx, block, config=config, name="transfer")
    ctx.wait(Duration.from_milliseconds(5), name="after")  # replays the whole block once more
    return result


def test_block_succeeds_after_failures(engine: perdure.Engine) -> None:
    handle = engine.start(transfer, 2)
    assert handle.result(TIMEOUT) == {"attempt": 3, "hold": "hold-3", "done": "committed"}
    # Each attempt's body ran once, over five invocations: a failed attempt
    # is replayed from its record, and so is the one that succeeded.
    assert runs == {
        "enter-1": 1,
        "enter-2": 1,
        "enter-3": 1,
        "reserve": 3,
        "commit": 3,
    }
    history = handle.history()
    contexts = [
        (e["EventType"], e["Id"], e["Name"])
        for e in history
        if e["EventType"].startswith("Context")
    ]
    assert contexts == [
        ("ContextStarted", "1", "transfer attempt 1"),
        ("ContextFailed", "1", "transfer attempt 1"),
        ("ContextStarted", "3", "transfer attempt 2"),
        ("ContextFailed", "3", "transfer attempt 2"),
        ("ContextStarted", "5", "transfer attempt 3"),
        ("ContextSucceeded", "5", "transfer attempt 3"),
    ]
    waits = [
        (e["Id"], e["Name"], e["WaitStartedDetails"]["Duration"])
        for e in history
        if e["EventType"] == "WaitStarted"
    ]
    assert waits == [
        ("2", "transfer-backoff-1", 0.005),
        ("4", "transfer-backoff-2", 0.01),
        ("6", "after", 0.005),
    ]
    failed = [e for e in history if e["EventType"] == "ContextFailed"]
    error = failed[0]["ContextFailedDetails"]["Error"]["Payload"]
    assert error["ErrorType"] == "perdure.errors.StepError"
    assert "bank unreachable on attempt 1" in error["ErrorMessage"]
    assert all(e.get("ParentId") in (None, "1", "3", "5") for e in history)


@perdure.durable(name="test_with_retry.pausing")
def pausing(ctx: DurableContext, _: Any) -> list[Any]:
    def block(child: DurableContext, attempt: int) -> list[Any]:
        runs[f"enter-{attempt}"] += 1
        first = child.step(lambda _: runs.update(["first"]) or attempt * 10, name="first")
        child.wait(Duration.from_milliseconds(5), name="pause")  # suspends inside the attempt

        def second(_: perdure.StepContext) -> int:
            runs["second"] += 1
            if attempt == 1:
                raise ValueError("second step fails on the first attempt")
            return first + 1

        return [attempt, first, child.step(second, name="second", config=NO_STEP_RETRY)]

    return with_retry(ctx, block, WithRetryConfig(retry_strategy=fast_retry(3)), name="pausing")


def test_completed_steps_inside_an_attempt_are_not_rerun(engine: perdure.Engine) -> None:
    handle = engine.start(pausing)
    assert handle.result(TIMEOUT) == [2, 20, 21]
    # Each attempt's body ran twice (once before its wait, once after it,
    # replaying), but its completed first step ran only once per attempt.
    assert runs["enter-1"] == 2 and runs["enter-2"] == 2
    assert runs["first"] == 2
    assert runs["second"] == 2
    names = [e.get("Name") for e in handle.history() if e["EventType"] == "StepSucceeded"]
    assert names == ["first", "first", "second"]


@perdure.durable(name="test_with_retry.hopeless")
def hopeless(ctx: DurableContext, event: dict[str, Any]) -> list[Any]:
    def block(child: DurableContext, attempt: int) -> None:
        runs["attempts"] += 1
        raise KeyError(f"missing on attempt {attempt}")

    config = WithRetryConfig(retry_strategy=fast_retry(event["max_attempts"]))
    try:
        with_retry(ctx, block, config, name="lookup")
    except ChildContextError as exc:
        return [type(exc).__name__, exc.error_type, exc.error_message]
    return ["no error"]


def test_gives_up_after_max_attempts_with_the_original_error_type(
    engine: perdure.Engine,
) -> None:
    handle = engine.start(hopeless, {"max_attempts": 3})
    assert handle.result(TIMEOUT) == [
        "ChildContextError",
        "KeyError",
        "'missing on attempt 3'",
    ]
    assert runs["attempts"] == 3
    history = handle.history()
    assert [e["Name"] for e in history if e["EventType"] == "ContextFailed"] == [
        "lookup attempt 1",
        "lookup attempt 2",
        "lookup attempt 3",
    ]
    assert [e["Name"] for e in history if e["EventType"] == "WaitSucceeded"] == [
        "lookup-backoff-1",
        "lookup-backoff-2",
    ]


@perdure.durable(name="test_with_retry.uncaught")
def uncaught(ctx: DurableContext, _: Any) -> None:
    def block(child: DurableContext, attempt: int) -> None:
        runs["attempts"] += 1
        raise KeyError("gone")

    with_retry(ctx, block, WithRetryConfig(retry_strategy=fast_retry(2)))


def test_uncaught_failure_fails_the_execution(engine: perdure.Engine) -> None:
    with pytest.raises(ExecutionFailedError) as failure:
        engine.start(uncaught).result(TIMEOUT)
    assert failure.value.error_type == "perdure.errors.ChildContextError"
    assert runs["attempts"] == 2
    # unnamed: the default label names the attempts and the backoff
    history = engine.get(failure.value.execution_id or "").history()
    assert [e["Name"] for e in history if e["EventType"] == "ContextStarted"] == [
        "with_retry attempt 1",
        "with_retry attempt 2",
    ]
    assert [e["Name"] for e in history if e["EventType"] == "WaitStarted"] == [
        "with_retry-backoff-1"
    ]


@perdure.durable(name="test_with_retry.filtered")
def filtered(ctx: DurableContext, kind: str) -> list[Any]:
    def block(child: DurableContext, attempt: int) -> int:
        runs["attempts"] += 1
        if attempt == 1:
            raise ConnectionError("flaky") if kind == "transient" else ValueError("bad input")
        return attempt

    strategy = fast_retry(4, retryable_error_types=[ConnectionError])
    try:
        return ["ok", with_retry(ctx, block, WithRetryConfig(retry_strategy=strategy))]
    except ChildContextError as exc:
        return ["error", exc.error_type]


def test_retry_strategy_filters_see_the_block_error_type(engine: perdure.Engine) -> None:
    assert engine.start(filtered, "transient").result(TIMEOUT) == ["ok", 2]
    assert runs["attempts"] == 2
    runs.clear()
    assert engine.start(filtered, "permanent").result(TIMEOUT) == ["error", "ValueError"]
    assert runs["attempts"] == 1


@perdure.durable(name="test_with_retry.zero_delay")
def zero_delay(ctx: DurableContext, _: Any) -> int:
    def block(child: DurableContext, attempt: int) -> int:
        if attempt < 3:
            raise RuntimeError("again")
        return attempt

    def strategy(error: BaseException, attempt: int) -> RetryDecision:
        return RetryDecision.retry(Duration())

    return with_retry(ctx, block, WithRetryConfig(retry_strategy=strategy), name="z")


def test_zero_delay_retries_without_a_wait(engine: perdure.Engine) -> None:
    handle = engine.start(zero_delay)
    assert handle.result(TIMEOUT) == 3
    types = event_types(handle.history())
    assert not any(t.startswith("Wait") for t in types)
    assert types.count("InvocationCompleted") == 1


@perdure.durable(name="test_with_retry.unwrapped")
def unwrapped(ctx: DurableContext, give_up: bool) -> list[Any]:
    def block(inner: DurableContext, attempt: int) -> int:
        assert inner is ctx
        runs["attempts"] += 1

        def call(_: perdure.StepContext) -> int:
            if give_up or attempt == 1:
                raise OSError(f"attempt {attempt} failed")
            return attempt

        return inner.step(call, name=f"call-{attempt}", config=NO_STEP_RETRY)

    config = WithRetryConfig(retry_strategy=fast_retry(2), wrap_with_run_in_child_context=False)
    try:
        return ["ok", with_retry(ctx, block, config, name="direct")]
    except StepError as exc:  # the block's own error, not a ChildContextError
        return ["error", type(exc).__name__, exc.error_type]


def test_without_child_contexts_the_block_runs_in_the_callers_context(
    engine: perdure.Engine,
) -> None:
    handle = engine.start(unwrapped, False)
    assert handle.result(TIMEOUT) == ["ok", 2]
    steps = [
        (e["EventType"], e["Id"], e.get("ParentId"), e["Name"])
        for e in handle.history()
        if e["EventType"] in ("StepFailed", "StepSucceeded", "WaitStarted")
    ]
    assert steps == [
        ("StepFailed", "1", None, "call-1"),
        ("WaitStarted", "2", None, "direct-backoff-1"),
        ("StepSucceeded", "3", None, "call-2"),
    ]
    assert engine.start(unwrapped, True).result(TIMEOUT) == ["error", "StepError", "OSError"]


class CountingSerDes(perdure.SerDes[Any]):
    def serialize(self, value: Any, context: perdure.SerDesContext) -> str:
        runs["serialize"] += 1
        return f"n={value}"

    def deserialize(self, data: bytes, context: perdure.SerDesContext) -> Any:
        runs["deserialize"] += 1
        return int(data.decode().removeprefix("n="))


@perdure.durable(name="test_with_retry.child_config")
def child_config(ctx: DurableContext, _: Any) -> int:
    def block(child: DurableContext, attempt: int) -> int:
        if attempt == 1:
            raise RuntimeError("first attempt fails")
        return attempt * 7

    config = WithRetryConfig(
        retry_strategy=fast_retry(2), child_context_config=ChildConfig(serdes=CountingSerDes())
    )
    return with_retry(ctx, block, config, name="sub")


def test_child_context_config_applies_to_each_attempt(engine: perdure.Engine) -> None:
    handle = engine.start(child_config)
    assert handle.result(TIMEOUT) == 14
    # the successful attempt's result went through the configured serdes
    assert runs["serialize"] == 1
    succeeded = [e for e in handle.history() if e["EventType"] == "ContextSucceeded"]
    assert [(e["Name"], e["ContextSucceededDetails"]["Result"]["Payload"]) for e in succeeded] == [
        ("sub attempt 2", "n=14")
    ]


# endregion
# region bad input


def test_with_retry_config_defaults() -> None:
    config = WithRetryConfig()
    assert config.retry_strategy is None
    assert config.wrap_with_run_in_child_context is True
    assert config.child_context_config is None


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"retry_strategy": 3}, "retry_strategy must be a callable"),
        ({"retry_strategy": RetryStrategyConfig()}, "retry_strategy must be a callable"),
        ({"wrap_with_run_in_child_context": "yes"}, "wrap_with_run_in_child_context must be a"),
        ({"wrap_with_run_in_child_context": 1}, "wrap_with_run_in_child_context must be a"),
        ({"child_context_config": StepConfig()}, "child_context_config must be a ChildConfig"),
    ],
)
def test_bad_with_retry_configs_are_refused(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=f"WithRetryConfig.{problem}"):
        WithRetryConfig(**kwargs)


def test_with_retry_refuses_something_other_than_a_context() -> None:
    with pytest.raises(ValidationError, match="with_retry ctx must be a DurableContext, got"):
        with_retry(object(), lambda child, attempt: 1)  # type: ignore[arg-type]


# with_retry and its config, typed loosely, for misusing them on purpose.
loose_with_retry: Any = with_retry
LooseConfig: Any = WithRetryConfig
BAD_CALLS: dict[str, Any] = {
    "func": lambda ctx: loose_with_retry(ctx, "not callable"),
    "config": lambda ctx: loose_with_retry(ctx, lambda c, a: 1, config=RetryStrategyConfig()),
    "name": lambda ctx: loose_with_retry(ctx, lambda c, a: 1, name=3),
    "strategy result": lambda ctx: loose_with_retry(
        ctx,
        lambda c, a: 1 / 0,
        LooseConfig(retry_strategy=lambda error, attempt: True),
    ),
}
BAD_MESSAGES = {
    "func": "with_retry func needs a callable, got str",
    "config": "with_retry config must be a WithRetryConfig, got RetryStrategyConfig",
    "name": "with_retry name must be a str or None, got int",
    "strategy result": "retry strategy of with_retry with_retry returned bool, not a RetryDecision",
}


@perdure.durable(name="test_with_retry.bad_input")
def bad_input(ctx: DurableContext, case: str) -> Any:
    return BAD_CALLS[case](ctx)


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_arguments_give_a_validation_error(engine: perdure.Engine, case: str) -> None:
    with pytest.raises(ExecutionFailedError) as failure:
        engine.start(bad_input, case).result(TIMEOUT)
    assert failure.value.error_type == "perdure.errors.ValidationError"
    assert BAD_MESSAGES[case] in (failure.value.error_message or "")
    # the store is still usable
    assert engine.start(hopeless, {"max_attempts": 1}).result(TIMEOUT)[0] == "ChildContextError"


# endregion
# region non-determinism

code_version = {"version": 1}


@perdure.durable(name="test_with_retry.evolving")
def evolving(ctx: DurableContext, _: Any) -> str:
    def block(child: DurableContext, attempt: int) -> str:
        runs["attempts"] += 1
        if code_version["version"] == 1:
            child.step(lambda _: 1, name="a")
            code_version["version"] = 2  # the next invocation runs "new code"
            child.wait(Duration.from_milliseconds(5))
        else:
            child.step(lambda _: 1, name="b")
        return "done"

    return with_retry(ctx, block, WithRetryConfig(retry_strategy=fast_retry(3)), name="ev")


def test_non_determinism_inside_an_attempt_is_not_retried(engine: perdure.Engine) -> None:
    code_version["version"] = 1
    with pytest.raises(ExecutionFailedError) as failure:
        engine.start(evolving).result(TIMEOUT)
    # Not the attempt's failure: the execution fails with it, nothing recorded.
    assert failure.value.error_type == "perdure.errors.NonDeterministicExecutionError"
    assert "the workflow code changed" in str(failure.value)
    assert runs["attempts"] == 2  # attempt 1, then its replay; no attempt 2
    started = [e.get("Name") for e in engine.get(failure.value.execution_id or "").history()]
    assert "ev attempt 2" not in started


@perdure.durable(name="test_with_retry.nd_child")
def nd_child(ctx: DurableContext, _: Any) -> Any:
    def body(child: DurableContext) -> str:
        if code_version["version"] == 1:
            code_version["version"] = 2
            child.wait(Duration.from_milliseconds(5))
        else:
            child.step(lambda _: 1)
        return "done"

    try:
        return ctx.run_in_child_context(body, name="kid")
    except ChildContextError as exc:
        return ["caught", exc.error_type]


def test_non_determinism_inside_a_child_context_fails_the_execution(
    engine: perdure.Engine,
) -> None:
    code_version["version"] = 1
    handle = engine.start(nd_child)
    with pytest.raises(ExecutionFailedError) as failure:
        handle.result(TIMEOUT)
    assert failure.value.error_type == "perdure.errors.NonDeterministicExecutionError"
    assert "ContextFailed" not in event_types(handle.history())


# endregion
