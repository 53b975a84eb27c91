"""Fuzzing the Python decoders of bytes from disk (issue 9).

Journal records and execution metadata whose checksums match but whose
content is anything (numbers at their limits, timestamps past the end of
the calendar, error payloads that are not error objects, extended payloads
with broken tags, bytes that are not UTF-8) are written into a real store,
then read back through the public API: ``status``, ``info``, ``history``,
``result`` and ``list``. Whatever the bytes, the answer is a value or a
perdure error (CorruptRecordError, CorruptStoreError, SerDesError, or the
ExecutionFailedError family an execution's outcome raises), never a
TypeError, KeyError, OverflowError or the like. The serdes decoders are fed
garbage directly as well.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import perdure
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from perdure import AsyncDurableContext, DurableContext, Duration, Engine
from perdure.errors import CorruptRecordError, CorruptStoreError, PerdureError, SerDesError
from perdure.serdes import SerDesContext, deserialize, error_object_from_payload, loads
from support import lmdb_only

pytestmark = lmdb_only("forges values in the LMDB databases with the lmdb package")

NOW = 1_790_000_000_000
U64 = 2**64 - 1


# What the durable operations raised into the workflow while it replayed a
# forged journal (class and text: an exception would keep the engine alive
# through its traceback): each must be a perdure error.
RAISED: list[tuple[type[Exception], str]] = []


@perdure.durable(name="fuzz.double")
def double(ctx: DurableContext, x: int) -> int:
    try:
        ctx.wait(Duration.from_milliseconds(10), name="pause")
        return ctx.step(lambda _: x * 2 if isinstance(x, int) else 0, name="double")
    except Exception as exc:
        RAISED.append((type(exc), repr(exc)))
        raise


@perdure.durable(name="fuzz.double_async")
async def double_async(ctx: AsyncDurableContext, x: int) -> int:
    """``double`` as an asyncio workflow: the same operations, run by the
    engine's event loop."""
    try:
        await ctx.wait(Duration.from_milliseconds(10), name="pause")
        return await ctx.step(lambda _: x * 2 if isinstance(x, int) else 0, name="double")
    except Exception as exc:
        RAISED.append((type(exc), repr(exc)))
        raise


# region encoders (docs/format.md)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(data: bytes) -> bytes:
    return _varint(len(data)) + data


def _record(
    kind: int,
    op_type: int,
    sub_type: int,
    timestamp_ms: int,
    op_id: str,
    name: str | None,
    attempt: int,
    aux: int,
    aux2: int,
    extra: str | None,
    label: str | None,
    payload: bytes | None,
) -> bytes:
    """A journal record, checksum and all, as the core writes one (the
    payload uncompressed)."""
    flags = 0
    body = bytearray(_varint(timestamp_ms) + _field(op_id.encode()))
    if name is not None:
        flags |= 1
        body += _field(name.encode())
    if attempt:
        flags |= 2
        body += _varint(attempt)
    if aux:
        flags |= 4
        body += _varint(aux)
    if aux2:
        flags |= 8
        body += _varint(aux2)
    if extra is not None:
        flags |= 16
        body += _field(extra.encode())
    if label is not None:
        flags |= 128
        body += _field(label.encode())
    if payload is not None:
        flags |= 32
        body += payload
    checked = bytes([kind, op_type, sub_type, flags]) + bytes(body)
    return b"\x01" + zlib.crc32(checked).to_bytes(4, "little") + checked


def _seal(key: bytes, payload: bytes) -> bytes:
    return payload + zlib.crc32(key + payload).to_bytes(4, "little")


def _meta(state: int, created_ms: int, updated_ms: int, execution_id: str, function: str) -> bytes:
    return (
        bytes([1, state])
        + _varint(created_ms)
        + _varint(updated_ms)
        + _field(execution_id.encode())
        + _field(function.encode())
    )


# endregion
# region strategies

