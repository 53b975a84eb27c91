"""Lease epochs (issue 9): an engine taken for hung (SIGSTOP past its lease
timeout) is reaped; another engine runs its execution further and leaves it;
the first one, continued (SIGCONT), registers again under the same owner id
and claims the execution back. The invocation it was running before it
stopped is still inside a long step: when that step ends, its write must be
refused (its lease epoch is stale even though the owner id matches), and the
execution must go on from what the other engine wrote. Real processes, a
real store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from perdure import Engine
from perdure.errors import ExecutionNotFoundError
from support import wait_for

HERE = Path(__file__).parent
SERVER = HERE / "epoch_workflows.py"
LEASE_TIMEOUT = 0.5


def _serve(args: dict[str, Any]) -> tuple[subprocess.Popen[str], dict[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "serve", json.dumps(args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE,
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _lease_owner(store: str, execution_id: str) -> int | None:
    """The owner id in the execution's lease, read by a client engine (which
    writes nothing, on either store)."""
    with Engine(store, owner=False) as client:
        try:
            exec_key = client.get(execution_id)._exec_key
        except ExecutionNotFoundError:
            return None
        return client._core.lease(exec_key)


def test_a_stale_invocation_of_a_reclaimed_execution_is_fenced(tmp_path: Path, store: str) -> None:
    files = {name: str(tmp_path / name) for name in ("in_step", "release", "callback_file")}
    common = {"store": str(store), "lease_timeout": LEASE_TIMEOUT, **files}
    a, a_info = _serve({**common, "role": "A", "start": "x"})
    b: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: os.path.exists(files["in_step"]), "A to enter the long step")
        os.kill(a.pid, signal.SIGSTOP)
        # B reaps A (its lease lapsed), claims x, runs the long step itself
        # and suspends on the callback; then B leaves, and x is unowned.
        b, b_info = _serve({**common, "role": "B"})
        wait_for(lambda: os.path.exists(files["callback_file"]), "B to reach the callback")
        assert _lease_owner(store, "x") == b_info["owner"]
        _stop(b)
        assert _lease_owner(store, "x") is None
        # A goes on: it learns it was reaped, registers again under the same
        # id and claims x back, while its old invocation is still in the step.
        os.kill(a.pid, signal.SIGCONT)
        wait_for(lambda: _lease_owner(store, "x") == a_info["owner"], "A to claim x back")
        Path(files["release"]).write_text("go")
        callback_id = Path(files["callback_file"]).read_text()
        client = Engine(store, owner=False)
        try:
            # The stale invocation's write was refused and a fresh one
            # replayed B's step; B's callback is the one still awaited.
            client.send_callback_success(callback_id, "ok")
            assert client.get("x").result(timeout=30) == "from-B-ok"
            history = client.history("x")
        finally:
            client.close()
    finally:
        if a.poll() is None:
            os.kill(a.pid, signal.SIGCONT)
        _stop(a)
        if b is not None:
            _stop(b)
    long_done = [e for e in history if e["EventType"] == "StepSucceeded" and e["Name"] == "long"]
    assert len(long_done) == 1, long_done
    assert long_done[0]["StepSucceededDetails"]["Result"]["Payload"] == '"from-B"'
    assert sum(e["EventType"] == "CallbackStarted" for e in history) == 1
