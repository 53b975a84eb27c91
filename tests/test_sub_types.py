"""``sub_type=`` in StepConfig, CallbackConfig, WaitForCallbackConfig and
ChildConfig: a label of the user's own is kept in the journal, shown as the
operation's history ``SubType`` and checked on replay like its name."""

from __future__ import annotations

import queue
from typing import Any

import perdure
import pytest
from perdure import (
    CallbackConfig,
    ChildConfig,
    DurableContext,
    Engine,
    StepConfig,
    WaitForCallbackConfig,
    WithRetryConfig,
)
from perdure.aio import AsyncDurableContext
from support import wait_for

TIMEOUT = 30
CALLBACKS: queue.Queue[str] = queue.Queue()
LABELS = {"step": "Transfer", "child": "Settlement", "callback": "Approval"}


def _labelled(ctx: DurableContext, _: Any) -> Any:
    moved = ctx.step(lambda _: 5, name="move", config=StepConfig(sub_type=LABELS["step"]))
    settled = ctx.run_in_child_context(
        lambda child: child.step(lambda _: moved + 1, name="inner"),
        name="settle",
        config=ChildConfig(sub_type=LABELS["child"]),
    )
    callback = ctx.create_callback("ask", CallbackConfig(sub_type=LABELS["callback"]))
    ctx.step(lambda _: CALLBACKS.put(callback.callback_id), name="hand out")
    asked = callback.result()
    answer = ctx.wait_for_callback(
        lambda callback_id, _: CALLBACKS.put(callback_id),
        name="sign",
        config=WaitForCallbackConfig(sub_type="Signature"),
    )
    return [settled, asked, answer]


labelled = perdure.durable(name="subtypes.labelled")(_labelled)


@perdure.durable(name="subtypes.labelled_async")
async def labelled_async(ctx: AsyncDurableContext, _: Any) -> Any:
    moved = await ctx.step(lambda _: 5, name="move", config=StepConfig(sub_type="Transfer"))
    settled = await ctx.run_in_child_context(
        lambda child: moved + 1, name="settle", config=ChildConfig(sub_type="Settlement")
    )
    answer = await ctx.wait_for_callback(
        lambda callback_id, _: CALLBACKS.put(callback_id),
        name="sign",
        config=WaitForCallbackConfig(sub_type="Signature"),
    )
    return [settled, answer]


@perdure.durable(name="subtypes.built_in")
def built_in(ctx: DurableContext, _: Any) -> int:
    # Naming a built-in sub type, or none, is the same as the default.
    a = ctx.step(lambda _: 1, name="a", config=StepConfig(sub_type="Step"))
    b = ctx.run_in_child_context(lambda child: 2, name="b", config=ChildConfig(sub_type=""))
    return a + b


@perdure.durable(name="subtypes.retried")
def retried(ctx: DurableContext, _: Any) -> int:
    return perdure.with_retry(
        ctx,
        lambda child, attempt: 7,
        WithRetryConfig(child_context_config=ChildConfig(sub_type="Payment")),
        name="pay",
    )


@pytest.fixture(autouse=True)
def _fresh_queue() -> None:
    while not CALLBACKS.empty():
        CALLBACKS.get_nowait()


def _sub_types(events: list[dict[str, Any]]) -> list[tuple[str, str | None, str | None]]:
    return [
        (e["EventType"], e.get("Name"), e.get("SubType"))
        for e in events
        if not e["EventType"].startswith(("Execution", "Invocation"))
    ]


def _finish(engine: Engine, function: Any, execution_id: str, answers: int) -> Any:
    handle = engine.start(function, None, execution_id=execution_id)
    for n in range(answers):
        engine.send_callback_success(CALLBACKS.get(timeout=TIMEOUT), f"answer {n}")
    return handle


