"""Callers who misuse perdure get a clear perdure error and the store is left
as it was (issue 9, "Callers").

* an engine dropped without close() lets the interpreter exit;
* an engine used after close() raises EngineClosedError, for every call and
  for handles obtained before;
* a context kept beyond its invocation raises InvocationEndedError;
* bad arguments raise ValidationError naming the argument, before anything is
  written: every case compares the whole store (every LMDB database, read by
  another process) before and after;
* the read-only CLI commands refuse a store that does not exist (exit 2).
"""

from __future__ import annotations

import asyncio
import gc
import json
import queue
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import perdure
import pytest
from perdure import (
    AsyncDurableContext,
    CallbackConfig,
    DurableContext,
    Duration,
    Engine,
    EngineClosedError,
    InvocationEndedError,
    InvokeConfig,
    MapConfig,
    RetryStrategyConfig,
    StepConfig,
    ValidationError,
    WaitForCallbackConfig,
)
from perdure.testing import TimeSkippingClock
from support import (
    is_pg,
    make_empty_store,
    perdure_cli,
    pg_dump_rows,
    store_exists,
    store_is_empty,
    wait_for,
)

# region workflows

CALLBACK_IDS: queue.Queue[str] = queue.Queue()
KEPT: dict[str, Any] = {}


@perdure.durable(name="test_callers.double")
def double(ctx: DurableContext, x: int) -> int:
    return ctx.step(lambda _: x * 2, name="double")


@perdure.durable(name="test_callers.approval")
def approval(ctx: DurableContext, _: Any) -> Any:
    callback = ctx.create_callback("approval")
    ctx.step(lambda _: CALLBACK_IDS.put(callback.callback_id), name="publish")
    return callback.result()


@perdure.durable(name="test_callers.keeper")
def keeper(ctx: DurableContext, _: Any) -> str:
    KEPT["ctx"] = ctx
    KEPT["callback"] = ctx.create_callback("kept")
    ctx.run_in_child_context(lambda child: KEPT.__setitem__("child", child), name="child")
    return ctx.step(lambda _: "done", name="last")


@perdure.durable(name="test_callers.async_keeper")
async def async_keeper(ctx: AsyncDurableContext, _: Any) -> str:
    KEPT["async"] = ctx
    return await ctx.step(lambda _: "done", name="last")


def _misuse(ctx: DurableContext) -> dict[str, Callable[[], Any]]:
    """Calls inside a workflow that must be refused before they take an
    operation id or write anything."""
    return {
        "step name int": lambda: ctx.step(lambda _: 1, name=1),  # type: ignore[arg-type]
        "step name surrogate": lambda: ctx.step(lambda _: 1, name="a\udcff"),
        "wait name int": lambda: ctx.wait(Duration(seconds=1), name=7),  # type: ignore[arg-type]
        "wait years": lambda: ctx.wait(Duration(days=10**12)),
        "wait overflow": lambda: ctx.wait(Duration.from_milliseconds(2**64)),
        "callback name int": lambda: ctx.create_callback(name=1),  # type: ignore[arg-type]
        "callback timeout overflow": lambda: ctx.create_callback(
            config=CallbackConfig(timeout=Duration(days=10**12))
        ),
        "callback heartbeat overflow": lambda: ctx.create_callback(
            config=CallbackConfig(heartbeat_timeout=Duration.from_seconds(2**62))
        ),
        "wait_for_callback name": lambda: ctx.wait_for_callback(lambda i, c: None, name=b"x"),  # type: ignore[arg-type]
        "wait_for_callback timeout": lambda: ctx.wait_for_callback(
            lambda i, c: None, config=WaitForCallbackConfig(timeout=Duration(days=10**12))
        ),
        "child name int": lambda: ctx.run_in_child_context(lambda c: 1, name=1),  # type: ignore[arg-type]
        "map name int": lambda: ctx.map([1], lambda c, i, n, a: i, name=1),  # type: ignore[arg-type]
        "map concurrency": lambda: ctx.map(
            [1], lambda c, i, n, a: i, config=MapConfig(max_concurrency=2**70)
        ),
        "map item_namer": lambda: ctx.map(
            [1], lambda c, i, n, a: i, config=MapConfig(item_namer=lambda item, index: index)
        ),
        "parallel name": lambda: ctx.parallel([lambda c: 1], name=3.5),  # type: ignore[arg-type]
        "invoke surrogate": lambda: ctx.invoke("test_callers.\udcff"),
        "invoke name int": lambda: ctx.invoke("test_callers.double", 1, name=1),  # type: ignore[arg-type]
        "invoke timeout": lambda: ctx.invoke(
            "test_callers.double", 1, config=InvokeConfig(timeout=Duration(days=10**12))
        ),
        "retry backoff": lambda: ctx.step(
            lambda _: 1,
            config=StepConfig(
                retry_strategy=perdure.create_retry_strategy(
                    RetryStrategyConfig(backoff_rate=10**400)
                )
            ),
        ),
    }


