"""Workflows for the invoke, timeout and cancellation tests, and the server
process their crash tests SIGKILL.

``python tests/lifecycle_workflows.py serve STORE LOG`` opens an owning
engine on STORE and serves until it is killed. Step bodies write one line
per run to the append-only LOG (``body EXEC NAME PID``), so the test can
count how often each ran across processes.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import perdure
from perdure import Duration, InvokeConfig, StepContext

_log_fd: int | None = None


def _log(*fields: object) -> None:
    if _log_fd is not None:
        os.write(_log_fd, (" ".join(str(f) for f in fields) + " ;\n").encode())


def _logged(ctx: perdure.DurableContext, name: str, value: Any, pause: float = 0.0) -> Any:
    execution_id = ctx.execution_id

    def body(_step: StepContext) -> Any:
        _log("body", execution_id, name, os.getpid())
        if pause:
            time.sleep(pause)
        return value

    return body


@perdure.register(name="life.double")
def double(payload: int) -> int:
    return payload * 2


@perdure.register(name="life.refuse")
def refuse(payload: Any) -> Any:
    raise PermissionError(f"refused {payload!r}")


@perdure.durable(name="life.kid")
def kid(ctx: perdure.DurableContext, event: dict[str, Any]) -> dict[str, Any]:
    first = ctx.step(_logged(ctx, "k1", event["base"] + 1, event.get("pause", 0.0)), name="k1")
    if event.get("nap_ms"):
        ctx.wait(Duration.from_milliseconds(event["nap_ms"]), name="kid nap")
    second = ctx.step(_logged(ctx, "k2", first * 10), name="k2")
    return {"k1": first, "k2": second}


@perdure.durable(name="life.parent")
def parent(ctx: perdure.DurableContext, event: dict[str, Any]) -> dict[str, Any]:
    before = ctx.step(_logged(ctx, "p1", event["base"]), name="p1")
    child = ctx.invoke("life.kid", event, name="kid")
    doubled = ctx.invoke("life.double", child["k2"], name="double")
    after = ctx.step(_logged(ctx, "p2", doubled + before), name="p2")
    return {"child": child, "doubled": doubled, "after": after}


def parent_result(event: dict[str, Any]) -> dict[str, Any]:
    k1 = event["base"] + 1
    child = {"k1": k1, "k2": k1 * 10}
    return {"child": child, "doubled": k1 * 20, "after": k1 * 20 + event["base"]}


@perdure.durable(name="life.catches")
def catches(ctx: perdure.DurableContext, event: dict[str, Any]) -> Any:
    config = None
    if event.get("child_timeout_ms"):
        config = InvokeConfig(timeout=Duration.from_milliseconds(event["child_timeout_ms"]))
    try:
        return ["ok", ctx.invoke(event["target"], event.get("payload"), name="call", config=config)]
    except perdure.InvokeError as exc:
        return ["InvokeError", exc.error_type, str(exc)]


@perdure.durable(name="life.naps")
def naps(ctx: perdure.DurableContext, event: dict[str, Any]) -> str:
    ctx.wait(Duration.from_milliseconds(event.get("nap_ms", 3_600_000)), name="nap")
    return "rested"


@perdure.durable(name="life.awaits")
def awaits(ctx: perdure.DurableContext, event: Any) -> Any:
    callback = ctx.create_callback(name="answer")
    ctx.step(_logged(ctx, "publish", callback.callback_id), name="publish")
    return callback.result()


@perdure.durable(name="life.family")
def family(ctx: perdure.DurableContext, event: Any) -> Any:
    """Waits on a callback while two children wait: one napping, one on its own callback."""
    return ctx.parallel(
        [
            lambda c: c.invoke("life.naps", {}, name="napper"),
            lambda c: c.invoke("life.awaits", None, name="asker"),
            lambda c: c.create_callback(name="own").result(),
        ],
        name="family",
    ).get_results()


def open_log(log: str) -> None:
    global _log_fd
    _log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def serve(store: str, log: str) -> None:
    open_log(log)
    _log("\nproc", os.getpid())
    with perdure.Engine(store, durability="process", lease_timeout=30.0):
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        sys.stdin.read()  # until the test kills this process or closes stdin


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
