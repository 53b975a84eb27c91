"""Issue 10's figures for perdure on PostgreSQL, each a ratio measured in the same run.

    python bench/pg_figures.py [--url URL] [--figures 1,2,3,4,5] [--repeats 3] [--json]

URL is a libpq URL of the server (default ``$PERDURE_TEST_PG``; start a
throwaway one with ``source scripts/postgres.sh; start_test_postgres``). Every
perdure sample runs in a fresh schema, every raw sample in a fresh table, and
DBOS in a fresh database; all are dropped afterwards.

1. One execution's sequential steps at ``full`` on PostgreSQL, against
   ``pgbench -c 1``: one single-row INSERT of a 160-byte bytea per transaction,
   ``synchronous_commit = on``.
2. 64 async executions in flight at ``full`` on PostgreSQL, against
   ``pgbench -c 64 -j 2`` and against the same executions on LMDB.
3. Replay of a 10,000-step history (the load + index and the Python re-run of
   ``perdure.bench.replay_once``), PostgreSQL store against LMDB store.
4. Cross-process callback: an owner engine runs executions that each wait on a
   callback; another process (``Engine(url, owner=False)``) answers. Latency
   from the answer's call to the start of the next step's body (both stamped
   with CLOCK_MONOTONIC, shared by the processes of a host), split at the
   answer's return and at the resumed invocation's entry.
5. DBOS (``bench/peers/dbos_pg_peer.py``, run with ``--dbos-python``, a venv
   holding dbos) on the same server: one workflow's sequential steps and 64
   workflows in flight, against perdure's figures 1 and 2.

Figures 1, 2 and 5 alternate their samples round by round, so that a change
in the disk's or the machine's speed hits both sides of a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import glob
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from perdure import Engine, bench, bench_concurrency, durable

HERE = Path(__file__).resolve().parent
RAW_ROW_BYTES = 160
_counter = itertools.count()


# -- the server ---------------------------------------------------------------------


def pg_tool(name: str) -> str:
    """Debian's newest server binary ``name`` (psql, pgbench), else PATH's."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version_key)
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found (apt-get install postgresql)")
    return path


