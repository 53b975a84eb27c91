"""Bad input: each case gives a clear exception and leaves the store intact.

"Intact" is checked the same way every time: executions committed before the
bad input still return their results, and a new execution runs to completion.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import os
import queue
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import perdure
import pytest
from perdure import (
    CallbackAlreadyCompletedError,
    CallbackConfig,
    ChildConfig,
    CorruptRecordError,
    DurableContext,
    Duration,
    Engine,
    ExecutionFailedError,
    ExecutionNotFoundError,
    PayloadTooLargeError,
    RetryStrategyConfig,
    SerDesError,
    StepConfig,
    StoreAccessError,
    StoreError,
    StoreVersionError,
    UnknownCallbackError,
    UnknownFunctionError,
    ValidationError,
    WaitForCallbackConfig,
)
from support import is_pg, lmdb_only, perdure_cli, pg_dump_rows, pg_sql, store_exists, wait_for

# region workflows

CALLBACK_IDS: queue.Queue[str] = queue.Queue()


@perdure.durable(name="test_bad_input.double")
def double(ctx: DurableContext, x: int) -> int:
    return ctx.step(lambda _: x * 2, name="double")


@perdure.durable(name="test_bad_input.echo")
def echo(ctx: DurableContext, value: Any) -> Any:
    return value


@perdure.durable(name="test_bad_input.object_result")
def object_result(ctx: DurableContext, _: Any) -> dict[str, Any]:
    try:
        ctx.step(lambda _: object(), name="makes object")
    except SerDesError as exc:
        caught = {"type": type(exc).__name__, "message": str(exc), "operation": exc.operation}
    after = ctx.step(lambda _: "after", name="after")
    return {"caught": caught, "after": after}


@perdure.durable(name="test_bad_input.object_result_uncaught")
def object_result_uncaught(ctx: DurableContext, _: Any) -> Any:
    return ctx.step(lambda _: object(), name="makes object")


@perdure.durable(name="test_bad_input.bad_calls")
def bad_calls(ctx: DurableContext, _: Any) -> dict[str, Any]:
    attempts: list[tuple[str, Callable[[], Any]]] = [
        ("wait zero", lambda: ctx.wait(Duration())),
        ("wait int", lambda: ctx.wait(5)),  # type: ignore[arg-type]
        ("step not callable", lambda: ctx.step(42)),  # type: ignore[arg-type]
        ("step config", lambda: ctx.step(lambda _: 1, config=CallbackConfig())),  # type: ignore[arg-type]
        ("callback config", lambda: ctx.create_callback("c", config=StepConfig())),  # type: ignore[arg-type]
        ("child not callable", lambda: ctx.run_in_child_context("nope")),  # type: ignore[arg-type]
        ("child config", lambda: ctx.run_in_child_context(lambda c: 1, config=StepConfig())),  # type: ignore[arg-type]
        ("submitter", lambda: ctx.wait_for_callback(None)),  # type: ignore[arg-type]
        (
            "wait_for_callback config",
            lambda: ctx.wait_for_callback(lambda i, c: None, config=CallbackConfig()),
        ),
    ]
    errors = {}
    for label, call in attempts:
        try:
            call()
        except ValidationError as exc:
            errors[label] = str(exc)
        else:
            errors[label] = None
    after = ctx.step(lambda _: "after", name="after")
    return {"errors": errors, "after": after}


@perdure.durable(name="test_bad_input.approval")
def approval(ctx: DurableContext, _: Any) -> Any:
    callback = ctx.create_callback("approval")
    ctx.step(lambda _: CALLBACK_IDS.put(callback.callback_id), name="publish")
    return callback.result()


@perdure.durable(name="test_bad_input.marked")
def marked(ctx: DurableContext, parts: list[str]) -> str:
    # The marker is built in the step, so the input does not contain it.
    return ctx.step(lambda _: "-".join(parts), name="mark")


@perdure.durable(name="test_bad_input.big_step")
def big_step(ctx: DurableContext, n: int) -> list[Any]:
    try:
        ctx.step(lambda _: "y" * n, name="big")
    except PayloadTooLargeError as exc:
        # Checked here: the whole message would not fit in the result either.
        message = str(exc)
        clear = message.startswith("step big:") and f"{n + 2} bytes" in message
        return [type(exc).__name__, exc.operation, exc.size, exc.limit, clear]
    return ["no error"]


@perdure.durable(name="test_bad_input.grow")
def grow(ctx: DurableContext, value: str) -> str:
    return value * 2


def not_durable(ctx: DurableContext, _: Any) -> None:
    return None


# endregion
# region helpers


def close(engine: Engine) -> None:
    """Closes an engine and drops it, so that the next open is a fresh one."""
    engine.close()
    del engine
    gc.collect()


def assert_intact(engine: Engine, done: dict[str, Any]) -> None:
    """Earlier executions still give their results; a new one runs."""
    for execution_id, expected in done.items():
        assert engine.get(execution_id).result(timeout=30) == expected
    assert engine.run(double, 50, timeout=30) == 100


def run_script(tmp_path: Path, code: str, *args: str, **kwargs: Any) -> str:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def engine(store: str) -> Iterator[Engine]:
    engine = Engine(store, durability="process", workers=2)
    yield engine
    close(engine)


def _drain_callback_ids() -> None:
    while not CALLBACK_IDS.empty():
        CALLBACK_IDS.get_nowait()


# endregion
# region unserializable values


def test_unserializable_step_result_names_the_operation(engine: Engine) -> None:
    assert engine.run(double, 1, execution_id="before", timeout=30) == 2
    result = engine.run(object_result, None, execution_id="obj", timeout=30)
    caught = result["caught"]
    assert caught["type"] == "SerDesError"
    assert caught["operation"] == "1"
    assert "operation '1'" in caught["message"] and "execution 'obj'" in caught["message"]
    assert "type object is not supported" in caught["message"]
    assert result["after"] == "after"
    # Nothing was recorded for the refused result: op 1 has no events.
    history = engine.history("obj")
    assert not [event for event in history if event.get("Id") == "1"]
    assert [e["Name"] for e in history if e["EventType"] == "StepSucceeded"] == ["after"]

    with pytest.raises(ExecutionFailedError) as info:
        engine.run(object_result_uncaught, None, execution_id="obj-uncaught", timeout=30)
    assert info.value.error_type == "perdure.errors.SerDesError"
    assert "operation '1'" in (info.value.error_message or "")
    assert_intact(engine, {"before": 2, "obj": result})


def test_unserializable_input_writes_nothing(engine: Engine) -> None:
    assert engine.run(double, 2, execution_id="before", timeout=30) == 4
    listed = engine.list()
    with pytest.raises(SerDesError) as info:
        engine.start(double, object(), execution_id="bad-input")
    message = str(info.value)
    assert "'input'" in message and "'bad-input'" in message and "type object" in message
    with pytest.raises(ExecutionNotFoundError):
        engine.get("bad-input")
    assert engine.list() == listed
    assert_intact(engine, {"before": 4})


# endregion
# region invalid configuration


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Duration(seconds=-1), "seconds"),
        (lambda: Duration.from_milliseconds(-5), "milliseconds"),
        (lambda: Duration(minutes=float("nan")), "minutes"),
        (lambda: Duration(hours="2"), "hours"),
        (lambda: RetryStrategyConfig(max_attempts=0), "max_attempts"),
        (lambda: RetryStrategyConfig(max_attempts=2.5), "max_attempts"),
        (lambda: RetryStrategyConfig(backoff_rate=0.5), "backoff_rate"),
        (lambda: RetryStrategyConfig(initial_delay=5), "initial_delay"),
        (lambda: RetryStrategyConfig(max_delay=None), "max_delay"),
        (lambda: RetryStrategyConfig(jitter_strategy="sometimes"), "jitter_strategy"),
        (lambda: RetryStrategyConfig(retryable_errors="boom"), "retryable_errors"),
        (lambda: StepConfig(retry_strategy=3), "retry_strategy"),
        (lambda: StepConfig(step_semantics="AT_MOST_ONCE"), "step_semantics"),
        (lambda: CallbackConfig(timeout=5), "timeout"),
        (lambda: CallbackConfig(timeout=Duration()), "timeout"),
        (lambda: CallbackConfig(heartbeat_timeout=Duration()), "heartbeat_timeout"),
        (lambda: WaitForCallbackConfig(retry_strategy="x"), "retry_strategy"),
        (lambda: ChildConfig(sub_type="has space"), "sub_type"),
    ],
)
def test_invalid_config_names_the_field(build: Callable[[], Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        build()
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"durability": "fast"}, "durability"),
        ({"workers": 0}, "workers"),
        ({"max_payload_size": 0}, "max_payload_size"),
        ({"poll_interval": -1}, "poll_interval"),
    ],
)
def test_invalid_engine_options(store: str, options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Engine(store, **options)
    assert field in str(info.value)
    assert not store_exists(store), "nothing is created for a refused configuration"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://me@/app?host=/nonexistent-perdure-socket-dir",
        "postgres://me:s3cret@/app?host=/nonexistent-perdure-socket-dir&schema=x",
    ],
)
def test_an_unreachable_postgresql_url_is_a_clear_error_and_no_directory(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL is never taken for a directory (it would become one named
    ``postgresql:``); a server that cannot be reached is named in the error,
    its password never."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match="cannot connect to postgres") as info:
        Engine(url)
    assert "s3cret" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
    done = perdure_cli("list", "--store", url)
    assert done.returncode != 0 and "cannot connect" in done.stderr, done
    assert "s3cret" not in done.stderr
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValidationError, match="map_size applies to an LMDB directory"):
        Engine(url, map_size=1 << 30)


def test_invalid_calls_in_a_workflow_write_nothing(engine: Engine) -> None:
    assert engine.run(double, 3, execution_id="before", timeout=30) == 6
    result = engine.run(bad_calls, None, execution_id="bad-calls", timeout=30)
    assert result["errors"] == {
        "wait zero": result["errors"]["wait zero"],
        "wait int": "wait needs a Duration, got int",
        "step not callable": "step needs a callable, got int",
        "step config": "step config must be a StepConfig, got CallbackConfig",
        "callback config": "create_callback config must be a CallbackConfig, got StepConfig",
        "child not callable": "run_in_child_context needs a callable, got str",
        "child config": "run_in_child_context config must be a ChildConfig, got StepConfig",
        "submitter": "wait_for_callback submitter needs a callable, got NoneType",
        "wait_for_callback config": (
            "wait_for_callback config must be a WaitForCallbackConfig, got CallbackConfig"
        ),
    }
    assert result["errors"]["wait zero"].startswith("wait duration must be positive")
    assert result["after"] == "after"
    # Nothing was written for the refused calls: the only operation recorded
    # is the step that followed them.
    events = [e for e in engine.history("bad-calls") if e.get("Id") not in (None, "bad-calls")]
    assert [(e["EventType"], e["Name"]) for e in events] == [
        ("StepStarted", "after"),
        ("StepSucceeded", "after"),
    ]
    assert_intact(engine, {"before": 6, "bad-calls": result})


@perdure.durable(name="test_bad_input.refused_then_step")
def refused_then_step(ctx: DurableContext, _: Any) -> str:
    for refused in (
        lambda: ctx.step(42),  # type: ignore[arg-type]
        lambda: ctx.step(lambda _: 1, config=CallbackConfig()),  # type: ignore[arg-type]
        lambda: ctx.wait(Duration()),
        lambda: ctx.create_callback("c", config=StepConfig()),  # type: ignore[arg-type]
        lambda: ctx.run_in_child_context("nope"),  # type: ignore[arg-type]
    ):
        with contextlib.suppress(ValidationError):
            refused()
    return ctx.step(lambda step: step.operation_id, name="after")


def test_refused_calls_take_no_operation_id(engine: Engine) -> None:
    # Every operation validates its arguments before taking an operation id,
    # so a refused call does not shift the ids of the operations after it.
    assert engine.run(refused_then_step, None, timeout=30) == "1"


# endregion
# region callbacks and function names


def test_unknown_and_completed_callback_ids(engine: Engine) -> None:
    _drain_callback_ids()
    unknown = "f" * 32
    for send in (
        lambda: engine.send_callback_success(unknown, 1),
        lambda: engine.send_callback_failure(unknown, "no"),
        lambda: engine.send_callback_heartbeat(unknown),
    ):
        with pytest.raises(UnknownCallbackError) as info:
            send()
        assert unknown in str(info.value)
    with pytest.raises(ValidationError, match="callback id"):
        engine.send_callback_success("", 1)

    handle = engine.start(approval, None, execution_id="approval-1")
    callback_id = CALLBACK_IDS.get(timeout=30)
    engine.send_callback_success(callback_id, "yes")
    assert handle.result(timeout=30) == "yes"
    for send in (
        lambda: engine.send_callback_success(callback_id, "again"),
        lambda: engine.send_callback_failure(callback_id, "late"),
        lambda: engine.send_callback_heartbeat(callback_id),
    ):
        with pytest.raises(CallbackAlreadyCompletedError) as done_info:
            send()
        assert callback_id in str(done_info.value) and "succeeded" in str(done_info.value)
    events = [e["EventType"] for e in engine.history("approval-1")]
    assert events.count("CallbackSucceeded") == 1
    assert_intact(engine, {"approval-1": "yes"})


def test_unknown_function_name(engine: Engine) -> None:
    assert engine.run(double, 4, execution_id="before", timeout=30) == 8
    listed = engine.list()
    with pytest.raises(UnknownFunctionError) as info:
        engine.start("no.such.function", 1)
    assert "no.such.function" in str(info.value)
    assert info.value.function_name == "no.such.function"
    with pytest.raises(UnknownFunctionError, match="not a durable function"):
        engine.start(not_durable, 1)
    assert engine.list() == listed
    assert_intact(engine, {"before": 8})


GHOST_SCRIPT = """
    import sys
    import perdure

    @perdure.durable(name="test_bad_input.ghost")
    def ghost(ctx, x):
        return ctx.step(lambda _: x * 2, name="double")

    mode, path = sys.argv[1], sys.argv[2]
    if mode == "start":
        client = perdure.Engine(path, owner=False)
        client.start(ghost, 21, execution_id="ghost-1")
        client.close()
    else:
        engine = perdure.Engine(path)
        print("RESULT", engine.get("ghost-1").result(timeout=60))
        engine.close()