numbers = st.one_of(
    st.sampled_from(
        [0, 1, 999, 1000, 2**31, 2**32 - 1, 2**53, 2**63 - 1, 2**63, U64 - 1, U64, NOW]
    ),
    st.integers(0, U64),
)
attempts = st.one_of(st.sampled_from([0, 1, 2, 2**32 - 1]), st.integers(0, 2**32 - 1))
# Rust strings are UTF-8: no lone surrogates.
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
_TAGS = [
    "$tu",
    "$set",
    "$fs",
    "$m",
    "$b",
    "$ba",
    "$dt",
    "$dz",
    "$d",
    "$t",
    "$td",
    "$dec",
    "$u",
    "$i",
    "$f",
    "$s",
    "$x",
]
error_keys = st.sampled_from(["ErrorType", "ErrorMessage", "ErrorData", "StackTrace", "Other"])


def _json(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


payloads = st.one_of(
    st.none(),
    st.binary(max_size=40),
    json_values.map(_json),
    st.dictionaries(error_keys, json_values, max_size=4).map(_json),
    st.tuples(st.sampled_from(_TAGS), json_values).map(lambda tv: b"~" + _json({tv[0]: tv[1]})),
    st.tuples(st.sampled_from(_TAGS), json_values).map(
        lambda tv: b"~" + _json([{tv[0]: tv[1]}, {"k": {tv[0]: tv[1]}}])
    ),
    st.binary(max_size=20).map(lambda raw: b"~" + raw),
)

records = st.builds(
    _record,
    kind=st.integers(1, 7),
    op_type=st.integers(0, 5),
    sub_type=st.integers(0, 11),
    timestamp_ms=numbers,
    op_id=st.one_of(st.sampled_from(["", "1", "2", "1-1", "victim"]), texts),
    name=st.none() | texts,
    attempt=attempts,
    aux=numbers,
    aux2=numbers,
    extra=st.none() | texts,
    label=st.none(),
    payload=payloads,
)
# A Custom sub type (12) carries its label.
custom_records = st.builds(
    _record,
    kind=st.integers(1, 7),
    op_type=st.integers(1, 5),
    sub_type=st.just(12),
    timestamp_ms=numbers,
    op_id=st.sampled_from(["1", "2"]),
    name=st.none() | texts,
    attempt=attempts,
    aux=numbers,
    aux2=numbers,
    extra=st.none(),
    label=st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True),
    payload=payloads,
)


KINDS = st.integers(1, 7)


def _operation(
    op_type: int, op_id: str, name: str, kinds: st.SearchStrategy[int] = KINDS
) -> st.SearchStrategy[bytes]:
    """Records of one of the workflow's own operations, any outcome: a
    replay gets past the operation's identity to its numbers and payload."""
    return st.builds(
        _record,
        kind=kinds,
        op_type=st.just(op_type),
        sub_type=st.just(op_type),
        timestamp_ms=numbers,
        op_id=st.just(op_id),
        name=st.just(name),
        attempt=attempts,
        aux=numbers,
        aux2=numbers,
        extra=st.none() | texts,
        label=st.none(),
        payload=payloads,
    )


own_records = st.one_of(_operation(2, "1", "pause"), _operation(1, "2", "double"))
journals = st.one_of(
    st.lists(st.one_of(records, custom_records, own_records), min_size=1, max_size=6),
    # The wait over, then the step's records: the replay reaches the step.
    st.tuples(
        _operation(2, "1", "pause", st.just(2)),
        st.lists(_operation(1, "2", "double"), min_size=1, max_size=3),
    ).map(lambda wait_steps: [wait_steps[0], *wait_steps[1]]),
)

# endregion
# region the store


def _build(path: Path) -> None:
    with Engine(path, workers=2) as engine:
        assert engine.run(double, 7, execution_id="victim", timeout=30) == 14
        assert engine.run(double, 5, execution_id="other", timeout=30) == 10


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "store"
    _build(path)
    gc.collect()
    return path


# The raw writes go around LMDB's lock file (lock=False), so every engine is
# closed and collected before the store is written, as in
# test_metadata_checksums.


def _open(store: Path) -> lmdb.Environment:
    return lmdb.open(str(store), lock=False, max_dbs=16, subdir=True)