def test_labels_show_in_history_and_survive_a_restart(store: str) -> None:
    with Engine(store, durability="none") as engine:
        handle = _finish(engine, labelled, "labelled", answers=1)
        # Suspended on the second callback: the next engine replays the rest.
        second = CALLBACKS.get(timeout=TIMEOUT)
        wait_for(lambda: handle.status() == "SUSPENDED", "suspended on the second callback")
    with Engine(store, durability="none") as engine:
        engine.send_callback_success(second, "signed")
        handle = engine.get("labelled")
        assert handle.result(TIMEOUT) == [6, "answer 0", "signed"]
        events = handle.history()
    labels = _sub_types(events)
    # Written by the core when the answer came, with the operation's label:
    # the answer is sent as soon as the callback id is handed out, so it may
    # land before or after the "hand out" step's own events.
    answered = ("CallbackSucceeded", "ask", "Approval")
    assert labels.index(answered) > labels.index(("CallbackStarted", "ask", "Approval"))
    labels.remove(answered)
    assert labels == [
        ("StepStarted", "move", "Transfer"),
        ("StepSucceeded", "move", "Transfer"),
        ("ContextStarted", "settle", "Settlement"),
        ("StepStarted", "inner", "Step"),
        ("StepSucceeded", "inner", "Step"),
        ("ContextSucceeded", "settle", "Settlement"),
        ("CallbackStarted", "ask", "Approval"),
        ("StepStarted", "hand out", "Step"),
        ("StepSucceeded", "hand out", "Step"),
        ("ContextStarted", "sign", "WaitForCallback"),
        ("CallbackStarted", "sign create callback id", "Signature"),
        ("StepStarted", "sign submitter", "Step"),
        ("StepSucceeded", "sign submitter", "Step"),
        ("CallbackSucceeded", "sign create callback id", "Signature"),
        ("ContextSucceeded", "sign", "WaitForCallback"),
    ]


def test_async_workflows_label_the_same_way(store: str) -> None:
    with Engine(store, durability="none") as engine:
        handle = _finish(engine, labelled_async, "async", answers=1)
        assert handle.result(TIMEOUT) == [6, "answer 0"]
        labels = {(name, sub) for _, name, sub in _sub_types(handle.history())}
    assert {("move", "Transfer"), ("settle", "Settlement")} <= labels
    assert ("sign create callback id", "Signature") in labels


def test_built_in_names_and_empty_labels_are_the_defaults(store: str) -> None:
    with Engine(store, durability="none") as engine:
        handle = engine.start(built_in, None)
        assert handle.result(TIMEOUT) == 3
        assert [sub for _, _, sub in _sub_types(handle.history())] == [
            "Step",
            "Step",
            "RunInChildContext",
            "RunInChildContext",
        ]


def test_with_retry_labels_each_attempt(store: str) -> None:
    with Engine(store, durability="none") as engine:
        handle = engine.start(retried, None)
        assert handle.result(TIMEOUT) == 7
        assert ("ContextSucceeded", "pay attempt 1", "Payment") in _sub_types(handle.history())


def test_a_changed_label_is_non_deterministic(store: str) -> None:
    with Engine(store, durability="none") as engine:
        handle = _finish(engine, labelled, "changed", answers=2)
        assert handle.result(TIMEOUT)[0] == 6
    before = LABELS["child"]
    LABELS["child"] = "Clearing"
    try:
        with Engine(store, owner=False) as engine:
            report = engine.replay(execution_ids=["changed"])
    finally:
        LABELS["child"] = before
    (divergence,) = report.divergences
    assert divergence.operation_id == "2"
    assert "Settlement 'settle'" in divergence.recorded
    assert "Clearing 'settle'" in divergence.requested
    # The same code replays clean.
    with Engine(store, owner=False) as engine:
        assert engine.replay(execution_ids=["changed"]).ok


def test_a_label_the_core_cannot_store_is_refused_and_the_store_is_intact(
    store: str,
) -> None:
    # Configs check labels first; the core checks again for any other caller.
    with Engine(store, durability="none") as engine:
        assert engine.run(built_in, None, execution_id="kept", timeout=TIMEOUT) == 3
        core = engine._core
        summary = core.execution("kept")
        assert summary is not None
        exec_key, journal = summary[0], core.journal(summary[0])
        bad_label = (1, 1, "has space", "9", "x", 0, 0, 0, None, b"1")
        with pytest.raises(perdure.ValidationError, match='label "has space" must be 1 to 32 char'):
            core.append(exec_key, [bad_label])
        # Code 12 means "see the label"; it cannot be passed without one.
        bare_custom = (1, 1, 12, "9", "x", 0, 0, 0, None, None)
        with pytest.raises(perdure.ValidationError, match="unknown sub type 12"):
            core.append(exec_key, [bare_custom])
        assert core.journal(exec_key) == journal
        assert engine.run(built_in, None, timeout=TIMEOUT) == 3
