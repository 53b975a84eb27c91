"""Concurrency figures behind ``perdure bench --suite concurrency`` (issue 3).

Each ``measure_*`` function runs one figure over several samples (each in a
fresh store under ``store_dir``) and returns a plain, JSON-able dict with
medians and their spread (:func:`perdure.bench.stats`); the ``*_sample``
helpers run one sample. :func:`run_concurrency` runs them all.

1. Durable steps/s with 1, 8, 64 and 512 executions in flight, each doing
   sequential steps, at durability ``full`` (and ``process``), beside the raw
   LMDB synced (unsynced) commit rate measured in the same rounds on the same
   filesystem. Timed from the first ``engine.start`` to the last result.
   Then the same with 64, 512 and 4,096 *async* executions on one event loop
   (``async def`` workflows, started with ``engine.start_async``).
2. Steps that block for 1 ms (``time.sleep``, which releases the GIL), 512
   executions: steps/s as the number of workers grows.
3. ``ctx.map`` over 10,000 trivial items in one execution: items/s.
4. 10,000 executions of 2 steps started at once: executions/s, every result checked.
5. 100,000 executions suspended on a one-hour wait (or on a callback): the
   process's threads before and after, resident memory per suspended
   execution, the time to start and suspend them all.
6. 100,000 timers falling due at the same moment: the resume rate and how
   late each execution resumed.

Linux only for figure 5's thread and memory counts (``/proc/self``); they are
reported as None elsewhere.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any

from perdure import _records as R
from perdure.bench import (
    LMDB_MISSING,
    Progress,
    _fmt,
    _import_lmdb,
    _load_average,
    _quiet,
    _scratch,
    _spread,
    bench_root,
    machine_info,
    raw_lmdb_commit_rate,
    report_header,
    stats,
)
from perdure.context import DurableContext
from perdure.duration import Duration
from perdure.engine import Engine
from perdure.registry import durable

__all__ = [
    "CONCURRENCIES",
    "IO_WORKERS",
    "concurrent_steps_sample",
    "format_concurrency_report",
    "io_steps_sample",
    "many_executions_sample",
    "map_sample",
    "measure_concurrent_steps",
    "measure_io_steps",
    "measure_many_executions",
    "measure_map",
    "measure_suspended",
    "measure_timers",
    "run_concurrency",
    "suspended_sample",
    "timers_sample",
]

CONCURRENCIES = (1, 8, 64, 512)
ASYNC_CONCURRENCIES = (64, 512, 4096)
IO_WORKERS = (1, 2, 8, 32, 128, 512)
RESULT_TIMEOUT = 900.0
# What Engine(workers=None) picks; figures 3 to 6 pass it explicitly so that
# the number reported is the number used.
DEFAULT_WORKERS = min(32, 2 * (os.cpu_count() or 1) + 2)


# -- workflows ----------------------------------------------------------------------


@durable(name="perdure.bench.concurrency.steps")
def steps_workflow(ctx: DurableContext, steps: int) -> int:
    """``steps`` sequential steps returning 1; returns their sum."""
    total = 0
    for _ in range(steps):
        total += ctx.step(lambda _: 1)
    return total


@durable(name="perdure.bench.concurrency.async_steps")
async def async_steps_workflow(ctx: Any, steps: int) -> int:
    """``steps_workflow`` as an async workflow: every execution in flight runs
    on the engine's one event loop, and its commits share group commits."""
    total = 0
    for _ in range(steps):
        total += await ctx.step(lambda _: 1)
    return total


@durable(name="perdure.bench.concurrency.io_steps")
def io_steps_workflow(ctx: DurableContext, spec: dict[str, float]) -> int:
    """``steps`` sequential steps that each block for ``block_s`` seconds in
    ``time.sleep`` (the GIL is released meanwhile) and return 1."""
    block_s = spec["block_s"]

    def blocking(_: object) -> int:
        time.sleep(block_s)
        return 1

    total = 0
    for _ in range(int(spec["steps"])):
        total += ctx.step(blocking)
    return total


def _double(ctx: DurableContext, item: int, index: int, items: Sequence[int]) -> int:
    return item * 2


@durable(name="perdure.bench.concurrency.map")
def map_workflow(ctx: DurableContext, items: int) -> int:
    """``ctx.map`` over ``range(items)``, each item doubled; returns the sum."""
    return sum(ctx.map(list(range(items)), _double).get_results())


@durable(name="perdure.bench.concurrency.two_steps")
def two_steps_workflow(ctx: DurableContext, n: int) -> int:
    """Two steps; returns ``2 * n + 1``."""
    a = ctx.step(lambda _: n)
    b = ctx.step(lambda _: n + 1)
    return a + b


class _Counter:
    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1


# Counts suspend_workflow invocations that reached their callback (the first
# run of each: a replay gets there only once the callback is answered).
_callbacks_reached = _Counter()
# Counts timer_workflow executions that resumed after their wait, so that the
# bench can wait for all of them without calling into the engine meanwhile.
_timers_resumed = _Counter()


