"""Workflows and the server process of the multi-process lease test.

``python tests/lease_workflows.py serve ARGS_JSON`` opens an owning engine on
the shared store and serves until it is killed (or its stdin closes): it
starts nothing itself; the test starts executions from a client engine, and
the servers claim them. Step bodies and workflow code write to an
append-only side-effect log outside the store, one ``os.write`` per line on
an ``O_APPEND`` descriptor, as in ``crash_workflows.py``:

    proc    PID                     a server began
    body    EXEC NAME ATTEMPT PID   a step body began to run
    ack     EXEC NAME - PID         ctx.step returned NAME to the workflow

Each process starts its first line with a newline, so a line torn by a kill
is always followed by a ``proc`` line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import perdure
from perdure import Duration, MapConfig, StepContext

ITEMS = 12
NAP_EVERY = 3  # every third item waits a moment: its branch suspends
NAP_MS = 30
BODY_S = 0.003  # a step body takes a moment: kills land inside some
GATED_FROM = 6  # with a gate, items from here on wait until it opens

_log_fd: int | None = None
_gate: str | None = None


def _log(*fields: object) -> None:
    if _log_fd is None:  # imported by the test process: nothing runs here
        raise RuntimeError("side-effect log is not open")
    os.write(_log_fd, (" ".join(str(f) for f in fields) + " ;\n").encode())


def item_value(base: int, index: int) -> int:
    return (base * 31 + index * index + 7) % 1_000_003


def _fan_item(ctx: perdure.DurableContext, base: int, index: int, _items: Any) -> int:
    eid = ctx.execution_id
    name = f"i{index}"

    def body(step: StepContext) -> int:
        _log("body", eid, name, step.attempt, os.getpid())
        if index >= GATED_FROM:
            while _gate is not None and not os.path.exists(_gate):
                time.sleep(0.002)
        time.sleep(BODY_S)
        return item_value(base, index)

    value = ctx.step(body, name=name)
    _log("ack", eid, name, "-", os.getpid())
    if index % NAP_EVERY == 0:
        ctx.wait(Duration.from_milliseconds(NAP_MS), name=f"nap{index}")
    return value


@perdure.durable(name="lease.fanout")
def fanout(ctx: perdure.DurableContext, event: dict[str, Any]) -> dict[str, Any]:
    eid = ctx.execution_id
    base = event["base"]
    batch = ctx.map([base] * ITEMS, _fan_item, name="fan", config=MapConfig(max_concurrency=4))
    batch.throw_if_error()

    def total(step: StepContext) -> int:
        _log("body", eid, "total", step.attempt, os.getpid())
        return sum(batch.get_results())

    result = ctx.step(total, name="total")
    _log("ack", eid, "total", "-", os.getpid())
    return {"items": batch.get_results(), "total": result}


SLOW_S = 1.0


@perdure.durable(name="lease.slow")
def slow(ctx: perdure.DurableContext, event: dict[str, Any]) -> dict[str, int]:
    eid = ctx.execution_id

    def body(step: StepContext) -> int:
        _log("body", eid, "slow", step.attempt, os.getpid())
        time.sleep(SLOW_S)  # long enough to be stopped inside, and to be caught running
        return event["base"] * 3

    value = ctx.step(body, name="slow")
    _log("ack", eid, "slow", "-", os.getpid())
    after = ctx.step(lambda _: value + 1, name="after")
    _log("ack", eid, "after", "-", os.getpid())
    return {"slow": value, "after": after}


def step_names() -> list[str]:
    return [*(f"i{index}" for index in range(ITEMS)), "total"]


def expected_result(base: int) -> dict[str, Any]:
    items = [item_value(base, index) for index in range(ITEMS)]
    return {"items": items, "total": sum(items)}


def serve(args: dict[str, Any]) -> int:
    global _log_fd, _gate
    _log_fd = os.open(args["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    _gate = args.get("gate")
    _log("\nproc", os.getpid())  # ends a line a killed process tore
    with perdure.Engine(
        args["store"],
        durability=args["durability"],
        workers=args["workers"],
        lease_timeout=args["lease_timeout"],
    ):
        print("READY", flush=True)
        sys.stdin.read()  # serve until the test closes stdin (or kills us)
    return 0


if __name__ == "__main__":
    if sys.argv[1] != "serve":
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
    raise SystemExit(serve(json.loads(sys.argv[2])))