@perdure.durable(name="test_callers.misuse")
def misuse(ctx: DurableContext, case: str) -> dict[str, Any]:
    try:
        _misuse(ctx)[case]()
    except ValidationError as exc:
        outcome = {"type": "ValidationError", "message": str(exc)}
    except Exception as exc:  # the test reports what it got instead
        outcome = {"type": type(exc).__name__, "message": str(exc)}
    else:
        outcome = {"type": None, "message": ""}
    # The next operation gets id 1: the refused call took none.
    outcome["next"] = ctx.step(lambda step: step.operation_id, name="after")
    return outcome


# endregion
# region helpers

_DUMP = """
import hashlib, json, sys
import lmdb
env = lmdb.open(sys.argv[1], readonly=True, lock=False, max_dbs=64)
with env.begin() as txn:
    names = [key for key, _ in txn.cursor()]
out = {}
for name in names:
    db = env.open_db(name, create=False)
    with env.begin(db=db) as txn:
        out[name.decode()] = [[k.hex(), hashlib.sha256(v).hexdigest()] for k, v in txn.cursor()]
print(json.dumps(out))
"""


def dump(store: str) -> dict[str, Any]:
    """Every key and value of every database of a closed store, read by
    another process (LMDB allows one environment per path in a process); of
    a PostgreSQL store, every row of its schema, as pg_dump writes them."""
    if is_pg(store):
        return pg_dump_rows(store)  # type: ignore[return-value]
    done = subprocess.run(
        [sys.executable, "-c", _DUMP, str(store)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    changed = sorted(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )
    assert not changed, f"the store changed in {changed}"


def run_script(
    tmp_path: Path, code: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=tmp_path,
    )


@pytest.fixture(scope="module")
def seeded(module_new_store: Callable[[], str]) -> tuple[str, str]:
    """A closed store with a finished execution ("done") and one waiting for
    a callback ("waiting"); returns it and the callback id."""
    store = module_new_store()
    while not CALLBACK_IDS.empty():
        CALLBACK_IDS.get_nowait()
    engine = Engine(store, durability="process", workers=2)
    assert engine.run(double, 21, execution_id="done", timeout=30) == 42
    engine.start(approval, None, execution_id="waiting")
    callback_id = CALLBACK_IDS.get(timeout=30)
    waiting = engine.get("waiting")
    wait_for(lambda: waiting.status() == "SUSPENDED", "the callback wait")
    engine.close()
    return store, callback_id


@pytest.fixture
def client(seeded: tuple[str, str]) -> Iterator[tuple[Engine, str, dict[str, Any]]]:
    """A client engine on the seeded store, the callback id, and the store's
    dump before the test; the store is compared with it after."""
    store, callback_id = seeded
    before = dump(store)
    engine = Engine(store, owner=False, durability="process")
    yield engine, callback_id, before
    engine.close()
    del engine
    gc.collect()
    assert_same(before, dump(store))


# endregion
# region an engine dropped without close()

EXIT_SCRIPT = """
import gc, sys
import perdure
from perdure import Duration

@perdure.durable(name="exit.work")
def work(ctx, x):
    ctx.step(lambda _: None, name="a")
    return x + 1

@perdure.durable(name="exit.sleeper")
def sleeper(ctx, _):
    ctx.step(lambda _: None, name="a")
    ctx.wait(Duration(hours=1))
    return "late"

def run(store):
    engine = perdure.Engine(store, durability="process", workers=4)
    assert engine.run(work, 1, timeout=30) == 2
    return engine

mode, store = sys.argv[1], sys.argv[2]
if mode == "del":
    engine = run(store)
    del engine
elif mode == "scope":
    run(store)
elif mode == "cycle":
    engine = run(store)
    engine.me = engine
    del engine
elif mode == "global":
    engine = run(store)
elif mode == "waiting":
    engine = run(store)
    engine.start(sleeper, None, execution_id="sleeping")
    while engine.get("sleeping").status() != "SUSPENDED":
        pass
    del engine
elif mode == "blocked":
    import threading
    engine = run(store)
    handle = engine.start(sleeper, None, execution_id="sleeping")
    threading.Thread(target=lambda: handle.result(), daemon=True).start()
    del handle
print("exiting", flush=True)
"""


@pytest.mark.parametrize("mode", ["del", "scope", "cycle", "global", "waiting", "blocked"])
def test_engine_dropped_without_close_lets_the_process_exit(
    tmp_path: Path, store: str, mode: str
) -> None:
    try:
        done = run_script(tmp_path, EXIT_SCRIPT, mode, str(store), timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the process with an unclosed engine ({mode}) did not exit")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "exiting"
    # The store is usable after: both executions are there, the finished one done.
    with Engine(store, owner=False, durability="process") as engine:
        rows = engine.list()
        assert "SUCCEEDED" in [row.status for row in rows]


# endregion
# region an engine used after close()

CLOSED_CALLS: dict[str, Callable[[Engine, perdure.ExecutionHandle, str], Any]] = {
    "start": lambda e, h, c: e.start(double, 1, execution_id="after-close"),
    "run": lambda e, h, c: e.run(double, 1, execution_id="after-close"),
    "start_async": lambda e, h, c: asyncio.run(e.start_async(double, 1)),
    "run_async": lambda e, h, c: asyncio.run(e.run_async(double, 1)),
    "get": lambda e, h, c: e.get("done"),
    "list": lambda e, h, c: e.list(),
    "history": lambda e, h, c: e.history("done"),
    "cancel": lambda e, h, c: e.cancel("waiting"),
    "replay": lambda e, h, c: e.replay(),
    "unregistered": lambda e, h, c: e.unregistered(),
    "send_callback_success": lambda e, h, c: e.send_callback_success(c, "ok"),
    "send_callback_failure": lambda e, h, c: e.send_callback_failure(c, "no"),
    "send_callback_heartbeat": lambda e, h, c: e.send_callback_heartbeat(c),
    "handle.result": lambda e, h, c: h.result(timeout=5),
    "handle.result_async": lambda e, h, c: asyncio.run(h.result_async(timeout=5)),
    "handle.info": lambda e, h, c: h.info(),
    "handle.status": lambda e, h, c: h.status(),
    "handle.history": lambda e, h, c: h.history(),
    "with": lambda e, h, c: e.__enter__(),
}


@pytest.mark.parametrize("owner", [True, False], ids=["owner", "client"])
@pytest.mark.parametrize("call", sorted(CLOSED_CALLS))
def test_closed_engine_refuses_every_call(seeded: tuple[str, str], call: str, owner: bool) -> None:
    store, callback_id = seeded
    before = dump(store)
    engine = Engine(store, owner=owner, durability="process", workers=2)
    handle = engine.get("done")
    engine.close()
    with pytest.raises(EngineClosedError) as info:
        CLOSED_CALLS[call](engine, handle, callback_id)
    assert "is closed" in str(info.value) and str(store) in str(info.value)
    engine.close()  # a second close is harmless
    del engine, handle
    gc.collect()
    if not owner:  # an owner's open and close renews its registration; a client writes nothing
        assert_same(before, dump(store))


def test_result_waiting_when_the_engine_closes_is_told(store: str) -> None:
    engine = Engine(store, durability="process", workers=2)
    handle = engine.start(approval, None, execution_id="waits")
    CALLBACK_IDS.get(timeout=30)
    outcome: queue.Queue[BaseException | None] = queue.Queue()

    def wait() -> None:
        try:
            handle.result()
        except BaseException as exc:
            outcome.put(exc)
        else:
            outcome.put(None)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    engine.close()
    got = outcome.get(timeout=30)
    assert isinstance(got, EngineClosedError), got


# endregion
# region contexts kept beyond their invocation


KEPT_CALLS: dict[str, Callable[[], Any]] = {
    "step new": lambda: KEPT["ctx"].step(lambda _: "late", name="late"),
    "step replayed": lambda: KEPT["ctx"].step(lambda _: "x", name="kept"),
    "wait": lambda: KEPT["ctx"].wait(Duration(seconds=1)),
    "create_callback": lambda: KEPT["ctx"].create_callback("late"),
    "wait_for_callback": lambda: KEPT["ctx"].wait_for_callback(lambda i, c: None),
    "run_in_child_context": lambda: KEPT["ctx"].run_in_child_context(lambda c: 1),
    "map": lambda: KEPT["ctx"].map([1, 2], lambda c, i, n, a: i),
    "parallel": lambda: KEPT["ctx"].parallel([lambda c: 1]),
    "invoke": lambda: KEPT["ctx"].invoke("test_callers.double", 2),
    "wait_for_condition": lambda: KEPT["ctx"].wait_for_condition(
        lambda s, c: s,
        perdure.WaitForConditionConfig(
            wait_strategy=lambda s, a: perdure.WaitForConditionDecision.stop_polling(),
            initial_state=1,
        ),
    ),
    "callback.result": lambda: KEPT["callback"].result(),
    "child step": lambda: KEPT["child"].step(lambda _: 1, name="late"),
    "async step": lambda: asyncio.run(KEPT["async"].step(lambda _: 1, name="late")),
    "async wait_for_callback": lambda: asyncio.run(
        KEPT["async"].wait_for_callback(lambda i, c: None)
    ),
}


@pytest.mark.parametrize("call", sorted(KEPT_CALLS))
def test_context_kept_beyond_its_invocation(store: str, call: str) -> None:
    KEPT.clear()
    with Engine(store, durability="process", workers=2) as engine:
        assert engine.run(keeper, None, execution_id="kept-sync", timeout=30) == "done"
        assert engine.run(async_keeper, None, execution_id="kept-async", timeout=30) == "done"
        histories = {eid: engine.history(eid) for eid in ("kept-sync", "kept-async")}
        with pytest.raises(InvocationEndedError) as info:
            KEPT_CALLS[call]()
        expected = "kept-async" if call.startswith("async") else "kept-sync"
        assert info.value.execution_id == expected
        assert repr(expected) in str(info.value)
        assert {eid: engine.history(eid) for eid in histories} == histories
        assert engine.list(status="SUCCEEDED", limit=10)
        assert engine.run(double, 4, timeout=30) == 8
    KEPT.clear()


# endregion
# region bad arguments: the engine


@pytest.mark.parametrize(
    ("args", "options", "named"),
    [
        ((12345,), {}, "path"),
        ((None,), {}, "path"),
        (("store",), {"map_size": -1}, "map_size"),
        (("store",), {"map_size": "big"}, "map_size"),
        (("store",), {"map_size": True}, "map_size"),
        (("store",), {"map_size": 2**80}, "map_size"),
        (("store",), {"map_size": 10}, "map_size"),
        (("store",), {"workers": 10**9}, "workers"),
        (("store",), {"owner": "no"}, "owner"),
        (("store",), {"max_payload_size": True}, "max_payload_size"),
        (("store",), {"poll_interval": True}, "poll_interval"),
        (("store",), {"durability": 1}, "durability"),
    ],
    ids=lambda value: repr(value)[:30],
)
def test_engine_arguments(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[Any, ...],
    options: dict[str, Any],
    named: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError) as info:
        Engine(*args, **options)
    assert named in str(info.value)
    assert list(tmp_path.iterdir()) == [], "nothing is created for refused arguments"


# endregion
# region bad arguments: calls on a store


BAD_CALLS: dict[str, tuple[Callable[[Engine, str], Any], str]] = {
    "start surrogate id": (lambda e, c: e.start(double, 1, execution_id="a\udcff"), "execution_id"),
    "start int id": (lambda e, c: e.start(double, 1, execution_id=5), "execution_id"),
    "start function int": (lambda e, c: e.start(12345), "function"),
    "start function surrogate": (lambda e, c: e.start("f\udcff"), "function name"),
    "start timeout huge": (lambda e, c: e.start(double, 1, timeout=1e300), "execution timeout"),
    "start timeout huge int": (
        lambda e, c: e.start(double, 1, timeout=10**400),
        "execution timeout",
    ),
    "start timeout bool": (lambda e, c: e.start(double, 1, timeout=True), "execution timeout"),
    "start timeout nan": (
        lambda e, c: e.start(double, 1, timeout=float("nan")),
        "execution timeout",
    ),
    "start timeout years": (
        lambda e, c: e.start(double, 1, timeout=Duration(days=10**12)),
        "1000 years",
    ),
    "run timeout str": (lambda e, c: e.run(double, 1, execution_id="r", timeout="5"), "timeout"),
    "run timeout huge": (lambda e, c: e.run(double, 1, execution_id="r", timeout=1e300), "timeout"),
    "run timeout nan": (
        lambda e, c: e.run(double, 1, execution_id="r", timeout=float("nan")),
        "timeout",
    ),
    "run_async timeout": (
        lambda e, c: asyncio.run(e.run_async(double, 1, execution_id="r", timeout=-1)),
        "timeout",
    ),
    "result timeout bool": (lambda e, c: e.get("done").result(timeout=True), "timeout"),
    "result timeout negative": (lambda e, c: e.get("waiting").result(timeout=-5), "timeout"),
    "result timeout huge": (lambda e, c: e.get("waiting").result(timeout=1e300), "timeout"),
    "result_async timeout": (
        lambda e, c: asyncio.run(e.get("waiting").result_async(timeout="x")),
        "timeout",
    ),
    "get surrogate": (lambda e, c: e.get("w\udcff"), "execution_id"),
    "get int": (lambda e, c: e.get(1), "execution_id"),
    "history surrogate": (lambda e, c: e.history("w\udcff"), "execution_id"),
    "cancel surrogate": (lambda e, c: e.cancel("w\udcff"), "execution_id"),
    "cancel reason huge int": (lambda e, c: e.cancel("waiting", 10**400), "reason"),
    "cancel reason object": (lambda e, c: e.cancel("waiting", object()), "reason"),
    "list name int": (lambda e, c: e.list(name=1), "name"),
    "list name surrogate": (lambda e, c: e.list(name="f\udcff"), "name"),
    "list limit bool": (lambda e, c: e.list(limit=True), "limit"),
    "list limit huge": (lambda e, c: e.list(limit=2**70), "limit"),
    "list status int": (lambda e, c: e.list(status=1), "status"),
    "callback success surrogate": (
        lambda e, c: e.send_callback_success("c\udcff", 1),
        "callback id",
    ),
    "callback success int": (lambda e, c: e.send_callback_success(7, 1), "callback id"),
    "callback failure surrogate": (lambda e, c: e.send_callback_failure("c\udcff"), "callback id"),
    "callback heartbeat surrogate": (
        lambda e, c: e.send_callback_heartbeat("c\udcff"),
        "callback id",
    ),
    "failure error int": (lambda e, c: e.send_callback_failure(c, 12345), "error"),
    "failure error huge int": (lambda e, c: e.send_callback_failure(c, 10**400), "error"),
    "failure error surrogate": (lambda e, c: e.send_callback_failure(c, "x\udcff"), "error"),
    "failure error_type int": (
        lambda e, c: e.send_callback_failure(c, "no", error_type=1),
        "error_type",
    ),
    "failure error_data huge int": (
        lambda e, c: e.send_callback_failure(c, "no", error_data=10**400),
        "error_data",
    ),
    "close timeout str": (lambda e, c: e.close("soon"), "close timeout"),
    "replay ids surrogate": (lambda e, c: e.replay(execution_ids=["d\udcff"]), "execution_ids"),
    "replay ids int": (lambda e, c: e.replay(execution_ids=[1]), "execution_ids"),
    "replay workers huge": (lambda e, c: e.replay(workers=2**70), "workers"),
    "replay verify str": (lambda e, c: e.replay(verify="yes"), "verify"),
    "replay progress int": (lambda e, c: e.replay(progress=3), "progress"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_arguments_write_nothing(client: tuple[Engine, str, dict[str, Any]], case: str) -> None:
    engine, callback_id, _before = client
    call, named = BAD_CALLS[case]
    with pytest.raises(ValidationError) as info:
        call(engine, callback_id)
    assert named in str(info.value)
    # The engine still works (the fixture then proves the store unchanged).
    assert engine.get("done").result(timeout=5) == 42
    assert engine.get("waiting").status() == "SUSPENDED"


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: Duration(days=10**6), "days"),
        (lambda: Duration(days=1e300), "days"),
        (lambda: Duration(days=10**400), "days"),
        (lambda: Duration(days=10**400, seconds=0.5), "days"),
        (lambda: Duration(days=365 * 999, hours=24 * 365 * 2), "1000 years"),
        (lambda: Duration.from_days(1e308), "days"),
        (lambda: Duration.from_milliseconds(2**64), "milliseconds"),
        (lambda: Duration.from_timedelta(timedelta.max), "timedelta"),
        (lambda: Duration(seconds=True), "seconds"),
        (lambda: CallbackConfig(timeout=Duration(days=400_000)), "1000 years"),
        (lambda: RetryStrategyConfig(backoff_rate=10**400), "backoff_rate"),
        (lambda: MapConfig(max_concurrency=2**70), "max_concurrency"),
        (
            lambda: TimeSkippingClock(datetime(9990, 1, 1, tzinfo=UTC)).advance(
                Duration(days=365 * 20)
            ),
            "9999",
        ),
    ],
    ids=lambda value: getattr(value, "__name__", repr(value))[:30],
)
def test_values_out_of_range(build: Callable[[], Any], named: str) -> None:
    with pytest.raises(ValidationError) as info:
        build()
    assert named in str(info.value)


def test_longest_duration_is_accepted_and_waits() -> None:
    longest = Duration(days=365 * 1000)
    assert longest.to_millis() == 365 * 1000 * 86_400_000
    assert CallbackConfig(timeout=longest).timeout == longest


# endregion
# region bad arguments inside a workflow


@pytest.mark.parametrize("case", sorted(_misuse(None)))  # type: ignore[arg-type]
def test_bad_arguments_in_a_workflow_write_nothing(store: str, case: str) -> None:
    with Engine(store, durability="process", workers=2) as engine:
        outcome = engine.run(misuse, case, execution_id="misuse", timeout=30)
        assert outcome["type"] == "ValidationError", outcome
        assert outcome["next"] == "1", "the refused call took an operation id"
        events = [
            (event["EventType"], event.get("Name"))
            for event in engine.history("misuse")
            if event.get("Id") != "misuse" and event["EventType"] != "InvocationCompleted"
        ]
        # Only the step that followed was written.
        assert events == [("StepStarted", "after"), ("StepSucceeded", "after")], events
        assert [info.execution_id for info in engine.list()] == ["misuse"]


# endregion
# region the read-only CLI commands


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["show", "some-id"],
        ["history", "some-id"],
        ["callback", "succeed", "some-callback"],
        ["callback", "heartbeat", "some-callback"],
        ["replay"],
    ],
    ids=lambda argv: "-".join(argv[:2]),
)
@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_cli_refuses_a_missing_store(
    tmp_path: Path, store: str, argv: list[str], kind: str
) -> None:
    if kind == "empty":
        make_empty_store(store)
    done = perdure_cli(*argv, "--store", store, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    # A directory is named; a URL is not (it may hold a password).
    assert (
        "no perdure store at the --store URL" if is_pg(store) else f"no perdure store at {store}"
    ) in done.stderr
    if kind == "missing":
        assert not store_exists(store)
    else:
        assert store_is_empty(store)
    # Nothing else is made, in the working directory or beside the store.
    assert list(tmp_path.iterdir()) == ([] if is_pg(store) or kind == "missing" else [Path(store)])


def test_cli_reads_an_existing_store(seeded: tuple[str, str]) -> None:
    store, _ = seeded
    done = perdure_cli("list", "--store", str(store))
    assert done.returncode == 0, done.stderr
    assert "done\tSUCCEEDED" in done.stdout and "waiting\tSUSPENDED" in done.stdout


# endregion
