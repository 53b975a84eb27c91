"""Bulk replay verification: ``Engine.replay`` and ``perdure replay``.

One store is recorded per module (finished, suspended, failed, map/parallel
executions, and one of a function later unregistered); every test replays it
read-only, some after swapping a workflow for a changed version under the
same name, and checks what is reported, that no step body ran and that the
store is unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import replay_workflows as W
from perdure import (
    DurableContext,
    Duration,
    Engine,
    ExecutionNotFoundError,
    UnknownFunctionError,
    ValidationError,
    durable,
    registry,
)
from perdure.verify import ReplayReport
from support import store_exists, wait_for

WORKFLOWS = Path(W.__file__).resolve()
LINEAR = [f"linear-{i}" for i in range(4)]
FINISHED = {*LINEAR, "failing-1", "fanout-1", "plain-1", "invoker-1", "invoker-1/1"}
ACTIVE = {"waiting-0", "waiting-1", "sleeper-1", "fanwait-1"}


# -- the recorded store ---------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(module_new_store: Callable[[], str]) -> Iterator[str]:
    path = module_new_store()
    with Engine(path, durability="none") as engine:
        finished = [engine.start(W.linear, i, execution_id=f"linear-{i}") for i in range(4)]
        finished.append(engine.start(W.fanout, 1, execution_id="fanout-1"))
        finished.append(engine.start(W.gone, 1, execution_id="gone-1"))
        finished.append(engine.start("rv.plain", 1, execution_id="plain-1"))
        finished.append(engine.start(W.invoker, 5, execution_id="invoker-1"))
        failing = engine.start(W.failing, 1, execution_id="failing-1")
        active = [engine.start(W.waiting, i, execution_id=f"waiting-{i}") for i in range(2)]
        active.append(engine.start(W.sleeper, 1, execution_id="sleeper-1"))
        active.append(engine.start(W.fanwait, 1, execution_id="fanwait-1"))
        for handle in finished:
            handle.result(timeout=30)
        wait_for(lambda: failing.status() == "FAILED", "failing-1 to fail")
        for handle in active:
            wait_for(lambda h=handle: h.status() == "SUSPENDED", f"{handle.execution_id} to wait")
    # As if rv.gone had been deleted from the code: its execution stays in the store.
    gone = registry._functions.pop("rv.gone")
    try:
        yield path
    finally:
        registry._functions["rv.gone"] = gone


def _snapshot(path: str) -> dict[str, Any]:
    """Every execution's row, raw journal and AWS history."""
    with Engine(path, owner=False) as engine:
        core = engine._core
        return {
            row[1]: (row, core.journal(row[0]), engine.history(row[1]))
            for row in core.list(None, None, 0)
        }


@pytest.fixture
def untouched(recorded: str) -> Iterator[str]:
    """The store, checked afterwards: nothing written, no step body run."""
    before = _snapshot(recorded)
    calls = len(W.BODY_CALLS)
    yield recorded
    assert len(W.BODY_CALLS) == calls, "a step body ran during a replay"
    assert _snapshot(recorded) == before, "a replay changed the store"


def _replay(path: str, **kwargs: Any) -> ReplayReport:
    with Engine(path, owner=False) as engine:
        return engine.replay(**kwargs)


@contextmanager
def version(name: str, function: Callable[..., Any]) -> Iterator[None]:
    """Registers ``function`` under ``name`` (a new deploy of the workflow),
    then puts the original back."""
    original = registry.lookup(name)
    assert original is not None
    durable(name=name)(function)
    try:
        yield
    finally:
        durable(name=name)(original)


# -- unchanged code ---------------------------------------------------------------------


@pytest.mark.parametrize("verify", [False, True], ids=["replay", "verify"])
def test_unchanged_code_replays_every_execution(untouched: str, verify: bool) -> None:
    report = _replay(untouched, verify=verify, workers=2)
    assert report.ok, report.summary()
    assert report.divergences == [] and report.errors == []
    assert report.executions == len(FINISHED | ACTIVE)
    assert (report.finished, report.active) == (len(FINISHED), len(ACTIVE))
    assert report.skipped == {"rv.gone": 1}
    with Engine(untouched, owner=False) as engine:
        expected_ops = sum(
            engine._core.load(row[0]).op_count
            for row in engine._core.list(None, None, 0)
            if row[2] != "rv.gone"
        )
    assert report.operations == expected_ops > 0
    assert report.seconds > 0 and report.operations_per_s > 0 and report.executions_per_s > 0
    assert "OK" in report.summary() and "rv.gone (1)" in report.summary()
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["ok"] is True and as_json["skipped"] == {"rv.gone": 1}