"""


def test_execution_of_unregistered_function_stays_pending(tmp_path: Path, store: str) -> None:
    run_script(tmp_path, GHOST_SCRIPT, "start", str(store))
    engine = Engine(store, durability="process", workers=2)
    try:
        wait_for(lambda: "ghost-1" in engine.unregistered(), "ghost-1 to be set aside")
        assert engine.unregistered() == ["ghost-1"]
        assert engine.get("ghost-1").status() == "PENDING"
        assert engine.list(status="FAILED") == []
        assert_intact(engine, {})
        assert engine.get("ghost-1").status() == "PENDING"
    finally:
        close(engine)
    # A process that has the function runs it to completion.
    assert run_script(tmp_path, GHOST_SCRIPT, "run", str(store)).split() == ["RESULT", "42"]


# endregion
# region damaged or unusable stores


MARKER = b"CORRUPT-ME-123456"


def _journal_seqs_containing(store: str, execution_id: str, needle: bytes) -> list[int]:
    """Sequence numbers of the execution's records that contain ``needle``,
    and (last) the sequence number of its final record."""
    if is_pg(store):
        has = f"position('\\x{needle.hex()}'::bytea IN j.record) > 0"
        rows = pg_sql(
            store,
            f"SELECT j.seq, {has} FROM {{schema}}.journal j JOIN {{schema}}.executions e "
            f"USING (exec_key) WHERE e.execution_id = '{execution_id}' ORDER BY j.seq",
        )
        seqs = [int(seq) for seq, has in rows if has == "t"]
        return [*seqs, int(rows[-1][0])]
    env = lmdb.open(str(store), readonly=True, lock=False, max_dbs=16, subdir=True)
    try:
        with env.begin() as txn:
            exec_ids = env.open_db(b"exec_ids", txn=txn, create=False)
            journal = env.open_db(b"journal", txn=txn, create=False)
            sealed = txn.get(execution_id.encode(), db=exec_ids)
            assert sealed is not None
            exec_key = bytes(sealed)[:8]  # then its 4-byte checksum
            seqs, last = [], -1
            cursor = txn.cursor(db=journal)
            cursor.set_range(exec_key)
            for key, value in cursor:
                if key[:8] != exec_key:
                    break
                last = int.from_bytes(key[8:12], "big")
                if needle in value:
                    seqs.append(last)
            return [*seqs, last]
    finally:
        env.close()


def _flip_in_marked_records(store: str) -> None:
    """Flips one bit of every stored copy of MARKER, inside the payload (in
    data.mdb, or in the journal rows): the records' checksums no longer match."""
    if is_pg(store):
        at = f"position('\\x{MARKER.hex()}'::bytea IN record) + 7"  # set_byte counts from 0
        pg_sql(
            store,
            f"UPDATE {{schema}}.journal "
            f"SET record = set_byte(record, {at}, get_byte(record, {at}) # 1) "
            f"WHERE position('\\x{MARKER.hex()}'::bytea IN record) > 0",
        )
        return
    data_file = Path(store) / "data.mdb"
    data = bytearray(data_file.read_bytes())
    positions = []
    found = data.find(MARKER)
    while found != -1:
        positions.append(found)
        found = data.find(MARKER, found + 1)
    assert positions, "marker not found in data.mdb"
    for position in positions:
        data[position + 8] ^= 0x01
    data_file.write_bytes(bytes(data))


