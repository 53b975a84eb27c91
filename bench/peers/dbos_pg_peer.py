"""DBOS Transact (``pip install dbos``) on a PostgreSQL system database.

    python dbos_pg_peer.py sequential URL STEPS REPEATS
    python dbos_pg_peer.py concurrent URL WORKFLOWS STEPS REPEATS

URL is a libpq URL naming the database DBOS is to use (DBOS creates it when
missing; the caller drops it). Prints one JSON line of samples in steps/s.

- ``sequential``: one workflow runs STEPS ``@DBOS.step`` calls, each returning a
  small int; the workflow timestamps its own loop, so launch, the workflow's
  start and its end are excluded (as perdure's sequential figure).
- ``concurrent``: WORKFLOWS workflows of STEPS steps each started at once with
  ``DBOS.start_workflow`` (each runs on a thread of DBOS's executor), timed from
  the first start to the last result (as perdure's executions-in-flight figure).

Every step's checkpoint is a commit on the server with its default
``synchronous_commit = on``, as perdure's durability ``full``. DBOS keeps one
global instance per process, so the caller runs this script in a process of
its own, in a venv holding dbos (never one of perdure's dependencies).
"""

from __future__ import annotations

import json
import sys
import time
from urllib.parse import parse_qsl, urlsplit

from dbos import DBOS


@DBOS.step()
def small_step(i: int) -> int:
    return i


@DBOS.workflow()
def timed_steps(steps: int) -> list[float]:
    started = time.perf_counter()
    for i in range(steps):
        small_step(i)
    return [started, time.perf_counter()]


@DBOS.workflow()
def steps_workflow(steps: int) -> int:
    total = 0
    for i in range(steps):
        total += small_step(i)
    return total


def sqlalchemy_url(url: str) -> str:
    """libpq's ``postgresql://user@host/db?host=/socket/dir&port=N`` as the
    SQLAlchemy URL DBOS wants (the psycopg driver takes the same options)."""
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query))
    query = "&".join(f"{k}={v}" for k, v in options.items())
    user = parts.username or "postgres"
    host = parts.hostname if parts.hostname and "host" not in options else ""
    port = f":{parts.port}" if parts.port else ""
    return f"postgresql+psycopg://{user}@{host}{port}{parts.path}" + (f"?{query}" if query else "")


def launch(url: str) -> None:
    DBOS(
        config={
            "name": "perdure-bench",
            "system_database_url": sqlalchemy_url(url),
            "application_version": "perdure-bench",
            "log_level": "WARNING",
        }
    )
    DBOS.launch()


def sequential(steps: int, repeats: int) -> list[float]:
    timed_steps(min(steps, 50))  # warm-up: connections, prepared paths
    samples = []
    for _ in range(repeats):
        started, ended = timed_steps(steps)
        samples.append(steps / (ended - started))
    return samples


def concurrent(workflows: int, steps: int, repeats: int) -> list[float]:
    steps_workflow(2)  # warm-up
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        handles = [DBOS.start_workflow(steps_workflow, steps) for _ in range(workflows)]
        results = [h.get_result() for h in handles]
        elapsed = time.perf_counter() - started
        if any(r != steps * (steps - 1) // 2 for r in results):
            raise AssertionError("a DBOS workflow returned a wrong result")
        samples.append(workflows * steps / elapsed)
    return samples


def main(argv: list[str]) -> int:
    mode, url = argv[0], argv[1]
    numbers = [int(a) for a in argv[2:]]
    launch(url)
    try:
        if mode == "sequential":
            samples = sequential(numbers[0], numbers[1])
        elif mode == "concurrent":
            samples = concurrent(numbers[0], numbers[1], numbers[2])
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        DBOS.destroy(destroy_registry=False)
    from importlib.metadata import version

    print(json.dumps({"samples": samples, "version": version("dbos")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
