"""The workflow and child process of the disk-full test (test_disk_full.py).

``diskfull.fill`` runs ``steps`` steps; each step body waits until the gate
file exists, then returns ``PAYLOAD`` random hex characters (random, so that
a value the workflow was given once and then lost could not come back the
same). After each ``ctx.step`` returns, the workflow body appends
``EXEC INDEX SHA`` to the acknowledgement log: a value the workflow has seen
is acknowledged, and must be the value the execution ends with. The result
is the list of the values' hashes.

``python tests/diskfull_workflows.py run ARGS_JSON`` opens an owning engine
on the store, starts the given executions (idempotently) and waits for
their results, printing one JSON line per event: ``{"error": TYPE}`` when
a result wait raises, ``{"results": {...}}`` at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import perdure
from perdure import StepContext

#: Characters in each step's result: larger than a page, so that each step
#: needs new pages of the store's file.
PAYLOAD = 24 * 1024


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def _ack(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _random_block(gate: str, _step: StepContext) -> str:
    while not os.path.exists(gate):
        time.sleep(0.005)
    return os.urandom(PAYLOAD // 2).hex()


@perdure.durable(name="diskfull.fill")
def fill(ctx: perdure.DurableContext, args: dict[str, Any]) -> list[str]:
    hashes = []
    for index in range(args["steps"]):
        value = ctx.step(lambda step: _random_block(args["gate"], step), name=f"s{index}")
        hashes.append(digest(value))
        _ack(args["ack"], f"{ctx.execution_id} {index} {hashes[-1]}")
    return hashes


@perdure.durable(name="diskfull.fill_async")
async def fill_async(ctx: perdure.AsyncDurableContext, args: dict[str, Any]) -> list[str]:
    """``fill`` on the engine's event loop (its commits are awaited)."""
    hashes = []
    for index in range(args["steps"]):
        value = await ctx.step(lambda step: _random_block(args["gate"], step), name=f"s{index}")
        hashes.append(digest(value))
        _ack(args["ack"], f"{ctx.execution_id} {index} {hashes[-1]}")
    return hashes


@perdure.durable(name="diskfull.answer")
def answer(ctx: perdure.DurableContext, args: dict[str, Any]) -> str:
    def publish(callback_id: str, _ctx: Any) -> None:
        Path(args["callback_file"]).write_text(callback_id)

    reply = ctx.wait_for_callback(publish, name="answer")
    return digest(reply)


def read_acks(path: Path) -> dict[tuple[str, int], set[str]]:
    """Every value acknowledged for each (execution, step)."""
    acks: dict[tuple[str, int], set[str]] = {}
    if not path.exists():
        return acks
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            acks.setdefault((parts[0], int(parts[1])), set()).add(parts[2])
    return acks


def run(args: dict[str, Any]) -> int:
    engine = perdure.Engine(args["store"], workers=2, map_size=args.get("map_size"))
    handles = [engine.start(fill, args["input"], execution_id=eid) for eid in args["ids"]]
    print(json.dumps({"started": len(handles)}), flush=True)
    results: dict[str, Any] = {}
    deadline = time.monotonic() + args.get("timeout", 60)
    for handle in handles:
        while time.monotonic() < deadline:
            try:
                results[handle.execution_id] = handle.result(timeout=1)
                break
            except perdure.StoreError as exc:
                print(json.dumps({"error": type(exc).__name__}), flush=True)
                if args.get("stop_on_error"):
                    engine.close(timeout=1)
                    print(json.dumps({"closed": True}), flush=True)
                    return 3
            except TimeoutError:
                pass
    print(json.dumps({"results": results}), flush=True)
    engine.close(timeout=5)
    return 0


if __name__ == "__main__":
    if sys.argv[1] != "run":
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
    raise SystemExit(run(json.loads(sys.argv[2])))