def test_corrupted_record_names_execution_and_sequence(
    store: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Engine(store, workers=2)
    parts = MARKER.decode().rsplit("-", 1)
    assert engine.run(marked, parts, execution_id="victim", timeout=30) == MARKER.decode()
    assert engine.run(double, 5, execution_id="bystander", timeout=30) == 10
    close(engine)
    # An execution that will be runnable when the store is reopened, with the
    # marker in its input (record 0).
    client = Engine(store, owner=False)
    client.start(echo, MARKER.decode(), execution_id="victim-pending")
    close(client)

    # The marker is in victim's step record and in its result (the last record).
    step_seq, result_seq, last = _journal_seqs_containing(store, "victim", MARKER)
    assert step_seq >= 1 and result_seq == last
    assert _journal_seqs_containing(store, "victim-pending", MARKER) == [0, 0]
    assert _journal_seqs_containing(store, "bystander", MARKER)[:-1] == []
    _flip_in_marked_records(store)

    caplog.set_level(logging.ERROR, logger="perdure")
    engine = Engine(store, workers=2)
    try:
        with pytest.raises(CorruptRecordError) as info:
            engine.history("victim")
        assert (info.value.execution_id, info.value.sequence) == ("victim", step_seq)
        message = str(info.value)
        assert '"victim"' in message and f"sequence {step_seq}" in message
        assert "checksum" in message
        with pytest.raises(CorruptRecordError) as result_info:
            engine.get("victim").result(timeout=30)
        assert (result_info.value.execution_id, result_info.value.sequence) == (
            "victim",
            result_seq,
        )
        # The runnable one cannot run: the engine says so and carries on.
        wait_for(
            lambda: any("victim-pending" in r.getMessage() for r in caplog.records),
            "the engine to report victim-pending",
        )
        with pytest.raises(CorruptRecordError) as pending_info:
            engine.history("victim-pending")
        assert (pending_info.value.execution_id, pending_info.value.sequence) == (
            "victim-pending",
            0,
        )
        assert engine.get("victim-pending").status() == "PENDING"
        # Everything else still works.
        assert [i.execution_id for i in engine.list()] == ["victim", "bystander", "victim-pending"]
        assert [e["EventType"] for e in engine.history("bystander")][-1] == "ExecutionSucceeded"
        assert_intact(engine, {"bystander": 10})
    finally:
        close(engine)


def _cap_set(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1], 16)
    return 0


CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_SETPCAP = 1, 2, 8
PR_CAPBSET_DROP = 24


# Loaded here, not in the forked child, where only the call itself is made.
_LIBC = ctypes.CDLL(None, use_errno=True)


def _drop_dac_capabilities() -> None:  # runs in the child, before exec
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if _LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_CAPBSET_DROP, {cap}): {os.strerror(errno)}")


def _unprivileged() -> dict[str, Any]:
    """subprocess options under which file permissions apply, even for root."""
    effective = _cap_set("CapEff")
    overrides = (1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH)
    if os.geteuid() != 0 or not effective & overrides:
        return {}  # permissions already apply
    if effective & (1 << CAP_SETPCAP):
        # Root without the capabilities that override file permissions: a
        # capability dropped from the bounding set is gone after exec.
        return {"preexec_fn": _drop_dac_capabilities}
    pytest.fail("root with CAP_DAC_OVERRIDE but without CAP_SETPCAP: cannot drop the override")


UNWRITABLE_SCRIPT = """
    import json, os, sys
    import perdure

    report = {"uid": os.geteuid()}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                report["cap_eff"] = int(line.split()[1], 16)
    try:
        open(os.path.join(sys.argv[1], "probe"), "w").close()
        report["probe_writable"] = True
    except PermissionError:
        report["probe_writable"] = False
    report["results"] = {}
    for path in sys.argv[2:]:
        try:
            perdure.Engine(path).close()
            report["results"][path] = None
        except perdure.PerdureError as exc:
            report["results"][path] = [type(exc).__name__, str(exc)]
    print(json.dumps(report))
"""