@durable(name="perdure.bench.concurrency.suspend")
def suspend_workflow(ctx: DurableContext, on: str) -> None:
    """Suspends for an hour: on a wait (``on == "wait"``) or on a callback
    nobody answers (``on == "callback"``)."""
    if on == "wait":
        ctx.wait(Duration.from_seconds(3600))
        return
    callback = ctx.create_callback()
    _callbacks_reached.add()
    callback.result()


@durable(name="perdure.bench.concurrency.timer")
def timer_workflow(ctx: DurableContext, target_ms: float) -> list[float]:
    """Waits until the wall-clock moment ``target_ms`` (epoch ms), then returns
    [the moment it resumed, the moment its timer was due], both epoch ms.

    The delay is computed in a durable step, so a replay waits the same wait;
    the timer falls due that delay after the wait's record is committed, which
    the journal records (read back after the wait).
    """
    delay = ctx.step(lambda _: target_ms - time.time() * 1000)
    ctx.wait(Duration.from_milliseconds(max(1, round(delay))))
    # The wait is operation "2" (after the step "1"): its record holds the
    # commit time and the delay, i.e. the moment the timer fell due.
    op = ctx._state.lookup("2")
    due_ms = float(op[R.OP_STARTED_MS] + op[R.OP_START_AUX]) if op is not None else float("nan")

    def resumed(_: object) -> float:
        now_ms = time.time() * 1000
        _timers_resumed.add()
        return now_ms

    return [ctx.step(resumed), due_ms]


# -- helpers ------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return a / b


def _percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of an ascending list."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil(n * p / 100), at least 1
    return float(sorted_values[int(rank) - 1])


