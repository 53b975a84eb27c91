"""Measurements behind ``perdure bench`` and the pytest-benchmark suites in ``bench/``.

Each ``measure_*`` function runs one figure and returns a plain dict; the
``*_rate`` helpers run one sample. :func:`run_all` repeats every figure and
reports medians with their spread. Nothing here depends on pytest; the pure
Python ``lmdb`` package (a test/bench extra) is imported lazily, only for the
raw-LMDB baseline and the page count of the journal database, and its absence
is reported, not raised.

Figures (DESIGN.md section 7):

- raw LMDB commits/s of the disk the store lives on: one small put per write
  transaction, synced (fsync per commit, the LMDB default) and unsynced;
- sequential durable steps/s of one execution at durability ``full`` and
  ``process``, as ratios to those raw rates measured in the same run;
- replay: step results/s when re-running one stored 10,000-step execution
  with nothing new to do, split into the Rust load + index and the Python re-run;
- bytes on disk per completed step with a small integer result.
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from perdure.context import DurableContext, _InvocationState
from perdure.engine import Engine
from perdure.registry import durable
from perdure.serdes import SerDesContext, deserialize

__all__ = [
    "RawLmdb",
    "bytes_per_step",
    "machine_info",
    "measure_bytes_per_step",
    "measure_raw_lmdb",
    "measure_replay",
    "measure_replay_scaling",
    "measure_sequential",
    "raw_lmdb_commit_rate",
    "replay_execution",
    "replay_load",
    "replay_once",
    "replay_rerun",
    "run_all",
    "sequential_step_rate",
    "stats",
]

Progress = Callable[[str], None]

LMDB_MISSING = (
    "the 'lmdb' package is not installed (pip install lmdb, or perdure's test extra); "
    "raw-LMDB baselines and journal page counts are skipped"
)


def _quiet(_: str) -> None:
    pass


# -- workflows ----------------------------------------------------------------------


@durable(name="perdure.bench.sequential")
def sequential_workflow(ctx: DurableContext, spec: dict[str, int]) -> list[float]:
    """``warmup`` steps, then ``steps`` timed steps, each returning a small int.

    Returns the perf_counter timestamps around the timed steps, so the rate
    excludes opening the engine, starting the execution and closing.
    """
    for i in range(spec["warmup"]):
        ctx.step(lambda _, i=i: i)  # type: ignore[misc]
    started = time.perf_counter()
    for i in range(spec["steps"]):
        ctx.step(lambda _, i=i: i)  # type: ignore[misc]
    return [started, time.perf_counter()]


@durable(name="perdure.bench.steps")
def steps_workflow(ctx: DurableContext, steps: int) -> int:
    """``steps`` steps returning their index; returns the sum (checked on replay)."""
    total = 0
    for i in range(steps):
        total += ctx.step(lambda _, i=i: i)  # type: ignore[misc]
    return total


# -- helpers ------------------------------------------------------------------------


def stats(samples: list[float]) -> dict[str, Any]:
    """Median and spread of a list of samples."""
    if not samples:
        return {"median": None, "min": None, "max": None, "samples": []}
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "samples": list(samples),
    }


@contextmanager
def _scratch(parent: str | os.PathLike[str] | None, prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def bench_root(store_dir: str | os.PathLike[str] | None) -> Iterator[Path]:
    """The folder a suite's stores go under: ``store_dir`` (kept), or a
    temporary one removed afterwards."""
    if store_dir is not None:
        root = Path(store_dir)
        root.mkdir(parents=True, exist_ok=True)
        yield root
        return
    with _scratch(None, "perdure-bench-") as root:
        yield root


def _import_lmdb() -> Any:
    try:
        import lmdb  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return None
    return lmdb


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _filesystem(path: str) -> dict[str, str]:
    """Mount point, device and type of the filesystem holding ``path`` (Linux)."""
    real = os.path.realpath(path)
    best: tuple[str, str, str] | None = None
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                device, mount, fstype = fields[0], fields[1].replace("\\040", " "), fields[2]
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and (best is None or len(mount) >= len(best[1])):
                    best = (device, mount, fstype)
    except OSError:
        pass
    if best is None:
        return {"type": "unknown", "mount": "unknown", "device": "unknown"}
    return {"device": best[0], "mount": best[1], "type": best[2]}


def _elf_section_names(path: str) -> list[str] | None:
    """Section names of a 64-bit little-endian ELF file, or None if it is not one."""
    import struct

    with open(path, "rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return None
        shoff = struct.unpack_from("<Q", header, 0x28)[0]
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", header, 0x3A)
        if not shoff or not shnum or shstrndx >= shnum:
            return None
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        sections = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(shnum)]
        _, _, _, _, str_offset, str_size = sections[shstrndx]
        f.seek(str_offset)
        strings = f.read(str_size)
    names = []
    for name_offset, *_ in sections:
        end = strings.find(b"\0", name_offset)
        names.append(strings[name_offset:end].decode("ascii", "replace"))
    return names


def _extension_has_debug_info() -> bool | None:
    """True when perdure._core carries DWARF debug info (a ``.debug_info``
    section): a debug (maturin develop) build, whose figures mean little.
    None when it cannot be told (not an ELF file)."""
    from perdure import _core

    path = getattr(_core, "__file__", None)
    if not path:
        return None
    try:
        names = _elf_section_names(path)
    except (OSError, ValueError):
        return None
    return None if names is None else ".debug_info" in names


def machine_info(store_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What the figures were measured on."""
    import perdure

    lmdb = _import_lmdb()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "filesystem": _filesystem(str(store_dir)),
        "store_dir": str(store_dir),
        "python": platform.python_version(),
        "perdure": perdure.__version__,
        "extension_debug_info": _extension_has_debug_info(),
        "lmdb_package": getattr(lmdb, "__version__", None) if lmdb else None,
        "load_average": _load_average(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _settle() -> None:
    """Flushes dirty pages to disk (os.sync) before a CPU-bound measurement."""
    if hasattr(os, "sync"):
        os.sync()


def _load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine skews the figures."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


# -- raw LMDB -----------------------------------------------------------------------


class RawLmdb:
    """A plain LMDB env (the ``lmdb`` package) for the raw commit baseline:
    one 24-byte value under a 16-byte key per write transaction, about the
    size of a step's journal record."""

    VALUE = b"\x01" * 24

    def __init__(self, path: str | os.PathLike[str], *, sync: bool = True) -> None:
        lmdb = _import_lmdb()
        if lmdb is None:
            raise RuntimeError(LMDB_MISSING)
        # sync=True is LMDB's default: data pages and the meta page are
        # fsynced on every commit (as durability "full"). sync=False only
        # writes to the OS (as "process").
        self.env = lmdb.open(str(path), map_size=256 << 20, sync=sync, metasync=sync, max_dbs=2)
        self.db = self.env.open_db(b"journal")
        self.next_key = 0
        self.commit(16)  # the first commits lay out the file's first pages

    def commit(self, commits: int) -> None:
        """``commits`` write transactions of one put each."""
        env, db, value = self.env, self.db, self.VALUE
        start = self.next_key
        for key in range(start, start + commits):
            with env.begin(write=True, db=db) as txn:
                txn.put(key.to_bytes(16, "big"), value)
        self.next_key = start + commits

    def close(self) -> None:
        self.env.close()


def raw_lmdb_commit_rate(
    store_dir: str | os.PathLike[str], commits: int, *, sync: bool = True
) -> float | None:
    """Commits/s of one small put per write transaction in a fresh LMDB env
    under ``store_dir`` (so on the store's filesystem), synced or not. None
    if the lmdb package is missing."""
    if _import_lmdb() is None:
        return None
    with _scratch(store_dir, "raw-lmdb-") as path:
        raw = RawLmdb(path, sync=sync)
        try:
            started = time.perf_counter()
            raw.commit(commits)
            elapsed = time.perf_counter() - started
        finally:
            raw.close()
    return commits / elapsed


def measure_raw_lmdb(
    store_dir: str | os.PathLike[str], commits: int, *, sync: bool = True, repeats: int = 3
) -> dict[str, Any]:
    if _import_lmdb() is None:
        return {"available": False, "error": LMDB_MISSING}
    samples = [raw_lmdb_commit_rate(store_dir, commits, sync=sync) for _ in range(repeats)]
    return {
        "available": True,
        "commits": commits,
        "sync": sync,
        "commits_per_s": stats([s for s in samples if s is not None]),
    }


# -- sequential steps ---------------------------------------------------------------


def sequential_step_rate(
    store_dir: str | os.PathLike[str], steps: int, durability: str, *, warmup: int | None = None
) -> float:
    """Steady-state steps/s of one execution doing ``steps`` sequential steps
    (timed inside the workflow, after ``warmup`` untimed steps), in a fresh store."""
    if warmup is None:
        warmup = min(100, max(1, steps // 10))
    with (
        _scratch(store_dir, f"seq-{durability}-") as path,
        Engine(path, durability=durability, workers=1) as engine,
    ):
        started, ended = engine.run(
            sequential_workflow, {"steps": steps, "warmup": warmup}, timeout=3600
        )
    return float(steps / (ended - started))


def measure_sequential(
    store_dir: str | os.PathLike[str],
    steps: int,
    durability: str,
    *,
    repeats: int = 3,
) -> dict[str, Any]:
    samples = [sequential_step_rate(store_dir, steps, durability) for _ in range(repeats)]
    return {"durability": durability, "steps": steps, "steps_per_s": stats(samples)}


# -- replay -------------------------------------------------------------------------


def replay_execution(engine: Engine, steps: int) -> int:
    """Runs ``steps_workflow(steps)`` to completion and returns its exec key."""
    handle = engine.start(steps_workflow, steps)
    assert handle.result(timeout=3600) == steps * (steps - 1) // 2
    return handle._exec_key


def replay_load(engine: Engine, exec_key: int) -> Any:
    """The Rust half of a replay: one read transaction loads the journal and
    decodes it into the replay index (what an invocation starts with)."""
    return engine._core.load(exec_key)


def replay_rerun(engine: Engine, invocation: Any, steps: int) -> None:
    """The Python half: runs the workflow function from the top against the
    loaded index, as an invocation does, with nothing new to do."""
    state = _InvocationState(engine._core, invocation, engine.max_payload_size)
    value: int = deserialize(None, invocation.input, SerDesContext("input", ""))
    ctx = DurableContext(state)
    result = steps_workflow(ctx, value)
    if result != steps * (steps - 1) // 2 or state.deferred or not ctx.is_replaying():
        raise AssertionError("replay did new work: the stored execution is not what was built")


def replay_once(engine: Engine, exec_key: int, steps: int) -> tuple[float, float]:
    """One replay of the stored ``steps``-step execution. Returns (seconds in
    the Rust load + index, seconds in the Python re-run)."""
    started = time.perf_counter()
    invocation = replay_load(engine, exec_key)
    loaded = time.perf_counter()
    replay_rerun(engine, invocation, steps)
    return loaded - started, time.perf_counter() - loaded


def _replay_samples(
    engine: Engine, exec_key: int, steps: int, rounds: int
) -> dict[str, list[float]]:
    load_s: list[float] = []
    rerun_s: list[float] = []
    replay_once(engine, exec_key, steps)  # warm-up: page cache, code paths
    for _ in range(rounds):
        gc.collect()  # each round starts with a clean heap; the collector stays on
        a, b = replay_once(engine, exec_key, steps)
        load_s.append(a)
        rerun_s.append(b)
    return {"load_s": load_s, "rerun_s": rerun_s}


def _replay_figures(steps: int, load_s: list[float], rerun_s: list[float]) -> dict[str, Any]:
    return {
        "steps": steps,
        "rounds": len(load_s),
        "ops_per_s": stats([steps / (a + b) for a, b in zip(load_s, rerun_s, strict=True)]),
        "load_index_ops_per_s": stats([steps / a for a in load_s]),
        "python_rerun_ops_per_s": stats([steps / b for b in rerun_s]),
        "load_index_ms": stats([a * 1000 for a in load_s]),
        "python_rerun_ms": stats([b * 1000 for b in rerun_s]),
    }


def measure_replay(
    store_dir: str | os.PathLike[str], steps: int = 10_000, *, rounds: int = 5
) -> dict[str, Any]:
    """Step results/s replaying one ``steps``-step execution with small results."""
    with (
        _scratch(store_dir, "replay-") as path,
        Engine(path, durability="none", workers=1) as engine,
    ):
        exec_key = replay_execution(engine, steps)
        samples = _replay_samples(engine, exec_key, steps, rounds)
    return _replay_figures(steps, samples["load_s"], samples["rerun_s"])


def measure_replay_scaling(
    store_dir: str | os.PathLike[str],
    sizes: tuple[int, ...] = (100, 1_000, 10_000, 100_000),
    *,
    rounds: int = 5,
    ops_per_round: int = 100_000,
) -> list[dict[str, Any]]:
    """Replay ops/s (load + re-run) for executions of each size: flat means no
    per-operation cost that grows with the history.

    Every round replays each size in turn, ``ops_per_round / size`` times
    (at least once), so a change in the machine's load hits all sizes alike;
    a round's rate is its operations over its summed time."""
    with (
        _scratch(store_dir, "replay-scaling-") as path,
        Engine(path, durability="none", workers=1) as engine,
    ):
        keys = {size: replay_execution(engine, size) for size in sizes}
        for size in sizes:
            replay_once(engine, keys[size], size)  # warm-up
        per_size: dict[int, dict[str, list[float]]] = {
            size: {"total": [], "load": [], "rerun": []} for size in sizes
        }
        for _ in range(rounds):
            for size in sizes:
                reps = max(1, ops_per_round // size)
                gc.collect()
                load = rerun = 0.0
                for _ in range(reps):
                    a, b = replay_once(engine, keys[size], size)
                    load += a
                    rerun += b
                ops = size * reps
                per_size[size]["total"].append(ops / (load + rerun))
                per_size[size]["load"].append(ops / load)
                per_size[size]["rerun"].append(ops / rerun)
    return [
        {
            "steps": size,
            "rounds": rounds,
            "replays_per_round": max(1, ops_per_round // size),
            "ops_per_s": stats(per_size[size]["total"]),
            "load_index_ops_per_s": stats(per_size[size]["load"]),
            "python_rerun_ops_per_s": stats(per_size[size]["rerun"]),
        }
        for size in sizes
    ]


# -- bytes on disk ------------------------------------------------------------------


def _journal_stat(path: Path) -> dict[str, Any] | None:
    lmdb = _import_lmdb()
    if lmdb is None:
        return None
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=16, subdir=True)
    try:
        db = env.open_db(b"journal", create=False)
        with env.begin(db=db) as txn:
            st = txn.stat(db)
            logical = 0
            for key, value in txn.cursor():
                logical += len(key) + len(value)
        total_pages = 0
        with env.begin() as txn:
            names = [bytes(k) for k, _ in txn.cursor()]
        for name in names:
            sub = env.open_db(name, create=False)
            with env.begin(db=sub) as txn:
                s = txn.stat(sub)
            total_pages += s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]
        main = env.stat()
        total_pages += main["branch_pages"] + main["leaf_pages"] + main["overflow_pages"]
        info = env.info()
    finally:
        env.close()
    pages = st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
    return {
        "psize": st["psize"],
        "entries": st["entries"],
        "depth": st["depth"],
        "branch_pages": st["branch_pages"],
        "leaf_pages": st["leaf_pages"],
        "overflow_pages": st["overflow_pages"],
        "journal_bytes": pages * st["psize"],
        "logical_bytes": logical,
        "all_dbs_bytes": total_pages * st["psize"],
        "last_pgno": info["last_pgno"],
    }


def bytes_per_step(
    store_dir: str | os.PathLike[str], steps: int = 100_000, executions: int = 4
) -> dict[str, Any]:
    """Bytes on disk per completed step with a small int result.

    Two measures: (1) the journal database's pages (branch + leaf + overflow)
    x page size / entries, read with the lmdb package; (2) growth of
    data.mdb's size per step over ``steps`` steps run as ``executions``
    sequential executions, after a 1,000-step warm-up execution has laid out
    the store's first pages. Durability "none" (bytes do not depend on it).
    """
    per_exec = max(1, steps // executions)
    total = per_exec * executions
    warmup = 1_000
    with _scratch(store_dir, "bytes-") as path:
        data = path / "data.mdb"
        with Engine(path, durability="none", workers=1) as engine:
            replay_execution(engine, warmup)
            base = os.stat(data)
            for _ in range(executions):
                replay_execution(engine, per_exec)
        end = os.stat(data)
        journal = _journal_stat(path)
    growth = end.st_size - base.st_size
    out: dict[str, Any] = {
        "steps": total,
        "executions": executions,
        "data_mdb_growth_bytes": growth,
        "data_mdb_growth_per_step": growth / total,
        "data_mdb_allocated_growth_per_step": (end.st_blocks - base.st_blocks) * 512 / total,
        "data_mdb_bytes_end": end.st_size,
    }
    if journal is None:
        out["journal"] = {"available": False, "error": LMDB_MISSING}
    else:
        all_steps = total + warmup
        out["journal"] = {
            "available": True,
            **journal,
            "bytes_per_entry": journal["journal_bytes"] / journal["entries"],
            "bytes_per_step": journal["journal_bytes"] / all_steps,
            "logical_bytes_per_entry": journal["logical_bytes"] / journal["entries"],
            "all_dbs_bytes_per_step": journal["all_dbs_bytes"] / all_steps,
            "steps_counted": all_steps,
        }
    return out


def measure_bytes_per_step(
    store_dir: str | os.PathLike[str], steps: int = 100_000, executions: int = 4
) -> dict[str, Any]:
    return bytes_per_step(store_dir, steps, executions)


# -- everything ---------------------------------------------------------------------


def run_all(
    quick: bool = False,
    *,
    store_dir: str | os.PathLike[str] | None = None,
    steps: int | None = None,
    repeats: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measures every figure; ``quick`` uses small counts (a smoke run, seconds).

    ``steps`` is the number of timed sequential steps at "full" durability and
    of synced raw-LMDB commits; "process" and unsynced commits use 10x that.
    Each figure is sampled ``repeats`` times, the sequential and raw-LMDB
    samples interleaved so that a change in the disk's speed hits both; the
    replay samples are spread over the same rounds, so that a burst of other
    work on the machine skews a few samples rather than the whole figure.
    """
    say = progress or _quiet
    if steps is None:
        steps = 300 if quick else 3_000
    if repeats is None:
        repeats = 1 if quick else 5
    if steps < 1 or repeats < 1:
        raise ValueError("steps and repeats must be >= 1")
    fast_steps = steps * 10
    with bench_root(store_dir) as root:
        results: dict[str, Any] = {
            "machine": machine_info(root),
            "config": {
                "quick": quick,
                "steps": steps,
                "fast_steps": fast_steps,
                "repeats": repeats,
            },
        }
        lmdb_ok = _import_lmdb() is not None
        replay_steps = 10_000
        replay_per_round = 3 if quick else 4
        say(f"building one {replay_steps}-step execution to replay")
        with ExitStack() as replay_stack:
            replay_path = replay_stack.enter_context(_scratch(root, "replay-"))
            replay_engine = replay_stack.enter_context(
                Engine(replay_path, durability="none", workers=1)
            )
            replay_key = replay_execution(replay_engine, replay_steps)
            replay_once(replay_engine, replay_key, replay_steps)  # warm-up
            replay_load_s: list[float] = []
            replay_rerun_s: list[float] = []
            raw_sync: list[float] = []
            raw_nosync: list[float] = []
            full: list[float] = []
            process: list[float] = []
            for r in range(repeats):
                say(f"round {r + 1}/{repeats}: raw LMDB synced commits ({steps})")
                if lmdb_ok:
                    raw_sync.append(raw_lmdb_commit_rate(root, steps, sync=True) or 0.0)
                say(f"round {r + 1}/{repeats}: sequential steps at full ({steps})")
                full.append(sequential_step_rate(root, steps, "full"))
                say(f"round {r + 1}/{repeats}: raw LMDB unsynced commits ({fast_steps})")
                if lmdb_ok:
                    raw_nosync.append(raw_lmdb_commit_rate(root, fast_steps, sync=False) or 0.0)
                say(f"round {r + 1}/{repeats}: sequential steps at process ({fast_steps})")
                process.append(sequential_step_rate(root, fast_steps, "process"))
                say(f"round {r + 1}/{repeats}: replay of the {replay_steps}-step execution")
                # Replay is CPU work: let the kernel finish writing back what the
                # runs above left dirty, so that it does not compete with it.
                _settle()
                samples = _replay_samples(replay_engine, replay_key, replay_steps, replay_per_round)
                replay_load_s += samples["load_s"]
                replay_rerun_s += samples["rerun_s"]
        if lmdb_ok:
            results["raw_lmdb"] = {
                "available": True,
                "synced_commits_per_s": stats(raw_sync),
                "unsynced_commits_per_s": stats(raw_nosync),
            }
        else:
            results["raw_lmdb"] = {"available": False, "error": LMDB_MISSING}

        def sequential(samples: list[float], raw: list[float], durability: str, n: int) -> Any:
            out: dict[str, Any] = {"durability": durability, "steps": n}
            out["steps_per_s"] = stats(samples)
            if raw:
                out["ratio_to_raw"] = statistics.median(samples) / statistics.median(raw)
                out["ratio_to_raw_per_round"] = stats(
                    [s / w for s, w in zip(samples, raw, strict=True)]
                )
            return out

        results["sequential_full"] = sequential(full, raw_sync, "full", steps)
        results["sequential_process"] = sequential(process, raw_nosync, "process", fast_steps)

        results["replay"] = _replay_figures(replay_steps, replay_load_s, replay_rerun_s)
        sizes = (100, 1_000, 10_000) if quick else (100, 1_000, 10_000, 100_000)
        _settle()
        say(f"replay scaling over {', '.join(map(str, sizes))} steps")
        results["replay_scaling"] = measure_replay_scaling(
            root, sizes, rounds=3 if quick else 7, ops_per_round=20_000 if quick else 100_000
        )
        bytes_steps = 20_000 if quick else 100_000
        say(f"bytes on disk per step ({bytes_steps} steps)")
        results["bytes_per_step"] = measure_bytes_per_step(root, bytes_steps, 4)
        results["machine"]["load_average_end"] = _load_average()
        return results


# -- report -------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _spread(s: dict[str, Any], digits: int = 0) -> str:
    if s.get("median") is None:
        return "n/a"
    n = len(s["samples"])
    if n == 1:
        return _fmt(s["median"], digits)
    return f"{_fmt(s['median'], digits)}  [{_fmt(s['min'], digits)} .. {_fmt(s['max'], digits)}]"


def report_header(results: dict[str, Any], title: str) -> list[str]:
    """The lines naming the machine, the store's filesystem and the software."""
    m = results["machine"]
    fs = m["filesystem"]
    lines = [
        title,
        f"  date        {m['date']}",
        f"  cpu         {m['cpu']} ({m['cores']} cores)",
        f"  kernel      {m['kernel']}; load average {m.get('load_average')} at start, "
        f"{m.get('load_average_end')} at end",
        f"  store dir   {m['store_dir']} "
        f"({fs['type']} on {fs['device']}, mounted at {fs['mount']})",
        f"  python      {m['python']}; perdure {m['perdure']}; lmdb package {m['lmdb_package']}",
    ]
    if m.get("extension_debug_info"):
        lines.append(
            "  WARNING     perdure._core has debug info: probably a debug build "
            "(maturin develop); build a release wheel for real figures"
        )
    return lines


def format_report(results: dict[str, Any]) -> str:
    """A readable table of :func:`run_all`'s results."""
    lines = report_header(results, "perdure bench")
    cfg = results["config"]
    lines.append(
        f"  config      steps={cfg['steps']} (x10 at process), repeats={cfg['repeats']}, "
        f"quick={cfg['quick']}; medians [min .. max]"
    )
    lines.append("")
    raw = results["raw_lmdb"]
    rows: list[tuple[str, str, str]] = []
    if raw["available"]:
        rows.append(("raw LMDB synced commits/s", _spread(raw["synced_commits_per_s"]), ""))
        rows.append(("raw LMDB unsynced commits/s", _spread(raw["unsynced_commits_per_s"]), ""))
    else:
        rows.append(("raw LMDB commits/s", "n/a", raw["error"]))
    for key, label, versus in (
        ("sequential_full", "sequential steps/s, full", "raw synced"),
        ("sequential_process", "sequential steps/s, process", "raw unsynced"),
    ):
        seq = results[key]
        ratio = seq.get("ratio_to_raw")
        note = f"{ratio:.2f}x {versus} commits" if ratio is not None else ""
        rows.append((label, _spread(seq["steps_per_s"]), note))
    rep = results["replay"]
    rows.append(
        (
            f"replay ops/s ({rep['steps']:,} steps)",
            _spread(rep["ops_per_s"]),
            f"load+index {_fmt(rep['load_index_ms']['median'], 1)} ms, "
            f"python re-run {_fmt(rep['python_rerun_ms']['median'], 1)} ms",
        )
    )
    rows.append(("  load+index only, ops/s", _spread(rep["load_index_ops_per_s"]), ""))
    rows.append(("  python re-run only, ops/s", _spread(rep["python_rerun_ops_per_s"]), ""))
    for item in results.get("replay_scaling", []):
        rows.append(
            (
                f"replay ops/s, {item['steps']:,}-step execution",
                _spread(item["ops_per_s"]),
                f"{item['rounds']} rounds of {item['replays_per_round']} replays",
            )
        )
    b = results["bytes_per_step"]
    j = b["journal"]
    if j["available"]:
        rows.append(
            (
                "journal pages, bytes/entry",
                _fmt(j["bytes_per_entry"], 1),
                f"{j['entries']:,} entries, {j['leaf_pages']:,} leaf + {j['branch_pages']:,} "
                f"branch pages of {j['psize']}",
            )
        )
        rows.append(
            (
                "journal pages, bytes/step",
                _fmt(j["bytes_per_step"], 1),
                f"key+value {_fmt(j['logical_bytes_per_entry'], 1)} bytes/entry; "
                f"all databases {_fmt(j['all_dbs_bytes_per_step'], 1)} bytes/step",
            )
        )
    else:
        rows.append(("journal pages, bytes/step", "n/a", j["error"]))
    rows.append(
        (
            "data.mdb growth, bytes/step",
            _fmt(b["data_mdb_growth_per_step"], 1),
            f"over {b['steps']:,} steps in {b['executions']} executions",
        )
    )
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    for label, value, note in rows:
        lines.append(f"  {label:<{width}}  {value:>{vwidth}}  {note}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - thin wrapper
    """``python -m perdure.bench``: same as ``perdure bench``."""
    from perdure.cli import main as cli_main

    return cli_main(["bench", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