@lmdb_only("file permissions of the store directory")
def test_store_directory_not_writable(tmp_path: Path, lmdb_store: Path) -> None:
    store = lmdb_store
    engine = Engine(store, workers=2)
    assert engine.run(double, 6, execution_id="before", timeout=30) == 12
    close(engine)
    read_only_parent = tmp_path / "read-only"
    read_only_parent.mkdir()
    new_store = read_only_parent / "new-store"
    files = [store / "data.mdb", store / "lock.mdb"]
    read_only_parent.chmod(0o500)
    store.chmod(0o500)
    (store / "owners").chmod(0o500)
    for file in files:
        file.chmod(0o400)
    try:
        output = run_script(
            tmp_path,
            UNWRITABLE_SCRIPT,
            str(read_only_parent),
            str(new_store),
            str(store),
            **_unprivileged(),
        )
    finally:
        read_only_parent.chmod(0o700)
        store.chmod(0o700)
        (store / "owners").chmod(0o700)
        for file in files:
            file.chmod(0o600)
    report = json.loads(output)
    # The mechanism works: the child really cannot write there.
    assert report["probe_writable"] is False, report
    if report["uid"] == 0:
        assert not report["cap_eff"] & ((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH))
    for path in (new_store, store):
        error = report["results"][str(path)]
        assert error is not None, f"{path} opened although not writable"
        assert error[0] == StoreAccessError.__name__, error
        assert str(path) in error[1] and "Permission denied" in error[1], error
    assert not new_store.exists()

    engine = Engine(store, workers=2)
    try:
        assert_intact(engine, {"before": 12})
    finally:
        close(engine)
    for file in files[:2]:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600


