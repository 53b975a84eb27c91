"""Cross-process: callbacks answered by the ``perdure`` CLI in another process.

This test process is the engine (the store's owner); every CLI call is a
separate ``python -m perdure ... --store DIR`` process that opens the same
store beside it. The workflow's submitter writes the callback id to a file,
which is how the id leaves the engine, as it would leave by e-mail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import perdure
import pytest
from perdure import (
    CallbackExternalError,
    CallbackTimeoutError,
    Duration,
    StepContext,
    WaitForCallbackConfig,
)

TIMEOUT = 30.0


@perdure.durable(name="xproc.approval")
def approval(ctx: perdure.DurableContext, event: dict[str, Any]) -> dict[str, Any]:
    def submit(callback_id: str, _: perdure.WaitForCallbackContext) -> None:
        target = Path(event["id_file"])
        tmp = target.with_suffix(".tmp")
        tmp.write_text(callback_id)
        os.replace(tmp, target)

    heartbeat = event.get("heartbeat_s")
    config = WaitForCallbackConfig(
        timeout=Duration.from_seconds(120),
        heartbeat_timeout=Duration.from_seconds(heartbeat) if heartbeat else None,
    )
    try:
        answer = ctx.wait_for_callback(submit, name="approval", config=config)
    except CallbackExternalError as exc:
        return {
            "failed": {
                "class": type(exc).__name__,
                "message": exc.error_message,
                "data": exc.error_data,
            }
        }
    except CallbackTimeoutError as exc:
        return {"timed_out": str(exc)}

    def after(_: StepContext) -> str:
        return f"after-{event['order']}"

    return {"answer": answer, "after": ctx.step(after, name="after")}


def cli(store: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "perdure", *args, "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def cli_ok(store: str, *args: str) -> str:
    done = cli(store, *args)
    assert done.returncode == 0, f"perdure {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


def wait_for_file(path: Path) -> str:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the submitter never wrote {path}")
        time.sleep(0.005)
    return path.read_text()


def wait_for_suspension(handle: perdure.ExecutionHandle) -> None:
    """Until the submitter's step is recorded and the invocation has ended."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        submitted = any(
            e["EventType"] == "StepSucceeded" and e.get("Name") == "approval submitter"
            for e in handle.history()
        )
        if submitted and handle.status() == "SUSPENDED":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{handle.execution_id} never suspended on its callback")
        time.sleep(0.005)


@pytest.fixture
def engine(store: str) -> Iterator[perdure.Engine]:
    with perdure.Engine(store) as engine:
        yield engine


def start(
    engine: perdure.Engine, tmp_path: Path, order: str, **extra: Any
) -> tuple[perdure.ExecutionHandle, Path]:
    id_file = tmp_path / f"{order}.callback-id"
    event = {"order": order, "id_file": str(id_file), **extra}
    return engine.start(approval, event, execution_id=order), id_file


def test_cli_succeed_resumes_suspended_execution(
    engine: perdure.Engine, store: str, tmp_path: Path
) -> None:
    handle, id_file = start(engine, tmp_path, "o-1")
    callback_id = wait_for_file(id_file)
    wait_for_suspension(handle)

    out = cli_ok(store, "callback", "succeed", callback_id, "--payload", '{"approved": true}')
    assert callback_id in out

    assert handle.result(timeout=TIMEOUT) == {"answer": {"approved": True}, "after": "after-o-1"}
    events = handle.history()
    succeeded = [e for e in events if e["EventType"] == "CallbackSucceeded"]
    assert len(succeeded) == 1
    assert json.loads(succeeded[0]["CallbackSucceededDetails"]["Result"]["Payload"]) == {
        "approved": True
    }
    started = [e for e in events if e["EventType"] == "CallbackStarted"]
    assert [e["CallbackStartedDetails"]["CallbackId"] for e in started] == [callback_id]
    # suspended once on the callback, resumed once by the other process
    assert sum(e["EventType"] == "InvocationCompleted" for e in events) == 2
    assert events[-1]["EventType"] == "ExecutionSucceeded"


def test_cli_succeed_while_the_invocation_is_still_running(
    engine: perdure.Engine, store: str, tmp_path: Path
) -> None:
    # Answered as soon as the id exists: the invocation may not have suspended
    # yet. The answer must not be lost either way.
    handle, id_file = start(engine, tmp_path, "o-race")
    callback_id = wait_for_file(id_file)
    cli_ok(store, "callback", "succeed", callback_id, "--payload", '{"approved": false, "n": 3}')
    assert handle.result(timeout=TIMEOUT) == {
        "answer": {"approved": False, "n": 3},
        "after": "after-o-race",
    }


