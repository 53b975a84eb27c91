"""A full disk stops invocations, never fails executions (issue 9).

Each test mounts a small file system of its own (a tmpfs, or an ext4 image
on a loop device, where the store's file cannot grow once the disk is
full), puts the store on it, and fills the disk with a ballast file while
workflows run steps whose results need new pages. A commit that meets the
full disk stores nothing; the invocation stops where its journal ends; a
caller waiting for the result gets StoreFullError; a direct write
(``start``, a callback) raises StoreFullError. Once the ballast is deleted,
the same engine, or one reopened in another process, finishes every
execution with the values its workflow acknowledged. Mounting needs root:
elsewhere the tests skip, saying so (under CI, which runs as root, they
fail instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diskfull_workflows as W
import perdure
import pytest
from perdure import StoreError, StoreFullError
from support import lmdb_only, wait_for

pytestmark = lmdb_only("a full tmpfs/ext4 under the LMDB store directory and its map size")

HERE = Path(__file__).resolve().parent
STEPS = 24
EXECUTIONS = 3


@contextlib.contextmanager
def small_disk(tmp_path: Path, kind: str, size_mib: int) -> Iterator[Path]:
    """A fresh file system of ``size_mib`` MiB mounted under ``tmp_path``;
    unmounted (and its image removed) afterwards."""
    mnt = tmp_path / f"{kind}-mnt"
    mnt.mkdir()
    image = tmp_path / f"{kind}.img"
    if kind == "tmpfs":
        command = ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "perdure-test", str(mnt)]
    else:
        with open(image, "wb") as f:
            f.truncate(size_mib << 20)
        made = subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], capture_output=True, text=True
        )
        if made.returncode != 0:
            _cannot(f"mkfs.ext4 failed: {made.stderr.strip()}")
        command = ["mount", "-o", "loop", str(image), str(mnt)]
    if os.geteuid() != 0:
        _cannot("mounting a small file system needs root")
    mounted = subprocess.run(command, capture_output=True, text=True)
    if mounted.returncode != 0:
        _cannot(f"cannot mount a {kind} file system here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        gc.collect()  # engines of the test let go of the store's files
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)
        image.unlink(missing_ok=True)


def _cannot(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI runs as root and must mount: {reason}")
    pytest.skip(reason)


def fill_disk(mnt: Path) -> Path:
    """Writes a ballast file until the file system is full."""
    ballast = mnt / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    block = b"\0" * (64 << 10)
    try:
        while True:
            os.write(fd, block)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
        small = b"\0" * 512
        with contextlib.suppress(OSError):  # the last partial blocks
            while True:
                os.write(fd, small)
    finally:
        os.close(fd)
    return ballast


def args_for(tmp_path: Path, steps: int = STEPS) -> dict[str, Any]:
    return {"gate": str(tmp_path / "gate"), "ack": str(tmp_path / "acks"), "steps": steps}


def check_acks(tmp_path: Path, results: dict[str, list[str]], steps: int = STEPS) -> None:
    """Every result is complete, and every value a workflow acknowledged is
    the one its execution ended with (one value per step, ever)."""
    for eid, hashes in results.items():
        assert len(hashes) == steps, (eid, len(hashes))
    acks = W.read_acks(tmp_path / "acks")
    assert acks, "no step was acknowledged"
    for (eid, index), values in acks.items():
        assert values == {results[eid][index]}, (eid, index, values, results[eid][index])


def assert_nothing_failed(engine: perdure.Engine, ids: list[str]) -> None:
    for eid in ids:
        handle = engine.get(eid)
        assert handle.info().status in ("PENDING", "RUNNING", "SUSPENDED", "SUCCEEDED"), eid
        kinds = {event["EventType"] for event in handle.history()}
        assert not any("Failed" in kind for kind in kinds), (eid, kinds)


@pytest.mark.parametrize(
    ("kind", "size_mib", "map_size"), [("tmpfs", 4, None), ("ext4", 8, 1 << 20)]
)
def test_same_engine_finishes_once_space_returns(
    tmp_path: Path, kind: str, size_mib: int, map_size: int | None
) -> None:
    ids = [f"{kind}-{i}" for i in range(EXECUTIONS)]
    with small_disk(tmp_path, kind, size_mib) as mnt:
        engine = perdure.Engine(mnt / "store", workers=2, map_size=map_size)
        try:
            handles = [engine.start(W.fill, args_for(tmp_path), execution_id=eid) for eid in ids]
            ballast = fill_disk(mnt)
            (tmp_path / "gate").touch()
            # A caller waiting for a result learns that the disk is full.
            with pytest.raises(StoreFullError) as raised:
                handles[0].result(timeout=30)
            assert raised.value.storage_failed
            assert "disk is full" in str(raised.value)
            assert_nothing_failed(engine, ids)
            assert engine.list(status="FAILED") == []
            ballast.unlink()
            results = {h.execution_id: h.result(timeout=30) for h in handles}
            check_acks(tmp_path, results)
            assert [info.status for info in engine.list()] == ["SUCCEEDED"] * EXECUTIONS
        finally:
            engine.close()
            del engine


def test_async_workflows_and_async_callers_on_a_full_disk(tmp_path: Path) -> None:
    ids = [f"async-{i}" for i in range(EXECUTIONS)]
    with small_disk(tmp_path, "tmpfs", 4) as mnt:
        engine = perdure.Engine(mnt / "store", workers=2)
        try:
            args = args_for(tmp_path)
            handles = [engine.start(W.fill_async, args, execution_id=eid) for eid in ids]
            ballast = fill_disk(mnt)
            (tmp_path / "gate").touch()
            with pytest.raises(StoreFullError):
                asyncio.run(handles[0].result_async(timeout=30))
            assert_nothing_failed(engine, ids)
            ballast.unlink()

            async def results() -> list[Any]:
                return [await h.result_async(timeout=30) for h in handles]

            check_acks(tmp_path, dict(zip(ids, asyncio.run(results()), strict=True)))
        finally:
            engine.close()
            del engine


def run_child(args: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE / "diskfull_workflows.py"), "run", json.dumps(args)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE.parent,
    )


def read_event(child: subprocess.Popen[str], key: str) -> dict[str, Any]:
    """The child's next output line holding ``key`` (others are skipped)."""
    assert child.stdout is not None
    for line in child.stdout:
        event = json.loads(line)
        if key in event:
            return event
    raise AssertionError(f"the child exited ({child.wait()}) before reporting {key!r}")