def _set_format_version(store: str, version: int) -> None:
    env = lmdb.open(str(store), lock=False, max_dbs=16, subdir=True)
    try:
        meta = env.open_db(b"meta", create=False)
        with env.begin(write=True, db=meta) as txn:
            txn.put(b"format_version", version.to_bytes(4, "big"))
    finally:
        env.close()


def _format_version(store: str) -> bytes:
    env = lmdb.open(str(store), readonly=True, lock=False, max_dbs=16, subdir=True)
    try:
        meta = env.open_db(b"meta", create=False)
        with env.begin(db=meta) as txn:
            value = txn.get(b"format_version")
            assert value is not None
            return bytes(value)
    finally:
        env.close()


def _strip_checksums(store: str) -> None:
    """Rewrites a store's values as formats before 5 had them: no checksum
    trailer, leases without an epoch, no epoch counter."""
    env = lmdb.open(str(store), lock=False, max_dbs=16, subdir=True)
    try:
        for name in (
            b"executions",
            b"exec_ids",
            b"callbacks",
            b"pending",
            b"wakes",
            b"orphans",
            b"timers",
            b"owners",
            b"leases",
            b"meta",
        ):
            db = env.open_db(name, create=False)
            with env.begin(write=True, db=db) as txn:
                for key, value in list(txn.cursor()):
                    if name == b"meta" and key in (b"format_version", b"lease_epoch"):
                        continue
                    value = value[:-4]
                    txn.put(key, value[:8] if name == b"leases" else value)
                txn.delete(b"lease_epoch")
    finally:
        env.close()