def _victim(store: Path) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """The victim's execution key, its journal and its metadata."""
    env = _open(store)
    try:
        with env.begin() as txn:
            exec_key = bytes(txn.get(b"victim", db=env.open_db(b"exec_ids", txn=txn)))[:8]
            journal = env.open_db(b"journal", txn=txn)
            cursor = txn.cursor(db=journal)
            records = {}
            if cursor.set_range(exec_key):
                for key, value in cursor:
                    if not key.startswith(exec_key):
                        break
                    records[bytes(key)] = bytes(value)
            meta = bytes(txn.get(exec_key, db=env.open_db(b"executions", txn=txn)))
            return exec_key, records, meta
    finally:
        env.close()


def _write(store: Path, exec_key: bytes, journal: dict[bytes, bytes], meta: bytes) -> None:
    """Makes the victim's journal and metadata exactly these."""
    env = _open(store)
    try:
        with env.begin(write=True) as txn:
            db = env.open_db(b"journal", txn=txn)
            cursor = txn.cursor(db=db)
            stale = []
            if cursor.set_range(exec_key):
                for key, _ in cursor:
                    if not key.startswith(exec_key):
                        break
                    stale.append(bytes(key))
            for key in stale:
                txn.delete(key, db=db)
            for key, value in journal.items():
                txn.put(key, value, db=db)
            txn.put(exec_key, meta, db=env.open_db(b"executions", txn=txn))
    finally:
        env.close()


@pytest.fixture(scope="module")
def victim(store: Path) -> Iterator[tuple[bytes, dict[bytes, bytes], bytes]]:
    original = _victim(store)
    yield original
    _write(store, *original)


def _read_everything(store: Path) -> None:
    """Every public read of the victim, and a replay of it: each returns a
    value or raises a perdure error (anything else fails the test)."""
    engine = Engine(store, owner=False)
    try:
        _read_with(engine)
    finally:
        engine.close()
    gc.collect()


def _read_with(engine: Engine) -> None:
    suppress = contextlib.suppress(PerdureError)
    with suppress:
        engine.history("victim")
    with suppress:
        engine.list()
    with suppress:
        engine.list(status="SUCCEEDED")
    status = None
    with suppress:
        handle = engine.get("victim")
        handle.info()
        status = handle.status()
    if status in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"):
        with suppress:
            handle.result(timeout=0)
    # Replaying it (as `perdure replay --verify` does) decodes every
    # record's payload, error and numbers into the workflow's calls.
    RAISED.clear()
    with suppress:
        engine.replay(execution_ids=["victim"], verify=True, workers=1)
    strays = [text for kind, text in RAISED if not issubclass(kind, PerdureError)]
    assert not strays, strays
    # The other execution is untouched and still reads as before.
    assert engine.get("other").result(timeout=5) == 10


# PERDURE_FUZZ_EXAMPLES runs longer (the default keeps the file under 30 s).
EXAMPLES = int(os.environ.get("PERDURE_FUZZ_EXAMPLES", "80"))
_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@_SETTINGS
@given(
    forged=journals,
    keep_start=st.booleans(),
    state=st.integers(1, 5),
    created_ms=numbers,
    updated_ms=numbers,
)
def test_forged_records_and_metadata_read_back_as_values_or_perdure_errors(
    store: Path,
    victim: tuple[bytes, dict[bytes, bytes], bytes],
    forged: list[bytes],
    keep_start: bool,
    state: int,
    created_ms: int,
    updated_ms: int,
) -> None:
    exec_key, original, _ = victim
    journal = {}
    first = 0
    if keep_start:
        start_key = min(original)
        journal[start_key] = original[start_key]
        first = 1
    for seq, value in enumerate(forged, start=first):
        journal[exec_key + seq.to_bytes(4, "big")] = value
    meta = _seal(exec_key, _meta(state, created_ms, updated_ms, "victim", "fuzz.double"))
    _write(store, exec_key, journal, meta)
    _read_everything(store)


def _forged_journal(exec_key: bytes, original: dict[bytes, bytes], forged: list[bytes]) -> dict:
    """The real ExecutionStarted record (its input), then the forged ones."""
    start_key = min(original)
    journal = {start_key: original[start_key]}
    for seq, value in enumerate(forged, start=1):
        journal[exec_key + seq.to_bytes(4, "big")] = value
    return journal