def test_filters_by_function_and_ids(untouched: str) -> None:
    assert _replay(untouched, function="rv.linear").executions == 4
    assert _replay(untouched, function=W.linear, verify=True).executions == 4
    report = _replay(untouched, execution_ids=["linear-1", "fanwait-1", "linear-1"])
    assert (report.executions, report.finished, report.active) == (2, 1, 1)
    assert _replay(untouched, function="rv.linear", execution_ids=["fanwait-1"]).executions == 0
    gone = _replay(untouched, execution_ids=["gone-1"])
    assert (gone.executions, gone.skipped) == (0, {"rv.gone": 1})


def test_bad_arguments_are_refused(untouched: str) -> None:
    with pytest.raises(ExecutionNotFoundError):
        _replay(untouched, execution_ids=["no-such-execution"])
    with pytest.raises(UnknownFunctionError):
        _replay(untouched, function="rv.never-registered")
    with pytest.raises(ValidationError):
        _replay(untouched, workers=0)
    with pytest.raises(ValidationError):
        _replay(untouched, execution_ids="linear-1")  # type: ignore[arg-type]


def test_progress_reaches_total(untouched: str) -> None:
    calls: list[tuple[int, int]] = []
    report = _replay(untouched, progress=lambda done, total: calls.append((done, total)))
    assert calls, "progress was never called"
    assert calls[-1] == (report.executions, report.executions)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert {total for _, total in calls} == {report.executions}


# -- changed code -------------------------------------------------------------------------


def linear_renamed(ctx: DurableContext, n: int) -> int:
    a = ctx.step(lambda _: W.body(n), name="a")
    b = ctx.step(lambda _: W.body(a + 1), name="b2")
    c = ctx.step(lambda _: W.body(b + 1), name="c")
    return a + b + c


def linear_reordered(ctx: DurableContext, n: int) -> int:
    a = ctx.step(lambda _: W.body(n), name="a")
    c = ctx.step(lambda _: W.body(a + 2), name="c")
    b = ctx.step(lambda _: W.body(a + 1), name="b")
    return a + b + c


def linear_wait(ctx: DurableContext, n: int) -> int:
    a = ctx.step(lambda _: W.body(n), name="a")
    ctx.wait(Duration.from_seconds(1), name="b")
    c = ctx.step(lambda _: W.body(a + 2), name="c")
    return a + a + 1 + c


def linear_extra_step(ctx: DurableContext, n: int) -> int:
    total = W.linear(ctx, n)
    return total + int(ctx.step(lambda _: W.body(1), name="d"))


def linear_new_result(ctx: DurableContext, n: int) -> int:
    return W.linear(ctx, n) + 1


def linear_raises(ctx: DurableContext, n: int) -> int:
    W.linear(ctx, n)
    raise KeyError("missing")


def linear_catches(ctx: DurableContext, n: int) -> int:
    a = ctx.step(lambda _: W.body(n), name="a")
    try:
        ctx.step(lambda _: W.body(a + 1), name="renamed")
    except Exception:  # code that swallows errors must not hide non-determinism
        return -1
    return a


def failing_other_error(ctx: DurableContext, n: int) -> int:
    ctx.step(lambda _: W.body(n), name="a")
    raise RuntimeError("failed another way")


def failing_succeeds(ctx: DurableContext, n: int) -> int:
    return int(ctx.step(lambda _: W.body(n), name="a"))


def waiting_extra_step(ctx: DurableContext, n: int) -> dict[str, Any]:
    result = W.waiting(ctx, n)
    ctx.step(lambda _: W.body(0), name="later")
    return result


def waiting_renamed(ctx: DurableContext, n: int) -> dict[str, Any]:
    ctx.step(lambda _: W.body(n), name="a-renamed")
    return {}


def sleeper_step(ctx: DurableContext, n: int) -> int:
    a = ctx.step(lambda _: W.body(n), name="a")
    ctx.step(lambda _: W.body(0), name="nap")
    return int(a)


def invoker_renamed(ctx: DurableContext, n: int) -> int:
    return int(ctx.invoke("rv.plain", n, name="call-renamed"))