@pytest.mark.parametrize("kind", ["tmpfs", "ext4"])
def test_reopened_engine_finishes_them(tmp_path: Path, kind: str) -> None:
    ids = [f"reopen-{i}" for i in range(EXECUTIONS)]
    with small_disk(tmp_path, kind, 4 if kind == "tmpfs" else 8) as mnt:
        store = mnt / "store"
        child = run_child(
            {"store": str(store), "ids": ids, "input": args_for(tmp_path), "stop_on_error": True}
        )
        read_event(child, "started")
        ballast = fill_disk(mnt)
        (tmp_path / "gate").touch()
        assert read_event(child, "error") == {"error": "StoreFullError"}
        assert child.wait(timeout=30) == 3  # it closed its engine on the full disk
        with perdure.Engine(store, owner=False) as reader:
            assert_nothing_failed(reader, ids)
        ballast.unlink()
        with perdure.Engine(store, workers=2) as engine:
            results = {eid: engine.get(eid).result(timeout=30) for eid in ids}
        check_acks(tmp_path, results)


def test_sigkill_while_the_disk_is_full_loses_nothing_acknowledged(tmp_path: Path) -> None:
    ids = [f"kill-{i}" for i in range(EXECUTIONS)]
    with small_disk(tmp_path, "tmpfs", 4) as mnt:
        store = mnt / "store"
        child = run_child({"store": str(store), "ids": ids, "input": args_for(tmp_path)})
        read_event(child, "started")
        (tmp_path / "gate").touch()
        wait_for(lambda: len(W.read_acks(tmp_path / "acks")) >= 3, "some steps acknowledged")
        ballast = fill_disk(mnt)  # while the child's steps commit
        assert read_event(child, "error") == {"error": "StoreFullError"}
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
        acknowledged = len(W.read_acks(tmp_path / "acks"))
        ballast.unlink()
        with perdure.Engine(store, workers=2) as engine:
            assert_nothing_failed(engine, ids)
            results = {eid: engine.get(eid).result(timeout=30) for eid in ids}
        check_acks(tmp_path, results)
        assert acknowledged < STEPS * EXECUTIONS, "the disk filled only after the end"


def test_direct_writes_on_a_full_disk_raise_store_full(tmp_path: Path) -> None:
    big = os.urandom(96 << 10).hex()  # needs new pages of the store's file
    with small_disk(tmp_path, "tmpfs", 4) as mnt:
        engine = perdure.Engine(mnt / "store", workers=2)
        try:
            callback_file = tmp_path / "callback"
            waiting = engine.start(
                W.answer, {"callback_file": str(callback_file)}, execution_id="cb"
            )
            wait_for(callback_file.exists, "the callback id")
            wait_for(lambda: waiting.info().status == "SUSPENDED", "the wait for the callback")
            callback_id = callback_file.read_text()
            ballast = fill_disk(mnt)
            with pytest.raises(StoreFullError):
                engine.start(W.answer, {"callback_file": big}, execution_id="refused")
            with pytest.raises(StoreFullError):
                engine.send_callback_success(callback_id, big)
            # Nothing of either write is stored; reads still work.
            assert [info.execution_id for info in engine.list()] == ["cb"]
            assert waiting.info().status == "SUSPENDED"
            ballast.unlink()
            engine.send_callback_success(callback_id, big)
            assert waiting.result(timeout=30) == W.digest(big)
            later = engine.start(W.fill, args_for(tmp_path, steps=2), execution_id="later")
            (tmp_path / "gate").touch()
            assert len(later.result(timeout=30)) == 2
        finally:
            engine.close()
            del engine


def test_store_full_error_is_a_store_error() -> None:
    assert issubclass(StoreFullError, StoreError)
    assert perdure.errors.StoreFullError is StoreFullError
    assert StoreFullError("x").storage_failed
    assert not StoreError("x").storage_failed
