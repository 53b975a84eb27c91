"""``perdure demo``: the order workflow of the design document, run for real.

A step reserves stock, a callback waits for a human approval (answered here
from a second process, through the CLI), a durable wait cools off, and a last
step ships. Everything is checkpointed to a store directory.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import orjson

import perdure
from perdure import DurableContext, Duration, StepContext

__all__ = ["place_order", "run_demo"]

_approval_requests: dict[str, str] = {}
_approval_seen = threading.Event()


def reserve(order_id: str) -> dict[str, Any]:
    return {"order_id": order_id, "sku": "perdure-mug", "reserved": True}


def notify_approver(order: dict[str, Any], callback_id: str) -> None:
    # A real system would send an email or a chat message with this id.
    _approval_requests[order["order_id"]] = callback_id
    _approval_seen.set()


@perdure.durable(name="demo.place_order")
def place_order(ctx: DurableContext, event: dict[str, Any]) -> dict[str, Any]:
    order = ctx.step(lambda _: reserve(event["order_id"]), name="reserve")
    approval = ctx.wait_for_callback(
        lambda callback_id, _: notify_approver(order, callback_id),
        name="await-approval",
        config=perdure.WaitForCallbackConfig(timeout=Duration.from_days(7)),
    )
    if not approval["approved"]:
        return {"status": "declined"}
    ctx.wait(Duration.from_seconds(event.get("cool_off", 30)), name="cool-off")

    def ship(_: StepContext) -> dict[str, Any]:
        return {"tracking": f"TRACK-{order['order_id']}"}

    shipped = ctx.step(ship, name="ship")
    return {"status": "shipped", "tracking": shipped["tracking"]}


def _wait_for(
    handle: perdure.ExecutionHandle, event_type: str, name: str, timeout: float = 30.0
) -> None:
    """Waits until the history shows ``event_type`` for the operation ``name``
    and the execution has suspended after it."""
    deadline = time.monotonic() + timeout
    while True:
        seen = any(e["EventType"] == event_type and e.get("Name") == name for e in handle.history())
        if seen and handle.status() == "SUSPENDED":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"execution did not reach {event_type} {name}")
        time.sleep(0.01)


def run_demo(store: str | None, cool_off: float = 2.0) -> int:
    path = store or tempfile.mkdtemp(prefix="perdure-demo-")
    print(f"store: {path}")
    with perdure.Engine(path) as engine:
        order_id = f"o-{int(time.time() * 1000) % 1_000_000}"
        handle = engine.start(
            place_order, {"order_id": order_id, "cool_off": cool_off}, execution_id=order_id
        )
        print(f"started execution {order_id}")
        _approval_seen.wait(30)
        callback_id = _approval_requests[order_id]
        _wait_for(handle, "StepSucceeded", "await-approval submitter")
        print(f"status: {handle.status()} (waiting for approval; callback id {callback_id})")

        command = [
            sys.executable,
            "-m",
            "perdure",
            "callback",
            "succeed",
            callback_id,
            "--payload",
            '{"approved": true}',
            "--store",
            path,
        ]
        print(
            "approving from another process: perdure callback succeed",
            callback_id,
            "--payload '{\"approved\": true}'",
        )
        subprocess.run(command, check=True)

        _wait_for(handle, "WaitStarted", "cool-off")
        print(f"status: {handle.status()} (durable wait of {cool_off:g} s: no thread is held)")
        result = handle.result(timeout=60 + cool_off)
        print(f"status: {handle.status()}")
        print("result:", orjson.dumps(result).decode())
        print("history:")
        for event in handle.history():
            name = f" {event['Name']}" if "Name" in event else ""
            sub = f" [{event['SubType']}]" if "SubType" in event else ""
            print(
                f"  {event['EventId']:>2} {event['EventTimestamp']} {event['EventType']}{sub}{name}"
            )
    return 0
