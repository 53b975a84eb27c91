"""docs/format.md is enough to read a store: decode one with only lmdb and zstandard.

Real workflows run on a perdure Engine (steps with small and large results, a
retried and a failed step, an AT_MOST_ONCE step, waits, callbacks answered,
failed and timed out, wait_for_callback with a heartbeat, child contexts, a
failed, a cancelled, a suspended and a never-run execution). The engine is
closed, and the store is then read with the pure-Python ``lmdb`` and
``zstandard`` packages and the small decoder below, written from
docs/format.md without any perdure internals. Every entry of every database is
decoded, every checksum verified, and the contents are compared with what the
workflows did.
"""

from __future__ import annotations

import gc
import json
import os
import queue
import re
import stat
import zlib
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import lmdb
import perdure
import pytest
import zstandard
from perdure import (
    CallbackConfig,
    CallbackExternalError,
    CallbackTimeoutError,
    ChildConfig,
    ChildContextError,
    DurableContext,
    Duration,
    ExecutionFailedError,
    JitterStrategy,
    RetryStrategyConfig,
    StepConfig,
    StepError,
    StepSemantics,
    WaitForCallbackConfig,
    create_retry_strategy,
)
from support import lmdb_only, wait_for

pytestmark = lmdb_only("decodes the LMDB files with lmdb and zstandard (docs/format.md)")

# region decoder written from docs/format.md (no perdure imports)

DB_NAMES = {
    "meta",
    "executions",
    "exec_ids",
    "journal",
    "timers",
    "callbacks",
    "pending",
    "wakes",
    "owners",
    "leases",
    "orphans",
}

STARTED, SUCCEEDED, FAILED, RETRY, CANCELLED, TIMED_OUT, INVOCATION_COMPLETED = range(1, 8)
EXECUTION, STEP, WAIT, CALLBACK, CONTEXT, CHAINED_INVOKE = range(6)
SUB_NONE, SUB_STEP, SUB_WAIT, SUB_CALLBACK, SUB_CHILD = range(5)
SUB_MAP, SUB_WAIT_FOR_CALLBACK, SUB_CUSTOM = 5, 9, 12

F_NAME, F_ATTEMPT, F_AUX, F_AUX2, F_EXTRA, F_PAYLOAD, F_ZSTD, F_LABEL = (1 << i for i in range(8))

EXEC_STATES = {1: "ACTIVE", 2: "SUCCEEDED", 3: "FAILED", 4: "CANCELLED", 5: "TIMED_OUT"}
CALLBACK_STATES = {0: "pending", 1: "succeeded", 2: "failed", 3: "timed out", 4: "cancelled"}
TIMER_KINDS = {1: "wake", 2: "callback timeout", 3: "callback heartbeat", 4: "execution timeout"}
CALLBACK_ID = re.compile(r"[0-9a-f]{32}")


def u64(data: bytes) -> int:
    assert len(data) == 8, data
    return int.from_bytes(data, "big")


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(10):
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise AssertionError("varint longer than 10 bytes")


def text(buf: bytes, pos: int) -> tuple[str, int]:
    length, pos = varint(buf, pos)
    assert pos + length <= len(buf), "truncated string"
    return buf[pos : pos + length].decode("utf-8"), pos + length


@dataclass
class Record:
    exec_key: int
    seq: int
    kind: int
    op_type: int
    sub_type: int
    flags: int
    ts: int
    op_id: str
    name: str | None
    attempt: int
    aux: int
    aux2: int
    extra: str | None
    label: str | None
    payload: bytes | None
    stored_payload_len: int

    @property
    def shape(self) -> tuple[int, int, int, str | None, int]:
        return (self.kind, self.op_type, self.sub_type, self.name, self.attempt)

    def value(self) -> Any:
        assert self.payload is not None, f"record {self.seq} has no payload"
        return decode_payload(self.payload)


def decode_record(key: bytes, raw: bytes) -> Record:
    assert len(key) == 12
    exec_key, seq = u64(key[:8]), int.from_bytes(key[8:], "big")
    assert raw[0] == 1, f"record version {raw[0]}"
    assert zlib.crc32(raw[5:]) == int.from_bytes(raw[1:5], "little"), f"bad CRC at {seq}"
    kind, op_type, sub_type, flags = raw[5], raw[6], raw[7], raw[8]
    assert kind in range(1, 8) and op_type in range(6) and sub_type in range(13)
    ts, pos = varint(raw, 9)
    op_id, pos = text(raw, pos)
    name = extra = label = None
    attempt = aux = aux2 = 0
    if flags & F_NAME:
        name, pos = text(raw, pos)
    if flags & F_ATTEMPT:
        attempt, pos = varint(raw, pos)
        assert attempt != 0, "a zero attempt is written as an absent field"
    if flags & F_AUX:
        aux, pos = varint(raw, pos)
        assert aux != 0
    if flags & F_AUX2:
        aux2, pos = varint(raw, pos)
        assert aux2 != 0
    if flags & F_EXTRA:
        extra, pos = text(raw, pos)
    if flags & F_LABEL:
        label, pos = text(raw, pos)
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,32}", label), label
    assert (label is not None) == (sub_type == SUB_CUSTOM), "a label goes with sub type 12"
    payload = None
    rest = raw[pos:]
    if flags & F_PAYLOAD:
        if flags & F_ZSTD:
            params = zstandard.get_frame_parameters(rest)
            payload = zstandard.ZstdDecompressor().decompress(rest)
            # The frame states its size; only payloads >= 64 bytes are
            # compressed, and only when that makes them smaller.
            assert params.content_size == len(payload)
            assert len(payload) >= 64 and len(rest) < len(payload)
        else:
            payload = rest
    else:
        assert not flags & F_ZSTD, "ZSTD flag without PAYLOAD"
        assert not rest, "trailing bytes after a record without payload"
    return Record(
        exec_key, seq, kind, op_type, sub_type, flags, ts, op_id, name, attempt, aux, aux2, extra,
        label, payload, len(rest),
    )  # fmt: skip