def test_cli_fail_raises_callback_external_error_in_the_workflow(
    engine: perdure.Engine, store: str, tmp_path: Path
) -> None:
    handle, id_file = start(engine, tmp_path, "o-fail")
    callback_id = wait_for_file(id_file)
    wait_for_suspension(handle)

    cli_ok(
        store,
        "callback",
        "fail",
        callback_id,
        "--message",
        "rejected by ops",
        "--error-type",
        "Rejected",
        "--payload",
        '{"ticket": 7}',
    )
    assert handle.result(timeout=TIMEOUT) == {
        "failed": {
            "class": "CallbackExternalError",
            "message": "rejected by ops",
            "data": '{"ticket": 7}',
        }
    }
    # The completer's ErrorType stays in the history (as in AWS).
    failed = [e for e in handle.history() if e["EventType"] == "CallbackFailed"]
    assert len(failed) == 1
    error = failed[0]["CallbackFailedDetails"]["Error"]["Payload"]
    assert error["ErrorType"] == "Rejected"
    assert error["ErrorMessage"] == "rejected by ops"


def test_cli_heartbeat_keeps_a_callback_alive(
    engine: perdure.Engine, store: str, tmp_path: Path
) -> None:
    heartbeat_s = 2.0
    kept, kept_file = start(engine, tmp_path, "o-heartbeat", heartbeat_s=heartbeat_s)
    control, control_file = start(engine, tmp_path, "o-silent", heartbeat_s=heartbeat_s)
    callback_id = wait_for_file(kept_file)
    wait_for_file(control_file)
    created = time.monotonic()

    # Heartbeat from other processes until the silent twin has timed out on
    # its heartbeat and well over heartbeat_s has passed since the callback
    # was created; each gap between heartbeats is one CLI run (~0.3 s).
    heartbeats = 0
    while not (control.status() == "SUCCEEDED" and time.monotonic() - created > heartbeat_s * 1.5):
        assert time.monotonic() - created < TIMEOUT, "the silent callback never timed out"
        out = cli_ok(store, "callback", "heartbeat", callback_id)
        assert "heartbeat" in out
        heartbeats += 1
        time.sleep(0.1)
    assert heartbeats >= 3
    assert control.result(timeout=TIMEOUT) == {"timed_out": "Callback timed out on heartbeat"}
    assert kept.status() == "SUSPENDED"

    cli_ok(store, "callback", "succeed", callback_id, "--payload", '"still here"')
    assert kept.result(timeout=TIMEOUT) == {"answer": "still here", "after": "after-o-heartbeat"}
    assert not any(e["EventType"] == "CallbackTimedOut" for e in kept.history())


def test_cli_unknown_and_already_completed_callback_ids(
    engine: perdure.Engine, store: str, tmp_path: Path
) -> None:
    handle, id_file = start(engine, tmp_path, "o-once")
    callback_id = wait_for_file(id_file)
    cli_ok(store, "callback", "succeed", callback_id, "--payload", '{"approved": true}')
    assert handle.result(timeout=TIMEOUT) == {"answer": {"approved": True}, "after": "after-o-once"}
    history = handle.history()

    unknown = ["no-such-callback", callback_id[:-1] + ("A" if callback_id[-1] != "A" else "B")]
    for bad in unknown:
        for action in (["succeed", bad, "--payload", "1"], ["fail", bad], ["heartbeat", bad]):
            done = cli(store, "callback", *action)
            assert done.returncode != 0, f"callback {action} succeeded: {done.stdout}"
            assert "UnknownCallbackError" in done.stderr, done.stderr
            assert bad in done.stderr, done.stderr
            assert "Traceback" not in done.stderr

    for action in (
        ["succeed", callback_id, "--payload", '{"approved": false}'],
        ["fail", callback_id],
        ["heartbeat", callback_id],
    ):
        done = cli(store, "callback", *action)
        assert done.returncode != 0, f"callback {action} succeeded again: {done.stdout}"
        assert "CallbackAlreadyCompletedError" in done.stderr, done.stderr
        assert callback_id in done.stderr, done.stderr
        assert "Traceback" not in done.stderr

    # Nothing changed, and the engine keeps working beside the CLI.
    assert handle.history() == history
    assert engine.get("o-once").result(timeout=TIMEOUT) == {
        "answer": {"approved": True},
        "after": "after-o-once",
    }
    again, again_file = start(engine, tmp_path, "o-after")
    cli_ok(store, "callback", "succeed", wait_for_file(again_file), "--payload", "[1, 2]")
    assert again.result(timeout=TIMEOUT) == {"answer": [1, 2], "after": "after-o-after"}
    listed = cli_ok(store, "list")
    statuses = dict(line.split("\t")[:2] for line in listed.splitlines())
    assert statuses == {"o-once": "SUCCEEDED", "o-after": "SUCCEEDED"}


