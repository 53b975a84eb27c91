"""Workflows and the child-process entry point for the wait_for_condition crash tests.

``python tests/condition_workflows.py child ARGS_JSON`` opens
``Engine(store, durability="process")``, starts the executions it is given
(idempotently, by their fixed ids), waits for their results and writes them
to a JSON file. The test SIGKILLs such children at chosen moments.

Polls write lines to an append-only side-effect log outside the store (one
``os.write`` per line on an ``O_APPEND`` descriptor, so a SIGKILL cannot
lose a line that was written):

    proc   PID                         a child process began
    begin  EXEC ATTEMPT N PID          a check began, with state n = N
    end    EXEC ATTEMPT N PID          a check returned the new state n = N
    ack    EXEC - N PID                wait_for_condition returned n = N

A check blocks while the file ``GATES/EXEC-block-ATTEMPT`` exists, so the
test can SIGKILL a process while it is inside a chosen poll.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import perdure
from perdure import (
    DurableContext,
    Duration,
    WaitForConditionCheckContext,
    WaitForConditionConfig,
    WaitForConditionDecision,
)

_log_fd: int | None = None


def _log(*fields: object) -> None:
    fd = _log_fd
    if fd is None:  # imported by the test process: nothing runs here
        raise RuntimeError("side-effect log is not open")
    os.write(fd, (" ".join(str(f) for f in fields) + "\n").encode())


@perdure.durable(name="cond.crash_poll")
def crash_poll(ctx: DurableContext, event: dict[str, Any]) -> dict[str, Any]:
    """Counts n up to ``event["target"]``, one poll at a time; ``trail`` lists
    the attempt number of every poll whose state was kept."""
    eid = ctx.execution_id
    gates = Path(event["gates"])
    delays: dict[str, int] = event["delays"]

    def check(state: dict[str, Any], check_ctx: WaitForConditionCheckContext) -> dict[str, Any]:
        attempt = check_ctx.attempt
        _log("begin", eid, attempt, state["n"], os.getpid())
        gate = gates / f"{eid}-block-{attempt}"
        while gate.exists():  # the test SIGKILLs the process in here
            time.sleep(0.005)
        new = {"n": state["n"] + 1, "trail": [*state["trail"], attempt]}
        _log("end", eid, attempt, new["n"], os.getpid())
        return new

    def strategy(state: dict[str, Any], attempt: int) -> WaitForConditionDecision:
        if state["n"] >= event["target"]:
            return WaitForConditionDecision.stop_polling()
        millis = delays.get(str(attempt), event["delay_ms"])
        return WaitForConditionDecision.continue_waiting(Duration.from_milliseconds(millis))

    config = WaitForConditionConfig(strategy, initial_state={"n": 0, "trail": []})
    final = ctx.wait_for_condition(check, config, name="poll")
    _log("ack", eid, "-", final["n"], os.getpid())
    return final


def child_main(args: dict[str, Any]) -> int:
    global _log_fd
    _log_fd = os.open(args["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    _log("proc", os.getpid())
    results: dict[str, Any] = {}
    with perdure.Engine(args["store"], durability="process", workers=4) as engine:
        handles = [
            engine.start("cond.crash_poll", event, execution_id=eid)
            for eid, event in args["executions"].items()
        ]
        for handle in handles:
            try:
                results[handle.execution_id] = ["ok", handle.result(timeout=args["timeout"])]
            except Exception as exc:  # reported to the test as data
                results[handle.execution_id] = ["error", f"{type(exc).__name__}: {exc}"]
    tmp = args["results"] + ".tmp"
    with open(tmp, "w") as out:
        json.dump(results, out)
    os.replace(tmp, args["results"])
    return 0


if __name__ == "__main__":
    if sys.argv[1] != "child":
        sys.exit(f"unknown mode {sys.argv[1]!r}")
    try:
        code = child_main(json.loads(sys.argv[2]))
    except BaseException:  # any failure is reported to the test
        traceback.print_exc()
        code = 3
    sys.exit(code)