def _store_at_format(store: str, version: int) -> int:
    """A store with one finished execution, as of format ``version`` (the
    engine is gone when this returns, so the next open reads it)."""
    engine = Engine(store, workers=2)
    assert engine.run(double, 7, execution_id="before", timeout=30) == 14
    close(engine)
    if version < 5:
        _strip_checksums(store)
    _set_format_version(store, version)
    return version


#: The schema version a PostgreSQL store has (docs/format.md §8).
PG_SCHEMA_VERSION = 1


def _supported_version(store: str) -> int:
    return PG_SCHEMA_VERSION if is_pg(store) else perdure.FORMAT_VERSION


def _set_version(store: str, version: int) -> None:
    if is_pg(store):
        pg_sql(
            store,
            f"UPDATE {{schema}}.meta SET value = '{version}' WHERE key = 'schema_version'",
        )
    else:
        _set_format_version(store, version)


def _stored(store: str) -> Any:
    """All the store holds: data.mdb's bytes, or every row of the schema."""
    return pg_dump_rows(store) if is_pg(store) else (Path(store) / "data.mdb").read_bytes()


def _newer_store(store: str) -> int:
    """A store with one finished execution, of the version after this perdure's."""
    if not is_pg(store):
        return _store_at_format(store, perdure.FORMAT_VERSION + 1)
    engine = Engine(store, workers=2)
    assert engine.run(double, 7, execution_id="before", timeout=30) == 14
    close(engine)
    _set_version(store, PG_SCHEMA_VERSION + 1)
    return PG_SCHEMA_VERSION + 1


def test_store_from_a_newer_format_version_is_refused_untouched(store: str) -> None:
    newer = _newer_store(store)
    supported = _supported_version(store)
    stored_before = _stored(store)
    for owner in (True, False):
        with pytest.raises(StoreVersionError) as info:
            Engine(store, owner=owner)
        message = str(info.value)
        assert f"version {newer}" in message
        assert f"reads version {supported}" in message
        assert store in message
    assert _stored(store) == stored_before

    # Put back by hand, the store is intact.
    _set_version(store, supported)
    engine = Engine(store, workers=2)
    try:
        assert_intact(engine, {"before": 14})
    finally:
        close(engine)


@lmdb_only("LMDB format upgrades")
@pytest.mark.parametrize("older", [2, 3, 4])
def test_store_of_an_older_format_is_upgraded_in_place(lmdb_store: Path, older: int) -> None:
    store = lmdb_store
    # Formats 3 and 4 only added records an older store cannot hold; format 5
    # seals every value with its checksum. The upgrade does both, and every
    # execution reads as before.
    _store_at_format(store, older)
    engine = Engine(store, owner=False)
    try:
        assert engine.get("before").result(timeout=30) == 14
    finally:
        close(engine)
    assert _format_version(store) == perdure.FORMAT_VERSION.to_bytes(4, "big")
    engine = Engine(store, workers=2)
    try:
        assert_intact(engine, {"before": 14})
    finally:
        close(engine)