def _threads() -> int | None:
    """Threads of this process (entries of /proc/self/task), None off Linux."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _memory_kib() -> dict[str, int]:
    """VmRSS (all resident memory), RssAnon (heap: what the engine allocated)
    and RssFile (resident file pages: the store's memory map among them) in KiB,
    from /proc/self/status; empty off Linux."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def _max_rss_kib() -> int:
    """Peak resident memory of this process so far (getrusage; KiB on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(interval)


def _stats_or_none(samples: list[float | None]) -> dict[str, Any]:
    return stats([s for s in samples if s is not None])


# -- 1. durable steps/s with many executions in flight ------------------------------


def concurrent_steps_sample(
    store_dir: str | os.PathLike[str],
    concurrency: int,
    steps_per_execution: int,
    durability: str,
    workers: int,
    use_asyncio: bool = False,
) -> dict[str, float]:
    """One sample: ``concurrency`` executions of ``steps_per_execution`` steps
    in a fresh store. Timed from before the first start to the last result."""
    if use_asyncio:
        return _timed_async_executions(
            store_dir, durability, workers, concurrency, steps_per_execution
        )
    return _timed_executions(
        store_dir,
        f"conc-{durability}-{concurrency}-",
        durability,
        workers,
        steps_workflow,
        steps_per_execution,
        concurrency,
        steps_per_execution,
    )


def _timed_async_executions(
    store_dir: str | os.PathLike[str],
    durability: str,
    workers: int,
    executions: int,
    steps_per_execution: int,
) -> dict[str, float]:
    """``_timed_executions`` for the async workflow, started and awaited from
    an event loop of the caller's (the starts share group commits too)."""

    async def run(engine: Engine) -> dict[str, float]:
        started = time.perf_counter()
        handles = await asyncio.gather(
            *(
                engine.start_async(async_steps_workflow, steps_per_execution, execution_id=f"a{i}")
                for i in range(executions)
            )
        )
        all_started = time.perf_counter()
        results = await asyncio.gather(*(h.result_async(RESULT_TIMEOUT) for h in handles))
        elapsed = time.perf_counter() - started
        if any(result != steps_per_execution for result in results):
            raise AssertionError("an async execution returned a wrong result")
        steps = executions * steps_per_execution
        return {
            "steps_per_s": steps / elapsed,
            "start_s": all_started - started,
            "elapsed_s": elapsed,
        }

    with (
        _scratch(store_dir, f"async-{durability}-{executions}-") as path,
        Engine(path, durability=durability, workers=workers) as engine,
    ):
        gc.collect()
        return asyncio.run(run(engine))


def _timed_executions(
    store_dir: str | os.PathLike[str],
    prefix: str,
    durability: str,
    workers: int,
    workflow: Any,
    input: Any,
    executions: int,
    steps_per_execution: int,
) -> dict[str, float]:
    """Starts ``executions`` runs of ``workflow(input)`` in a fresh store, each
    returning ``steps_per_execution``; times first start to last result."""
    with (
        _scratch(store_dir, prefix) as path,
        Engine(path, durability=durability, workers=workers) as engine,
    ):
        gc.collect()
        started = time.perf_counter()
        handles = [engine.start(workflow, input, execution_id=f"x{i}") for i in range(executions)]
        all_started = time.perf_counter()
        for handle in handles:
            result = handle.result(timeout=RESULT_TIMEOUT)
            if result != steps_per_execution:
                raise AssertionError(f"{handle.execution_id} returned {result!r}")
        elapsed = time.perf_counter() - started
    steps = executions * steps_per_execution
    return {"steps_per_s": steps / elapsed, "start_s": all_started - started, "elapsed_s": elapsed}


def measure_concurrent_steps(
    store_dir: str | os.PathLike[str],
    durability: str = "full",
    *,
    concurrencies: Sequence[int] = CONCURRENCIES,
    total_steps: int = 10_000,
    raw_commits: int | None = None,
    workers: int | None = None,
    repeats: int = 5,
    progress: Progress | None = None,
    use_asyncio: bool = False,
) -> dict[str, Any]:
    """Figure 1 at one durability: for each number of executions in flight,
    about ``total_steps`` steps per sample split evenly between them, on
    ``workers`` workers (default: one per execution, at most 512). With
    ``use_asyncio`` the executions are async workflows on one event loop.

    Each round first measures the raw LMDB commit rate (``raw_commits`` commits,
    synced at "full", unsynced otherwise) on the same filesystem, then one
    sample per concurrency, so that a change in the disk's speed hits both.
    """
    say = progress or _quiet
    sync = durability == "full"
    if raw_commits is None:
        raw_commits = 1_000 if sync else 10_000
    lmdb_ok = _import_lmdb() is not None
    raw: list[float] = []
    samples: dict[int, list[dict[str, float]]] = {c: [] for c in concurrencies}
    for r in range(repeats):
        if lmdb_ok:
            kind = "synced" if sync else "unsynced"
            say(f"steps at {durability}, round {r + 1}/{repeats}: raw LMDB {kind} commits")
            raw.append(raw_lmdb_commit_rate(store_dir, raw_commits, sync=sync) or 0.0)
        for c in concurrencies:
            per = max(1, total_steps // c)
            w = workers if workers is not None else min(c, 512)
            say(
                f"steps at {durability}, round {r + 1}/{repeats}: {c} executions x {per} steps "
                f"on {w} workers"
            )
            samples[c].append(
                concurrent_steps_sample(store_dir, c, per, durability, w, use_asyncio)
            )
    raw_median = statistics.median(raw) if raw else None
    rows = []
    for c in concurrencies:
        per = max(1, total_steps // c)
        rates = [s["steps_per_s"] for s in samples[c]]
        row: dict[str, Any] = {
            "concurrency": c,
            "workers": workers if workers is not None else min(c, 512),
            "steps_per_execution": per,
            "steps": per * c,
            "steps_per_s": stats(rates),
            "start_s": stats([s["start_s"] for s in samples[c]]),
            "ratio_to_raw": _ratio(statistics.median(rates), raw_median),
            "ratio_to_raw_per_round": (
                stats([s / w for s, w in zip(rates, raw, strict=True)]) if raw else None
            ),
        }
        rows.append(row)
    out: dict[str, Any] = {
        "durability": durability,
        "repeats": repeats,
        "rows": rows,
        "asyncio": use_asyncio,
    }
    if lmdb_ok:
        out["raw_lmdb"] = {
            "available": True,
            "sync": sync,
            "commits": raw_commits,
            "commits_per_s": stats(raw),
        }
    else:
        out["raw_lmdb"] = {"available": False, "error": LMDB_MISSING}
    return out


# -- 2. steps that block on I/O -----------------------------------------------------


def io_steps_sample(
    store_dir: str | os.PathLike[str],
    executions: int,
    steps_per_execution: int,
    workers: int,
    *,
    block_s: float = 0.001,
    durability: str = "full",
) -> dict[str, float]:
    """One sample: ``executions`` executions of steps that each sleep
    ``block_s``, on ``workers`` workers; first start to last result."""
    spec = {"steps": float(steps_per_execution), "block_s": block_s}
    return _timed_executions(
        store_dir,
        f"io-{workers}-",
        durability,
        workers,
        io_steps_workflow,
        spec,
        executions,
        steps_per_execution,
    )


def measure_io_steps(
    store_dir: str | os.PathLike[str],
    *,
    executions: int = 512,
    workers: Sequence[int] = IO_WORKERS,
    steps_per_execution: int = 8,
    block_ms: float = 1.0,
    durability: str = "full",
    repeats: int = 3,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Figure 2: steps/s of ``executions`` executions whose steps block for
    ``block_ms`` (releasing the GIL), for each worker count. The rounds go
    through every worker count in turn. ``sleep_bound_steps_per_s`` is what
    ``workers`` threads that did nothing but sleep could reach."""
    say = progress or _quiet
    samples: dict[int, list[dict[str, float]]] = {w: [] for w in workers}
    for r in range(repeats):
        for w in workers:
            say(
                f"{block_ms:g} ms I/O steps, round {r + 1}/{repeats}: {executions} executions x "
                f"{steps_per_execution} steps on {w} workers"
            )
            samples[w].append(
                io_steps_sample(
                    store_dir,
                    executions,
                    steps_per_execution,
                    w,
                    block_s=block_ms / 1000,
                    durability=durability,
                )
            )
    base = statistics.median(s["steps_per_s"] for s in samples[workers[0]]) if workers else None
    rows = []
    for w in workers:
        rates = [s["steps_per_s"] for s in samples[w]]
        rows.append(
            {
                "workers": w,
                "steps_per_s": stats(rates),
                "start_s": stats([s["start_s"] for s in samples[w]]),
                "sleep_bound_steps_per_s": w * 1000.0 / block_ms,
                f"speedup_vs_{workers[0]}_workers": _ratio(statistics.median(rates), base),
            }
        )
    return {
        "durability": durability,
        "executions": executions,
        "steps_per_execution": steps_per_execution,
        "steps": executions * steps_per_execution,
        "block_ms": block_ms,
        "repeats": repeats,
        "rows": rows,
    }


# -- 3. map -------------------------------------------------------------------------


def map_sample(
    store_dir: str | os.PathLike[str], items: int, durability: str, workers: int
) -> float:
    """Items/s of one execution mapping ``items`` trivial items; from the start
    of the execution to its result."""
    with (
        _scratch(store_dir, f"map-{durability}-") as path,
        Engine(path, durability=durability, workers=workers) as engine,
    ):
        gc.collect()
        started = time.perf_counter()
        result = engine.start(map_workflow, items).result(timeout=RESULT_TIMEOUT)
        elapsed = time.perf_counter() - started
    if result != items * (items - 1):
        raise AssertionError(f"map returned {result!r}, expected {items * (items - 1)}")
    return items / elapsed


def measure_map(
    store_dir: str | os.PathLike[str],
    *,
    items: int = 10_000,
    durabilities: Sequence[str] = ("full", "process"),
    workers: int = DEFAULT_WORKERS,
    repeats: int = 3,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Figure 3: ``ctx.map`` over ``items`` items (``item * 2``) in one execution."""
    say = progress or _quiet
    samples: dict[str, list[float]] = {d: [] for d in durabilities}
    for r in range(repeats):
        for d in durabilities:
            say(f"map, round {r + 1}/{repeats}: {items} items at {d} on {workers} workers")
            samples[d].append(map_sample(store_dir, items, d, workers))
    return {
        "items": items,
        "workers": workers,
        "repeats": repeats,
        "rows": [{"durability": d, "items_per_s": stats(samples[d])} for d in durabilities],
    }


# -- 4. many executions at once -----------------------------------------------------


def many_executions_sample(
    store_dir: str | os.PathLike[str], executions: int, durability: str, workers: int
) -> dict[str, float]:
    """Starts ``executions`` two-step executions at once and checks every
    result; first start to last result."""
    with (
        _scratch(store_dir, f"many-{durability}-") as path,
        Engine(path, durability=durability, workers=workers) as engine,
    ):
        gc.collect()
        started = time.perf_counter()
        handles = [
            engine.start(two_steps_workflow, i, execution_id=f"m{i}") for i in range(executions)
        ]
        all_started = time.perf_counter()
        for i, handle in enumerate(handles):
            result = handle.result(timeout=RESULT_TIMEOUT)
            if result != 2 * i + 1:
                raise AssertionError(f"{handle.execution_id} returned {result!r}, not {2 * i + 1}")
        elapsed = time.perf_counter() - started
    return {
        "executions_per_s": executions / elapsed,
        "starts_per_s": executions / (all_started - started),
        "elapsed_s": elapsed,
    }


def measure_many_executions(
    store_dir: str | os.PathLike[str],
    *,
    executions: int = 10_000,
    durability: str = "process",
    workers: int = DEFAULT_WORKERS,
    repeats: int = 3,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Figure 4: ``executions`` executions of 2 steps started at once."""
    say = progress or _quiet
    samples = []
    for r in range(repeats):
        say(f"{executions} executions at once, round {r + 1}/{repeats} ({durability})")
        samples.append(many_executions_sample(store_dir, executions, durability, workers))
    return {
        "executions": executions,
        "steps_per_execution": 2,
        "durability": durability,
        "workers": workers,
        "repeats": repeats,
        "all_results_correct": True,  # a wrong result raises in many_executions_sample
        "executions_per_s": stats([s["executions_per_s"] for s in samples]),
        "steps_per_s": stats([2 * s["executions_per_s"] for s in samples]),
        "starts_per_s": stats([s["starts_per_s"] for s in samples]),
        "elapsed_s": stats([s["elapsed_s"] for s in samples]),
    }


# -- 5. many suspended executions ---------------------------------------------------


def _suspended_count(engine: Engine) -> int:
    return sum(1 for info in engine.list(status="SUSPENDED"))


def suspended_sample(
    store_dir: str | os.PathLike[str],
    executions: int,
    *,
    on: str = "wait",
    durability: str = "process",
    workers: int = DEFAULT_WORKERS,
) -> dict[str, Any]:
    """Starts ``executions`` executions that suspend (on a one-hour wait or a
    callback) and measures, once all are suspended, the process's threads and
    resident memory against the engine opened with nothing started.

    The execution ids are made before the baseline and the handles are
    dropped at once, so neither counts; the memory is read after a full
    garbage collection. For waits, "all suspended" is the engine's count of
    armed timers reaching ``executions``; for callbacks, every invocation
    having reached its callback, then the engine's list of SUSPENDED
    executions confirming it (read after the memory, as it allocates).
    """
    if on not in ("wait", "callback"):
        raise ValueError(f"on must be 'wait' or 'callback', got {on!r}")
    ids = [f"s{i}" for i in range(executions)]
    threads_before = _threads()
    with _scratch(store_dir, f"suspend-{on}-") as path:
        with Engine(path, durability=durability, workers=workers) as engine:
            _callbacks_reached.value = 0
            gc.collect()
            threads_idle = _threads()
            mem_before = _memory_kib()
            started = time.perf_counter()
            for execution_id in ids:
                engine.start(suspend_workflow, on, execution_id=execution_id)
            all_started = time.perf_counter()
            if on == "wait":
                _wait_until(
                    lambda: engine._core.pending_timers >= executions,
                    RESULT_TIMEOUT,
                    f"{executions} timers armed",
                )
            else:
                _wait_until(
                    lambda: _callbacks_reached.value >= executions,
                    RESULT_TIMEOUT,
                    f"{executions} callbacks reached",
                )
            all_suspended = time.perf_counter()
            gc.collect()
            mem_after = _memory_kib()
            threads_suspended = _threads()
            max_rss = _max_rss_kib()
            if on == "callback":
                _wait_until(
                    lambda: _suspended_count(engine) >= executions,
                    RESULT_TIMEOUT,
                    f"{executions} executions SUSPENDED",
                    interval=0.05,
                )
                all_suspended = time.perf_counter()
            suspended = _suspended_count(engine)
            pending_timers = engine._core.pending_timers
        data_mdb = os.stat(path / "data.mdb").st_size
    per_exec = {
        f"{key}_bytes_per_execution": (mem_after[key] - mem_before[key]) * 1024 / executions
        for key in ("VmRSS", "RssAnon", "RssFile")
        if key in mem_before and key in mem_after
    }
    return {
        "suspended": suspended,
        "pending_timers": pending_timers,
        "threads_before_engine": threads_before,
        "threads_engine_idle": threads_idle,
        "threads_all_suspended": threads_suspended,
        "rss_before_kib": mem_before.get("VmRSS"),
        "rss_after_kib": mem_after.get("VmRSS"),
        "max_rss_kib": max_rss,
        **per_exec,
        "start_s": all_started - started,
        "start_and_suspend_s": all_suspended - started,
        "data_mdb_bytes": data_mdb,
    }


def measure_suspended(
    store_dir: str | os.PathLike[str],
    *,
    executions: int = 100_000,
    on: str = "wait",
    durability: str = "process",
    workers: int = DEFAULT_WORKERS,
    repeats: int = 3,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Figure 5: ``executions`` executions suspended at once (see
    :func:`suspended_sample`), ``repeats`` samples."""
    say = progress or _quiet
    samples = []
    for r in range(repeats):
        say(f"{executions} executions suspended on a {on}, round {r + 1}/{repeats}")
        samples.append(
            suspended_sample(store_dir, executions, on=on, durability=durability, workers=workers)
        )
    if any(s["suspended"] != executions for s in samples):
        counts = [s["suspended"] for s in samples]
        raise AssertionError(f"expected {executions} SUSPENDED executions, found {counts}")
    keys = [
        "threads_before_engine",
        "threads_engine_idle",
        "threads_all_suspended",
        "VmRSS_bytes_per_execution",
        "RssAnon_bytes_per_execution",
        "RssFile_bytes_per_execution",
        "rss_before_kib",
        "rss_after_kib",
        "max_rss_kib",
        "start_s",
        "start_and_suspend_s",
        "data_mdb_bytes",
    ]
    out: dict[str, Any] = {
        "executions": executions,
        "suspended_on": on,
        "durability": durability,
        "workers": workers,
        "repeats": repeats,
    }
    for key in keys:
        out[key] = _stats_or_none([s.get(key) for s in samples])
    out["threads_added_by_suspended"] = _stats_or_none(
        [
            s["threads_all_suspended"] - s["threads_engine_idle"]
            if s["threads_all_suspended"] is not None and s["threads_engine_idle"] is not None
            else None
            for s in samples
        ]
    )
    out["start_and_suspend_per_s"] = stats([executions / s["start_and_suspend_s"] for s in samples])
    return out


# -- 6. timers falling due together -------------------------------------------------


def _timers_pilot_s(
    store_dir: str | os.PathLike[str], executions: int, durability: str, workers: int
) -> float:
    """Seconds to start ``executions`` timer workflows (due in an hour) and
    have them all suspended, in a store of their own."""
    with (
        _scratch(store_dir, "timers-pilot-") as path,
        Engine(path, durability=durability, workers=workers) as engine,
    ):
        started = time.time()
        target_ms = (started + 3600) * 1000
        for i in range(executions):
            engine.start(timer_workflow, target_ms, execution_id=f"p{i}")
        _wait_until(
            lambda: engine._core.pending_timers >= executions,
            RESULT_TIMEOUT,
            f"{executions} timers armed",
        )
        return time.time() - started


def timers_sample(
    store_dir: str | os.PathLike[str],
    timers: int,
    margin_s: float,
    *,
    durability: str = "process",
    workers: int = DEFAULT_WORKERS,
) -> dict[str, Any]:
    """``timers`` executions each wait until the same moment T = now +
    ``margin_s`` (long enough for all of them to be started and suspended
    first), then record when they resumed. Lateness is the resume moment
    minus T; the resume rate is ``timers`` over (last resume - T)."""
    ids = [f"t{i}" for i in range(timers)]
    with (
        _scratch(store_dir, "timers-") as path,
        Engine(path, durability=durability, workers=workers) as engine,
    ):
        gc.collect()
        _timers_resumed.value = 0
        started = time.time()
        target_ms = (started + margin_s) * 1000
        for execution_id in ids:
            engine.start(timer_workflow, target_ms, execution_id=execution_id)
        all_started = time.time()
        _wait_until(
            lambda: engine._core.pending_timers >= timers,
            RESULT_TIMEOUT,
            f"{timers} timers armed",
        )
        all_suspended = time.time()
        # Wait without calling into the engine while the timers fire, then
        # read the results (each the moment its execution resumed).
        time.sleep(max(0.0, target_ms / 1000 - time.time()))
        _wait_until(
            lambda: _timers_resumed.value >= timers,
            RESULT_TIMEOUT,
            f"{timers} executions resumed",
            interval=0.05,
        )
        results = [engine.get(i).result(timeout=RESULT_TIMEOUT) for i in ids]
    resumed = sorted(r[0] - target_ms for r in results)
    late_vs_due = sorted(r[0] - r[1] for r in results)
    due = sorted(r[1] - target_ms for r in results)
    last = resumed[-1]
    return {
        "start_s": all_started - started,
        "start_and_suspend_s": all_suspended - started,
        "suspended_before_due_s": target_ms / 1000 - all_suspended,
        "all_suspended_before_due": all_suspended * 1000 < target_ms,
        "resumes_per_s": timers / (last / 1000) if last > 0 else None,
        "lateness_ms": {
            "first": resumed[0],
            "p50": _percentile(resumed, 50),
            "p99": _percentile(resumed, 99),
            "max": last,
        },
        "lateness_after_due_ms": {
            "p50": _percentile(late_vs_due, 50),
            "p99": _percentile(late_vs_due, 99),
            "max": late_vs_due[-1],
        },
        "due_minus_target_ms": {"min": due[0], "max": due[-1]},
    }


def measure_timers(
    store_dir: str | os.PathLike[str],
    *,
    timers: int = 100_000,
    durability: str = "process",
    workers: int = DEFAULT_WORKERS,
    margin_s: float | None = None,
    repeats: int = 3,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Figure 6: ``timers`` timers falling due together (see :func:`timers_sample`).

    ``margin_s`` is how far after the first start they fall due. By default
    the first sample takes twice what a 2,000-execution pilot run says
    starting and suspending ``timers`` executions takes, plus 1 s; later
    samples 1.25x the longest that took in the samples before, plus 1 s.
    """
    say = progress or _quiet
    margins: list[float] = []
    samples: list[dict[str, Any]] = []
    for r in range(repeats):
        if margin_s is not None:
            margin = margin_s
        elif samples:
            margin = 1.25 * max(s["start_and_suspend_s"] for s in samples) + 1.0
        else:
            say("timers: pilot run to size the margin before the timers fall due")
            pilot = 2_000
            pilot_s = _timers_pilot_s(store_dir, pilot, durability, workers)
            margin = 2.0 * timers * pilot_s / pilot + 1.0
        margins.append(margin)
        say(
            f"{timers} timers due together, round {r + 1}/{repeats} "
            f"(due {margin:.1f} s after the first start)"
        )
        samples.append(
            timers_sample(store_dir, timers, margin, durability=durability, workers=workers)
        )
    return {
        "timers": timers,
        "durability": durability,
        "workers": workers,
        "margin_s": stats(margins),
        "repeats": repeats,
        "all_suspended_before_due": all(s["all_suspended_before_due"] for s in samples),
        "suspended_before_due_s": stats([s["suspended_before_due_s"] for s in samples]),
        "start_s": stats([s["start_s"] for s in samples]),
        "start_and_suspend_s": stats([s["start_and_suspend_s"] for s in samples]),
        "resumes_per_s": _stats_or_none([s["resumes_per_s"] for s in samples]),
        "lateness_ms": {
            key: stats([s["lateness_ms"][key] for s in samples])
            for key in ("first", "p50", "p99", "max")
        },
        "lateness_after_due_ms": {
            key: stats([s["lateness_after_due_ms"][key] for s in samples])
            for key in ("p50", "p99", "max")
        },
        "due_minus_target_ms": {
            "min": min(s["due_minus_target_ms"]["min"] for s in samples),
            "max": max(s["due_minus_target_ms"]["max"] for s in samples),
        },
    }


# -- everything ---------------------------------------------------------------------


def run_concurrency(
    quick: bool = False,
    store_dir: str | os.PathLike[str] | None = None,
    repeats: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measures figures 1 to 6; ``quick`` uses small counts (a smoke run).

    ``repeats`` samples of figure 1 (default 5, 1 with ``quick``); the other
    figures, whose samples are larger, take at most 3.
    """
    say = progress or _quiet
    if repeats is None:
        repeats = 1 if quick else 5
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    few = min(repeats, 3)
    with bench_root(store_dir) as root:
        results: dict[str, Any] = {
            "machine": machine_info(root),
            "config": {"quick": quick, "repeats": repeats, "repeats_large": few},
        }
        # Figure 1: sync executions on threads, then async ones on one event loop.
        for use_asyncio in (False, True):
            for durability, total, raw in (("full", 10_000, 1_000), ("process", 20_000, 10_000)):
                key = f"{'async_' if use_asyncio else ''}steps_{durability}"
                results[key] = measure_concurrent_steps(
                    root,
                    durability,
                    concurrencies=ASYNC_CONCURRENCIES if use_asyncio else CONCURRENCIES,
                    total_steps=total // 10 if quick else total,
                    raw_commits=raw // 5 if quick else raw,
                    workers=2 if use_asyncio else None,
                    repeats=repeats,
                    progress=say,
                    use_asyncio=use_asyncio,
                )
        results["io_steps"] = measure_io_steps(
            root,
            executions=128 if quick else 512,
            workers=(1, 8, 128) if quick else IO_WORKERS,
            steps_per_execution=2 if quick else 8,
            repeats=few,
            progress=say,
        )
        results["map"] = measure_map(
            root, items=1_000 if quick else 10_000, repeats=few, progress=say
        )
        results["many_executions"] = measure_many_executions(
            root, executions=2_000 if quick else 10_000, repeats=few, progress=say
        )
        suspended = 20_000 if quick else 100_000
        results["suspended_wait"] = measure_suspended(
            root, executions=suspended, on="wait", repeats=few, progress=say
        )
        results["suspended_callback"] = measure_suspended(
            root, executions=suspended, on="callback", repeats=1 if quick else 2, progress=say
        )
        results["timers"] = measure_timers(
            root, timers=20_000 if quick else 100_000, repeats=few, progress=say
        )
        results["machine"]["load_average_end"] = _load_average()
        return results


# -- report -------------------------------------------------------------------------


def _table(rows: list[tuple[str, str, str]]) -> list[str]:
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    return [
        f"  {label:<{width}}  {value:>{vwidth}}  {note}".rstrip() for label, value, note in rows
    ]


def _ms(s: dict[str, Any]) -> str:
    return f"{_spread(s, 1)} ms"


def format_concurrency_report(results: dict[str, Any]) -> str:
    """A readable table of :func:`run_concurrency`'s results."""
    lines = report_header(results, "perdure bench --suite concurrency")
    cfg = results["config"]
    lines.append(
        f"  config      repeats={cfg['repeats']} (figure 1), {cfg['repeats_large']} (others), "
        f"quick={cfg['quick']}; medians [min .. max]"
    )
    sections: list[tuple[str, list[tuple[str, str, str]]]] = []

    figure_one = (
        ("steps_full", "synced"),
        ("steps_process", "unsynced"),
        ("async_steps_full", "synced"),
        ("async_steps_process", "unsynced"),
    )
    for key, versus in figure_one:
        if key not in results:
            continue
        fig = results[key]
        rows: list[tuple[str, str, str]] = []
        raw = fig["raw_lmdb"]
        if raw["available"]:
            rows.append((f"raw LMDB {versus} commits/s", _spread(raw["commits_per_s"]), ""))
        else:
            rows.append((f"raw LMDB {versus} commits/s", "n/a", raw["error"]))
        for row in fig["rows"]:
            ratio = row["ratio_to_raw"]
            note = f"{ratio:.2f}x raw {versus}; " if ratio is not None else ""
            note += (
                f"{row['steps']:,} steps ({row['steps_per_execution']:,} each), "
                f"starts took {_fmt(row['start_s']['median'], 2)} s"
            )
            label = f"{row['concurrency']} execution{'s' if row['concurrency'] > 1 else ''} " + (
                "on one event loop"
                if fig.get("asyncio")
                else f"on {row['workers']} worker{'s' if row['workers'] > 1 else ''}"
            )
            rows.append((label, _spread(row["steps_per_s"]), note))
        kind = "async executions" if fig.get("asyncio") else "executions"
        sections.append(
            (f"1. durable steps/s, {kind} in flight, durability {fig['durability']}", rows)
        )

    io = results["io_steps"]
    rows = []
    for row in io["rows"]:
        speedup = next((v for k, v in row.items() if k.startswith("speedup_vs_")), None)
        note = f"sleep bound {_fmt(row['sleep_bound_steps_per_s'])}"
        if speedup is not None:
            note += f"; {speedup:.1f}x the first row"
        note += f"; starts took {_fmt(row['start_s']['median'], 2)} s"
        workers = f"{row['workers']} worker{'s' if row['workers'] > 1 else ''}"
        rows.append((workers, _spread(row["steps_per_s"]), note))
    sections.append(
        (
            f"2. steps/s, steps blocking {io['block_ms']:g} ms, {io['executions']} executions x "
            f"{io['steps_per_execution']} steps, durability {io['durability']}",
            rows,
        )
    )

    mp = results["map"]
    rows = [
        (f"durability {row['durability']}", _spread(row["items_per_s"]), "") for row in mp["rows"]
    ]
    sections.append((f"3. map items/s, {mp['items']:,} items, {mp['workers']} workers", rows))

    many = results["many_executions"]
    rows = [
        ("executions/s", _spread(many["executions_per_s"]), "all results checked"),
        ("  steps/s", _spread(many["steps_per_s"]), ""),
        ("  starts/s (engine.start calls)", _spread(many["starts_per_s"]), ""),
    ]
    sections.append(
        (
            f"4. {many['executions']:,} executions x 2 steps started at once, durability "
            f"{many['durability']}, {many['workers']} workers",
            rows,
        )
    )

    for key in ("suspended_wait", "suspended_callback"):
        sus = results.get(key)
        if sus is None:
            continue
        rows = [
            (
                "threads: before engine / engine idle / all suspended",
                f"{_fmt(sus['threads_before_engine']['median'])} / "
                f"{_fmt(sus['threads_engine_idle']['median'])} / "
                f"{_fmt(sus['threads_all_suspended']['median'])}",
                f"{_fmt(sus['threads_added_by_suspended']['median'])} added by the suspended",
            ),
            (
                "RSS growth, bytes/suspended execution",
                _spread(sus["VmRSS_bytes_per_execution"]),
                f"anon {_fmt(sus['RssAnon_bytes_per_execution']['median'])}, "
                f"file (store map) {_fmt(sus['RssFile_bytes_per_execution']['median'])}",
            ),
            (
                "RSS before / after, KiB",
                f"{_fmt(sus['rss_before_kib']['median'])} / {_fmt(sus['rss_after_kib']['median'])}",
                f"process peak {_fmt(sus['max_rss_kib']['max'])} KiB",
            ),
            (
                "started and suspended/s",
                _spread(sus["start_and_suspend_per_s"]),
                f"all in {_fmt(sus['start_and_suspend_s']['median'], 1)} s",
            ),
        ]
        sections.append(
            (
                f"5. {sus['executions']:,} executions suspended on a {sus['suspended_on']}, "
                f"durability {sus['durability']}, {sus['workers']} workers",
                rows,
            )
        )

    tm = results["timers"]
    late = tm["lateness_ms"]
    after = tm["lateness_after_due_ms"]
    rows = [
        ("resumes/s (T to last resume)", _spread(tm["resumes_per_s"]), ""),
        ("lateness p50", _ms(late["p50"]), "resume moment - T"),
        ("lateness p99", _ms(late["p99"]), ""),
        ("lateness max", _ms(late["max"]), ""),
        ("lateness of the first resume", _ms(late["first"]), ""),
        (
            "lateness after own due moment p50 / p99",
            f"{_fmt(after['p50']['median'], 1)} / {_fmt(after['p99']['median'], 1)} ms",
            f"due moments within [{_fmt(tm['due_minus_target_ms']['min'], 1)} .. "
            f"{_fmt(tm['due_minus_target_ms']['max'], 1)}] ms of T",
        ),
        (
            "all suspended before T",
            str(tm["all_suspended_before_due"]),
            f"{_fmt(tm['suspended_before_due_s']['min'], 1)} s to spare at least; "
            f"T = first start + {_spread(tm['margin_s'], 1)} s",
        ),
    ]
    sections.append(
        (
            f"6. {tm['timers']:,} timers due at the same moment T, durability "
            f"{tm['durability']}, {tm['workers']} workers",
            rows,
        )
    )

    for title, rows in sections:
        lines.append("")
        lines.append(f"  {title}")
        lines.extend("  " + line for line in _table(rows))
    return "\n".join(lines)