def _untag(value: Any) -> Any:
    if isinstance(value, list):
        return [_untag(item) for item in value]
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, inner),) = value.items()
            if key.startswith("$"):
                if key == "$tu":
                    return tuple(_untag(item) for item in inner)
                if key == "$set":
                    return {_untag(item) for item in inner}
                if key == "$m":
                    return {_untag(k): _untag(v) for k, v in inner}
                if key == "$d":
                    return date.fromisoformat(inner)
                if key == "$dec":
                    return Decimal(inner)
                raise AssertionError(f"tag {key} not handled by this test decoder")
        return {key: _untag(item) for key, item in value.items()}
    return value


def decode_payload(data: bytes) -> Any:
    """Default serdes: plain JSON, or '~' followed by tagged JSON."""
    if data[:1] == b"~":
        return _untag(json.loads(data[1:]))
    return json.loads(data)


@dataclass
class ExecMeta:
    state: str
    created_ms: int
    updated_ms: int
    execution_id: str
    function: str
    parent: tuple[int, str] | None = None  # (exec key, op id) of an invoked child


def decode_exec_meta(raw: bytes) -> ExecMeta:
    assert raw[0] in (1, 2)  # 2: a child execution, with its parent link
    state = EXEC_STATES[raw[1]]
    created, pos = varint(raw, 2)
    updated, pos = varint(raw, pos)
    execution_id, pos = text(raw, pos)
    function, pos = text(raw, pos)
    parent = None
    if raw[0] == 2:
        parent_key, pos = varint(raw, pos)
        op_id, pos = text(raw, pos)
        parent = (parent_key, op_id)
    assert pos == len(raw)
    return ExecMeta(state, created, updated, execution_id, function, parent)


@dataclass
class CallbackEntry:
    state: str
    exec_key: int
    deadline_ms: int
    heartbeat_timeout_ms: int
    last_heartbeat_ms: int
    op_id: str


def decode_callback(raw: bytes) -> CallbackEntry:
    assert raw[0] == 1
    state = CALLBACK_STATES[raw[1]]
    exec_key = u64(raw[2:10])
    deadline, pos = varint(raw, 10)
    heartbeat, pos = varint(raw, pos)
    last, pos = varint(raw, pos)
    op_id, pos = text(raw, pos)
    assert pos == len(raw)
    return CallbackEntry(state, exec_key, deadline, heartbeat, last, op_id)


@dataclass(frozen=True)
class Timer:
    due_ms: int
    exec_key: int
    kind: str
    subject: str


def unseal(key: bytes, value: bytes) -> bytes:
    """A value of any database but the journal, checked and without its
    trailer: ``payload | crc32(key | payload)`` (4 bytes, little-endian)."""
    payload, trailer = value[:-4], value[-4:]
    assert len(trailer) == 4
    assert int.from_bytes(trailer, "little") == zlib.crc32(key + payload), key
    return payload


def decode_timer(key: bytes) -> Timer:
    return Timer(u64(key[:8]), u64(key[8:16]), TIMER_KINDS[key[16]], key[17:].decode("utf-8"))


@dataclass
class OwnerEntry:
    pid: int
    started_ms: int
    renewed_ms: int


def decode_owner(raw: bytes) -> OwnerEntry:
    assert raw[0] == 1
    pid, pos = varint(raw, 1)
    started, pos = varint(raw, pos)
    renewed, pos = varint(raw, pos)
    assert pos == len(raw)
    return OwnerEntry(pid, started, renewed)


@dataclass
class Store:
    names: set[str]
    meta: dict[str, bytes]
    executions: dict[int, ExecMeta]
    exec_ids: dict[str, int]
    journals: dict[int, list[Record]]
    timers: list[Timer]
    callbacks: dict[str, CallbackEntry]
    pending: dict[int, int]
    wakes: dict[int, int]
    owners: dict[int, OwnerEntry]
    leases: dict[int, tuple[int, int]]
    orphans: set[int]