def test_cli_list_show_history_beside_the_owner(
    engine: perdure.Engine, store: str, tmp_path: Path
) -> None:
    waiting, waiting_file = start(engine, tmp_path, "o-waiting")
    done_handle, done_file = start(engine, tmp_path, "o-done")
    wait_for_file(waiting_file)
    wait_for_suspension(waiting)
    cli_ok(store, "callback", "succeed", wait_for_file(done_file), "--payload", '{"ok": 1}')
    done_handle.result(timeout=TIMEOUT)

    rows = [line.split("\t") for line in cli_ok(store, "list").splitlines()]
    assert [row[:3] for row in rows] == [
        ["o-waiting", "SUSPENDED", "xproc.approval"],
        ["o-done", "SUCCEEDED", "xproc.approval"],
    ]
    rows = [
        line.split("\t") for line in cli_ok(store, "list", "--status", "SUSPENDED").splitlines()
    ]
    assert [row[0] for row in rows] == ["o-waiting"]

    shown = json.loads(cli_ok(store, "show", "o-waiting"))
    assert shown["ExecutionId"] == "o-waiting"
    assert shown["Function"] == "xproc.approval"
    assert shown["Status"] == "SUSPENDED"

    for handle in (waiting, done_handle):
        exported = json.loads(cli_ok(store, "history", handle.execution_id))
        events = exported["Events"]
        assert events == handle.history()  # what the owner sees, event for event
        assert [e["EventId"] for e in events] == list(range(1, len(events) + 1))
        assert events[0]["EventType"] == "ExecutionStarted"
        for event in events:
            assert isinstance(event["EventTimestamp"], str)
            assert f"{event['EventType']}Details" in event
        types = [(e["EventType"], e.get("SubType")) for e in events]
        assert ("ContextStarted", "WaitForCallback") in types
        assert ("CallbackStarted", "Callback") in types
        assert ("StepSucceeded", "Step") in types
        assert ("InvocationCompleted", None) in types
    assert events[-1]["EventType"] == "ExecutionSucceeded"

    missing = cli(store, "show", "no-such-execution")
    assert missing.returncode != 0
    assert "ExecutionNotFoundError" in missing.stderr
    assert "no-such-execution" in missing.stderr

    # The waiting execution is untouched by all that reading and still resumes.
    assert waiting.status() == "SUSPENDED"
    cli_ok(store, "callback", "succeed", waiting_file.read_text(), "--payload", "true")
    assert waiting.result(timeout=TIMEOUT) == {"answer": True, "after": "after-o-waiting"}


@perdure.durable(name="xproc.two_failures")
def two_failures(ctx: perdure.DurableContext, event: dict[str, Any]) -> dict[str, Any]:
    direct = ctx.create_callback(name="direct")

    def publish(_: StepContext) -> None:
        Path(event["direct_file"]).write_text(direct.callback_id)

    ctx.step(publish, name="publish")

    def submit(callback_id: str, _: perdure.WaitForCallbackContext) -> None:
        Path(event["composite_file"]).write_text(callback_id)

    seen = {}
    try:
        ctx.wait_for_callback(submit, name="composite")
    except CallbackExternalError as exc:
        seen["wait_for_callback"] = [exc.error_type, exc.error_message, exc.error_data]
    try:
        direct.result()
    except CallbackExternalError as exc:
        seen["create_callback"] = [exc.error_type, exc.error_message, exc.error_data]
    return seen


def test_callback_failure_reaches_the_workflow_alike_through_both_apis(
    engine: perdure.Engine, store: str, tmp_path: Path
) -> None:
    direct_file = tmp_path / "direct.id"
    composite_file = tmp_path / "composite.id"
    handle = engine.start(
        two_failures,
        {"direct_file": str(direct_file), "composite_file": str(composite_file)},
        execution_id="two",
    )
    for id_file in (direct_file, composite_file):
        callback_id = wait_for_file(id_file)
        cli_ok(
            store, "callback", "fail", callback_id, "--message", "no", "--error-type", "Rejected"
        )
    seen = handle.result(timeout=TIMEOUT)
    assert seen["wait_for_callback"][1:] == ["no", None]
    assert seen["create_callback"][1:] == ["no", None]
    # One error, two ways to wait for it: the workflow must see the same error_type.
    assert seen["wait_for_callback"][0] == seen["create_callback"][0], seen
