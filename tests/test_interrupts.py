"""KeyboardInterrupt, SystemExit and GeneratorExit stop an invocation
without being its outcome (issue 9).

As when an AWS Lambda invocation dies, such an exception, raised by a step
body or by the workflow itself, records no failure: the invocation stops,
the engine's thread logs the exception, and the execution runs again later
from its journal, so it ends with the right result and is never left
RUNNING. Each workflow here raises the exception once (a marker file says it
did) and then goes on; a step with AT_MOST_ONCE_PER_RETRY semantics that is
interrupted follows the rule for interrupted steps (StepInterruptedError,
handed to its retry strategy).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import perdure
import pytest
from perdure import (
    ExecutionFailedError,
    RetryStrategyConfig,
    StepConfig,
    StepContext,
    StepSemantics,
    create_retry_strategy,
)

INTERRUPTS = {
    "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": SystemExit,
    "GeneratorExit": GeneratorExit,
}


def _count(args: dict[str, Any], what: str) -> None:
    with open(Path(args["dir"]) / f"{what}.count", "a") as f:
        f.write("x")


def counted(directory: Path, what: str) -> int:
    path = directory / f"{what}.count"
    return len(path.read_text()) if path.exists() else 0


def _once(args: dict[str, Any], where: str) -> None:
    """Raises the test's exception the first time it is asked to ``where``."""
    if args["where"] != where:
        return
    marker = Path(args["dir"]) / f"raised-{where}"
    if not marker.exists():
        marker.touch()
        raise INTERRUPTS[args["exception"]]()


def _first(args: dict[str, Any], _step: StepContext) -> int:
    _count(args, "first")
    return 20


def _second(args: dict[str, Any], _step: StepContext) -> int:
    _count(args, "second")
    _once(args, "step")
    return 22


@perdure.durable(name="interrupts.sync")
def sync_workflow(ctx: perdure.DurableContext, args: dict[str, Any]) -> str:
    first = ctx.step(lambda step: _first(args, step), name="first")
    _once(args, "workflow")
    second = ctx.step(lambda step: _second(args, step), name="second")
    return f"sum={first + second}"


@perdure.durable(name="interrupts.async")
async def async_workflow(ctx: perdure.AsyncDurableContext, args: dict[str, Any]) -> str:
    first = await ctx.step(lambda step: _first(args, step), name="first")
    _once(args, "workflow")
    second = await ctx.step(lambda step: _second(args, step), name="second")
    return f"sum={first + second}"


@perdure.durable(name="interrupts.at_most_once")
def at_most_once(ctx: perdure.DurableContext, args: dict[str, Any]) -> int:
    retry = create_retry_strategy(RetryStrategyConfig(max_attempts=args["attempts"]))
    config = StepConfig(step_semantics=StepSemantics.AT_MOST_ONCE_PER_RETRY, retry_strategy=retry)
    return ctx.step(lambda step: _second(args, step), name="guarded", config=config)


def _branch(args: dict[str, Any], item: int, _step: StepContext) -> int:
    _count(args, f"branch{item}")
    if item == 2:
        _once(args, "step")
    return item * 10


@perdure.durable(name="interrupts.map")
def map_workflow(ctx: perdure.DurableContext, args: dict[str, Any]) -> int:
    def branch(child: perdure.DurableContext, item: int, _i: int, _items: Any) -> int:
        return child.step(lambda step: _branch(args, item, step), name=f"b{item}")

    return sum(ctx.map([1, 2, 3], branch, name="fan-out").get_results())


@perdure.durable(name="interrupts.async_map")
async def async_map_workflow(ctx: perdure.AsyncDurableContext, args: dict[str, Any]) -> int:
    async def branch(child: perdure.AsyncDurableContext, item: int, _i: int, _items: Any) -> int:
        return await child.step(lambda step: _branch(args, item, step), name=f"b{item}")

    result = await ctx.map([1, 2, 3], branch, name="fan-out")
    return sum(result.get_results())


@pytest.fixture
def engine(store: str) -> perdure.Engine:
    with perdure.Engine(store, workers=2) as engine:
        yield engine


@pytest.mark.parametrize("exception", sorted(INTERRUPTS))
@pytest.mark.parametrize("where", ["step", "workflow"])
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_an_interrupt_reruns_the_execution_from_its_journal(
    engine: perdure.Engine,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    exception: str,
    where: str,
    flavour: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="perdure")
    args = {"dir": str(tmp_path), "where": where, "exception": exception}
    workflow = sync_workflow if flavour == "sync" else async_workflow
    handle = engine.start(workflow, args, execution_id=f"{flavour}-{where}-{exception}")
    assert handle.result(timeout=30) == "sum=42"
    assert (tmp_path / f"raised-{where}").exists(), "the exception was never raised"
    # The first step ran once: the rerun replayed it. The second step ran
    # again only where its own body was interrupted.
    assert counted(tmp_path, "first") == 1
    assert counted(tmp_path, "second") == (2 if where == "step" else 1)
    kinds = [event["EventType"] for event in handle.history()]
    assert not any("Failed" in kind for kind in kinds), kinds
    assert kinds[-1] == "ExecutionSucceeded"
    assert any(exception in record.getMessage() for record in caplog.records), caplog.text
    # Nothing is left RUNNING, and the engine still runs new executions.
    assert [info.status for info in engine.list()] == ["SUCCEEDED"]
    args = {"dir": str(tmp_path / "later"), "where": "nowhere", "exception": exception}
    os.mkdir(args["dir"])
    assert engine.run(workflow, args, timeout=30) == "sum=42"


@pytest.mark.parametrize("exception", sorted(INTERRUPTS))
def test_an_interrupted_at_most_once_step_follows_the_interrupted_step_rule(
    engine: perdure.Engine, tmp_path: Path, exception: str
) -> None:
    args = {"dir": str(tmp_path), "where": "step", "exception": exception, "attempts": 1}
    handle = engine.start(at_most_once, args, execution_id=f"amo-{exception}")
    with pytest.raises(ExecutionFailedError) as raised:
        handle.result(timeout=30)
    assert "was interrupted before it completed" in str(raised.value), raised.value
    assert counted(tmp_path, "second") == 1  # not run again blindly


def test_an_interrupted_at_most_once_step_retries_when_its_strategy_allows(
    engine: perdure.Engine, tmp_path: Path
) -> None:
    args = {"dir": str(tmp_path), "where": "step", "exception": "KeyboardInterrupt", "attempts": 3}
    assert engine.run(at_most_once, args, timeout=30) == 22
    assert counted(tmp_path, "second") == 2


@pytest.mark.parametrize("exception", sorted(INTERRUPTS))
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_an_interrupt_in_a_map_branch_reruns_only_that_branch(
    engine: perdure.Engine, tmp_path: Path, exception: str, flavour: str
) -> None:
    args = {"dir": str(tmp_path), "where": "step", "exception": exception}
    workflow = map_workflow if flavour == "sync" else async_map_workflow
    assert engine.run(workflow, args, timeout=30) == 60
    assert (tmp_path / "raised-step").exists()
    assert counted(tmp_path, "branch2") == 2
    assert [info.status for info in engine.list()] == ["SUCCEEDED"]