def read_store(path: Path) -> Store:
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=16, subdir=True)
    try:
        with env.begin() as txn:
            names = {key.decode() for key in txn.cursor().iternext(values=False)}
        dbs = {name: env.open_db(name.encode(), create=False) for name in DB_NAMES}

        def items(name: str) -> list[tuple[bytes, bytes]]:
            with env.begin(db=dbs[name]) as txn:
                return [(bytes(k), bytes(v)) for k, v in txn.cursor()]

        journals: dict[int, list[Record]] = {}
        for key, value in items("journal"):
            record = decode_record(key, value)
            journals.setdefault(record.exec_key, []).append(record)

        def sealed(name: str) -> list[tuple[bytes, bytes]]:
            return [(k, unseal(k, v)) for k, v in items(name)]

        timers = []
        for key, value in sealed("timers"):
            assert value == b""
            timers.append(decode_timer(key))
        meta = {
            k.decode("ascii"): v if k == b"format_version" else unseal(k, v)
            for k, v in items("meta")
        }
        return Store(
            names=names,
            meta=meta,
            executions={u64(k): decode_exec_meta(v) for k, v in sealed("executions")},
            exec_ids={k.decode("utf-8"): u64(v) for k, v in sealed("exec_ids")},
            journals=journals,
            timers=timers,
            callbacks={k.decode("ascii"): decode_callback(v) for k, v in sealed("callbacks")},
            pending={u64(k): u64(v) for k, v in sealed("pending")},
            wakes={u64(k): u64(v) for k, v in sealed("wakes")},
            owners={u64(k): decode_owner(v) for k, v in sealed("owners")},
            leases={u64(k): (u64(v[:8]), u64(v[8:])) for k, v in sealed("leases")},
            orphans={u64(k) for k, v in sealed("orphans") if v == b""},
        )
    finally:
        env.close()


# endregion
# region workflows

EVENTS: queue.Queue[tuple[str, str]] = queue.Queue()
WAIT_MS = 20
DEADLINE_MS = 50
RETRY_DELAY_MS = 10
LARGE_TEXT = "perdure journal record " * 30
FAST_RETRY = create_retry_strategy(
    RetryStrategyConfig(
        max_attempts=3,
        initial_delay=Duration.from_milliseconds(RETRY_DELAY_MS),
        jitter_strategy=JitterStrategy.NONE,
    )
)
NO_RETRY = create_retry_strategy(RetryStrategyConfig(max_attempts=1))
REVIEW_ANSWER = {"when": date(2024, 5, 1), "ids": (1, 2)}
PENDING_INPUT = {"amount": Decimal("12.50"), "when": date(2024, 5, 1)}


def _publish(label: str, callback_id: str) -> str:
    EVENTS.put((label, callback_id))
    return callback_id


def _flaky(step: Any) -> int:
    if step.attempt == 1:
        raise ValueError("flaky failure 1")
    return int(step.attempt)


def _doomed(_step: Any) -> None:
    raise RuntimeError("doomed on purpose")


def _bad_kid(_child: DurableContext) -> None:
    raise KeyError("missing")


@perdure.durable(name="test_format.order")
def order(ctx: DurableContext, event: dict[str, Any]) -> dict[str, Any]:
    small = ctx.step(lambda _: {"n": event["n"], "tag": "small"}, name="small")
    large = ctx.step(lambda _: {"text": LARGE_TEXT}, name="large")
    flaky = ctx.step(_flaky, name="flaky", config=StepConfig(retry_strategy=FAST_RETRY))
    try:
        ctx.step(_doomed, name="doomed", config=StepConfig(retry_strategy=NO_RETRY))
    except StepError as exc:
        doomed = exc.error_type
    once = ctx.step(
        lambda _: "once",
        name="once",
        config=StepConfig(step_semantics=StepSemantics.AT_MOST_ONCE_PER_RETRY),
    )
    ctx.wait(Duration.from_milliseconds(WAIT_MS), name="nap")
    approval = ctx.create_callback("approval", CallbackConfig(timeout=Duration.from_hours(1)))
    ctx.step(lambda _: _publish("approval", approval.callback_id), name="publish")
    approved = approval.result()
    review = ctx.wait_for_callback(
        lambda callback_id, _: EVENTS.put(("review", callback_id)),
        name="review",
        config=WaitForCallbackConfig(
            timeout=Duration.from_hours(2), heartbeat_timeout=Duration.from_minutes(30)
        ),
    )
    rejection = ctx.create_callback("rejection")
    ctx.step(lambda _: _publish("rejection", rejection.callback_id), name="publish rejection")
    try:
        rejection.result()
    except CallbackExternalError as exc:
        rejected = exc.error_type
    deadline = ctx.create_callback(
        "deadline", CallbackConfig(timeout=Duration.from_milliseconds(DEADLINE_MS))
    )
    try:
        deadline.result()
    except CallbackTimeoutError:
        timed_out = True
    kid = ctx.run_in_child_context(
        lambda child: {"inner": child.step(lambda _: 7, name="inner")}, name="kid"
    )
    try:
        ctx.run_in_child_context(_bad_kid, name="bad kid")
    except ChildContextError as exc:
        bad_kid = exc.error_type
    return {
        "small": small,
        "large": len(large["text"]),
        "flaky": flaky,
        "doomed": doomed,
        "once": once,
        "approved": approved,
        "review": review,
        "rejected": rejected,
        "timed_out": timed_out,
        "kid": kid,
        "bad_kid": bad_kid,
    }


