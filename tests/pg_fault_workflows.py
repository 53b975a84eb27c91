"""Workflows and the engine process of the PostgreSQL fault tests (test_pg_faults.py).

``python tests/pg_fault_workflows.py serve ARGS_JSON`` opens an owning
engine on the store URL ``ARGS_JSON["url"]``, prints one JSON line (its pid
and owner id) and serves until its stdin closes or it is killed. Meanwhile
each line it reads on stdin is a command, answered with one JSON line:

    {"answer": [CALLBACK_ID, VALUE]}   send_callback_success from this engine
    {"start": [FUNCTION, INPUT, ID]}   start an execution from this engine

Step bodies and workflow code write to an append-only side-effect log
outside the store (``ARGS_JSON["log"]``, relative to the process's working
directory), one ``os.write`` per line on an ``O_APPEND`` descriptor:

    proc    PID TIME                    a server began
    body    EXEC NAME ATTEMPT PID TIME  a step body began to run
    ack     EXEC NAME - PID TIME        ctx.step returned NAME to the workflow
    done    EXEC NAME - PID TIME        a step body returned (its result is
                                        about to be committed)
    cb      EXEC CALLBACK_ID - PID TIME a callback's id was handed out

TIME is ``time.time()``; every line ends with `` ;`` so that one torn by a
kill is recognised, and each process starts with a newline.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import perdure
from perdure import Duration, MapConfig, StepContext

ITEMS = 8
NAP_EVERY = 3  # every third item waits a moment: its branch suspends
NAP_MS = 20
BODY_S = 0.004  # a step body takes a moment: kills land inside some

_log_fd: int | None = None
_args: dict[str, Any] = {}


def open_log(path: str) -> None:
    """Opens the side-effect log of this process (the test process opens
    none: it only imports the names below)."""
    global _log_fd
    _log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def _log(*fields: object) -> None:
    if _log_fd is None:
        raise RuntimeError("side-effect log is not open")
    line = " ".join(str(f) for f in (*fields, os.getpid(), f"{time.time():.6f}"))
    os.write(_log_fd, (line + " ;\n").encode())


def logged_step(ctx: perdure.DurableContext, name: str, value: Any, nap_s: float = 0.0) -> Any:
    """A step that logs its body and its acknowledgement; returns ``value``."""
    eid = ctx.execution_id

    def body(step: StepContext) -> Any:
        _log("body", eid, name, step.attempt)
        if nap_s:
            time.sleep(nap_s)
        _log("done", eid, name, "-")
        return value

    result = ctx.step(body, name=name)
    _log("ack", eid, name, "-")
    return result


def item_value(base: int, index: int) -> int:
    return (base * 31 + index * index + 7) % 1_000_003


def _fan_item(ctx: perdure.DurableContext, base: int, index: int, _items: Any) -> int:
    value = logged_step(ctx, f"i{index}", item_value(base, index), BODY_S)
    if index % NAP_EVERY == 0:
        ctx.wait(Duration.from_milliseconds(NAP_MS), name=f"nap{index}")
    return int(value)


@perdure.durable(name="pgf.fanout")
def fanout(ctx: perdure.DurableContext, event: dict[str, Any]) -> dict[str, Any]:
    base = event["base"]
    batch = ctx.map([base] * ITEMS, _fan_item, name="fan", config=MapConfig(max_concurrency=4))
    batch.throw_if_error()
    items = batch.get_results()
    pair = ctx.parallel(
        [
            lambda c: logged_step(c, "pa", base + 1, BODY_S),
            lambda c: logged_step(c, "pb", base + 2, BODY_S),
        ],
        name="pair",
    )
    pair.throw_if_error()
    total = logged_step(ctx, "total", sum(items) + sum(pair.get_results()))
    return {"items": items, "total": total}


def fanout_steps() -> list[str]:
    return [*(f"i{index}" for index in range(ITEMS)), "pa", "pb", "total"]


def fanout_result(base: int) -> dict[str, Any]:
    items = [item_value(base, index) for index in range(ITEMS)]
    return {"items": items, "total": sum(items) + 2 * base + 3}


CHAIN_STEPS = 6


@perdure.durable(name="pgf.chain")
def chain(ctx: perdure.DurableContext, event: dict[str, Any]) -> int:
    """Steps one after another, with short waits between some: many small
    commits per execution."""
    total = event["base"]
    for index in range(CHAIN_STEPS):
        total = logged_step(ctx, f"s{index}", total * 3 + index, BODY_S)
        if index % 2 == 1:
            ctx.wait(Duration.from_milliseconds(10), name=f"w{index}")
    return int(total)


def chain_steps() -> list[str]:
    return [f"s{index}" for index in range(CHAIN_STEPS)]


def chain_result(base: int) -> int:
    total = base
    for index in range(CHAIN_STEPS):
        total = total * 3 + index
    return total


@perdure.durable(name="pgf.nap")
def nap(ctx: perdure.DurableContext, event: dict[str, Any]) -> int:
    """A step, a wait of ``event["nap_ms"]``, a step: woken by its timer."""
    first = logged_step(ctx, "a", event["base"])
    ctx.wait(Duration.from_milliseconds(event["nap_ms"]), name="nap")
    return int(logged_step(ctx, "b", first + 1))


@perdure.durable(name="pgf.slow")
def slow(ctx: perdure.DurableContext, event: dict[str, Any]) -> dict[str, Any]:
    """Its first step takes ``slow_s`` seconds (per server) and returns the
    pid that ran it: the journal shows whose result was kept."""
    eid = ctx.execution_id

    def body(step: StepContext) -> dict[str, int]:
        _log("body", eid, "slow", step.attempt)
        time.sleep(float(_args.get("slow_s", 0.5)))
        _log("done", eid, "slow", "-")
        return {"pid": os.getpid(), "v": event["base"] * 3}

    first = ctx.step(body, name="slow")
    _log("ack", eid, "slow", "-")
    after = logged_step(ctx, "after", first["v"] + 1)
    return {"slow": first, "after": after}


@perdure.durable(name="pgf.callback")
def callback(ctx: perdure.DurableContext, event: dict[str, Any]) -> dict[str, Any]:
    """Waits for an answer from outside; the step after it names the process
    that ran it."""
    eid = ctx.execution_id
    before = logged_step(ctx, "before", event["base"])

    def publish(callback_id: str, _context: Any) -> None:
        _log("cb", eid, callback_id, "-")

    answer = ctx.wait_for_callback(publish, name="answer")
    ran_by = ctx.step(lambda _: os.getpid(), name="ran_by")
    _log("ack", eid, "ran_by", "-")
    return {"before": before, "answer": answer, "ran_by": ran_by}


def serve(args: dict[str, Any]) -> int:
    _args.update(args)
    open_log(args["log"])
    os.write(_log_fd or 0, f"\nproc {os.getpid()} {time.time():.6f} ;\n".encode())
    engine = perdure.Engine(
        args["url"],
        durability=args.get("durability", "process"),
        workers=args.get("workers", 4),
        lease_timeout=args.get("lease_timeout", 10.0),
        poll_interval=args.get("poll_interval"),
    )
    print(json.dumps({"pid": os.getpid(), "owner": engine.owner_id}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if "answer" in command:
            engine.send_callback_success(*command["answer"])
        elif "start" in command:
            function, event, eid = command["start"]
            engine.start(function, event, execution_id=eid)
        print(json.dumps({"ok": True}), flush=True)
    engine.close(timeout=5)
    return 0


if __name__ == "__main__":
    if sys.argv[1] != "serve":
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
    raise SystemExit(serve(json.loads(sys.argv[2])))
