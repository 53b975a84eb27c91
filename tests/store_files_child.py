"""Child process of tests/test_store_files.py and test_store_security.py:
opens a (possibly damaged) store and reads all of it, so that a crash kills
this process and not the test. The last line on stdout is a JSON report.

    python store_files_child.py build STORE        make the small store the tests damage
    python store_files_child.py walk STORE         open, list, read every history
    python store_files_child.py hold STORE         open, wait for a line on stdin, then walk
    python store_files_child.py answer STORE ID    answer the waiting callback, then walk
    python store_files_child.py history STORE ID... read these executions' histories
    python store_files_child.py sweep BASE SCRATCH POSITIONS_JSON
        for each (page, offset): copy BASE to SCRATCH, flip that byte of
        data.mdb, walk it in a forked process; report the outcomes
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any

import perdure
from perdure import DurableContext, Engine
from perdure.errors import PerdureError

CALLBACK_IDS: list[str] = []


@perdure.durable(name="store_files.double")
def double(ctx: DurableContext, x: int) -> int:
    return ctx.step(lambda _: x * 2, name="double")


@perdure.durable(name="store_files.asks")
def asks(ctx: DurableContext, _: Any) -> str:
    answer = ctx.wait_for_callback(lambda cid, _: CALLBACK_IDS.append(cid), name="ask")
    return f"answered {answer}"


def report(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def error_fields(exc: PerdureError) -> dict[str, Any]:
    return {
        "outcome": "error",
        "type": type(exc).__name__,
        "message": str(exc),
        "path": getattr(exc, "path", None),
        "execution_id": getattr(exc, "execution_id", None),
    }


def build(path: str) -> None:
    with Engine(path, workers=2) as engine:
        for i in range(3):
            assert engine.run(double, i, execution_id=f"e{i}", timeout=30) == 2 * i
        engine.start(asks, None, execution_id="waiter")
        deadline = time.monotonic() + 30
        while engine.get("waiter").status() != "SUSPENDED":
            assert time.monotonic() < deadline, "the waiter did not suspend"
            time.sleep(0.01)
    report(outcome="ok", callback_id=CALLBACK_IDS[0])


def walk(engine: Engine) -> dict[str, Any]:
    histories = {}
    for info in engine.list():
        histories[info.execution_id] = len(engine.history(info.execution_id))
    return {"outcome": "ok", "histories": histories}


def run(action: str, path: str, extra: list[str]) -> None:
    try:
        with Engine(path, owner=False) as engine:
            if action == "hold":
                report(outcome="ready")
                sys.stdin.readline()
            elif action == "answer":
                engine.send_callback_success(extra[0], "yes")
            elif action == "history":
                histories = {name: len(engine.history(name)) for name in extra}
                report(outcome="ok", histories=histories)
                return
            report(**walk(engine))
    except PerdureError as exc:
        report(**error_fields(exc))


def sweep(base: str, scratch: str, positions: list[list[int]]) -> None:
    with open(os.path.join(base, "data.mdb"), "rb") as data:
        page_size = int.from_bytes(data.read(44)[40:44], "little")
    counts = {"ok": 0, "error": 0, "signal": 0, "other": 0}
    crashes = []
    for page, offset in positions:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(base, scratch)
        with open(os.path.join(scratch, "data.mdb"), "r+b") as file:
            file.seek(page * page_size + offset)
            byte = file.read(1)[0]
            file.seek(page * page_size + offset)
            file.write(bytes([byte ^ 0xFF]))
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                with Engine(scratch, owner=False) as engine:
                    walk(engine)
            except PerdureError:
                code = 3
            except BaseException:
                code = 4
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            counts["signal"] += 1
            crashes.append([page, offset, os.WTERMSIG(status)])
        else:
            counts[{0: "ok", 3: "error"}.get(os.WEXITSTATUS(status), "other")] += 1
    shutil.rmtree(scratch, ignore_errors=True)
    report(counts=counts, crashes=crashes)


if __name__ == "__main__":
    action, path, *rest = sys.argv[1:]
    if action == "build":
        build(path)
    elif action == "sweep":
        sweep(path, rest[0], json.loads(rest[1]))
    else:
        run(action, path, rest)