def _make_runnable(store: Path, exec_key: bytes) -> None:
    """Leaves the victim as a crashed engine would: active, unowned, due."""
    wake = (1 << 40).to_bytes(8, "big")
    env = _open(store)
    try:
        with env.begin(write=True) as txn:
            txn.delete(exec_key, db=env.open_db(b"leases", txn=txn))
            txn.put(exec_key, _seal(exec_key, b""), db=env.open_db(b"orphans", txn=txn))
            txn.put(exec_key, _seal(exec_key, wake), db=env.open_db(b"pending", txn=txn))
            txn.put(wake, _seal(wake, exec_key), db=env.open_db(b"wakes", txn=txn))
    finally:
        env.close()


def _clear_runnable(store: Path, exec_key: bytes) -> None:
    env = _open(store)
    try:
        with env.begin(write=True) as txn:
            for name in (b"leases", b"orphans", b"pending"):
                txn.delete(exec_key, db=env.open_db(name, txn=txn))
            wakes = env.open_db(b"wakes", txn=txn)
            stale = [bytes(k) for k, v in txn.cursor(db=wakes) if bytes(v)[:8] == exec_key]
            for key in stale:
                txn.delete(key, db=wakes)
    finally:
        env.close()


class _Errors(logging.Handler):
    """The exceptions perdure logged (an invocation that failed outside the
    workflow is logged, not raised)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@settings(_SETTINGS, max_examples=max(10, EXAMPLES // 4))
@given(forged=journals)
def test_forged_records_run_by_an_engine_give_perdure_errors(
    store: Path, victim: tuple[bytes, dict[bytes, bytes], bytes], forged: list[bytes]
) -> None:
    """The victim, left runnable with a forged journal, is claimed and run
    by an engine: its replay feeds the records' numbers back into new
    records and timers. Every error on that path is a perdure error."""
    _run_forged(store, victim, forged)


def _run_forged(
    store: Path,
    victim: tuple[bytes, dict[bytes, bytes], bytes],
    forged: list[bytes],
    function: str = "fuzz.double",
) -> tuple[str | None, list[str]]:
    """Runs the victim with the forged journal (as the workflow registered
    as ``function``); returns its status after, and what perdure logged."""
    exec_key, original, _ = victim
    active = _seal(exec_key, _meta(1, NOW, NOW, "victim", function))
    _write(store, exec_key, _forged_journal(exec_key, original, forged), active)
    _make_runnable(store, exec_key)
    RAISED.clear()
    try:
        status, logged = _run_victim(store)
    finally:
        gc.collect()
        _clear_runnable(store, exec_key)
        _write(store, *victim)
    strays = [text for kind, text in RAISED if not issubclass(kind, PerdureError)]
    assert not strays, strays
    foreign = [text for kind, text in logged if kind and not issubclass(kind, PerdureError)]
    assert not foreign, foreign
    return status, [text for _, text in logged]


def _run_victim(store: Path) -> tuple[str | None, list[tuple[type[BaseException] | None, str]]]:
    """Opens an engine, waits until it has run the victim (it suspended or
    ended) or left it alone (and logged why), and closes it. Returns the
    victim's status then, and what perdure logged: the class of the logged
    exception, if any, and the message. Nothing of the engine outlives this
    call (no handle, no traceback), so it is dropped before the store is
    written around LMDB's lock."""
    errors = _Errors()
    logger = logging.getLogger("perdure")
    logger.addHandler(errors)
    engine = Engine(store, workers=1, durability="none")
    try:
        handle = engine.get("victim")
        status = None
        for _ in range(400):
            with contextlib.suppress(PerdureError):
                status = handle.status()
            if status not in ("PENDING", "RUNNING") or errors.records:
                break
            time.sleep(0.005)
    finally:
        engine.close()
        logger.removeHandler(errors)
    logged = [
        (type(r.exc_info[1]) if r.exc_info and r.exc_info[1] else None, r.getMessage())
        for r in errors.records
    ]
    return status, logged


def _wait(kind: int, ts: int, aux: int) -> bytes:
    return _record(kind, 2, 2, ts, "1", "pause", 0, aux, 0, None, None, None)


def _step(kind: int, ts: int, attempt: int, aux2: int) -> bytes:
    error = b'{"ErrorType":"E","ErrorMessage":"m"}'
    return _record(kind, 1, 1, ts, "2", "double", attempt, 5, aux2, None, None, error)


