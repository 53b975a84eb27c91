"""Execution timeouts and cancellation: what ends, what is cancelled with
it, what a late answer gets, bad input, and both across a SIGKILL."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import lifecycle_workflows as lw
import perdure
import pytest
from perdure import Duration
from support import wait_for
from test_invoke import _serve

TIMEOUT = 30


@pytest.fixture
def engine(tmp_path: Path, store: str) -> Any:
    lw.open_log(str(tmp_path / "log"))
    with perdure.Engine(store, durability="none", workers=4) as engine:
        yield engine


def suspended(engine: perdure.Engine, *ids: str) -> bool:
    waiting = {info.execution_id for info in engine.list(status="SUSPENDED")}
    return set(ids) <= waiting


def test_an_execution_that_runs_past_its_timeout_ends_timed_out(engine: perdure.Engine) -> None:
    handle = engine.start(lw.naps, {}, execution_id="late", timeout=0.5)
    with pytest.raises(perdure.ExecutionTimedOutError, match=r"timed out after 0\.5 seconds"):
        handle.result(TIMEOUT)
    assert handle.status() == "TIMED_OUT"
    events = handle.history()
    assert [e["EventType"] for e in events] == [
        "ExecutionStarted",
        "WaitStarted",
        "InvocationCompleted",
        "WaitCancelled",
        "ExecutionTimedOut",
    ]
    assert events[-1]["ExecutionTimedOutDetails"] == {
        "Error": {
            "Payload": {
                "ErrorType": "Execution.Timeout",
                "ErrorMessage": "Execution timed out after 0.5 seconds.",
            }
        }
    }
    # One that finishes in time is not touched by its timeout.
    quick = engine.start(lw.naps, {"nap_ms": 10}, timeout=Duration.from_minutes(5))
    assert quick.result(TIMEOUT) == "rested"


@pytest.mark.parametrize(
    ("timeout", "text"),
    [
        (0, "execution timeout must be positive, got 0"),
        (-1.5, "execution timeout must be positive, got -1.5"),
        (float("nan"), "execution timeout must be positive"),
        ("10s", "execution timeout must be a Duration or seconds, got str"),
    ],
)
def test_a_bad_timeout_is_refused_before_anything_is_written(
    engine: perdure.Engine, timeout: Any, text: str
) -> None:
    with pytest.raises(perdure.ValidationError, match=text):
        engine.start(lw.naps, {}, execution_id="never", timeout=timeout)
    assert engine.list() == []
    assert engine.run(lw.naps, {"nap_ms": 1}, timeout=TIMEOUT) == "rested"


def test_cancel_stops_children_and_refuses_late_answers(engine: perdure.Engine) -> None:
    handle = engine.start(lw.family, None, execution_id="f")
    wait_for(lambda: suspended(engine, "f", "f/1-1-1", "f/1-2-1"), "the family to wait")
    asker_callback = engine.history("f/1-2-1")[1]["CallbackStartedDetails"]["CallbackId"]
    own_callback = next(
        e["CallbackStartedDetails"]["CallbackId"]
        for e in handle.history()
        if e["EventType"] == "CallbackStarted"
    )
    engine.cancel("f", "customer gave up")
    with pytest.raises(perdure.ExecutionCancelledError, match="customer gave up"):
        handle.result(TIMEOUT)
    statuses = {info.execution_id: info.status for info in engine.list()}
    assert statuses == {"f": "CANCELLED", "f/1-1-1": "CANCELLED", "f/1-2-1": "CANCELLED"}
    assert [e["EventType"] for e in engine.history("f/1-1-1")][-2:] == [
        "WaitCancelled",
        "ExecutionStopped",
    ]
    stopped = engine.history("f/1-2-1")[-1]
    assert stopped["ExecutionStoppedDetails"]["Error"]["Payload"]["ErrorType"] == "ParentStopped"
    # Late answers get a clear error naming the state, and change nothing.
    for callback_id in (own_callback, asker_callback):
        with pytest.raises(perdure.ExecutionFinishedError, match="CANCELLED"):
            engine.send_callback_success(callback_id, "too late")
        with pytest.raises(perdure.ExecutionFinishedError, match="CANCELLED"):
            engine.send_callback_heartbeat(callback_id)
    with pytest.raises(perdure.ExecutionFinishedError, match="CANCELLED"):
        engine.cancel("f")
    with pytest.raises(perdure.ExecutionNotFoundError):
        engine.cancel("nobody")
    assert handle.history()[-1]["EventType"] == "ExecutionStopped"
    assert engine.run(lw.naps, {"nap_ms": 1}, timeout=TIMEOUT) == "rested"


def test_timeouts_and_cancels_hold_across_a_sigkill(tmp_path: Path, store: str) -> None:
    """The server dies while executions wait; meanwhile one execution's
    timeout passes and another is cancelled. The next server finds the
    first timed out (its timer is durable) and never runs the second."""
    log = tmp_path / "log"
    server = _serve(store, log)
    try:
        with perdure.Engine(store, owner=False) as client:
            timed = client.start("life.naps", {}, execution_id="timed", timeout=0.5)
            client.start("life.family", None, execution_id="fam")
            wait_for(lambda: suspended(client, "timed", "fam", "fam/1-1-1"), "both to wait")
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
            client.cancel("fam")  # with no engine running it: the store does it all
            stopped = {eid: client.history(eid) for eid in ("fam", "fam/1-1-1", "fam/1-2-1")}
            assert {i.execution_id: i.status for i in client.list() if "fam" in i.execution_id} == {
                "fam": "CANCELLED",
                "fam/1-1-1": "CANCELLED",
                "fam/1-2-1": "CANCELLED",
            }
            assert timed.status() == "SUSPENDED"
            wait_for(
                lambda: client._core.now_ms() > timed.info().created_at.timestamp() * 1000 + 600,
                "0.6 s",
            )
            server = _serve(store, log)
            with pytest.raises(perdure.ExecutionTimedOutError):
                timed.result(TIMEOUT)
            assert client.get("fam").status() == "CANCELLED"
            # Nothing of the cancelled family ran again: their journals are as cancel left them.
            assert {eid: client.history(eid) for eid in stopped} == stopped
    finally:
        server.kill()
        server.wait()