@perdure.durable(name="test_format.fails")
def fails(ctx: DurableContext, event: dict[str, Any]) -> None:
    raise ValueError(f"bad order {event['n']}")


@perdure.durable(name="test_format.waits_forever")
def waits_forever(ctx: DurableContext, _event: Any) -> Any:
    return ctx.create_callback("never").result()


@perdure.durable(name="test_format.sleeps")
def sleeps(ctx: DurableContext, _event: Any) -> str:
    ctx.wait(Duration.from_hours(1), name="long nap")
    return "woke"


@perdure.durable(name="test_format.tiny")
def tiny(ctx: DurableContext, event: Any) -> Any:
    return event


# endregion
# region running them


def _next_event(label: str) -> str:
    got, callback_id = EVENTS.get(timeout=30)
    assert got == label
    return callback_id


def _drive(path: Path) -> dict[str, Any]:
    """Runs the workflows on an owner engine and closes it."""
    engine = perdure.Engine(path, workers=2)
    try:
        h_order = engine.start(order, {"n": 3}, execution_id="fmt-order")
        h_fails = engine.start(fails, {"n": 3}, execution_id="fmt-fails")
        h_cancel = engine.start(waits_forever, None, execution_id="fmt-cancelled")
        h_sleep = engine.start(sleeps, None, execution_id="fmt-sleeper")

        approval_id = _next_event("approval")
        engine.send_callback_success(approval_id, {"approved": True})
        review_id = _next_event("review")
        engine.send_callback_heartbeat(review_id)
        engine.send_callback_success(review_id, REVIEW_ANSWER)
        rejection_id = _next_event("rejection")
        engine.send_callback_failure(
            rejection_id, "nope", error_type="Rejected", error_data="on purpose"
        )
        result = h_order.result(timeout=30)
        with pytest.raises(ExecutionFailedError, match="bad order 3"):
            h_fails.result(timeout=30)
        wait_for(lambda: h_cancel.status() == "SUSPENDED", "fmt-cancelled to suspend")
        engine.cancel("fmt-cancelled", "stopped by the format test")
        wait_for(lambda: h_sleep.status() == "SUSPENDED", "fmt-sleeper to suspend")
    finally:
        engine.close()
    return {
        "result": result,
        "approval_id": approval_id,
        "review_id": review_id,
        "rejection_id": rejection_id,
    }


def _run_workflows(path: Path) -> dict[str, Any]:
    """Runs everything, closes every engine; returns what the test needs."""
    while not EVENTS.empty():
        EVENTS.get_nowait()
    info = _drive(path)
    gc.collect()  # the closed engine's store handle is gone before the next open
    # A client that does not run executions: the new one stays pending.
    client = perdure.Engine(path, owner=False)
    try:
        client.start(tiny, PENDING_INPUT, execution_id="fmt-pending")
    finally:
        client.close()
    del client
    gc.collect()
    return info


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Store]:
    path = tmp_path_factory.mktemp("format") / "store"
    info = _run_workflows(path)
    return path, info, read_store(path)


KEYS = {"fmt-order": 1, "fmt-fails": 2, "fmt-cancelled": 3, "fmt-sleeper": 4, "fmt-pending": 5}


def by_op(records: list[Record]) -> dict[str, list[Record]]:
    ops: dict[str, list[Record]] = {}
    for record in records:
        ops.setdefault(record.op_id, []).append(record)
    return ops


# endregion
# region tests


def test_files_are_owner_only(written: tuple[Path, dict[str, Any], Store]) -> None:
    path, _, _ = written
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.iterdir()) == [
        "data.mdb",
        "lock.mdb",
        "owners",
        "perdure.store",
    ]
    assert (path / "perdure.store").read_bytes() == b"perdure store\n"
    for name in ("data.mdb", "lock.mdb", "perdure.store"):
        st = (path / name).stat()
        assert stat.S_IMODE(st.st_mode) == 0o600, name
        assert st.st_uid == os.getuid()
    # Every engine closed: each removed its lock file.
    assert stat.S_IMODE((path / "owners").stat().st_mode) == 0o700
    assert list((path / "owners").iterdir()) == []


def test_named_databases_and_meta(written: tuple[Path, dict[str, Any], Store]) -> None:
    _, _, store = written
    assert store.names == DB_NAMES
    assert set(store.meta) == {"format_version", "next_exec_key", "wake_seq", "lease_epoch"}
    assert store.meta["format_version"] == (5).to_bytes(4, "big")
    assert perdure.FORMAT_VERSION == 5
    assert u64(store.meta["next_exec_key"]) == len(KEYS)
    # The never-run execution was the last one woken: its pending value is
    # the counter's current value, and the wake index maps it back.
    wake = u64(store.meta["wake_seq"])
    assert store.pending == {KEYS["fmt-pending"]: wake}
    assert store.wakes == {wake: KEYS["fmt-pending"]}
    # Every engine closed: no owner and no lease is left; the two active
    # executions wait for the next engine to claim them.
    assert store.owners == {} and store.leases == {}
    assert store.orphans == {KEYS["fmt-sleeper"], KEYS["fmt-pending"]}


