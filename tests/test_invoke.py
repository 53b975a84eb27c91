"""ctx.invoke: child executions (durable and plain functions), their
results and failures, timeouts and stops, bad input, and a SIGKILL while a
child runs."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lifecycle_workflows as lw
import perdure
import pytest
from perdure import Duration, InvokeConfig
from support import wait_for

HERE = Path(__file__).resolve().parent
TIMEOUT = 30


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "side-effects.log"
    lw.open_log(str(path))
    return path


@pytest.fixture
def engine(store: str, log: Path) -> Any:
    with perdure.Engine(store, durability="none", workers=4) as engine:
        yield engine


def bodies(log: Path) -> collections.Counter[tuple[str, str]]:
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in log.read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == "body":
            counts[(fields[1], fields[2])] += 1
    return counts


def test_a_parent_invokes_a_durable_and_a_plain_function(engine: perdure.Engine, log: Path) -> None:
    event = {"base": 4}
    result = engine.run(lw.parent, event, execution_id="p", timeout=TIMEOUT)
    assert result == lw.parent_result(event)
    # Each child is an execution of its own, linked by id to the operation.
    infos = {info.execution_id: (info.function, info.status) for info in engine.list()}
    assert infos == {
        "p": ("life.parent", "SUCCEEDED"),
        "p/2": ("life.kid", "SUCCEEDED"),
        "p/3": ("life.double", "SUCCEEDED"),
    }
    events = engine.history("p")
    invokes = [e for e in events if e["EventType"].startswith("ChainedInvoke")]
    assert [(e["EventType"], e["Id"], e["Name"]) for e in invokes] == [
        ("ChainedInvokeStarted", "2", "kid"),
        ("ChainedInvokeSucceeded", "2", "kid"),
        ("ChainedInvokeStarted", "3", "double"),
        ("ChainedInvokeSucceeded", "3", "double"),
    ]
    assert invokes[0]["ChainedInvokeStartedDetails"] == {
        "FunctionName": "life.kid",
        "Input": {"Payload": '{"base":4}'},
        "DurableExecutionArn": "p/2",
    }
    assert invokes[1]["ChainedInvokeSucceededDetails"] == {
        "Result": {"Payload": '{"k1":5,"k2":50}'}
    }
    assert [e["EventType"] for e in engine.history("p/3")] == [
        "ExecutionStarted",
        "InvocationCompleted",
        "ExecutionSucceeded",
    ]
    kid_steps = [e["Name"] for e in engine.history("p/2") if e["EventType"] == "StepSucceeded"]
    assert kid_steps == ["k1", "k2"]
    # Every step ran once although the parent ran several invocations.
    assert bodies(log) == {("p", "p1"): 1, ("p/2", "k1"): 1, ("p/2", "k2"): 1, ("p", "p2"): 1}


def test_a_finished_parent_replays_without_invoking_again(store: str, log: Path) -> None:
    with perdure.Engine(store, durability="none") as engine:
        engine.run(lw.parent, {"base": 1}, execution_id="p", timeout=TIMEOUT)
    with perdure.Engine(store, durability="none") as engine:
        # Starting the same id again is idempotent; nothing runs again.
        assert engine.run(lw.parent, {"base": 1}, execution_id="p", timeout=TIMEOUT) == (
            lw.parent_result({"base": 1})
        )
        report = engine.replay(execution_ids=["p", "p/2", "p/3"], verify=True)
        assert report.ok, report.summary()
    assert sum(bodies(log).values()) == 4
    assert len(perdure.Engine(store, owner=False).list()) == 3


@pytest.mark.parametrize(
    ("target", "payload", "error_type", "text"),
    [
        ("life.refuse", "x", "PermissionError", "refused 'x'"),
        ("life.kid", {"no": "base"}, "KeyError", "'base'"),
    ],
)
def test_a_failed_child_raises_invoke_error(
    engine: perdure.Engine, target: str, payload: Any, error_type: str, text: str
) -> None:
    got = engine.run(lw.catches, {"target": target, "payload": payload}, timeout=TIMEOUT)
    assert got[:2] == ["InvokeError", error_type]
    assert "failed" in got[2] and text in got[2]


def test_a_child_that_times_out_raises_invoke_error(engine: perdure.Engine) -> None:
    event = {"target": "life.naps", "payload": {"nap_ms": 60_000}, "child_timeout_ms": 500}
    handle = engine.start(lw.catches, event, execution_id="t")
    got = handle.result(TIMEOUT)
    assert got[:2] == ["InvokeError", "Execution.Timeout"]
    assert "timed out after 0.5 seconds" in got[2]
    assert engine.get("t/1").status() == "TIMED_OUT"
    assert [e["EventType"] for e in engine.history("t/1")][-2:] == [
        "WaitCancelled",
        "ExecutionTimedOut",
    ]
    assert "ChainedInvokeTimedOut" in [e["EventType"] for e in handle.history()]


def test_stopping_a_child_raises_invoke_error_in_the_parent(engine: perdure.Engine) -> None:
    handle = engine.start(lw.catches, {"target": "life.naps", "payload": {}}, execution_id="s")
    wait_for(lambda: any(i.execution_id == "s/1" for i in engine.list(status="SUSPENDED")), "child")
    engine.cancel("s/1", "no longer needed")
    got = handle.result(TIMEOUT)
    assert got[:2] == ["InvokeError", "Execution.Stopped"]
    assert "was stopped: no longer needed" in got[2]
    stopped = [e for e in handle.history() if e["EventType"] == "ChainedInvokeStopped"]
    assert stopped[0]["ChainedInvokeStoppedDetails"] == {
        "Error": {"Payload": {"ErrorMessage": "no longer needed"}}
    }


@perdure.durable(name="test_invoke.bad")
def bad(ctx: perdure.DurableContext, case: str) -> Any:
    if case == "unknown":
        return ctx.invoke("no.such.function", 1)
    if case == "not-a-name":
        return ctx.invoke(42, 1)  # type: ignore[arg-type]
    if case == "unserializable":
        return ctx.invoke("life.double", object(), name="odd")
    if case == "bad-config":
        return ctx.invoke("life.double", 1, config={"timeout": 5})  # type: ignore[arg-type]
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "error_type", "text"),
    [
        ("unknown", "perdure.errors.UnknownFunctionError", "'no.such.function'"),
        ("not-a-name", "perdure.errors.ValidationError", "invoke needs a function name, got int"),
        ("unserializable", "perdure.errors.SerDesError", "operation '1' of execution"),
        ("bad-config", "perdure.errors.ValidationError", "invoke config must be a InvokeConfig"),
    ],
)
def test_bad_invocations_fail_clearly_and_write_no_child(
    engine: perdure.Engine, case: str, error_type: str, text: str
) -> None:
    with pytest.raises(perdure.ExecutionFailedError) as failure:
        engine.run(bad, case, execution_id=case, timeout=TIMEOUT)
    assert failure.value.error_type == error_type
    assert text in str(failure.value)
    assert [i.execution_id for i in engine.list()] == [case]  # no child was created
    assert not any(e["EventType"].startswith("ChainedInvoke") for e in engine.history(case))
    # The store stays usable.
    assert engine.run(lw.parent, {"base": 2}, timeout=TIMEOUT) == lw.parent_result({"base": 2})


def test_invoke_config_is_validated() -> None:
    with pytest.raises(perdure.ValidationError, match=r"InvokeConfig\.timeout"):
        InvokeConfig(timeout=Duration())
    with pytest.raises(perdure.ValidationError, match=r"InvokeConfig\.serdes_result"):
        InvokeConfig(serdes_result="json")  # type: ignore[arg-type]


def _serve(store: Path, log: Path) -> subprocess.Popen[str]:
    server = subprocess.Popen(
        [sys.executable, str(HERE / "lifecycle_workflows.py"), "serve", str(store), str(log)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdout.readline() == "ready\n"
    return server


def test_sigkill_while_a_child_runs(tmp_path: Path, store: str) -> None:
    """A server is killed inside the child's first step; a new server finishes
    the child and the parent, and every acknowledged step ran once."""
    log = tmp_path / "log"
    event = {"base": 7, "pause": 0.5, "nap_ms": 20}
    server = _serve(store, log)
    try:
        with perdure.Engine(store, owner=False) as client:
            handle = client.start("life.parent", event, execution_id="p")
            wait_for(lambda: log.exists() and "p/2 k1" in log.read_text(), "the child's first step")
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
            assert client.get("p").status() != "SUCCEEDED"
            server = _serve(store, log)
            assert handle.result(TIMEOUT) == lw.parent_result(event)
            ids = sorted(info.execution_id for info in client.list())
            assert ids == ["p", "p/2", "p/3"]  # the child was not started twice
            for eid, names in (("p", ["p1", "p2"]), ("p/2", ["k1", "k2"])):
                succeeded = [
                    e["Name"] for e in client.history(eid) if e["EventType"] == "StepSucceeded"
                ]
                assert succeeded == names
    finally:
        server.kill()
        server.wait()
    counts = bodies(log)
    assert counts[("p", "p1")] == 1  # acknowledged before the kill
    assert counts[("p/2", "k1")] == 2  # cut off by the kill, run again (at least once)
    assert counts[("p/2", "k2")] == counts[("p", "p2")] == 1