@pytest.mark.parametrize(
    ("forged", "left_alone"),
    [
        pytest.param([_wait(1, NOW, U64)], False, id="wait-ending-past-u64"),
        pytest.param([_wait(1, U64, 1000)], False, id="wait-started-at-u64"),
        pytest.param([_wait(2, NOW, 1), _step(4, U64, 1, U64)], False, id="retry-due-past-u64"),
        pytest.param([_wait(2, NOW, 1), _step(4, NOW, 2**32 - 1, 1)], True, id="attempt-u32-max"),
    ],
)
@pytest.mark.parametrize("function", ["fuzz.double", "fuzz.double_async"])
def test_numbers_at_their_limits_in_a_replayed_journal(
    store: Path,
    victim: tuple[bytes, dict[bytes, bytes], bytes],
    forged: list[bytes],
    left_alone: bool,
    function: str,
) -> None:
    """Found by the fuzzing above: a retry recorded at attempt 2^32-1 made
    the next attempt's record an OverflowError, recorded as the workflow's
    failure. Now the record is corrupt: the execution is left alone, as
    one whose journal does not decode. A wait or retry due past the u64 a
    timer holds suspends the execution (the timer is never due)."""
    status, logged = _run_forged(store, victim, forged, function)
    if left_alone:
        assert status == "PENDING"
        assert any("cannot run" in m and "attempt 4294967295" in m for m in logged), logged
    else:
        assert status == "SUSPENDED"
        assert not logged


# endregion
# region serdes


@settings(max_examples=5 * EXAMPLES, deadline=None)
@given(payload=payloads.filter(lambda p: p is not None) | st.binary(max_size=64))
def test_payload_decoders_raise_only_serdes_errors(payload: bytes) -> None:
    with contextlib.suppress(SerDesError):
        loads(payload)
    with contextlib.suppress(SerDesError):
        deserialize(None, payload, SerDesContext("1", "victim"))
    obj = error_object_from_payload(payload)
    assert isinstance(obj, dict)


# endregion
# region regressions: what the fuzzing found


def test_a_time_past_the_calendar_in_metadata_is_a_corrupt_store(
    store: Path, victim: tuple[bytes, dict[bytes, bytes], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """Metadata whose checksum matches but whose time is past year 9999 was
    a ValueError out of status(), info() and list() (list() lost every
    execution to it)."""
    exec_key, journal, _ = victim
    meta = _seal(exec_key, _meta(2, U64, NOW, "victim", "fuzz.double"))
    _write(store, exec_key, journal, meta)
    engine = Engine(store, owner=False)
    try:
        for read in (lambda: engine.get("victim").status(), lambda: engine.get("victim").info()):
            with pytest.raises(CorruptStoreError) as info:
                read()
            assert info.value.execution_id == "victim"
            assert "victim" in str(info.value) and "out of range" in str(info.value)
        with caplog.at_level(logging.WARNING, logger="perdure"):
            listed = [info.execution_id for info in engine.list()]
        assert listed == ["other"]
        assert any("victim" in record.getMessage() for record in caplog.records)
    finally:
        engine.close()
        gc.collect()
    _write(store, *victim)


def test_a_time_past_the_calendar_in_a_record_is_a_corrupt_record(
    store: Path, victim: tuple[bytes, dict[bytes, bytes], bytes]
) -> None:
    """A record stamped past year 9999 (or a wait ending there) was a
    ValueError or OverflowError out of history()."""
    exec_key, journal, meta = victim
    for timestamp_ms, aux in ((U64, 0), (2**63, 0), (NOW, U64)):
        wait = _record(1, 2, 2, timestamp_ms, "1", "pause", 0, aux, 0, None, None, None)
        forged = dict(journal)
        forged[exec_key + (1).to_bytes(4, "big")] = wait
        _write(store, exec_key, forged, meta)
        engine = Engine(store, owner=False)
        try:
            with pytest.raises(CorruptRecordError) as info:
                engine.history("victim")
            assert (info.value.execution_id, info.value.sequence) == ("victim", 1)
            assert "out of range" in str(info.value)
        finally:
            engine.close()
            gc.collect()
    _write(store, *victim)


# endregion
