"""Checksums on stored metadata (issue 9, format 5): a flipped byte in an
execution's metadata, its id index entry or a callback entry is never read
back as if valid. Every single-byte flip of those values is tried on a real
store: each is reported as CorruptStoreError naming the execution (or the
callback), and the other executions keep working.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import perdure
import pytest
from perdure import DurableContext, Engine
from perdure.errors import CorruptStoreError
from support import lmdb_only, wait_for

pytestmark = lmdb_only("flips bytes of values in the LMDB databases")

CALLBACK_IDS: list[str] = []


@perdure.durable(name="checksums.double")
def double(ctx: DurableContext, x: int) -> int:
    return ctx.step(lambda _: x * 2, name="double")


@perdure.durable(name="checksums.asks")
def asks(ctx: DurableContext, _: Any) -> str:
    answer = ctx.wait_for_callback(lambda cid, _: CALLBACK_IDS.append(cid), name="ask")
    return f"answered {answer}"


def _build(path: Path) -> None:
    with Engine(path, workers=2) as engine:
        assert engine.run(double, 7, execution_id="victim", timeout=30) == 14
        assert engine.run(double, 5, execution_id="other", timeout=30) == 10
        engine.start(asks, None, execution_id="waiter")
        wait_for(lambda: engine.get("waiter").status() == "SUSPENDED", "the waiter to suspend")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("checksums") / "store"
    _build(path)
    gc.collect()
    return path


# The raw writes below go around LMDB's lock file (the lmdb package opens the
# store with lock=False), so a handle this process kept open would go on
# reading the snapshot it knew: every engine is dropped (del, then collected)
# before the store is written, and the next one maps it afresh.


def _with_engine(store: Path, check: Callable[[Engine], None]) -> None:
    engine = Engine(store, owner=False)
    try:
        check(engine)
    finally:
        engine.close()
        del engine
        gc.collect()


def _raw(store: Path, db_name: bytes, key: bytes) -> bytes:
    env = lmdb.open(str(store), readonly=True, lock=False, max_dbs=16, subdir=True)
    try:
        with env.begin(db=env.open_db(db_name, create=False)) as txn:
            value = txn.get(key)
            assert value is not None, (db_name, key)
            return bytes(value)
    finally:
        env.close()


def _put(store: Path, db_name: bytes, key: bytes, value: bytes) -> None:
    env = lmdb.open(str(store), lock=False, max_dbs=16, subdir=True)
    try:
        with env.begin(write=True, db=env.open_db(db_name, create=False)) as txn:
            txn.put(key, value)
    finally:
        env.close()


def _flips(store: Path, db_name: bytes, key: bytes) -> Iterator[int]:
    """Flips each byte of the value in turn (yielding its position), and puts
    the value back after each check and at the end."""
    original = _raw(store, db_name, key)
    try:
        for position in range(len(original)):
            damaged = bytearray(original)
            damaged[position] ^= 0x01 if position % 2 else 0x80
            _put(store, db_name, key, bytes(damaged))
            yield position
            _put(store, db_name, key, original)
    finally:
        _put(store, db_name, key, original)


def _exec_key(store: Path, execution_id: str) -> bytes:
    return _raw(store, b"exec_ids", execution_id.encode())[:8]


def _assert_others_work(engine: Engine) -> None:
    assert engine.get("other").result(timeout=5) == 10
    assert engine.get("waiter").status() == "SUSPENDED"


def test_every_flip_of_execution_metadata_names_the_execution(
    store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = _exec_key(store, "victim")

    def check(engine: Engine) -> None:
        reads: list[Callable[[], object]] = [
            lambda: engine.get("victim").status(),
            lambda: engine.get("victim").result(timeout=1),
            lambda: engine.history("victim"),
        ]
        for read in reads:
            with pytest.raises(CorruptStoreError) as info:
                read()
            assert info.value.execution_id == "victim"
            assert "victim" in str(info.value) and "metadata" in str(info.value)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="perdure"):
            listed = {info.execution_id for info in engine.list()}
        assert listed == {"other", "waiter"}
        assert any("victim" in record.getMessage() for record in caplog.records)
        _assert_others_work(engine)

    tried = sum(_with_engine(store, check) is None for _ in _flips(store, b"executions", key))
    assert tried > 20

    def restored(engine: Engine) -> None:
        assert engine.get("victim").result(timeout=5) == 14

    _with_engine(store, restored)


def test_every_flip_of_the_id_index_names_the_execution(store: Path) -> None:
    def check(engine: Engine) -> None:
        with pytest.raises(CorruptStoreError) as info:
            engine.get("victim")
        assert info.value.execution_id == "victim"
        with pytest.raises(CorruptStoreError):
            engine.start(double, 7, execution_id="victim")
        _assert_others_work(engine)

    tried = sum(_with_engine(store, check) is None for _ in _flips(store, b"exec_ids", b"victim"))
    assert tried == 12


def test_every_flip_of_a_callback_entry_is_refused(store: Path) -> None:
    assert len(CALLBACK_IDS) == 1
    callback_id = CALLBACK_IDS[0]

    def check(engine: Engine) -> None:
        sends: list[Callable[[], None]] = [
            lambda: engine.send_callback_success(callback_id, "yes"),
            lambda: engine.send_callback_heartbeat(callback_id),
        ]
        for send in sends:
            with pytest.raises(CorruptStoreError) as info:
                send()
            assert callback_id in str(info.value)
        _assert_others_work(engine)

    flips = _flips(store, b"callbacks", callback_id.encode())
    assert sum(_with_engine(store, check) is None for _ in flips) > 20


def _two_askers(path: Path) -> dict[str, str]:
    """Two executions suspended on callbacks: callback id -> execution id."""
    with Engine(path, workers=2) as engine:
        engine.start(asks, None, execution_id="broken")
        engine.start(asks, None, execution_id="fine")
        wait_for(lambda: len(CALLBACK_IDS) == 2, "both to ask")
        wait_for(lambda: {i.status for i in engine.list()} == {"SUSPENDED"}, "both to suspend")
        return {
            e["CallbackStartedDetails"]["CallbackId"]: eid
            for eid in ("broken", "fine")
            for e in engine.history(eid)
            if e["EventType"] == "CallbackStarted"
        }


def test_a_damaged_execution_is_left_alone_and_the_others_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store"
    CALLBACK_IDS.clear()
    by_execution = _two_askers(path)
    gc.collect()
    assert sorted(by_execution.values()) == ["broken", "fine"]
    key = _exec_key(path, "broken")
    value = bytearray(_raw(path, b"executions", key))
    value[1] ^= 0x04  # its state: ACTIVE would read as TIMED_OUT
    _put(path, b"executions", key, bytes(value))
    with caplog.at_level(logging.WARNING, logger="perdure"), Engine(path, workers=2) as engine:
        for callback_id, execution_id in by_execution.items():
            if execution_id == "fine":
                engine.send_callback_success(callback_id, "yes")
        assert engine.get("fine").result(timeout=30) == "answered yes"
        with pytest.raises(CorruptStoreError) as info:
            engine.get("broken").status()
        assert info.value.execution_id == "broken"
        assert [i.execution_id for i in engine.list()] == ["fine"]
    assert any("broken" in record.getMessage() for record in caplog.records)