def _branch_renamed(ctx: DurableContext, item: int, index: int, items: Any) -> int:
    value = int(ctx.step(lambda _: W.body(item), name="first-renamed"))
    if index == 1:
        ctx.create_callback(name="hold").result()
    return value


def fanwait_renamed(ctx: DurableContext, n: int) -> list[int]:
    return ctx.map([n, n + 1, n + 2], _branch_renamed, name="items").get_results()


_LINEAR_AT_2 = {i: ("2", "non-deterministic") for i in LINEAR}

CASES: list[tuple[str, str, Callable[..., Any], bool, dict[str, tuple[str | None, str]], str]] = [
    # (case, function, new version, verify, {execution: (operation, kind)}, text in the message)
    ("rename", "rv.linear", linear_renamed, False, _LINEAR_AT_2, "Step 'b'|Step 'b2'"),
    ("reorder", "rv.linear", linear_reordered, False, _LINEAR_AT_2, "Step 'b'|Step 'c'"),
    ("step-to-wait", "rv.linear", linear_wait, True, _LINEAR_AT_2, "Step 'b'|Wait 'b'"),
    ("caught", "rv.linear", linear_catches, True, _LINEAR_AT_2, "Step 'b'|Step 'renamed'"),
    (
        "extra-step",
        "rv.linear",
        linear_extra_step,
        True,
        {i: ("4", "new-operation") for i in LINEAR},
        "nothing|Step 'd'",
    ),
    ("extra-step-no-verify", "rv.linear", linear_extra_step, False, {}, ""),
    (
        "new-result",
        "rv.linear",
        linear_new_result,
        True,
        {i: (None, "result-changed") for i in LINEAR},
        "a result|a result",
    ),
    ("new-result-no-verify", "rv.linear", linear_new_result, False, {}, ""),
    (
        "raises",
        "rv.linear",
        linear_raises,
        True,
        {i: (None, "exception") for i in LINEAR},
        "a result|KeyError",
    ),
    (
        "other-error",
        "rv.failing",
        failing_other_error,
        True,
        {"failing-1": (None, "error-changed")},
        "StepError|RuntimeError",
    ),
    (
        "succeeds-now",
        "rv.failing",
        failing_succeeds,
        True,
        {"failing-1": (None, "outcome-changed")},
        "a failure|a result 1",
    ),
    ("active-extra-step", "rv.waiting", waiting_extra_step, True, {}, ""),
    (
        "active-renamed",
        "rv.waiting",
        waiting_renamed,
        False,
        {f"waiting-{i}": ("1", "non-deterministic") for i in range(2)},
        "Step 'a'|Step 'a-renamed'",
    ),
    (
        "wait-to-step",
        "rv.sleeper",
        sleeper_step,
        True,
        {"sleeper-1": ("2", "non-deterministic")},
        "Wait 'nap'|Step 'nap'",
    ),
    (
        "invoke-renamed",
        "rv.invoker",
        invoker_renamed,
        False,
        {"invoker-1": ("1", "non-deterministic")},
        "ChainedInvoke 'call'|ChainedInvoke 'call-renamed'",
    ),
    (
        "map-branch",
        "rv.fanwait",
        fanwait_renamed,
        False,
        # Branches 1 and 3 finished: replay returns their results without
        # re-running them; branch 2 is re-run and diverges at its first step.
        {"fanwait-1": ("1-2-1", "non-deterministic")},
        "Step 'first'|Step 'first-renamed'",
    ),
]