def test_owners_and_leases_while_engines_run(tmp_path: Path) -> None:
    path = tmp_path / "store"
    first = perdure.Engine(path, workers=1)
    second = perdure.Engine(path, workers=1)
    try:
        first.start(waits_forever, None, execution_id="leased")
        wait_for(lambda: first.get("leased").status() == "SUSPENDED", "the execution to suspend")
        store = read_store(path)
        locks = sorted(p.name for p in (path / "owners").iterdir())
        assert locks == sorted(f"{e.owner_id:016x}.lock" for e in (first, second))
        for name in locks:
            assert stat.S_IMODE((path / "owners" / name).stat().st_mode) == 0o600
    finally:
        first.close()
        second.close()
    assert set(store.owners) == {first.owner_id, second.owner_id}
    for entry in store.owners.values():
        assert entry.pid == os.getpid() and entry.renewed_ms >= entry.started_ms > 0
    # The lease names its owner and the epoch of its grant: one counter for
    # the whole store, bumped by every grant.
    assert store.leases == {1: (first.owner_id, u64(store.meta["lease_epoch"]))}
    assert store.orphans == set()


@perdure.durable(name="test_format.naps")
def naps(ctx: DurableContext, _event: Any) -> str:
    ctx.wait(Duration.from_hours(2), name="nap")
    return "rested"


@perdure.durable(name="test_format.invokes")
def invokes(ctx: DurableContext, event: Any) -> Any:
    return ctx.invoke("test_format.naps", event, name="call")


