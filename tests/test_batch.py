"""ctx.map and ctx.parallel: concurrent branches on the executor, completion
policies, suspension and replay, nesting, validation."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from typing import Any

import perdure
import pytest
from perdure import (
    BatchItemStatus,
    CompletionConfig,
    CompletionReason,
    DurableContext,
    Duration,
    JitterStrategy,
    MapConfig,
    NestingType,
    ParallelConfig,
    RetryStrategyConfig,
    StepConfig,
    create_retry_strategy,
)

runs: Counter[str] = Counter()
_lock = threading.Lock()
_active = 0
_most_active = 0
NO_RETRY = StepConfig(
    retry_strategy=create_retry_strategy(
        RetryStrategyConfig(max_attempts=1, jitter_strategy=JitterStrategy.NONE)
    )
)


@pytest.fixture
def engine(store: str) -> Any:
    global _active, _most_active
    runs.clear()
    _active = _most_active = 0
    with perdure.Engine(store, durability="none", workers=4) as engine:
        yield engine


def _tracked(key: str, value: Any) -> Any:
    global _active, _most_active
    with _lock:
        runs[key] += 1
        _active += 1
        _most_active = max(_most_active, _active)
    time.sleep(0.01)  # releases the GIL, so branches overlap
    with _lock:
        _active -= 1
    return value


@perdure.durable(name="test_batch.squares")
def squares(ctx: DurableContext, args: dict[str, Any]) -> Any:
    def item(c: DurableContext, x: int, index: int, items: list[int]) -> int:
        value = c.step(lambda _: _tracked(f"item-{index}", x * x), name="square")
        if x == args.get("wait_on"):
            c.wait(Duration.from_milliseconds(args.get("wait_ms", 20)))
        return value

    config = MapConfig(max_concurrency=args.get("max_concurrency"))
    result = ctx.map(args["items"], item, name="squares", config=config)
    return [result.get_results(), result.completion_reason.value, result.total_count]


def test_map_returns_results_in_index_order(engine: perdure.Engine) -> None:
    handle = engine.start(squares, {"items": list(range(8)), "max_concurrency": 3})
    assert handle.result(30) == [[x * x for x in range(8)], "ALL_COMPLETED", 8]
    assert 1 < _most_active <= 3
    events = handle.history()
    map_events = [e for e in events if e.get("SubType") == "Map"]
    assert [e["EventType"] for e in map_events] == ["ContextStarted", "ContextSucceeded"]
    iterations = {e["Id"]: e["Name"] for e in events if e.get("SubType") == "MapIteration"}
    assert iterations == {f"1-{i + 1}": f"map-item-{i}" for i in range(8)}
    assert all(e["ParentId"] == "1" for e in events if e.get("SubType") == "MapIteration")


def test_a_waiting_branch_suspends_the_batch_and_others_are_not_rerun(
    engine: perdure.Engine,
) -> None:
    handle = engine.start(squares, {"items": [1, 2, 3, 4], "wait_on": 3})
    assert handle.result(30) == [[1, 4, 9, 16], "ALL_COMPLETED", 4]
    assert all(runs[f"item-{i}"] == 1 for i in range(4)), runs
    assert [e["EventType"] for e in handle.history()].count("InvocationCompleted") == 2


def test_batch_resumes_in_a_new_engine(store: str) -> None:
    runs.clear()
    with perdure.Engine(store, durability="process", workers=2) as engine:
        handle = engine.start(
            squares, {"items": [1, 2, 3], "wait_on": 2, "wait_ms": 300}, execution_id="b"
        )
        deadline = time.monotonic() + 10
        while handle.status() != "SUSPENDED" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handle.status() == "SUSPENDED"
    with perdure.Engine(store, durability="process", workers=2) as engine:
        assert engine.get("b").result(30) == [[1, 4, 9], "ALL_COMPLETED", 3]
    assert all(runs[f"item-{i}"] == 1 for i in range(3)), runs


def _branch(outcome: str) -> Any:
    def run(c: DurableContext) -> str:
        def body(_: perdure.StepContext) -> str:
            if outcome == "fail":
                raise ValueError("branch failed")
            return outcome

        return c.step(body, config=NO_RETRY)

    return run


@perdure.durable(name="test_batch.policies")
def policies(ctx: DurableContext, args: dict[str, Any]) -> Any:
    completion = {
        "all_successful": CompletionConfig.all_successful(),
        "all_completed": CompletionConfig.all_completed(),
        "first_successful": CompletionConfig.first_successful(),
    }[args["policy"]]
    config = ParallelConfig(max_concurrency=1, completion_config=completion)
    result = ctx.parallel([_branch(o) for o in args["outcomes"]], name="branches", config=config)
    errors = [e.error_type for e in result.get_errors()]
    try:
        result.throw_if_error()
        thrown = None
    except perdure.DurableOperationError as exc:
        thrown = exc.error_type
    return {
        "reason": result.completion_reason.value,
        "statuses": [item.status.value for item in result.all],
        "results": result.get_results(),
        "errors": errors,
        "thrown": thrown,
        "status": result.status.value,
    }


def test_all_successful_stops_at_the_first_failure(engine: perdure.Engine) -> None:
    result = engine.run(
        policies, {"policy": "all_successful", "outcomes": ["a", "fail", "c"]}, timeout=30
    )
    assert result["reason"] == CompletionReason.FAILURE_TOLERANCE_EXCEEDED.value
    assert result["statuses"] == ["SUCCEEDED", "FAILED", "STARTED"]
    assert result["errors"] == ["perdure.errors.StepError"]
    assert result["thrown"] == "perdure.errors.StepError"
    assert result["status"] == BatchItemStatus.FAILED.value


def test_all_completed_tolerates_failures(engine: perdure.Engine) -> None:
    result = engine.run(
        policies, {"policy": "all_completed", "outcomes": ["a", "fail", "c"]}, timeout=30
    )
    assert result["reason"] == "ALL_COMPLETED"
    assert result["statuses"] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert result["results"] == ["a", "c"]


def test_first_successful_starts_no_more_branches(engine: perdure.Engine) -> None:
    result = engine.run(
        policies, {"policy": "first_successful", "outcomes": ["fail", "b", "c"]}, timeout=30
    )
    assert result["reason"] == "MIN_SUCCESSFUL_REACHED"
    assert result["statuses"] == ["FAILED", "SUCCEEDED", "STARTED"]


@perdure.durable(name="test_batch.nested")
def nested(ctx: DurableContext, width: int) -> Any:
    def leaf(c: DurableContext, x: int, index: int, items: list[int]) -> int:
        return c.step(lambda _: _tracked(f"leaf-{c.execution_id}", x))

    def middle(c: DurableContext, x: int, index: int, items: list[int]) -> int:
        inner = c.parallel(
            [
                lambda p: sum(p.map(list(range(width)), leaf).get_results()),
                lambda p: p.step(lambda _: x),
            ]
        )
        return sum(inner.get_results())

    outer = ctx.map(list(range(width)), middle, name="outer")
    return sum(outer.get_results())


def test_nested_fan_out_on_two_workers_does_not_deadlock(store: str) -> None:
    with perdure.Engine(store, durability="none", workers=2) as engine:
        width = 4
        expected = sum(sum(range(width)) + x for x in range(width))
        assert engine.run(nested, width, timeout=60) == expected


@perdure.durable(name="test_batch.flat")
def flat(ctx: DurableContext, items: list[int]) -> Any:
    config = MapConfig(nesting_type=NestingType.FLAT)
    result = ctx.map(items, lambda c, x, i, xs: c.step(lambda _: x + 1), config=config)
    return result.get_results()


def test_flat_branches_write_no_context_records(engine: perdure.Engine) -> None:
    handle = engine.start(flat, [1, 2, 3])
    assert handle.result(30) == [2, 3, 4]
    events = handle.history()
    assert not [e for e in events if e.get("SubType") == "MapIteration"]
    steps = [e for e in events if e["EventType"] == "StepSucceeded"]
    assert sorted(e["Id"] for e in steps) == ["1-1-1", "1-2-1", "1-3-1"]


@perdure.durable(name="test_batch.invalid")
def invalid(ctx: DurableContext, case: str) -> Any:
    if case == "min_successful":
        config = MapConfig(completion_config=CompletionConfig(min_successful=5))
        return ctx.map([1, 2], lambda c, x, i, xs: x, config=config)
    return ctx.map("not a list", lambda c, x, i, xs: x)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: MapConfig(max_concurrency=0), "MapConfig.max_concurrency must be an int >= 1"),
        (lambda: ParallelConfig(max_concurrency=-2), "ParallelConfig.max_concurrency"),
        (
            lambda: CompletionConfig(tolerated_failure_percentage=150),
            "tolerated_failure_percentage must be in [0, 100]",
        ),
        (lambda: CompletionConfig(min_successful=0), "min_successful must be an int >= 1"),
    ],
)
def test_invalid_batch_configs(build: Any, message: str) -> None:
    with pytest.raises(perdure.ValidationError, match=re.escape(message)):
        build()


def test_invalid_batches_are_refused_before_anything_is_written(engine: perdure.Engine) -> None:
    for case, message in [
        ("min_successful", "min_successful is 5, more than the 2 branches"),
        ("items", "map needs a sequence of items, got str"),
    ]:
        handle = engine.start(invalid, case)
        with pytest.raises(perdure.ExecutionFailedError, match=message):
            handle.result(30)
        assert [e["EventType"] for e in handle.history()] == [
            "ExecutionStarted",
            "InvocationCompleted",
            "ExecutionFailed",
        ]
