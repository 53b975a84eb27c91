"""Workflows and child-process entry points for the crash-safety test.

Used three ways:

- imported by ``tests/test_crash.py`` (by path) for the expected results and
  the checks of the side-effect log;
- ``python tests/crash_workflows.py zygote``: a process that imports perdure
  once and then forks one child per request read from stdin, so that a kill
  cycle does not pay for a fresh interpreter (the test SIGKILLs the child by
  its pid);
- ``python tests/crash_workflows.py child ARGS_JSON``: one child in a fresh
  interpreter (the real startup path).

A child opens ``Engine(store)``, starts the executions it is given
(idempotently, by their fixed ids), waits for their results and writes them
to a JSON file. Step bodies and the workflow code write lines to an
append-only side-effect log outside the store, one ``os.write`` per line on
an ``O_APPEND`` descriptor:

    proc    PID DURABILITY                  a child process began
    body    EXEC NAME ATTEMPT PID           a step body began to run
    ack     EXEC NAME - PID                 ctx.step returned NAME to the workflow
    enter   EXEC NAME - PID                 a child context's body began to run
    ackctx  EXEC NAME - PID                 run_in_child_context returned

Every line ends with `` ;``. A line written with ``write(2)`` is in the page
cache the moment the call returns, so a SIGKILL cannot lose it; at
``durability="full"`` each line is fsynced as well, like the store's commits.
A SIGKILL that lands *inside* a ``write(2)`` can cut a line short (Linux
stops copying at a page boundary when a fatal signal is pending), so each
process starts its first line with a newline: a torn line is then always the
last line of a killed process, right before the next ``proc`` line, and the
test's parser can tell it apart.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

import perdure
from perdure import (
    Duration,
    JitterStrategy,
    RetryStrategyConfig,
    StepConfig,
    StepContext,
    StepSemantics,
    create_retry_strategy,
)

SEQ_STEPS = 30
FLAKY_FAILURES = 2  # the flaky step fails its first two attempts
WAIT_MS = 30
CHILD_STEPS = 3
MODULUS = 1_000_003
AMO_BODY_S = 0.005

_log_fd: int | None = None
_log_fsync = False

FLAKY_RETRY = create_retry_strategy(
    RetryStrategyConfig(
        max_attempts=FLAKY_FAILURES + 1,
        initial_delay=Duration.from_milliseconds(10),
        backoff_rate=1.0,
        jitter_strategy=JitterStrategy.NONE,
    )
)
# An AT_MOST_ONCE attempt cut off by a kill comes back as StepInterruptedError
# and is retried (never re-run blindly); allow plenty of attempts so that the
# execution still succeeds however often that happens.
AMO_RETRY = create_retry_strategy(
    RetryStrategyConfig(
        max_attempts=1000,
        initial_delay=Duration.from_milliseconds(1),
        backoff_rate=1.0,
        jitter_strategy=JitterStrategy.NONE,
    )
)


def _log(*fields: object) -> None:
    fd = _log_fd
    if fd is None:  # imported by the test process: nothing runs here
        raise RuntimeError("side-effect log is not open")
    line = (" ".join(str(f) for f in fields) + " ;\n").encode()
    os.write(fd, line)
    if _log_fsync:
        os.fsync(fd)


# -- the workflows ----------------------------------------------------------------


def seq_value(previous: int, index: int) -> int:
    return (previous * 31 + index * index + 7) % MODULUS


def _seq_body(execution_id: str, name: str, previous: int, index: int) -> Any:
    def body(step: StepContext) -> int:
        _log("body", execution_id, name, step.attempt, os.getpid())
        return seq_value(previous, index)

    return body


@perdure.durable(name="crash.sequential")
def sequential(ctx: perdure.DurableContext, event: dict[str, Any]) -> dict[str, Any]:
    eid = ctx.execution_id
    total = event["base"]
    for index in range(SEQ_STEPS):
        name = f"s{index}"
        total = ctx.step(_seq_body(eid, name, total, index), name=name)
        _log("ack", eid, name, "-", os.getpid())
    return {"total": total}


@perdure.durable(name="crash.mixed")
def mixed(ctx: perdure.DurableContext, event: dict[str, Any]) -> dict[str, Any]:
    eid = ctx.execution_id
    pid = os.getpid()
    base: int = event["base"]

    def first(step: StepContext) -> int:
        _log("body", eid, "first", step.attempt, os.getpid())
        return base + 1

    a = ctx.step(first, name="first")
    _log("ack", eid, "first", "-", pid)

    def flaky(step: StepContext) -> dict[str, int]:
        _log("body", eid, "flaky", step.attempt, os.getpid())
        if step.attempt <= FLAKY_FAILURES:
            raise ConnectionError(f"flaky attempt {step.attempt} fails on purpose")
        return {"attempt": step.attempt, "value": a * 2}

    f = ctx.step(flaky, name="flaky", config=StepConfig(retry_strategy=FLAKY_RETRY))
    _log("ack", eid, "flaky", "-", pid)

    def charge(step: StepContext) -> str:
        _log("body", eid, "amo", step.attempt, os.getpid())
        time.sleep(AMO_BODY_S)  # a side effect that takes a moment: kills land inside it
        return f"charged-{base}"

    m = ctx.step(
        charge,
        name="amo",
        config=StepConfig(
            step_semantics=StepSemantics.AT_MOST_ONCE_PER_RETRY, retry_strategy=AMO_RETRY
        ),
    )
    _log("ack", eid, "amo", "-", pid)

    ctx.wait(Duration.from_milliseconds(WAIT_MS), name="pause")

    def child(cctx: perdure.DurableContext) -> list[int]:
        _log("enter", eid, "child", "-", os.getpid())
        values = []
        for index in range(CHILD_STEPS):
            name = f"c{index}"

            def body(step: StepContext, name: str = name, index: int = index) -> int:
                _log("body", eid, name, step.attempt, os.getpid())
                return base * 10 + index

            values.append(cctx.step(body, name=name))
            _log("ack", eid, name, "-", os.getpid())
        return values

    c = ctx.run_in_child_context(child, name="child")
    _log("ackctx", eid, "child", "-", pid)

    def last(step: StepContext) -> int:
        _log("body", eid, "last", step.attempt, os.getpid())
        return a + f["value"] + sum(c)

    z = ctx.step(last, name="last")
    _log("ack", eid, "last", "-", pid)
    return {"first": a, "flaky": f, "amo": m, "child": c, "last": z}


# -- what the test expects --------------------------------------------------------


def workflow_for(execution_id: str) -> str:
    return "crash.sequential" if "-seq-" in execution_id else "crash.mixed"


def input_for(execution_id: str) -> dict[str, Any]:
    # ids look like "r3-seq-1": round 3, sequential workflow, number 1
    round_no, _kind, number = execution_id.split("-")
    return {"base": int(round_no[1:]) * 100 + int(number) * 7 + 1}


def expected_result(execution_id: str) -> dict[str, Any]:
    base = input_for(execution_id)["base"]
    if workflow_for(execution_id) == "crash.sequential":
        total = base
        for index in range(SEQ_STEPS):
            total = seq_value(total, index)
        return {"total": total}
    a = base + 1
    f = {"attempt": FLAKY_FAILURES + 1, "value": a * 2}
    c = [base * 10 + index for index in range(CHILD_STEPS)]
    return {
        "first": a,
        "flaky": f,
        "amo": f"charged-{base}",
        "child": c,
        "last": a + f["value"] + sum(c),
    }


def step_names(execution_id: str) -> list[str]:
    if workflow_for(execution_id) == "crash.sequential":
        return [f"s{index}" for index in range(SEQ_STEPS)]
    return ["first", "flaky", "amo", *(f"c{i}" for i in range(CHILD_STEPS)), "last"]


# -- child processes --------------------------------------------------------------


def child_main(args: dict[str, Any]) -> int:
    """Opens the engine, runs the given executions to their end, writes the
    results to ``args["results"]``. Exit code 0 when every result arrived."""
    global _log_fd, _log_fsync
    durability = args["durability"]
    _log_fsync = durability == "full"
    _log_fd = os.open(args["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    _log("\nproc", os.getpid(), durability)  # ends a line a killed process tore
    results: dict[str, Any] = {}
    with perdure.Engine(args["store"], durability=durability) as engine:
        handles = [
            engine.start(workflow_for(eid), input_for(eid), execution_id=eid) for eid in args["ids"]
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


def _run_child(args: dict[str, Any]) -> int:
    try:
        return child_main(args)
    except BaseException:  # any failure is reported to the test
        traceback.print_exc()
        sys.stderr.flush()
        return 3


def zygote() -> None:
    """Reads one JSON request per line from stdin and answers one per line:
    ``{"op": "spawn", "args": {...}, "stderr": PATH}`` -> ``{"pid": PID}``;
    ``{"op": "reap", "pid": PID}`` -> ``{"status": waitstatus_to_exitcode}``."""
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "spawn":
            pid = os.fork()
            if pid == 0:  # the child: never returns into this loop
                code = 3
                try:
                    null = os.open(os.devnull, os.O_RDWR)
                    os.dup2(null, 0)
                    os.dup2(null, 1)
                    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                    os.dup2(err, 2)
                    code = _run_child(request["args"])
                finally:
                    os._exit(code)
            reply: dict[str, Any] = {"pid": pid}
        elif request["op"] == "reap":
            _, status = os.waitpid(request["pid"], 0)
            reply = {"status": os.waitstatus_to_exitcode(status)}
        else:
            reply = {"error": f"unknown op {request['op']!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    if sys.argv[1] == "zygote":
        zygote()
    elif sys.argv[1] == "child":
        sys.exit(_run_child(json.loads(sys.argv[2])))
    else:
        sys.exit(f"unknown mode {sys.argv[1]!r}")