def test_store_version_error_attributes(store: str) -> None:
    newer = _newer_store(store)
    with pytest.raises(StoreVersionError) as info:
        Engine(store)
    assert (info.value.found, info.value.supported) == (newer, _supported_version(store))
    assert info.value.path == str(store)


def test_payload_over_the_limit(store: str) -> None:
    _drain_callback_ids()
    engine = Engine(store, durability="process", workers=2, max_payload_size=64)
    try:
        assert engine.run(double, 8, execution_id="before", timeout=30) == 16
        with pytest.raises(PayloadTooLargeError) as info:
            engine.start(echo, "x" * 100, execution_id="too-big")
        assert (info.value.size, info.value.limit) == (102, 64)
        assert "input" in (info.value.operation or "")
        message = str(info.value)
        assert "input" in message and "102 bytes" in message and "limit of 64" in message
        with pytest.raises(ExecutionNotFoundError):
            engine.get("too-big")

        caught = engine.run(big_step, 100, execution_id="big-step", timeout=30)
        assert caught == ["PayloadTooLargeError", "step big", 102, 64, True]

        with pytest.raises(ExecutionFailedError) as failed:
            engine.run(grow, "z" * 40, execution_id="big-result", timeout=30)
        assert failed.value.error_type == "perdure.errors.PayloadTooLargeError"
        failure = failed.value.error_message or ""
        assert "execution result" in failure and "82 bytes" in failure
        handle = engine.start(approval, None, execution_id="approval-big")
        callback_id = CALLBACK_IDS.get(timeout=30)
        with pytest.raises(PayloadTooLargeError) as callback_info:
            engine.send_callback_success(callback_id, "w" * 100)
        assert "callback" in str(callback_info.value) and "102 bytes" in str(callback_info.value)
        engine.send_callback_success(callback_id, "ok")
        assert handle.result(timeout=30) == "ok"
        assert_intact(engine, {"before": 16, "big-step": caught, "approval-big": "ok"})
    finally:
        close(engine)


OWNER_SCRIPT = """
    import sys
    import perdure

    @perdure.durable(name="test_bad_input.gate")
    def gate(ctx, _):
        callback = ctx.create_callback("gate")
        ctx.step(lambda _: print("CALLBACK", callback.callback_id, flush=True), name="publish")
        return callback.result()

    engine = perdure.Engine(sys.argv[1])
    print("RESULT", engine.start(gate, None, execution_id="gate-1").result(timeout=60), flush=True)
    sys.stdin.read()  # keep the store until the test lets go
    engine.close()
"""


def test_a_second_engine_and_a_client_work_beside_an_owner(tmp_path: Path, store: str) -> None:
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(OWNER_SCRIPT))
    child = subprocess.Popen(
        [sys.executable, str(script), str(store)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        line = child.stdout.readline().split()
        assert line[:1] == ["CALLBACK"], (line, child.stderr.read() if child.stderr else "")
        callback_id = line[1]

        # A second engine opens the same store but does not take the
        # execution the child runs: the lease stays with the child.
        second = Engine(store, workers=2)
        client = Engine(store, owner=False)
        try:
            key = client.get("gate-1")._exec_key
            assert second._core.lease(key) not in (None, second.owner_id)
            assert [i.execution_id for i in client.list()] == ["gate-1"]
            wait_for(lambda: client.get("gate-1").status() == "SUSPENDED", "gate-1 to suspend")
            client.send_callback_success(callback_id, "opened")
            assert client.get("gate-1").result(timeout=30) == "opened"
            assert child.stdout.readline().split() == ["RESULT", "opened"]
            assert "CallbackSucceeded" in [e["EventType"] for e in client.history("gate-1")]
        finally:
            close(client)
            close(second)
        child.stdin.close()
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    # Once the owner is gone, the store has a free owner slot and is intact.
    engine = Engine(store, workers=2)
    try:
        assert_intact(engine, {"gate-1": "opened"})
    finally:
        close(engine)


# endregion