def _version_key(path: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", path)]


def server_url(url: str, database: str | None = None) -> str:
    """``url`` without perdure's ``schema`` option (libpq refuses it), on
    ``database`` when given."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"]
    path = f"/{database}" if database else parts.path
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))


def store_url(url: str, schema: str) -> str:
    parts = urlsplit(server_url(url))
    query = [*parse_qsl(parts.query), ("schema", schema)]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def psql(url: str, sql: str) -> str:
    proc = subprocess.run(
        [pg_tool("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"psql failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def fresh_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{next(_counter)}"


@contextlib.contextmanager
def fresh_schema(url: str, prefix: str = "pgfig") -> Iterator[str]:
    """A perdure store URL on a schema of its own, dropped afterwards."""
    schema = fresh_name(prefix)
    try:
        yield store_url(url, schema)
    finally:
        psql(server_url(url), f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def server_info(url: str) -> dict[str, Any]:
    rows = psql(
        server_url(url),
        "SELECT version(), current_setting('synchronous_commit'), current_setting('fsync'), "
        "current_setting('wal_sync_method'), current_setting('shared_buffers')",
    )
    version, sync, fsync, method, buffers = rows.split("|")
    return {
        "version": version,
        "synchronous_commit": sync,
        "fsync": fsync,
        "wal_sync_method": method,
        "shared_buffers": buffers,
        "data_directory_fs": None,
    }


# -- raw PostgreSQL -----------------------------------------------------------------


def _pgbench(url: str, script: str, clients: int, seconds: float) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        proc = subprocess.run(
            [
                pg_tool("pgbench"),
                "-n",
                "-f",
                path,
                "-c",
                str(clients),
                "-j",
                str(min(clients, 2)),
                "-T",
                str(max(1, round(seconds))),
                url,
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "PGOPTIONS": "-c synchronous_commit=on"},
        )
    finally:
        os.unlink(path)
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", proc.stdout)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"pgbench failed: {proc.stdout[-500:]} {proc.stderr[-1500:]}")
    return float(match.group(1))


def pgbench_tps(url: str, clients: int, seconds: float) -> float:
    """Transactions/s of ``pgbench -n -c clients -j min(clients, 2)``, each one
    single-row INSERT of a ``RAW_ROW_BYTES`` bytea into a fresh table, with
    ``synchronous_commit = on`` (every commit waits for its WAL flush)."""
    table = fresh_name("pgfig_raw")
    base = server_url(url)
    psql(base, f"CREATE TABLE {table} (id bigserial PRIMARY KEY, k int, v bytea)")
    row = "\\x" + bytes(range(RAW_ROW_BYTES)).hex()
    try:
        script = f"INSERT INTO {table} (k, v) VALUES (:client_id, '{row}'::bytea);\n"
        return _pgbench(base, script, clients, seconds)
    finally:
        psql(base, f"DROP TABLE IF EXISTS {table}")


def pgbench_shaped_rate(url: str, appends: int, seconds: float) -> float:
    """Appends/s of one pgbench client sending perdure's statements for a
    group of ``appends`` steps, each its own round trip: BEGIN; one SELECT
    ... FOR NO KEY UPDATE of the executions' rows; per step the journal
    INSERT + next_seq UPDATE statement; COMMIT (synced). ``appends`` = 1 is
    one execution's sequential step: 4 round trips where the raw INSERT
    takes 1. Shows what the statements cost without perdure's own CPU."""
    schema = fresh_name("pgfig_shape")
    base = server_url(url)
    psql(
        base,
        f"CREATE SCHEMA {schema}; "
        f"CREATE TABLE {schema}.executions (exec_key bigint PRIMARY KEY, state int, "
        f"owner_id bigint, lease_epoch bigint, wake bigint, next_seq int NOT NULL); "
        f"CREATE TABLE {schema}.journal (exec_key bigint, seq int, record bytea, "
        f"PRIMARY KEY (exec_key, seq)); "
        f"INSERT INTO {schema}.executions SELECT k, 1, 1, 1, NULL, 0 "
        f"FROM generate_series(1, {appends}) k",
    )
    record = "\\x" + bytes(range(48)).hex()
    keys = ",".join(map(str, range(1, appends + 1)))
    lines = [
        "BEGIN;",
        f"SELECT exec_key, state, owner_id, lease_epoch, wake, next_seq FROM "
        f"{schema}.executions WHERE exec_key = ANY('{{{keys}}}'::bigint[]) "
        f"ORDER BY exec_key FOR NO KEY UPDATE;",
    ]
    for k in range(1, appends + 1):
        lines.append(
            f"WITH j AS (INSERT INTO {schema}.journal SELECT exec_key, next_seq, "
            f"'{record}'::bytea FROM {schema}.executions WHERE exec_key = {k}) "
            f"UPDATE {schema}.executions SET next_seq = next_seq + 1 WHERE exec_key = {k};"
        )
    lines.append("COMMIT;")
    try:
        return appends * _pgbench(base, "\n".join(lines) + "\n", 1, seconds)
    finally:
        psql(base, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# -- 1. sequential steps --------------------------------------------------------------


def pg_sequential_rate(url: str, steps: int) -> float:
    """``perdure.bench.sequential_step_rate`` on a fresh PostgreSQL schema."""
    with (
        fresh_schema(url) as store,
        Engine(store, durability="full", workers=1) as engine,
    ):
        started, ended = engine.run(
            bench.sequential_workflow, {"steps": steps, "warmup": 100}, timeout=3600
        )
    return float(steps / (ended - started))


# -- 2. executions in flight --------------------------------------------------------


def async_rate(engine: Engine, executions: int, steps: int) -> float:
    """``executions`` async executions of ``steps`` steps started at once from
    one event loop; steps/s from the first start to the last result (the
    figure-1 rows of ``perdure bench --suite concurrency``)."""

    async def run() -> float:
        started = time.perf_counter()
        handles = await asyncio.gather(
            *(
                engine.start_async(bench_concurrency.async_steps_workflow, steps)
                for _ in range(executions)
            )
        )
        results = await asyncio.gather(*(h.result_async(900.0) for h in handles))
        elapsed = time.perf_counter() - started
        if any(r != steps for r in results):
            raise AssertionError("an async execution returned a wrong result")
        return executions * steps / elapsed

    gc.collect()
    return asyncio.run(run())


def pg_async_rate(url: str, executions: int, steps: int) -> float:
    with fresh_schema(url) as store, Engine(store, durability="full", workers=2) as engine:
        return async_rate(engine, executions, steps)


def lmdb_async_rate(store_dir: str, executions: int, steps: int) -> float:
    with (
        tempfile.TemporaryDirectory(prefix="pgfig-lmdb-", dir=store_dir) as path,
        Engine(path, durability="full", workers=2) as engine,
    ):
        return async_rate(engine, executions, steps)


# -- 3. replay ----------------------------------------------------------------------


def measure_replay(url: str, store_dir: str, steps: int, rounds: int, per_round: int) -> Any:
    """Replay on both stores, alternating round by round (engines built once)."""
    out: dict[str, dict[str, list[float]]] = {
        "postgresql": {"load_s": [], "rerun_s": []},
        "lmdb": {"load_s": [], "rerun_s": []},
    }
    with (
        fresh_schema(url) as store,
        tempfile.TemporaryDirectory(prefix="pgfig-replay-", dir=store_dir) as path,
        Engine(store, durability="none", workers=1) as pg,
        Engine(path, durability="none", workers=1) as lm,
    ):
        pg_key = bench.replay_execution(pg, steps)
        lm_key = bench.replay_execution(lm, steps)
        for engine, key in ((pg, pg_key), (lm, lm_key)):
            bench.replay_once(engine, key, steps)  # warm-up
        for _ in range(rounds):
            for name, engine, key in (("postgresql", pg, pg_key), ("lmdb", lm, lm_key)):
                for _ in range(per_round):
                    gc.collect()
                    a, b = bench.replay_once(engine, key, steps)
                    out[name]["load_s"].append(a)
                    out[name]["rerun_s"].append(b)
    figures = {
        name: bench._replay_figures(steps, s["load_s"], s["rerun_s"]) for name, s in out.items()
    }
    figures["ratio_pg_to_lmdb"] = (
        figures["postgresql"]["ops_per_s"]["median"] / figures["lmdb"]["ops_per_s"]["median"]
    )
    return figures


# -- 4. cross-process callbacks -------------------------------------------------------

# The answering process, and when each execution's invocations began (by the
# execution's input): set in the owner's process only.
_ANSWERER: subprocess.Popen[str] | None = None
_ENTRIES: dict[int, list[int]] = {}


def _send_to_answerer(callback_id: str) -> None:
    assert _ANSWERER is not None and _ANSWERER.stdin is not None
    _ANSWERER.stdin.write(callback_id + "\n")
    _ANSWERER.stdin.flush()


@durable(name="perdure.bench.pg.callback")
def callback_workflow(ctx: Any, index: int) -> dict[str, Any]:
    """Creates a callback, hands its id to the answerer (a step, so only once),
    waits for it, then stamps the start of the next step's body."""
    _ENTRIES.setdefault(index, []).append(time.monotonic_ns())
    callback = ctx.create_callback()
    ctx.step(lambda _: _send_to_answerer(callback.callback_id))
    callback.result()
    body = ctx.step(lambda _: time.monotonic_ns())
    return {"id": callback.callback_id, "body_ns": body}


def answerer(url: str, delay: float) -> int:
    """The other process: answers each callback id read from stdin after
    ``delay`` seconds (the owner has suspended by then), printing when the
    answer's call began and returned."""
    with Engine(url, owner=False) as engine:
        for line in sys.stdin:
            callback_id = line.strip()
            if not callback_id:
                continue
            time.sleep(delay)
            before = time.monotonic_ns()
            engine.send_callback_success(callback_id, None)
            after = time.monotonic_ns()
            answer = {"id": callback_id, "before_ns": before, "after_ns": after}
            print(json.dumps(answer), flush=True)
    return 0


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def measure_callbacks(url: str, callbacks: int, delay: float = 0.01) -> dict[str, Any]:
    """``callbacks`` executions run one after another, each resumed once by the
    answering process; latencies in ms."""
    global _ANSWERER
    _ENTRIES.clear()
    with fresh_schema(url) as store, Engine(store, durability="full") as engine:
        _ANSWERER = subprocess.Popen(
            [sys.executable, __file__, "_answer", store, str(delay)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            results = [engine.run(callback_workflow, i, timeout=60) for i in range(callbacks + 5)]
        finally:
            out, _ = _ANSWERER.communicate(timeout=60)  # closes its stdin: it ends
            _ANSWERER = None
    answers = {a["id"]: a for a in map(json.loads, out.splitlines())}
    rows = []
    for i, r in enumerate(results[5:], start=5):  # the first 5 warm up
        a = answers[r["id"]]
        resumed_entry = _ENTRIES[i][-1]
        rows.append(
            {
                "total": (r["body_ns"] - a["before_ns"]) / 1e6,
                "send_call": (a["after_ns"] - a["before_ns"]) / 1e6,
                "to_invocation": (resumed_entry - a["after_ns"]) / 1e6,
                "to_step_body": (r["body_ns"] - resumed_entry) / 1e6,
            }
        )
    out_fig: dict[str, Any] = {"callbacks": len(rows), "answer_delay_s": delay}
    for part in ("total", "send_call", "to_invocation", "to_step_body"):
        values = [row[part] for row in rows]
        out_fig[part] = {
            "p50_ms": _pct(values, 50),
            "p90_ms": _pct(values, 90),
            "p99_ms": _pct(values, 99),
            "min_ms": min(values),
            "max_ms": max(values),
        }
    return out_fig


# -- 5. DBOS ------------------------------------------------------------------------


def dbos_rates(url: str, python: str, mode: str, *numbers: int) -> dict[str, Any]:
    """One run of ``bench/peers/dbos_pg_peer.py`` on a fresh database."""
    database = fresh_name("pgfig_dbos")
    try:
        proc = subprocess.run(
            [
                python,
                str(HERE / "peers" / "dbos_pg_peer.py"),
                mode,
                server_url(url, database),
                *map(str, numbers),
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"dbos_pg_peer {mode} failed: {proc.stderr[-1500:]}")
        result: dict[str, Any] = json.loads(lines[-1])
        return result
    finally:
        psql(server_url(url), f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


# -- the run ------------------------------------------------------------------------


def _ratio(a: list[float], b: list[float]) -> dict[str, Any]:
    return {
        "of_medians": statistics.median(a) / statistics.median(b),
        "per_round": bench.stats([x / y for x, y in zip(a, b, strict=True)]),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    url = args.url
    figures = {int(f) for f in args.figures.split(",")}
    root = args.store_dir or tempfile.mkdtemp(prefix="pgfig-")
    os.makedirs(root, exist_ok=True)
    out: dict[str, Any] = {
        "machine": bench.machine_info(root),
        "server": server_info(url),
        "config": vars(args) | {"url": server_url(url)},
    }

    def say(message: str) -> None:
        if args.verbose:
            print(f"pg_figures: {message}", file=sys.stderr, flush=True)

    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "raw1",
            "pg_seq",
            "shape1",
            "raw64",
            "shape64",
            "pg_async64",
            "lmdb_async64",
            "dbos_seq",
            "dbos_64",
        )
    }
    dbos_version = None
    steps64 = max(1, args.steps64 // 64)
    for r in range(args.repeats):
        if 1 in figures or 5 in figures:
            say(f"round {r + 1}: pgbench -c 1; perdure sequential steps ({args.steps})")
            samples["raw1"].append(pgbench_tps(url, 1, args.seconds))
            samples["pg_seq"].append(pg_sequential_rate(url, args.steps))
            samples["shape1"].append(pgbench_shaped_rate(url, 1, args.seconds))
        if 2 in figures or 5 in figures:
            say(f"round {r + 1}: pgbench -c 64; 64 x {steps64} async steps on PG and LMDB")
            samples["raw64"].append(pgbench_tps(url, 64, args.seconds))
            samples["pg_async64"].append(pg_async_rate(url, 64, steps64))
            samples["lmdb_async64"].append(lmdb_async_rate(root, 64, steps64))
            samples["shape64"].append(pgbench_shaped_rate(url, 64, args.seconds))
        if 5 in figures:
            say(f"round {r + 1}: DBOS sequential ({args.dbos_steps}) and 64 in flight")
            seq = dbos_rates(url, args.dbos_python, "sequential", args.dbos_steps, 1)
            samples["dbos_seq"] += seq["samples"]
            dbos_version = seq["version"]
            conc = dbos_rates(url, args.dbos_python, "concurrent", 64, args.dbos_steps64, 1)
            samples["dbos_64"] += conc["samples"]
    out["samples"] = {k: bench.stats(v) for k, v in samples.items() if v}
    if samples["pg_seq"]:
        out["fig1_seq_vs_raw1"] = _ratio(samples["pg_seq"], samples["raw1"])
        out["fig1_seq_vs_shape1"] = _ratio(samples["pg_seq"], samples["shape1"])
        out["fig1_shape1_vs_raw1"] = _ratio(samples["shape1"], samples["raw1"])
    if samples["pg_async64"]:
        out["fig2_async64_vs_raw64"] = _ratio(samples["pg_async64"], samples["raw64"])
        out["fig2_async64_vs_lmdb"] = _ratio(samples["pg_async64"], samples["lmdb_async64"])
        out["fig2_async64_vs_shape64"] = _ratio(samples["pg_async64"], samples["shape64"])
    if samples["dbos_seq"]:
        out["dbos_version"] = dbos_version
        out["fig5_seq_vs_dbos"] = _ratio(samples["pg_seq"], samples["dbos_seq"])
        out["fig5_64_vs_dbos"] = _ratio(samples["pg_async64"], samples["dbos_64"])
    if 3 in figures:
        say("replay of a 10,000-step history, PostgreSQL and LMDB alternating")
        bench._settle()
        out["fig3_replay"] = measure_replay(url, root, 10_000, max(3, args.repeats), 4)
    if 4 in figures:
        say(f"{args.callbacks} cross-process callbacks")
        out["fig4_callbacks"] = measure_callbacks(url, args.callbacks)
    out["machine"]["load_average_end"] = bench._load_average()
    return out


def _s(stats: dict[str, Any]) -> str:
    return f"{stats['median']:,.0f} [{stats['min']:,.0f} .. {stats['max']:,.0f}]"


def report(out: dict[str, Any]) -> str:
    m = out["machine"]
    lines = [
        f"pg_figures  {m['date']}  {m['cpu']} x{m['cores']}  {m['kernel']}",
        f"  load average {m['load_average']} at start, {m['load_average_end']} at end",
        f"  server {out['server']['version'].split(' on ')[0]}; synchronous_commit "
        f"{out['server']['synchronous_commit']}, fsync {out['server']['fsync']}, "
        f"wal_sync_method {out['server']['wal_sync_method']}",
        f"  repeats {out['config']['repeats']}; medians [min .. max]",
    ]
    s = out["samples"]
    names = {
        "raw1": "raw PG INSERT tps, pgbench -c 1",
        "pg_seq": "perdure-on-PG sequential steps/s, full",
        "shape1": "  perdure's 4 statements per step, pgbench -c 1",
        "raw64": "raw PG INSERT tps, pgbench -c 64 -j 2",
        "shape64": "  perdure's statements, 64 per txn, appends/s",
        "pg_async64": "perdure-on-PG steps/s, 64 async in flight",
        "lmdb_async64": "perdure-on-LMDB steps/s, 64 async in flight",
        "dbos_seq": f"DBOS {out.get('dbos_version')} steps/s, one workflow",
        "dbos_64": f"DBOS {out.get('dbos_version')} steps/s, 64 workflows",
    }
    for key, label in names.items():
        if key in s:
            lines.append(f"  {label:<46} {_s(s[key])}")
    for key, label, target in (
        ("fig1_seq_vs_raw1", "1. sequential / raw PG 1 client", 0.7),
        ("fig2_async64_vs_raw64", "2. 64 in flight / raw PG 64 clients", 1.0),
        ("fig2_async64_vs_lmdb", "2. 64 in flight PG / LMDB", 0.8),
        ("fig1_shape1_vs_raw1", "   (1.) 4-statement txn / raw INSERT", None),
        ("fig1_seq_vs_shape1", "   (1.) perdure / its 4-statement txn", None),
        ("fig2_async64_vs_shape64", "   (2.) perdure / its 64-append txn", None),
        ("fig5_seq_vs_dbos", "5. sequential perdure / DBOS", 20.0),
        ("fig5_64_vs_dbos", "5. 64 in flight perdure / DBOS", 75.0),
    ):
        if key in out:
            r = out[key]
            line = f"  {label:<46} {r['of_medians']:.2f}x (per round {_s2(r['per_round'])})"
            if target is not None:
                verdict = "met" if r["of_medians"] >= target else "MISSED"
                line += f"; target >= {target}x: {verdict}"
            lines.append(line)
    if "fig3_replay" in out:
        rep = out["fig3_replay"]
        for name in ("postgresql", "lmdb"):
            f = rep[name]
            lines.append(
                f"  3. replay ops/s, {name:<10} {_s(f['ops_per_s']):<36} load+index "
                f"{f['load_index_ms']['median']:.2f} ms, python re-run "
                f"{f['python_rerun_ms']['median']:.2f} ms"
            )
        verdict = "met" if rep["ratio_pg_to_lmdb"] >= 0.6 else "MISSED"
        ratio = rep["ratio_pg_to_lmdb"]
        lines.append(f"  3. replay PG / LMDB  {ratio:.2f}x; target >= 0.6x: {verdict}")
    if "fig4_callbacks" in out:
        cb = out["fig4_callbacks"]
        for part, label in (
            ("total", "answer call -> next step body"),
            ("send_call", "  send_callback_success call"),
            ("to_invocation", "  its return -> resumed invocation entry"),
            ("to_step_body", "  invocation entry -> step body"),
        ):
            p = cb[part]
            lines.append(
                f"  4. {label:<42} p50 {p['p50_ms']:.2f} ms, p90 {p['p90_ms']:.2f}, "
                f"p99 {p['p99_ms']:.2f}, [{p['min_ms']:.2f} .. {p['max_ms']:.2f}]"
            )
        verdict = "met" if cb["total"]["p50_ms"] < 2.0 else "MISSED"
        lines.append(f"  4. over {cb['callbacks']} callbacks; target p50 < 2 ms: {verdict}")
    return "\n".join(lines)


def _s2(stats: dict[str, Any]) -> str:
    return f"{stats['median']:.2f} [{stats['min']:.2f} .. {stats['max']:.2f}]"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_answer":
        return answerer(argv[1], float(argv[2]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("PERDURE_TEST_PG"), help="libpq URL")
    p.add_argument("--figures", default="1,2,3,4,5", help="which figures (default all)")
    p.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--steps", type=int, default=2000, help="figure 1 steps per sample")
    p.add_argument("--steps64", type=int, default=10_000, help="figure 2 steps per sample")
    p.add_argument("--seconds", type=float, default=5, help="pgbench -T per sample")
    p.add_argument("--callbacks", type=int, default=200, help="figure 4 callbacks")
    p.add_argument("--dbos-python", default="/work/venvs/dbos/bin/python")
    p.add_argument("--dbos-steps", type=int, default=500, help="DBOS sequential steps")
    p.add_argument("--dbos-steps64", type=int, default=10, help="DBOS steps per workflow")
    p.add_argument("--store-dir", help="where LMDB stores go (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="print JSON (report to stderr)")
    p.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = p.parse_args(argv)
    if not args.url:
        p.error("no --url and no $PERDURE_TEST_PG")
    out = run(args)
    text = report(out)
    if args.json:
        print(text, file=sys.stderr)
        print(json.dumps(out, indent=2))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