@pytest.mark.parametrize(
    ("name", "new", "verify", "expected", "text"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_changed_code_is_reported_at_the_first_differing_operation(
    untouched: str,
    name: str,
    new: Callable[..., Any],
    verify: bool,
    expected: dict[str, tuple[str | None, str]],
    text: str,
) -> None:
    with version(name, new):
        report = _replay(untouched, verify=verify)
    found = {d.execution_id: (d.operation_id, d.kind) for d in report.divergences}
    assert found == expected, report.summary()
    assert report.errors == [] and report.ok is (not expected)
    assert report.executions == len(FINISHED | ACTIVE)  # the others still replay
    for divergence in report.divergences:
        assert divergence.function == name
        recorded, requested = text.split("|")
        assert recorded in divergence.recorded, divergence
        assert requested in divergence.requested, divergence
        assert divergence.execution_id in divergence.message
        assert divergence.execution_id in report.summary()


def test_an_exception_without_verify_is_an_error_not_a_crash(untouched: str) -> None:
    with version("rv.linear", linear_raises):
        report = _replay(untouched)
    assert report.divergences == []
    assert sorted(e.execution_id for e in report.errors) == LINEAR
    assert all(e.error_type == "KeyError" for e in report.errors)
    assert not report.ok and report.executions == len(FINISHED | ACTIVE)


# -- perdure replay ---------------------------------------------------------------------


def _cli(*args: str, marker: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if marker is not None:
        env["PERDURE_TEST_BODY_MARKER"] = str(marker)
    return subprocess.run(
        [sys.executable, "-m", "perdure", "replay", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


V2 = """
from perdure import durable

@durable(name="rv.linear")
def linear(ctx, n):
    a = ctx.step(lambda _: n, name="a")
    b = ctx.step(lambda _: a + 1, name="b2")
    return a + b
"""


def test_cli_exit_0_when_everything_replays(untouched: str, tmp_path: Path) -> None:
    marker = tmp_path / "bodies"
    done = _cli("--store", str(untouched), "--verify", "--import", str(WORKFLOWS), marker=marker)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "14 executions" in done.stdout and "OK" in done.stdout
    assert not marker.exists(), "a step body ran in perdure replay"
    done = _cli("--store", str(untouched), "--import", str(WORKFLOWS), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["executions"] == 14 and report["skipped"] == {}
    assert report["operations"] > 0 and report["divergences"] == []


def test_cli_exit_1_prints_each_divergence(untouched: str, tmp_path: Path) -> None:
    (tmp_path / "v2.py").write_text(V2)
    imports = ["--import", str(WORKFLOWS), str(tmp_path / "v2.py")]
    done = _cli("--store", str(untouched), *imports)
    assert done.returncode == 1, done.stdout + done.stderr
    for execution_id in LINEAR:
        line = (
            f"{execution_id} (rv.linear) at operation 2: recorded Step 'b'; "
            "the code now asks for Step 'b2'"
        )
        assert line in done.stdout
    assert "FAILED" in done.stdout
    done = _cli("--store", str(untouched), *imports, "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert sorted(d["execution_id"] for d in report["divergences"]) == LINEAR
    assert {d["operation_id"] for d in report["divergences"]} == {"2"}
    # --function: only the unchanged function's executions
    done = _cli("--store", str(untouched), *imports, "--function", "rv.waiting", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["executions"] == 2


def test_cli_usage_errors_exit_2(untouched: str, new_store: Callable[[], str]) -> None:
    nowhere = new_store()
    done = _cli("--store", nowhere)
    assert done.returncode == 2 and "no perdure store" in done.stderr
    assert not store_exists(nowhere)
    done = _cli("--store", str(untouched), "--function", "rv.linear")
    assert done.returncode == 2 and "--import" in done.stderr
    done = _cli("--store", str(untouched), "--import", "no_such_module_for_perdure")
    assert done.returncode == 2 and "cannot import" in done.stderr
    done = _cli("--store", str(untouched), "--workers", "0")
    assert done.returncode == 2


def test_cli_without_imports_skips_and_says_so(untouched: str) -> None:
    done = _cli("--store", str(untouched), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["executions"] == 0 and sum(report["skipped"].values()) == 14
    done = _cli("--store", str(untouched))
    assert "--import" in done.stderr


def test_cli_beside_a_live_engine(store: str) -> None:
    live = subprocess.Popen(
        [sys.executable, str(WORKFLOWS), "live", str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert live.stdout is not None
        assert live.stdout.readline().strip() == "ready"
        with Engine(store, owner=False) as engine:
            wait_for(lambda: engine.get("live-1").status() == "SUSPENDED", "live-1 to wait")
            before = engine.history("live-1")
        done = _cli("--store", str(store), "--verify", "--import", str(WORKFLOWS), "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert (report["executions"], report["active"]) == (1, 1)
        with Engine(store, owner=False) as engine:
            assert engine.history("live-1") == before
            (callback,) = [
                e["CallbackStartedDetails"]["CallbackId"]
                for e in before
                if e["EventType"] == "CallbackStarted"
            ]
            engine.send_callback_success(callback, "yes")
        out, err = live.communicate(timeout=60)
        assert live.returncode == 0, err
        assert out.strip() == repr({"a": 7, "answer": "yes"})
    finally:
        if live.poll() is None:
            live.kill()
            live.communicate()
