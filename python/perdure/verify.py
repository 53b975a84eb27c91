"""Replay verification in bulk: ``Engine.replay`` and ``perdure replay``.

Every stored execution (active and finished) is re-run from the top against
the code registered in this process, the way an invocation replays it, but
in a *verify state*: no step body, check or submitter runs, nothing is
written and no time passes. Where the code asks for an operation the
history does not have, the replay has reached its *frontier* and stops
there. An active execution reaching its frontier is what a replay is
expected to do; an operation whose recorded type, sub-type or name differs
from what the code asks for is non-deterministic. With ``verify=True`` a
finished execution must also replay to the end of its history and finish as
it was recorded (same result, or same error type).

Executions are replayed concurrently on the Rust executor
(``Core.run_batch``), a chunk of executions per task. A function name read
from the store is only looked up in the registry, never imported.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from perdure import _records as R
from perdure.aio import is_async, replay_call
from perdure.context import DurableContext, _describe, _InvocationState, _Suspend
from perdure.errors import (
    ExecutionNotFoundError,
    NonDeterministicExecutionError,
    PerdureError,
    ValidationError,
    error_object,
)
from perdure.registry import function_name, is_plain, lookup
from perdure.serdes import SerDesContext, deserialize, error_object_from_payload, serialize

if TYPE_CHECKING:
    from perdure._core import Core, Invocation
    from perdure.engine import Engine

__all__ = ["ReplayDivergence", "ReplayError", "ReplayReport", "VerifyState", "replay_executions"]

#: (done executions, total executions, operations replayed so far)
ProgressHook = Callable[[int, int, int], object]

# The kinds of divergence a report names.
NON_DETERMINISTIC = "non-deterministic"
NEW_OPERATION = "new-operation"
NOT_FINISHED = "not-finished"
RESULT_CHANGED = "result-changed"
OUTCOME_CHANGED = "outcome-changed"
ERROR_CHANGED = "error-changed"
EXCEPTION = "exception"

_ACTIVE = "ACTIVE"
_MAX_CHUNK = 64
_SHOW = 120


@dataclass(frozen=True)
class ReplayDivergence:
    """One execution whose replay does not match its history.

    ``operation_id`` is the first differing operation, or None when the
    difference is in how the execution ends (its result, its error, an
    exception the code now raises). ``recorded`` is what the history holds
    there, ``requested`` what the code now does.
    """

    execution_id: str
    function: str
    operation_id: str | None
    kind: str
    recorded: str
    requested: str
    message: str

    def describe(self) -> str:
        where = (
            f"operation {self.operation_id}"
            if self.operation_id is not None
            else "the end of the execution"
        )
        return (
            f"{self.execution_id} ({self.function}) at {where}: recorded {self.recorded}; "
            f"the code now asks for {self.requested}"
        )


@dataclass(frozen=True)
class ReplayError:
    """An execution that could not be replayed (a corrupt record, an
    undecodable input), or, without ``verify``, one whose code raised."""

    execution_id: str
    function: str
    error_type: str
    message: str


@dataclass(frozen=True)
class ReplayReport:
    """What :meth:`perdure.Engine.replay` found.

    ``executions`` and ``operations`` count what was replayed (the recorded
    operations of every replayed execution); ``skipped`` counts, by function
    name, executions whose function is not registered in this process.
    """

    executions: int
    operations: int
    seconds: float
    verify: bool
    finished: int = 0
    active: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    divergences: list[ReplayDivergence] = field(default_factory=list)
    errors: list[ReplayError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every replayed execution matched its history."""
        return not self.divergences and not self.errors

    @property
    def executions_per_s(self) -> float:
        return self.executions / self.seconds if self.seconds > 0 else 0.0

    @property
    def operations_per_s(self) -> float:
        return self.operations / self.seconds if self.seconds > 0 else 0.0

    @property
    def skipped_count(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (``perdure replay --json``)."""
        out = asdict(self)
        out.update(
            ok=self.ok,
            executions_per_s=self.executions_per_s,
            operations_per_s=self.operations_per_s,
        )
        return out

    def summary(self) -> str:
        """A readable report: the totals, then every divergence and error."""
        mode = "verify" if self.verify else "replay"
        lines = [
            f"{mode}: {self.executions:,} executions ({self.finished:,} finished, "
            f"{self.active:,} active), {self.operations:,} operations in {self.seconds:.2f} s: "
            f"{self.executions_per_s:,.0f} executions/s, {self.operations_per_s:,.0f} operations/s"
        ]
        if self.skipped:
            names = ", ".join(f"{name} ({count:,})" for name, count in sorted(self.skipped.items()))
            lines.append(
                f"skipped {self.skipped_count:,} executions of functions not registered in this "
                f"process: {names}"
            )
        if self.divergences:
            lines.append(f"{len(self.divergences):,} non-deterministic executions:")
            for d in self.divergences:
                lines.append(f"  {d.describe()}")
                lines.append(f"    {d.message}")
        if self.errors:
            lines.append(f"{len(self.errors):,} executions could not be replayed:")
            for e in self.errors:
                lines.append(f"  {e.execution_id} ({e.function}): {e.error_type}: {e.message}")
        lines.append("OK: every replayed execution is deterministic" if self.ok else "FAILED")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Point:
    """Where a verifying replay stopped: an operation and both sides of it."""

    operation_id: str
    recorded: str
    requested: str


def _op_key(op_id: str) -> tuple[int, ...]:
    """Orders operation ids by position ("2" < "2-1" < "10")."""
    try:
        return tuple(int(part) for part in op_id.split("-"))
    except ValueError:
        return (1 << 62,)


def _first(current: _Point | None, candidate: _Point) -> _Point:
    if current is None or _op_key(candidate.operation_id) < _op_key(current.operation_id):
        return candidate
    return current


class VerifyState(_InvocationState):
    """The state of one verifying replay: it never writes, never lets time
    pass and never runs a step body.

    DurableContext asks it (``verify_only``) before new work: an operation
    the history lacks is the *frontier* (remembered, then unwound with
    ``_Suspend``, which map and parallel propagate like any suspension); a
    mismatching operation is remembered as non-deterministic and unwinds the
    same way, so workflow code cannot catch it. ``commit``, ``defer`` and
    ``wait_until`` stop at the frontier too, should any path reach them.
    Branches of a map or parallel share the state; the first point by
    operation position is kept.
    """

    verify_only = True

    def __init__(self, core: Core, invocation: Invocation, max_payload: int) -> None:
        super().__init__(core, invocation, max_payload)
        self._points_lock = threading.Lock()
        self.frontier_at: _Point | None = None
        self.diverged_at: NonDeterministicExecutionError | None = None

    def frontier(self, op_id: str, requested: str, recorded: str | None = None) -> NoReturn:
        """The code asks for ``requested`` at ``op_id``, which the history lacks."""
        if recorded is None:
            recorded = "nothing (the history has no such operation)"
        point = _Point(op_id, recorded, requested)
        with self._points_lock:
            self.frontier_at = _first(self.frontier_at, point)
        raise _Suspend()

    def diverged(self, error: NonDeterministicExecutionError) -> NoReturn:
        """The code asks for a different operation than the history recorded."""
        with self._points_lock:
            current = self.diverged_at
            if current is None or _op_key(error.operation_id or "") < _op_key(
                current.operation_id or ""
            ):
                self.diverged_at = error
        raise _Suspend() from error

    def commit(self, records: list[R.RecordIn], *args: Any, **kwargs: Any) -> NoReturn:
        if not records:
            self.frontier("?", "a write")
        first = records[0]
        self.frontier(first[3], _describe(first[1], first[2], first[4]))

    def defer(self, record: R.RecordIn | None = None, timer: tuple[int, str] | None = None) -> None:
        if record is not None:
            self.frontier(record[3], _describe(record[1], record[2], record[4]))
        if timer is not None:
            self.frontier(timer[1], "a durable timer")

    def wait_until(self, due_ms: int, op_id: str) -> NoReturn:
        op = self.lookup(op_id)
        recorded = (
            "nothing"
            if op is None
            else f"{_describe(op[R.OP_TYPE], op[R.OP_SUB_TYPE], op[R.OP_NAME])}, not finished"
        )
        self.frontier(op_id, "time to pass before it can go on", recorded)


# -- one execution ------------------------------------------------------------------

_Summary = tuple[int, str, str, str, bool, int, int]


@dataclass
class _Result:
    operations: int = 0
    finished: bool = False
    divergence: ReplayDivergence | None = None
    error: ReplayError | None = None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOW else text[: _SHOW - 3] + "..."


def _error_text(obj: dict[str, Any]) -> str:
    kind = obj.get("ErrorType") or "Error"
    message = obj.get("ErrorMessage")
    return f"{kind}: {_short(message)}" if message is not None else str(kind)


class _Replay:
    """Replays one execution in a :class:`VerifyState` and judges the outcome."""

    def __init__(self, core: Core, row: _Summary, verify: bool, max_payload: int) -> None:
        self.core = core
        self.exec_key, self.execution_id, self.function, self.stored = row[:4]
        self.verify = verify
        self.max_payload = max_payload
        self.result = _Result(finished=self.stored != _ACTIVE)

    def diverge(
        self, op_id: str | None, kind: str, recorded: str, requested: str, message: str
    ) -> _Result:
        self.result.divergence = ReplayDivergence(
            self.execution_id, self.function, op_id, kind, recorded, requested, message
        )
        return self.result

    def fail(self, error_type: str, message: str) -> _Result:
        self.result.error = ReplayError(self.execution_id, self.function, error_type, message)
        return self.result

    def decode(self, payload: bytes | None) -> Any:
        if payload is None:
            return None
        try:
            return deserialize(None, payload, SerDesContext("result", self.execution_id))
        except PerdureError:
            return payload

    def run(self, function: Callable[..., Any]) -> _Result:
        if is_plain(self.function):
            # A plain function (perdure.register) run as an execution has no
            # operations to replay, and calling it would run user code.
            return self.result
        try:
            invocation = self.core.load(self.exec_key)
        except PerdureError as exc:
            return self.fail(type(exc).__name__, str(exc))
        self.result.operations = invocation.op_count
        state = VerifyState(self.core, invocation, self.max_payload)
        raw = invocation.input
        try:
            value = (
                None
                if raw is None
                else deserialize(None, raw, SerDesContext("input", self.execution_id))
            )
        except PerdureError as exc:
            return self.fail(type(exc).__name__, f"cannot decode the input: {exc}")
        returned: Any = None
        raised: Exception | None = None
        suspended = False
        try:
            if is_async(function):  # an async def workflow (perdure.aio)
                returned = replay_call(function, state, value)
            else:
                returned = function(DurableContext(state), value)
        except _Suspend:
            suspended = True
        except Exception as exc:
            raised = exc
        nde = state.diverged_at
        if nde is None and isinstance(raised, NonDeterministicExecutionError):
            nde = raised  # defensive: one raised where no context asked the state
        if nde is not None:
            return self.diverge(
                nde.operation_id, NON_DETERMINISTIC, str(nde.recorded), str(nde.requested), str(nde)
            )
        if self.stored not in ("SUCCEEDED", "FAILED"):
            # Active, cancelled or timed out: replaying up to the frontier (or
            # to the end) is what it may do; raising is not.
            if raised is not None:
                return self.raised(raised, "the execution going on")
            return self.result
        if not self.verify:
            if raised is not None and self.stored == "SUCCEEDED":
                return self.raised(raised, "the execution succeeding")
            return self.result
        return self.judge_finished(state, suspended, raised, returned)

    def raised(self, raised: Exception, recorded: str) -> _Result:
        text = _error_text(error_object(raised))
        if self.verify:
            return self.diverge(
                None,
                EXCEPTION,
                recorded,
                f"a failure {text}",
                f"execution {self.execution_id!r}: its replay now raises {text}",
            )
        return self.fail(type(raised).__name__, f"its replay raises {text}")

    def judge_finished(
        self, state: VerifyState, suspended: bool, raised: Exception | None, returned: Any
    ) -> _Result:
        """verify: a finished execution must replay to its end and end the same way."""
        eid = self.execution_id
        last = self.core.last_record(self.exec_key)
        payload = last[9] if last is not None and last[1] == R.EXECUTION else None
        succeeded = self.stored == "SUCCEEDED"
        before = {} if succeeded else error_object_from_payload(payload)
        if succeeded:
            recorded_end = f"a result {_short(self.decode(payload))}"
        else:
            recorded_end = f"a failure {_error_text(before)}"
        if suspended:
            point = state.frontier_at
            if point is None:
                return self.diverge(
                    None,
                    NOT_FINISHED,
                    f"the execution finishing with {recorded_end}",
                    "an operation the history has not finished (the replay suspends)",
                    f"execution {eid!r} finished, but its replay now suspends",
                )
            return self.diverge(
                point.operation_id,
                NEW_OPERATION,
                point.recorded,
                point.requested,
                f"execution {eid!r} finished with {recorded_end}, but the code now asks for "
                f"new work at operation {point.operation_id}: {point.requested}",
            )
        if raised is not None:
            now = error_object(raised)
            if succeeded:
                return self.diverge(
                    None,
                    EXCEPTION,
                    recorded_end,
                    f"a failure {_error_text(now)}",
                    f"execution {eid!r} succeeded, but its replay now raises {_error_text(now)}",
                )
            if before.get("ErrorType") != now.get("ErrorType"):
                return self.diverge(
                    None,
                    ERROR_CHANGED,
                    recorded_end,
                    f"a failure {_error_text(now)}",
                    f"execution {eid!r} failed with {before.get('ErrorType')}, but its replay "
                    f"now fails with {now.get('ErrorType')}",
                )
            return self.result
        try:
            now_payload = serialize(None, returned, SerDesContext("result", eid))
        except PerdureError as exc:
            return self.diverge(
                None,
                EXCEPTION,
                recorded_end,
                f"a result that cannot be serialized ({exc})",
                f"execution {eid!r}: its replay returns a result that cannot be serialized",
            )
        if not succeeded:
            return self.diverge(
                None,
                OUTCOME_CHANGED,
                recorded_end,
                f"a result {_short(returned)}",
                f"execution {eid!r} failed, but its replay now returns a result",
            )
        if now_payload != payload and self.decode(now_payload) != self.decode(payload):
            return self.diverge(
                None,
                RESULT_CHANGED,
                recorded_end,
                f"a result {_short(self.decode(now_payload))}",
                f"execution {eid!r}: its replay returns a different result",
            )
        return self.result


# -- many executions ----------------------------------------------------------------


def _rows(core: Core, name: str | None, execution_ids: Iterable[str] | None) -> list[_Summary]:
    if execution_ids is None:
        return core.list(None, name, 0)
    if isinstance(execution_ids, str | bytes):
        raise ValidationError("execution_ids must be a list of execution ids, not one string")
    rows: list[_Summary] = []
    seen: set[int] = set()
    for execution_id in execution_ids:
        row = core.execution(execution_id) if isinstance(execution_id, str) else None
        if row is None:
            raise ExecutionNotFoundError(
                f"no execution with id {execution_id!r}", execution_id=str(execution_id)
            )
        if (name is None or row[2] == name) and row[0] not in seen:
            seen.add(row[0])
            rows.append(row)
    return rows


def _chunk_size(total: int, workers: int) -> int:
    """Executions per task: a few tasks per worker, so the workers stay busy
    to the end, but not one task per execution (each costs a round trip
    through the executor)."""
    return max(1, min(_MAX_CHUNK, total // (workers * 4) or 1))


def replay_executions(
    engine: Engine,
    function: Callable[..., Any] | str | None = None,
    *,
    execution_ids: Iterable[str] | None = None,
    verify: bool = False,
    workers: int | None = None,
    progress: ProgressHook | None = None,
    chunk_size: int | None = None,
) -> ReplayReport:
    """See :meth:`perdure.Engine.replay`; ``progress`` here also gets the
    operations replayed so far."""
    engine._check_open()
    core = engine._core
    name = None if function is None else function_name(function)
    if workers is None:
        workers = os.cpu_count() or 1
    for label, number in (("workers", workers), ("chunk_size", chunk_size)):
        if number is not None and (
            not isinstance(number, int) or isinstance(number, bool) or number < 1
        ):
            raise ValidationError(f"{label} must be an int >= 1, got {number!r}")
    started = time.perf_counter()
    skipped: dict[str, int] = {}
    work: list[tuple[_Summary, Callable[..., Any]]] = []
    for row in _rows(core, name, execution_ids):
        target = lookup(row[2])
        if target is None:
            skipped[row[2]] = skipped.get(row[2], 0) + 1
        else:
            work.append((row, target))
    total = len(work)
    size = chunk_size or _chunk_size(total, workers)
    chunks = [work[i : i + size] for i in range(0, total, size)]
    results: list[list[_Result]] = [[] for _ in chunks]
    lock = threading.Lock()
    counts = [0, 0]  # executions, operations
    max_payload = engine.max_payload_size

    def task(index: int) -> Callable[[], None]:
        def run() -> None:
            out = [_Replay(core, row, verify, max_payload).run(fn) for row, fn in chunks[index]]
            results[index] = out
            if progress is not None:
                with lock:
                    counts[0] += len(out)
                    counts[1] += sum(r.operations for r in out)
                    progress(counts[0], total, counts[1])

        return run

    if chunks:
        outcomes = core.run_batch([task(i) for i in range(len(chunks))], workers)
        for ok, value in outcomes:
            if not ok and isinstance(value, BaseException):
                raise value
    elif progress is not None:
        progress(0, 0, 0)
    flat = [r for chunk in results for r in chunk]
    return ReplayReport(
        executions=total,
        operations=sum(r.operations for r in flat),
        seconds=time.perf_counter() - started,
        verify=verify,
        finished=sum(1 for r in flat if r.finished),
        active=sum(1 for r in flat if not r.finished),
        skipped=skipped,
        divergences=[r.divergence for r in flat if r.divergence is not None],
        errors=[r.error for r in flat if r.error is not None],
    )
