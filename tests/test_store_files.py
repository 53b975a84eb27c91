"""Damaged store files end in a perdure error naming the file, never in a
dead process (issue 9, "Crashes instead of errors").

Every damaged store is opened and read in a child process
(tests/store_files_child.py), so a crash shows as a signal here: each test
asserts the child was not killed, the exception's type and that it names the
damaged file (``path``) or execution. Cases: ``data.mdb`` truncated (0 bytes,
100 bytes, 4 and 8 KiB, every page boundary of a small real store) or
truncated while an engine has it open, emptied or deleted, a damaged meta
page, journal keys of the wrong length, out of sequence or with a huge
sequence number, and a sweep of single-byte flips over every page, where the
only crashes left (LMDB following a damaged B-tree node) are reported by
``perdure check`` without killing its caller.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import pytest
from perdure.check import check_store
from perdure.errors import CorruptStoreError
from support import STORE_CHILD, copy_store, lmdb_only, perdure_cli, store_child

pytestmark = lmdb_only("damages the LMDB files (data.mdb, lock.mdb); perdure check of them")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("files") / "store"
    assert store_child("build", str(path))["outcome"] == "ok"
    return path


@pytest.fixture
def store(base: Path, tmp_path: Path) -> Path:
    return copy_store(base, tmp_path)


def _page_size(store: Path) -> int:
    with open(store / "data.mdb", "rb") as file:
        return int(struct.unpack_from("<I", file.read(44), 40)[0])


def _assert_names_data(report: dict[str, Any], store: Path) -> None:
    assert report["outcome"] == "error", report
    assert report["type"] == "CorruptStoreError", report
    data = str((store / "data.mdb").resolve())
    assert report["path"] == data, report
    assert "data.mdb" in report["message"], report


SOUND = {"outcome": "ok", "histories": {"e0": 5, "e1": 5, "e2": 5, "waiter": 6}}


def test_the_sound_store_reads(store: Path) -> None:
    assert store_child("walk", str(store)) == SOUND


def _truncation_sizes(base: Path) -> list[int]:
    page = _page_size(base)
    size = (base / "data.mdb").stat().st_size
    return sorted({0, 100, 4096, 8192, *range(page, size, page)})


def test_truncated_data_file_is_corrupt_not_a_crash(base: Path, tmp_path: Path) -> None:
    sizes = _truncation_sizes(base)
    assert len(sizes) > 10
    outcomes: dict[int, str] = {}
    for size in sizes:
        copy = tmp_path / f"cut{size}"
        shutil.copytree(base, copy)
        os.truncate(copy / "data.mdb", size)
        report = store_child("walk", str(copy))
        outcomes[size] = report["outcome"]
        if report["outcome"] == "ok":
            # Only free pages were cut (LMDB's unwritten tail, or pages no
            # tree uses): everything reads back. Nothing else is accepted.
            assert report == SOUND, (size, report)
        else:
            _assert_names_data(report, copy)
        if size < 2 * _page_size(base):
            assert "empty" in report["message"] or "shorter" in report["message"]
        shutil.rmtree(copy)
    print(f"truncations: {outcomes}")
    assert sum(outcome == "error" for outcome in outcomes.values()) >= len(sizes) // 2


def test_data_file_truncated_while_open_is_corrupt_not_sigbus(store: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, STORE_CHILD, "hold", str(store)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert json.loads(proc.stdout.readline()) == {"outcome": "ready"}
        os.truncate(store / "data.mdb", 2 * _page_size(store))
        out, err = proc.communicate("go\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"killed by signal {-proc.returncode}: {err}"
    report = json.loads(out.strip().splitlines()[-1])
    _assert_names_data(report, store)
    assert "truncated" in report["message"]


def test_deleted_data_file_of_a_created_store_is_corrupt(store: Path) -> None:
    assert (store / "perdure.store").is_file()
    (store / "data.mdb").unlink()
    report = store_child("walk", str(store))
    _assert_names_data(report, store)
    assert "missing" in report["message"]
    assert not (store / "data.mdb").exists()


def test_store_from_before_the_marker_opens_and_gets_it(store: Path) -> None:
    (store / "perdure.store").unlink()
    assert store_child("walk", str(store))["outcome"] == "ok"
    assert (store / "perdure.store").read_bytes() == b"perdure store\n"
    assert stat_mode(store / "perdure.store") == 0o600
    # From now on an emptied data.mdb is damage, not a new store.
    os.truncate(store / "data.mdb", 0)
    _assert_names_data(store_child("walk", str(store)), store)


def test_new_store_without_marker_and_empty_data_file_is_new(tmp_path: Path) -> None:
    # What a crash while LMDB created the store leaves: still a new store.
    path = tmp_path / "new"
    path.mkdir(mode=0o700)
    (path / "data.mdb").touch(mode=0o600)
    assert store_child("walk", str(path)) == {"outcome": "ok", "histories": {}}
    assert (path / "perdure.store").exists()


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


META_DAMAGE: dict[str, tuple[int, bytes]] = {
    "magic": (16, b"\0\0\0\0"),
    "version": (20, struct.pack("<I", 999)),
    "fixed address": (24, struct.pack("<Q", 0x7F0000000000)),
    "page size": (40, struct.pack("<I", 1 << 20)),
    "free tree root": (80, struct.pack("<Q", 1 << 40)),
    "main tree root": (128, struct.pack("<Q", 1 << 40)),
    "main tree depth": (94, struct.pack("<H", 999)),
    "last page": (136, struct.pack("<Q", 1 << 40)),
    "page number": (0, struct.pack("<Q", 7)),
    "page flags": (10, struct.pack("<H", 0)),
}


@pytest.mark.parametrize("meta_page", [0, 1])
def test_damaged_meta_page_is_corrupt(base: Path, tmp_path: Path, meta_page: int) -> None:
    page = _page_size(base)
    for what, (offset, damage) in META_DAMAGE.items():
        copy = tmp_path / what.replace(" ", "_")
        shutil.copytree(base, copy)
        with open(copy / "data.mdb", "r+b") as file:
            file.seek(meta_page * page + offset)
            file.write(damage)
        report = store_child("walk", str(copy))
        _assert_names_data(report, copy)
        shutil.rmtree(copy)


# region journal keys


def _journal_keys(store: Path, change: Callable[[Any, list[bytes]], None]) -> None:
    env = lmdb.open(str(store), lock=False, max_dbs=16, subdir=True)
    try:
        with env.begin(write=True, db=env.open_db(b"journal", create=False)) as txn:
            keys = [bytes(key) for key, _ in txn.cursor()]
            change(txn, keys)
    finally:
        env.close()


def _exec_key(store: Path, execution_id: str) -> bytes:
    env = lmdb.open(str(store), readonly=True, lock=False, max_dbs=16, subdir=True)
    try:
        with env.begin(db=env.open_db(b"exec_ids", create=False)) as txn:
            return bytes(txn.get(execution_id.encode()))[:8]
    finally:
        env.close()


def _move(txn: Any, old: bytes, new: bytes) -> None:
    value = txn.get(old)
    txn.delete(old)
    txn.put(new, value)


def _of(keys: list[bytes], exec_key: bytes) -> list[bytes]:
    return [key for key in keys if key.startswith(exec_key)]


JOURNAL_DAMAGE: dict[str, Callable[[Any, list[bytes]], None]] = {
    "huge sequence": lambda txn, keys: _move(txn, keys[-1], keys[-1][:8] + b"\xff\xff\xff\xf0"),
    "last sequence u32 max": lambda txn, keys: _move(txn, keys[-1], keys[-1][:8] + b"\xff" * 4),
    "gap": lambda txn, keys: _move(txn, keys[1], keys[1][:8] + struct.pack(">I", 9)),
    "first record missing": lambda txn, keys: _move(
        txn, keys[0], keys[0][:8] + struct.pack(">I", 5)
    ),
    "short key": lambda txn, keys: _move(txn, keys[-1], keys[-1][:11]),
    "long key": lambda txn, keys: _move(txn, keys[-1], keys[-1] + b"x"),
    "bare execution key": lambda txn, keys: _move(txn, keys[0], keys[0][:8]),
}


@pytest.mark.parametrize("damage", sorted(JOURNAL_DAMAGE))
def test_bad_journal_key_names_the_execution(store: Path, damage: str) -> None:
    victim = _exec_key(store, "e1")
    _journal_keys(store, lambda txn, keys: JOURNAL_DAMAGE[damage](txn, _of(keys, victim)))
    report = store_child("walk", str(store))
    assert report["outcome"] == "error" and report["type"] == "CorruptStoreError", report
    assert report["execution_id"] == "e1" and "journal" in report["message"], report
    # The other executions still read.
    others = store_child("history", str(store), "e0", "e2", "waiter")
    assert others == {"outcome": "ok", "histories": {"e0": 5, "e2": 5, "waiter": 6}}


def base_callback_id(store: Path) -> str:
    env = lmdb.open(str(store), readonly=True, lock=False, max_dbs=16, subdir=True)
    try:
        with env.begin(db=env.open_db(b"callbacks", create=False)) as txn:
            return next(bytes(key).decode() for key, _ in txn.cursor())
    finally:
        env.close()


def test_answer_after_a_bad_last_key_errs_and_keeps_record_zero(store: Path) -> None:
    waiter = _exec_key(store, "waiter")
    before: dict[bytes, bytes] = {}

    def cut_last(txn: Any, keys: list[bytes]) -> None:
        mine = _of(keys, waiter)
        before.update({key: bytes(txn.get(key)) for key in mine})
        # 13 bytes: still the last key of the execution in LMDB's order.
        _move(txn, mine[-1], mine[-1] + b"x")

    _journal_keys(store, cut_last)
    report = store_child("answer", str(store), base_callback_id(store))
    assert report["outcome"] == "error" and report["type"] == "CorruptStoreError", report
    assert report["execution_id"] == "waiter", report
    after: dict[bytes, bytes] = {}
    _journal_keys(
        store, lambda txn, keys: after.update({k: bytes(txn.get(k)) for k in _of(keys, waiter)})
    )
    first = waiter + struct.pack(">I", 0)
    assert after[first] == before[first]
    assert len(after) == len(before)


# endregion


def _sweep(base: Path, scratch: Path, positions: list[tuple[int, int]]) -> dict[str, Any]:
    return store_child("sweep", str(base), str(scratch), json.dumps(positions))


def test_byte_flips_across_every_page(base: Path, tmp_path: Path) -> None:
    """One byte flipped at a time, every 64th byte of every page and every
    byte of the meta pages' headers: no flip kills the process except where
    LMDB follows a damaged B-tree node, and each of those `perdure check`
    reports as CorruptStoreError naming data.mdb, without dying itself."""
    page = _page_size(base)
    pages = (base / "data.mdb").stat().st_size // page
    positions = sorted(
        {(p, offset) for p in range(pages) for offset in range(0, page, 64)}
        | {(p, offset) for p in (0, 1) for offset in range(160)}
    )
    report = _sweep(base, tmp_path / "flip", positions)
    counts, crashes = report["counts"], report["crashes"]
    print(f"byte-flip sweep over {len(positions)} flips: {counts}, crashes at {crashes}")
    assert counts["other"] == 0, report
    assert sum(counts.values()) == len(positions)
    assert all(p >= 2 for p, _, _ in crashes), "a meta page flip crashed"
    assert counts["signal"] <= len(positions) // 100, report
    for p, offset, _ in crashes:
        copy = tmp_path / f"crash{p}_{offset}"
        shutil.copytree(base, copy)
        with open(copy / "data.mdb", "r+b") as file:
            file.seek(p * page + offset)
            byte = file.read(1)[0]
            file.seek(p * page + offset)
            file.write(bytes([byte ^ 0xFF]))
        with pytest.raises(CorruptStoreError) as info:
            check_store(copy)
        assert info.value.path == str(copy / "data.mdb")
        assert "data.mdb" in str(info.value)


def test_perdure_check_command(base: Path, store: Path, tmp_path: Path) -> None:
    def check(path: Path) -> subprocess.CompletedProcess[str]:
        return perdure_cli("check", "--store", str(path))

    sound = check(store)
    assert sound.returncode == 0 and "ok" in sound.stdout, sound
    missing = check(tmp_path / "missing")
    assert missing.returncode == 2 and not (tmp_path / "missing").exists()
    victim = _exec_key(store, "e2")
    _journal_keys(store, lambda txn, keys: JOURNAL_DAMAGE["gap"](txn, _of(keys, victim)))
    damaged = check(store)
    assert damaged.returncode == 1 and '"e2"' in damaged.stdout, damaged
    os.truncate(store / "data.mdb", 8192)
    cut = check(store)
    assert cut.returncode == 1 and "CorruptStoreError" in cut.stderr and "data.mdb" in cut.stderr


def test_damaged_value_size_is_corrupt_not_a_read_past_the_file(store: Path) -> None:
    """A journal record's node in its leaf page says the value is ~2 GiB
    long: LMDB hands that slice out as it is, and reading it would run past
    the file (SIGBUS) or the map (SIGSEGV). perdure refuses it."""
    victim = _exec_key(store, "e1")
    first = victim + struct.pack(">I", 0)
    env = lmdb.open(str(store), readonly=True, lock=False, max_dbs=16, subdir=True)
    try:
        with env.begin(db=env.open_db(b"journal", create=False)) as txn:
            value = bytes(txn.get(first))
    finally:
        env.close()
    data = bytearray((store / "data.mdb").read_bytes())
    # The live leaf page and older copies of it (pages LMDB freed) hold the
    # node: damage each. LMDB's leaf node: mn_lo, mn_hi (the value size's
    # halves), flags, key size, key, value.
    found = 0
    at = data.find(first + value)
    while at > 0:
        node = at - 8
        assert struct.unpack_from("<HHHH", data, node) == (len(value), 0, 0, 12)
        struct.pack_into("<H", data, node + 2, 0x7FFF)
        found += 1
        at = data.find(first + value, at + 1)
    assert found >= 1
    (store / "data.mdb").write_bytes(bytes(data))
    report = store_child("walk", str(store))
    _assert_names_data(report, store)
    assert "past the end of the file" in report["message"]


def test_an_open_store_keeps_lmdbs_lock(store: Path) -> None:
    """While an engine has the store open, its process holds LMDB's shared
    fcntl lock on lock.mdb, which tells the next process the lock file is in
    use. Checking the files must not drop it (closing any descriptor of
    lock.mdb drops a process's fcntl locks on it): the next process would
    reset the lock file under the running writer and lose its commits."""
    proc = subprocess.Popen(
        [sys.executable, STORE_CHILD, "hold", str(store)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        assert json.loads(proc.stdout.readline()) == {"outcome": "ready"}
        with open(store / "lock.mdb", "r+b") as lock:
            # struct flock: l_type, l_whence, l_start, l_len, l_pid (Linux x86-64 layout)
            query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
            answer = fcntl.fcntl(lock.fileno(), fcntl.F_GETLK, query + b"\0" * 4)
        l_type, _, _, _, l_pid = struct.unpack("hhqqi", answer[: struct.calcsize("hhqqi")])
        assert l_type == fcntl.F_RDLCK and l_pid == proc.pid, (l_type, l_pid)
        out, err = proc.communicate("go\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert json.loads(out.strip().splitlines()[-1])["outcome"] == "ok", err