def test_child_executions_timeouts_and_stops(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with perdure.Engine(path, workers=1) as engine:
        parent = engine.start(invokes, {"n": 1}, execution_id="p", timeout=Duration.from_hours(1))
        wait_for(
            lambda: any(i.execution_id == "p/1" for i in engine.list(status="SUSPENDED")),
            "the child to suspend",
        )
        running = read_store(path)
        engine.cancel("p", "format test stop")
        with pytest.raises(perdure.ExecutionCancelledError):
            parent.result(timeout=10)
    stopped = read_store(path)
    parent_key, child_key = stopped.exec_ids["p"], stopped.exec_ids["p/1"]
    # The child's metadata links it to the parent's operation "1".
    assert running.executions[child_key].parent == (parent_key, "1")
    assert running.executions[parent_key].parent is None
    start = running.journals[parent_key][0]
    assert (start.kind, start.aux) == (STARTED, 3_600_000)  # the execution timeout
    assert Timer(start.ts + 3_600_000, parent_key, "execution timeout", "") in running.timers
    invoke = running.journals[parent_key][1]
    assert (invoke.kind, invoke.op_type, invoke.op_id, invoke.name) == (
        STARTED,
        CHAINED_INVOKE,
        "1",
        "call",
    )
    assert (invoke.extra, invoke.value()) == ("p/1", {"n": 1})
    child_start = running.journals[child_key][0]
    assert (child_start.name, child_start.value()) == ("test_format.naps", {"n": 1})
    # Stopping the parent cancels the child's wait, then stops the child.
    assert [(r.kind, r.op_type, r.op_id) for r in stopped.journals[child_key][-2:]] == [
        (CANCELLED, WAIT, "1"),
        (CANCELLED, EXECUTION, ""),
    ]
    assert stopped.journals[child_key][-1].value()["ErrorType"] == "ParentStopped"
    assert stopped.executions[child_key].state == "CANCELLED"
    assert [(r.kind, r.op_type) for r in stopped.journals[parent_key][-1:]] == [
        (CANCELLED, EXECUTION)
    ]


@perdure.durable(name="test_format.labelled")
def labelled(ctx: DurableContext, _event: Any) -> Any:
    moved = ctx.step(lambda _: 5, name="move", config=StepConfig(sub_type="Transfer"))
    kept = ctx.run_in_child_context(
        lambda child: moved + 1, name="mapped", config=ChildConfig(sub_type="Map")
    )
    callback = ctx.create_callback("ask", config=CallbackConfig(sub_type="Approval-2"))
    EVENTS.put(("labelled", callback.callback_id))
    return [kept, callback.result()]


def test_custom_sub_type_labels(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with perdure.Engine(path, workers=1) as engine:
        handle = engine.start(labelled, None, execution_id="labels")
        engine.send_callback_success(_next_event("labelled"), "yes")
        assert handle.result(timeout=10) == [6, "yes"]
    store = read_store(path)
    ops = by_op(store.journals[store.exec_ids["labels"]])
    # A label of the user's own is sub type 12 with the LABEL field; a
    # built-in name ("Map") is stored as the built-in code, without it.
    step, child, callback = ops["1"], ops["2"], ops["3"]
    assert [(r.kind, r.sub_type, r.label, bool(r.flags & F_LABEL)) for r in step] == [
        (SUCCEEDED, SUB_CUSTOM, "Transfer", True)
    ]
    assert [(r.kind, r.sub_type, r.label) for r in child] == [
        (STARTED, SUB_MAP, None),
        (SUCCEEDED, SUB_MAP, None),
    ]
    # The callback's label sits after its id (extra); the core writes the
    # answer with the plain Callback sub type: the first record's label rules.
    assert [(r.kind, r.sub_type, r.label) for r in callback] == [
        (STARTED, SUB_CUSTOM, "Approval-2"),
        (SUCCEEDED, SUB_CALLBACK, None),
    ]
    assert callback[0].extra is not None and len(callback[0].extra) > 20


def test_executions_and_ids(written: tuple[Path, dict[str, Any], Store]) -> None:
    _, _, store = written
    assert store.exec_ids == KEYS
    expected = {
        "fmt-order": ("test_format.order", "SUCCEEDED"),
        "fmt-fails": ("test_format.fails", "FAILED"),
        "fmt-cancelled": ("test_format.waits_forever", "CANCELLED"),
        "fmt-sleeper": ("test_format.sleeps", "ACTIVE"),
        "fmt-pending": ("test_format.tiny", "ACTIVE"),
    }
    assert set(store.executions) == set(KEYS.values())
    for execution_id, key in KEYS.items():
        meta = store.executions[key]
        assert (meta.execution_id, (meta.function, meta.state)) == (
            execution_id,
            expected[execution_id],
        )
        journal = store.journals[key]
        assert meta.created_ms == journal[0].ts
        if meta.state == "ACTIVE":
            assert meta.updated_ms == meta.created_ms
        else:
            assert meta.updated_ms == journal[-1].ts


def test_every_journal_is_contiguous_and_starts_with_execution_started(
    written: tuple[Path, dict[str, Any], Store],
) -> None:
    _, _, store = written
    assert set(store.journals) == set(KEYS.values())
    inputs = {
        "fmt-order": {"n": 3},
        "fmt-fails": {"n": 3},
        "fmt-cancelled": None,
        "fmt-sleeper": None,
        "fmt-pending": PENDING_INPUT,
    }
    for key, journal in store.journals.items():
        meta = store.executions[key]
        assert [r.seq for r in journal] == list(range(len(journal)))
        first = journal[0]
        assert (first.kind, first.op_type, first.sub_type, first.op_id) == (
            STARTED,
            EXECUTION,
            SUB_NONE,
            "",
        )
        assert (first.name, first.extra) == (meta.function, meta.execution_id)
        assert first.value() == inputs[meta.execution_id]
        for record in journal:
            if record.op_type == EXECUTION:
                assert record.op_id == "" and record.sub_type == SUB_NONE
    # Extended-type input: the '~' form with tags.
    pending_input = store.journals[KEYS["fmt-pending"]][0].payload
    assert pending_input is not None and pending_input.startswith(b"~")
    assert len(store.journals[KEYS["fmt-pending"]]) == 1


def test_order_journal_matches_the_workflow(written: tuple[Path, dict[str, Any], Store]) -> None:
    _, info, store = written
    journal = store.journals[KEYS["fmt-order"]]
    ops = by_op(journal)
    shapes = {op_id: [r.shape for r in records] for op_id, records in ops.items()}
    executions = shapes.pop("")
    assert shapes == {
        "1": [(SUCCEEDED, STEP, SUB_STEP, "small", 1)],
        "2": [(SUCCEEDED, STEP, SUB_STEP, "large", 1)],
        "3": [(RETRY, STEP, SUB_STEP, "flaky", 1), (SUCCEEDED, STEP, SUB_STEP, "flaky", 2)],
        "4": [(FAILED, STEP, SUB_STEP, "doomed", 1)],
        "5": [(STARTED, STEP, SUB_STEP, "once", 1), (SUCCEEDED, STEP, SUB_STEP, "once", 1)],
        "6": [(STARTED, WAIT, SUB_WAIT, "nap", 0), (SUCCEEDED, WAIT, SUB_WAIT, "nap", 0)],
        "7": [
            (STARTED, CALLBACK, SUB_CALLBACK, "approval", 0),
            (SUCCEEDED, CALLBACK, SUB_CALLBACK, None, 0),
        ],
        "8": [(SUCCEEDED, STEP, SUB_STEP, "publish", 1)],
        "9": [
            (STARTED, CONTEXT, SUB_WAIT_FOR_CALLBACK, "review", 0),
            (SUCCEEDED, CONTEXT, SUB_WAIT_FOR_CALLBACK, "review", 0),
        ],
        "9-1": [
            (STARTED, CALLBACK, SUB_CALLBACK, "review create callback id", 0),
            (SUCCEEDED, CALLBACK, SUB_CALLBACK, None, 0),
        ],
        "9-2": [(SUCCEEDED, STEP, SUB_STEP, "review submitter", 1)],
        "10": [
            (STARTED, CALLBACK, SUB_CALLBACK, "rejection", 0),
            (FAILED, CALLBACK, SUB_CALLBACK, None, 0),
        ],
        "11": [(SUCCEEDED, STEP, SUB_STEP, "publish rejection", 1)],
        "12": [
            (STARTED, CALLBACK, SUB_CALLBACK, "deadline", 0),
            (TIMED_OUT, CALLBACK, SUB_CALLBACK, None, 0),
        ],
        "13": [(STARTED, CONTEXT, SUB_CHILD, "kid", 0), (SUCCEEDED, CONTEXT, SUB_CHILD, "kid", 0)],
        "13-1": [(SUCCEEDED, STEP, SUB_STEP, "inner", 1)],
        "14": [
            (STARTED, CONTEXT, SUB_CHILD, "bad kid", 0),
            (FAILED, CONTEXT, SUB_CHILD, "bad kid", 0),
        ],
    }
    # Execution-level records: STARTED first, then one INVOCATION_COMPLETED
    # per invocation (at least one per suspension: retry, wait, three
    # callbacks, the timeout, and the last), the outcome last.
    assert executions[0][0] == STARTED
    assert [s[0] for s in executions[1:-1]] == [INVOCATION_COMPLETED] * (len(executions) - 2)
    assert len(executions) - 2 >= 7
    assert [(r.kind, r.op_type) for r in journal[-2:]] == [
        (INVOCATION_COMPLETED, EXECUTION),
        (SUCCEEDED, EXECUTION),
    ]
    # Root operations first appear in the order the workflow ran them.
    first_seen = list(dict.fromkeys(r.op_id for r in journal if r.op_id and "-" not in r.op_id))
    assert first_seen == [str(i) for i in range(1, 15)]

    # Payloads and auxiliary fields, as docs/format.md §3.5 describes them.
    (small,) = ops["1"]
    assert not small.flags & F_ZSTD and small.value() == {"n": 3, "tag": "small"}
    (large,) = ops["2"]
    assert large.flags & F_ZSTD and large.value() == {"text": LARGE_TEXT}
    assert large.stored_payload_len < len(large.payload or b"")

    retry, flaky_ok = ops["3"]
    assert retry.aux2 == RETRY_DELAY_MS
    error = retry.value()
    assert (error["ErrorType"], error["ErrorMessage"]) == ("ValueError", "flaky failure 1")
    assert isinstance(error["StackTrace"], list)
    assert flaky_ok.value() == 2 and flaky_ok.ts >= retry.ts + retry.aux2

    (doomed,) = ops["4"]
    assert doomed.value()["ErrorType"] == "RuntimeError"
    assert doomed.value()["ErrorMessage"] == "doomed on purpose"

    once_started, once_done = ops["5"]
    assert once_started.payload is None and not once_started.flags & F_PAYLOAD
    assert once_done.value() == "once"

    nap_started, nap_done = ops["6"]
    assert nap_started.aux == nap_done.aux == WAIT_MS
    assert nap_started.payload is None and nap_done.payload is None
    assert nap_done.ts >= nap_started.ts + WAIT_MS

    approval_started, approval_done = ops["7"]
    assert approval_started.extra == info["approval_id"]
    assert (approval_started.aux, approval_started.aux2) == (3_600_000, 0)
    assert approval_started.payload is None
    assert approval_done.value() == {"approved": True}
    (publish,) = ops["8"]
    assert publish.value() == info["approval_id"]

    review_started, review_done = ops["9-1"]
    assert review_started.extra == info["review_id"]
    assert (review_started.aux, review_started.aux2) == (7_200_000, 1_800_000)
    assert review_done.payload is not None and review_done.payload.startswith(b"~")
    assert review_done.value() == REVIEW_ANSWER
    (submitter,) = ops["9-2"]
    assert submitter.value() is None and submitter.payload == b"null"
    assert ops["9"][1].value() == REVIEW_ANSWER

    rejection_started, rejection_failed = ops["10"]
    assert rejection_started.extra == info["rejection_id"]
    assert (rejection_started.aux, rejection_started.aux2) == (0, 0)
    assert rejection_failed.value() == {
        "ErrorType": "Rejected",
        "ErrorMessage": "nope",
        "ErrorData": "on purpose",
    }

    deadline_started, deadline_timed_out = ops["12"]
    assert deadline_started.aux == DEADLINE_MS and deadline_started.extra is not None
    assert deadline_timed_out.aux == 0 and deadline_timed_out.payload is None
    assert deadline_timed_out.ts >= deadline_started.ts + DEADLINE_MS

    assert ops["13-1"][0].value() == 7
    assert ops["13"][0].payload is None and ops["13"][1].value() == {"inner": 7}
    assert ops["14"][1].value()["ErrorType"] == "KeyError"

    # The execution's result, as the engine returned it.
    outcome = journal[-1]
    assert outcome.value() == info["result"]
    assert info["result"]["review"] == REVIEW_ANSWER
    assert info["result"]["small"] == {"n": 3, "tag": "small"}
    for record in journal:
        if record.kind == INVOCATION_COMPLETED:
            assert record.payload is None and record.name is None


def test_other_journals(written: tuple[Path, dict[str, Any], Store]) -> None:
    _, _, store = written
    failed = store.journals[KEYS["fmt-fails"]]
    assert [(r.kind, r.op_type) for r in failed] == [
        (STARTED, EXECUTION),
        (INVOCATION_COMPLETED, EXECUTION),
        (FAILED, EXECUTION),
    ]
    error = failed[-1].value()
    assert (error["ErrorType"], error["ErrorMessage"]) == ("ValueError", "bad order 3")

    cancelled = store.journals[KEYS["fmt-cancelled"]]
    assert [(r.kind, r.op_type, r.op_id, r.name) for r in cancelled] == [
        (STARTED, EXECUTION, "", "test_format.waits_forever"),
        (STARTED, CALLBACK, "1", "never"),
        (INVOCATION_COMPLETED, EXECUTION, "", None),
        (CANCELLED, EXECUTION, "", None),
    ]
    assert cancelled[-1].value() == {"ErrorMessage": "stopped by the format test"}

    sleeper = store.journals[KEYS["fmt-sleeper"]]
    assert [(r.kind, r.op_type, r.op_id, r.name, r.aux) for r in sleeper[1:]] == [
        (STARTED, WAIT, "1", "long nap", 3_600_000),
        (INVOCATION_COMPLETED, EXECUTION, "", None, sleeper[2].aux),
    ]


def test_callbacks(written: tuple[Path, dict[str, Any], Store]) -> None:
    _, info, store = written
    order_ops = by_op(store.journals[KEYS["fmt-order"]])
    cancelled_ops = by_op(store.journals[KEYS["fmt-cancelled"]])
    started = {
        "approval": order_ops["7"][0],
        "review": order_ops["9-1"][0],
        "rejection": order_ops["10"][0],
        "deadline": order_ops["12"][0],
        "never": cancelled_ops["1"][0],
    }
    ids = {label: record.extra for label, record in started.items()}
    assert ids["approval"] == info["approval_id"] and ids["review"] == info["review_id"]
    assert set(store.callbacks) == set(ids.values())
    assert len(store.callbacks) == 5
    for callback_id in store.callbacks:
        assert CALLBACK_ID.fullmatch(callback_id), callback_id

    def entry(label: str) -> CallbackEntry:
        callback_id = ids[label]
        assert callback_id is not None
        return store.callbacks[callback_id]

    approval = started["approval"]
    assert entry("approval") == CallbackEntry(
        "succeeded", 1, approval.ts + 3_600_000, 0, approval.ts, "7"
    )
    review = entry("review")
    review_started = started["review"]
    assert (review.state, review.exec_key, review.op_id) == ("succeeded", 1, "9-1")
    assert review.deadline_ms == review_started.ts + 7_200_000
    assert review.heartbeat_timeout_ms == 1_800_000
    # The heartbeat was sent after the callback was created and before it completed.
    assert review_started.ts <= review.last_heartbeat_ms <= order_ops["9-1"][1].ts
    rejection = started["rejection"]
    assert entry("rejection") == CallbackEntry("failed", 1, 0, 0, rejection.ts, "10")
    deadline = started["deadline"]
    assert entry("deadline") == CallbackEntry(
        "timed out", 1, deadline.ts + DEADLINE_MS, 0, deadline.ts, "12"
    )
    never = started["never"]
    assert entry("never") == CallbackEntry("pending", KEYS["fmt-cancelled"], 0, 0, never.ts, "1")


def test_timers(written: tuple[Path, dict[str, Any], Store]) -> None:
    _, info, store = written
    order_ops = by_op(store.journals[KEYS["fmt-order"]])
    sleeper_wait = store.journals[KEYS["fmt-sleeper"]][1]
    # Fired timers (the retry, the nap, the deadline) are gone; the callback
    # timers stay until due even though their callbacks completed.
    expected = {
        Timer(order_ops["7"][0].ts + 3_600_000, 1, "callback timeout", info["approval_id"]),
        Timer(order_ops["9-1"][0].ts + 1_800_000, 1, "callback heartbeat", info["review_id"]),
        Timer(sleeper_wait.ts + 3_600_000, KEYS["fmt-sleeper"], "wake", "1"),
    }
    assert set(store.timers) == expected
    assert len(store.timers) == len(expected)
    # Big-endian deadlines: LMDB's key order is deadline order.
    dues = [timer.due_ms for timer in store.timers]
    assert dues == sorted(dues)


def test_decoder_rejects_damage(written: tuple[Path, dict[str, Any], Store]) -> None:
    """The checksum covers every byte after itself: the decoder notices any flip."""
    path, _, _ = written
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=16, subdir=True)
    try:
        db = env.open_db(b"journal", create=False)
        with env.begin(db=db) as txn:
            key, raw = next(iter(txn.cursor()))
            key, raw = bytes(key), bytes(raw)
    finally:
        env.close()
    decode_record(key, raw)
    for index in range(1, len(raw)):
        damaged = bytearray(raw)
        damaged[index] ^= 0x10
        with pytest.raises(AssertionError):
            decode_record(key, bytes(damaged))


# endregion
