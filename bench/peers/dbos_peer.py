"""DBOS Transact (``pip install dbos``) on a SQLite system database.

One workflow runs ``steps`` sequential ``@DBOS.step`` calls, each returning a
small int; the workflow timestamps its own loop, so the rate excludes launch
and shutdown. DBOS's SQLite connections use SQLite's defaults (rollback
journal, synchronous=FULL): every step's checkpoint is a synced commit, as
perdure's durability "full".

Recovery replay: a first process runs the workflow and dies (os._exit) right
after its last step, leaving it PENDING with ``steps`` recorded steps; a
second process launches DBOS, which recovers the workflow: its loop is then
answered from the recorded step outputs, and its own timestamps give the
replay rate.

DBOS keeps one global instance per process, so each measurement runs in a
subprocess of its own (``python dbos_peer.py MODE ...``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from perdure.bench import stats

AVAILABLE_ERROR: str | None = None
try:
    from dbos import DBOS
except ImportError as exc:  # pragma: no cover - depends on the bench environment
    AVAILABLE_ERROR = f"dbos is not installed ({exc}); pip install dbos"

CRASH_ENV = "PERDURE_BENCH_DBOS_CRASH"
WORKFLOW_ID = "perdure-bench-replay"

if AVAILABLE_ERROR is None:

    @DBOS.step()
    def small_step(i: int) -> int:
        return i

    @DBOS.workflow()
    def steps_workflow(steps: int) -> list[float]:
        started = time.perf_counter()
        for i in range(steps):
            small_step(i)
        ended = time.perf_counter()
        if os.environ.get(CRASH_ENV) == "1":
            os._exit(0)  # leave the workflow PENDING with every step recorded
        return [started, ended]


def version() -> str | None:
    try:
        from importlib.metadata import version as _version

        return _version("dbos")
    except Exception:  # pragma: no cover
        return None


def launch(db_dir: str | os.PathLike[str]) -> None:
    """Creates this process's DBOS instance on ``<db_dir>/dbos.sqlite`` and launches it."""
    if AVAILABLE_ERROR is not None:
        raise RuntimeError(AVAILABLE_ERROR)
    DBOS(
        config={
            "name": "perdure-bench",
            "system_database_url": f"sqlite:///{Path(db_dir) / 'dbos.sqlite'}",
            "application_version": "perdure-bench",
            "log_level": "WARNING",
        }
    )
    DBOS.launch()


def destroy() -> None:
    DBOS.destroy(destroy_registry=False)


def sequential_rate(steps: int) -> float:
    """Steps/s of one workflow (DBOS must be launched in this process)."""
    started, ended = steps_workflow(steps)
    return steps / (ended - started)


def _child(mode: str, db_dir: str, steps: int, repeats: int = 1) -> dict[str, Any]:
    if mode == "sequential":
        launch(db_dir)
        try:
            sequential_rate(min(steps, 50))  # warm-up
            return {"samples": [sequential_rate(steps) for _ in range(repeats)]}
        finally:
            destroy()
    if mode == "crash":
        os.environ[CRASH_ENV] = "1"
        launch(db_dir)
        from dbos import SetWorkflowID

        with SetWorkflowID(WORKFLOW_ID):
            steps_workflow(steps)
        raise RuntimeError("the crash run returned instead of exiting")
    if mode == "recover":
        launch(db_dir)  # recovers the PENDING workflow on a thread of its own
        try:
            started, ended = DBOS.retrieve_workflow(WORKFLOW_ID).get_result()
            return {"replay_steps_per_s": steps / (ended - started)}
        finally:
            destroy()
    raise ValueError(f"unknown mode {mode!r}")


def _run_child(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, timeout=3600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"dbos child {args} failed: {proc.stderr[-2000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def measure(
    steps: int = 1000,
    repeats: int = 3,
    replay_steps: int = 1000,
    store_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    if AVAILABLE_ERROR is not None:
        return {"available": False, "error": AVAILABLE_ERROR}
    with tempfile.TemporaryDirectory(prefix="dbos-bench-", dir=store_dir) as d:
        seq = _run_child("sequential", d, str(steps), str(repeats))["samples"]
    replay = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="dbos-bench-", dir=store_dir) as d:
            _run_child("crash", d, str(replay_steps))
            replay.append(_run_child("recover", d, str(replay_steps))["replay_steps_per_s"])
    return {
        "available": True,
        "peer": "dbos (SQLite system database, synchronous=FULL)",
        "version": version(),
        "steps": steps,
        "steps_per_s": stats(seq),
        "replay_steps": replay_steps,
        "replay_steps_per_s": stats(replay),
    }


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] in ("sequential", "crash", "recover"):
        mode, db_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
        r = int(sys.argv[4]) if len(sys.argv) > 4 else 1
        print(json.dumps(_child(mode, db_dir, n, r)), flush=True)
    else:
        n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
        r = int(sys.argv[2]) if len(sys.argv) > 2 else 3
        print(json.dumps(measure(n, r, n)))
