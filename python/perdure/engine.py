"""The embedded engine: one store directory, worker threads that run
invocations, and the calls to start, inspect, cancel and answer executions.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import logging
import math
import os
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perdure import _checks
from perdure import _records as R
from perdure._core import Core
from perdure.aio import EngineLoop, is_async
from perdure.context import (
    INTERRUPTS,
    DurableContext,
    _Abort,
    _InvocationState,
    _Stall,
    _Suspend,
    check_payload_size,
)
from perdure.duration import MAX_MILLIS, Duration
from perdure.errors import (
    CorruptRecordError,
    CorruptStoreError,
    EngineClosedError,
    ExecutionCancelledError,
    ExecutionFailedError,
    ExecutionFinishedError,
    ExecutionNotFoundError,
    ExecutionTimedOutError,
    LeaseLostError,
    StoreError,
    StoreFullError,
    ValidationError,
    error_object,
)
from perdure.history import build_history
from perdure.registry import function_name, lookup
from perdure.serdes import (
    SerDes,
    SerDesContext,
    deserialize,
    error_object_from_payload,
    serialize,
)
from perdure.testing import TimeSkippingClock

if TYPE_CHECKING:
    from perdure._core import Invocation
    from perdure.verify import ReplayReport

__all__ = ["Engine", "ExecutionHandle", "ExecutionInfo"]

log = logging.getLogger("perdure")

DEFAULT_MAX_PAYLOAD = 4 << 20
# An LMDB map smaller than a few pages cannot hold a store; one larger than
# the address space cannot be mapped.
_MIN_MAP_SIZE = 1 << 20
_MAX_MAP_SIZE = 1 << 46
# More worker threads than this is a typo, not a configuration.
_MAX_WORKERS = 4096
_DURABILITIES = ("full", "process", "none")
_STATUSES = ("PENDING", "RUNNING", "SUSPENDED", "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
_NO_CONTEXT = SerDesContext("", "")


@dataclass(frozen=True)
class ExecutionInfo:
    """One execution as ``Engine.list`` and ``ExecutionHandle.info`` report it."""

    execution_id: str
    function: str
    status: str
    created_at: datetime
    updated_at: datetime


def _timestamp(ms: int, execution_id: str) -> datetime:
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        # Metadata whose checksum matched but whose time is past the
        # calendar (years 1 to 9999): damaged, whatever wrote it.
        raise CorruptStoreError(
            f"corrupt store: the metadata of execution {execution_id!r} is damaged "
            f"(time {ms} ms is out of range)",
            execution_id=execution_id,
        ) from None


def default_workers(durability: str) -> int:
    """Workers an engine starts unless told otherwise. At "full" a step waits
    for an fsync without the GIL, and every execution in flight shares the
    next one (group commit), so many workers pay off; otherwise steps are
    CPU work under one GIL and a few workers do as well as many."""
    if durability == "full":
        return 64
    return min(32, 2 * (os.cpu_count() or 1) + 2)


class Engine:
    """An embedded durable-execution engine on one store: a directory (LMDB,
    the default) or a PostgreSQL database shared by many hosts
    (``Engine("postgresql://user@host/db?schema=name")``; the schema,
    ``perdure`` by default, is created on first use).

    ``Engine(path)`` creates or opens the store, resumes every execution a
    previous process left unfinished, and runs invocations on ``workers``
    threads until :meth:`close`. With ``owner=False`` it only reads the store
    and answers callbacks, as the CLI does while another process runs the
    executions.

    Several engines, in one process or many, may run executions from the same
    store: each execution is leased to one engine at a time. When an engine's
    process dies, the others notice at once (its lock is released) and take
    its executions over; an engine that stops renewing its lease for
    ``lease_timeout`` seconds (a hung process) loses them too, and whatever it
    writes to them afterwards is refused.

    Functions written with ``async def`` (see :mod:`perdure.aio`) run on one
    event loop: ``event_loop``, the application's own (which must be
    running), or by default a loop the engine runs on a thread of its own.
    ``run_async``, ``start_async`` and ``ExecutionHandle.result_async`` serve
    callers on any event loop without blocking it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = "full",
        workers: int | None = None,
        owner: bool = True,
        max_payload_size: int = DEFAULT_MAX_PAYLOAD,
        poll_interval: float | None = None,
        lease_timeout: float = 10.0,
        map_size: int | None = None,
        clock: TimeSkippingClock | None = None,
        event_loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise ValidationError(
                f"path must be a str or os.PathLike, got {type(path).__name__}: {path!r}"
            )
        on_server = _checks.is_store_url(path)
        if poll_interval is None:
            # A PostgreSQL store pushes wake-ups (LISTEN/NOTIFY): its poll is
            # only the safety net, and a poll costs the server a query.
            poll_interval = 1.0 if on_server else 0.005
        if not isinstance(durability, str) or durability not in _DURABILITIES:
            raise ValidationError(
                f"durability must be one of {', '.join(_DURABILITIES)}; got {durability!r}"
            )
        if workers is None:
            workers = default_workers(durability)
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValidationError(f"workers must be an int >= 1, got {workers!r}")
        _checks.integer(workers, "workers", low=1, high=_MAX_WORKERS)
        if (
            not isinstance(max_payload_size, int)
            or isinstance(max_payload_size, bool)
            or max_payload_size < 1
        ):
            raise ValidationError(
                f"max_payload_size must be a positive int, got {max_payload_size!r}"
            )
        if not isinstance(owner, bool):
            raise ValidationError(f"owner must be a bool, got {type(owner).__name__}: {owner!r}")
        if (
            not isinstance(poll_interval, int | float)
            or isinstance(poll_interval, bool)
            or not 0 < poll_interval <= 10
        ):
            raise ValidationError(
                f"poll_interval must be in (0, 10] seconds, got {poll_interval!r}"
            )
        if (
            not isinstance(lease_timeout, int | float)
            or isinstance(lease_timeout, bool)
            or not 0 < lease_timeout <= 86_400
        ):
            raise ValidationError(
                f"lease_timeout must be in (0, 86400] seconds, got {lease_timeout!r}"
            )
        options: dict[str, Any] = {
            "durability": durability,
            "owner": owner,
            "poll_interval": float(poll_interval),
            "lease_timeout": float(lease_timeout),
        }
        if map_size is not None:
            if on_server:
                raise ValidationError(
                    "map_size applies to an LMDB directory, not a PostgreSQL store"
                )
            options["map_size"] = _checks.integer(
                map_size, "map_size", low=_MIN_MAP_SIZE, high=_MAX_MAP_SIZE
            )
        if clock is not None:
            if not isinstance(clock, TimeSkippingClock):
                raise ValidationError(
                    f"clock must be a perdure.testing.TimeSkippingClock, got {type(clock).__name__}"
                )
            options["clock"] = clock._clock
        # Where invocations of async functions run (perdure.aio).
        self._aio = EngineLoop(event_loop)
        #: The store directory; None for a PostgreSQL store.
        self.path: Path | None = None if on_server else Path(path)
        self.durability = durability
        self.max_payload_size = max_payload_size
        self._core = Core(os.fspath(path), **options)
        #: Where the store is: its directory, or its URL without password.
        self.store: str = self._core.path
        if clock is not None:
            clock._attach(self._core)
        self._closed = False
        # Executions this engine will not run, and why ("unregistered", "corrupt").
        self._left_alone: dict[int, str] = {}
        if owner:
            # Invocations run on the Rust work-stealing pool, which calls back
            # here; through a weak reference, so the pool does not keep the
            # engine (and its store) alive.
            self._core.start_executor(workers, _weak_invoker(self))
            # An engine left open at interpreter exit is closed first, while its
            # worker threads can still take the GIL to finish.
            atexit.register(_close_at_exit, weakref.ref(self))

    # -- lifecycle ----------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Lets running invocations finish (up to ``timeout`` seconds), stops the
        workers and flushes the store. Executions not finished stay durable and
        resume when the store is opened again. Async invocations still running
        then are cancelled (at once when close() is called on their own event
        loop, which it blocks); they too resume where their journal ends."""
        if self._closed:
            return
        timeout = _checks.seconds(timeout, "close timeout")
        self._closed = True
        self._aio.before_close()
        try:
            self._core.close(timeout)
        finally:
            self._aio.after_close()

    def __del__(self) -> None:
        # Dropped without close(): closed now, without waiting for anything
        # (no invocation runs: each holds a reference to the engine).
        if not getattr(self, "_closed", True):
            try:
                self.close(timeout=0)
            except Exception:  # nowhere to report it from a finalizer
                log.debug("perdure: closing a dropped engine failed", exc_info=True)

    def __enter__(self) -> Engine:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def owner_id(self) -> int | None:
        """This engine's id among the engines sharing the store (None with
        ``owner=False``)."""
        return self._core.owner_id

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError(
                f"engine on {self.store} is closed; open a new Engine to use the store"
            )

    # -- executions ---------------------------------------------------------------

    def start(
        self,
        function: Callable[..., Any] | str,
        input: Any = None,
        *,
        execution_id: str | None = None,
        timeout: Duration | float | None = None,
    ) -> ExecutionHandle:
        """Starts ``function(ctx, input)`` durably. Idempotent by ``execution_id``:
        starting an id that exists returns the existing execution.

        ``timeout`` (a Duration, or seconds) bounds the whole execution,
        waits included: still running then, it ends TIMED_OUT, its waits are
        cancelled and its child executions stopped."""
        self._check_open()
        if not isinstance(function, str) and not callable(function):
            raise ValidationError(
                f"function must be a durable function or its name, got {type(function).__name__}"
            )
        if isinstance(function, str):
            _checks.text(function, "function name")
        name = function_name(function)
        timeout_ms = _timeout_ms(timeout)
        if execution_id is None:
            execution_id = str(uuid.uuid4())
        else:
            _checks.text(execution_id, "execution_id", max_bytes=256)
        payload = serialize(None, input, SerDesContext("input", execution_id))
        check_payload_size(payload, self.max_payload_size, "execution input")
        exec_key, _created = self._core.start(execution_id, name, payload, timeout_ms)
        return ExecutionHandle(self, exec_key, execution_id, name)

    def run(
        self,
        function: Callable[..., Any] | str,
        input: Any = None,
        *,
        execution_id: str | None = None,
        timeout: float | None = None,
        execution_timeout: Duration | float | None = None,
    ) -> Any:
        """Starts the execution and waits up to ``timeout`` seconds for its
        result; ``execution_timeout`` is ``start``'s ``timeout``."""
        _checks.optional_seconds(timeout, "timeout")
        handle = self.start(function, input, execution_id=execution_id, timeout=execution_timeout)
        return handle.result(timeout)

    async def start_async(
        self,
        function: Callable[..., Any] | str,
        input: Any = None,
        *,
        execution_id: str | None = None,
        timeout: Duration | float | None = None,
    ) -> ExecutionHandle:
        """:meth:`start` for a caller on an event loop (any loop): the durable
        commit runs off that loop."""
        self._check_open()
        start = self.start
        return await self._aio.blocking(
            start, function, input, execution_id=execution_id, timeout=timeout
        )

    async def run_async(
        self,
        function: Callable[..., Any] | str,
        input: Any = None,
        *,
        execution_id: str | None = None,
        timeout: float | None = None,
        execution_timeout: Duration | float | None = None,
    ) -> Any:
        """:meth:`run` for a caller on an event loop: starts the execution and
        awaits its result (up to ``timeout`` seconds) without blocking the
        loop. The function may be sync or async."""
        _checks.optional_seconds(timeout, "timeout")
        handle = await self.start_async(
            function, input, execution_id=execution_id, timeout=execution_timeout
        )
        return await handle.result_async(timeout)

    def get(self, execution_id: str) -> ExecutionHandle:
        self._check_open()
        _checks.text(execution_id, "execution_id")
        row = self._core.execution(execution_id)
        if row is None:
            raise ExecutionNotFoundError(
                f"no execution with id {execution_id!r}", execution_id=execution_id
            )
        return ExecutionHandle(self, row[0], row[1], row[2])

    def list(
        self, *, status: str | None = None, name: str | None = None, limit: int | None = None
    ) -> builtins.list[ExecutionInfo]:
        """Executions in start order, optionally filtered by status and function name."""
        self._check_open()
        if status is not None and (not isinstance(status, str) or status not in _STATUSES):
            raise ValidationError(f"status must be one of {', '.join(_STATUSES)}; got {status!r}")
        name = _checks.optional_text(name, "name")
        if limit is not None:
            _checks.integer(limit, "limit", low=1, high=_checks.U64_MAX)
        active = status in ("PENDING", "RUNNING", "SUSPENDED")
        stored = "ACTIVE" if active else status
        rows = self._core.list(stored, name, 0 if active else (limit or 0))
        infos = []
        for row in rows:
            try:
                infos.append(self._info(row))
            except CorruptStoreError as exc:
                # As the core does: one damaged execution does not hide the others.
                log.warning("perdure: not listed: %s", exc)
        if active:
            infos = [info for info in infos if info.status == status]
        return infos[:limit] if limit else infos

    def history(self, execution_id: str) -> builtins.list[dict[str, Any]]:
        """The execution's events in the AWS Durable Execution history shape."""
        return self.get(execution_id).history()

    def replay(
        self,
        function: Callable[..., Any] | str | None = None,
        *,
        execution_ids: builtins.list[str] | None = None,
        verify: bool = False,
        workers: int | None = None,
        progress: Callable[[int, int], object] | None = None,
    ) -> ReplayReport:
        """Re-runs stored executions, active and finished, against the code
        registered in this process, to prove it still replays them: no step
        body runs and nothing is written (an engine opened with
        ``owner=False`` will do, beside live engines).

        Optionally only the executions of one registered ``function``, or the
        given ``execution_ids``. Every execution whose code asks for a
        different operation than its history recorded is reported with the
        first differing operation. With ``verify=True`` a finished execution
        must also replay to the end of its history and end as recorded (same
        result, or same error type). Executions of functions not registered
        here are counted as skipped. Runs on ``workers`` executor threads
        (default: the CPU count); ``progress(done, total)`` is called as
        executions are done. See :mod:`perdure.verify`.
        """
        from perdure.verify import replay_executions

        self._check_open()
        if execution_ids is not None and not isinstance(execution_ids, str):
            execution_ids = [_checks.text(eid, "execution_ids item") for eid in execution_ids]
        if workers is not None:
            _checks.integer(workers, "workers", low=1, high=_MAX_WORKERS)
        if not isinstance(verify, bool):
            raise ValidationError(f"verify must be a bool, got {type(verify).__name__}")
        if progress is not None and not callable(progress):
            raise ValidationError(f"progress must be a callable, got {type(progress).__name__}")
        hook = None if progress is None else (lambda done, total, _ops: progress(done, total))
        return replay_executions(
            self,
            function,
            execution_ids=execution_ids,
            verify=verify,
            workers=workers,
            progress=hook,
        )

    def cancel(self, execution_id: str, reason: str = "Execution stopped by user request") -> None:
        """Ends an active execution as CANCELLED; late callbacks are refused."""
        self._check_open()
        _checks.text(execution_id, "execution_id")
        _checks.text(reason, "cancel reason", empty=True)
        payload = serialize(None, {"ErrorMessage": reason}, _NO_CONTEXT)
        self._core.cancel(execution_id, payload)

    def unregistered(self) -> builtins.list[str]:
        """Ids of executions this engine left alone because their function is
        not registered in this process."""
        self._check_open()
        ids = []
        for exec_key, reason in list(self._left_alone.items()):
            row = self._core.execution_by_key(exec_key)
            if reason == "unregistered" and row is not None:
                ids.append(row[1])
        return ids

    # -- callbacks ----------------------------------------------------------------

    def send_callback_success(
        self, callback_id: str, result: Any = None, *, serdes: SerDes[Any] | None = None
    ) -> None:
        """Completes a callback; its execution resumes with ``result``."""
        self._check_open()
        _check_callback_id(callback_id)
        payload = serialize(serdes, result, SerDesContext("callback", callback_id))
        check_payload_size(payload, self.max_payload_size, "callback result")
        self._core.complete_callback(callback_id, True, payload)

    def send_callback_failure(
        self,
        callback_id: str,
        error: BaseException | str | None = None,
        *,
        error_type: str | None = None,
        error_data: str | None = None,
    ) -> None:
        """Fails a callback; the workflow's ``result()`` raises CallbackExternalError."""
        self._check_open()
        _check_callback_id(callback_id)
        if not isinstance(error, BaseException):
            _checks.optional_text(error, "error")
        _checks.optional_text(error_type, "error_type")
        _checks.optional_text(error_data, "error_data")
        if isinstance(error, BaseException):
            obj = error_object(error)
        else:
            obj = {
                "ErrorType": error_type or "CallbackFailure",
                "ErrorMessage": error or "Callback failed",
            }
            if error_data is not None:
                obj["ErrorData"] = error_data
        self._core.complete_callback(callback_id, False, serialize(None, obj, _NO_CONTEXT))

    def send_callback_heartbeat(self, callback_id: str) -> None:
        """Tells perdure the callback's answerer is still working."""
        self._check_open()
        _check_callback_id(callback_id)
        self._core.heartbeat(callback_id)

    # -- internals ----------------------------------------------------------------

    def _info(self, row: tuple[Any, ...]) -> ExecutionInfo:
        exec_key, execution_id, function, state, pending, created_ms, updated_ms = row
        if state == "ACTIVE":
            if self._core.is_running(exec_key):
                state = "RUNNING"
            else:
                state = "PENDING" if pending else "SUSPENDED"
        return ExecutionInfo(
            execution_id,
            function,
            state,
            _timestamp(created_ms, execution_id),
            _timestamp(updated_ms, execution_id),
        )

    def _run_invocation(self, exec_key: int) -> None:
        """Called by an executor worker for each runnable execution."""
        try:
            self._invoke(exec_key)
        except INTERRUPTS as exc:
            # Not the execution's outcome (as when an AWS Lambda invocation
            # dies): nothing is recorded, it runs again from its journal.
            self._interrupted(exec_key, type(exc).__name__)
        except BaseException:
            log.exception("perdure: invocation of execution key %s failed", exec_key)
            self._core.finish(exec_key, False)

    def _interrupted(self, exec_key: int, name: str) -> None:
        """An invocation raised KeyboardInterrupt, SystemExit or
        GeneratorExit: it stops without recording a failure (this engine's
        thread logs it), and the execution runs again later from its journal,
        after the same growing delay as a storage failure."""
        delay = self._core.retry_later(exec_key)
        log.warning(
            "perdure: invocation of execution key %s was interrupted (%s); "
            "it runs again in %.2f s from its journal",
            exec_key,
            name,
            delay,
        )

    def _stalled(self, exec_key: int, error: StoreError) -> None:
        """An invocation's commit met a full or failing disk: nothing of it
        is stored and no failure is recorded; the execution runs again
        later (50 ms, doubling up to 5 s while the disk stays so), and
        whoever waits for its result gets ``error`` meanwhile."""
        full = isinstance(error, StoreFullError)
        delay = self._core.retry_later(exec_key, full, str(error))
        log_at = logging.WARNING if delay <= 0.05 else logging.DEBUG
        log.log(
            log_at,
            "perdure: invocation of execution key %s stopped: %s; it runs again in %.2f s",
            exec_key,
            error,
            delay,
        )
        self._aio.poke(exec_key)  # result_async callers learn of it

    def _leave_corrupt(self, exec_key: int, exc: CorruptRecordError) -> None:
        """Leaves alone an execution whose journal is damaged: it is not run
        again by this engine, and nothing is recorded as its failure."""
        # The message, not the exception: a log handler that keeps records
        # would keep the invocation's frames (and this engine) alive.
        log.error("perdure: execution %r cannot run: %s", exc.execution_id, str(exc))
        self._left_alone[exec_key] = "corrupt"
        self._core.park(exec_key)

    def _invoke(self, exec_key: int) -> None:
        """Runs one invocation of an execution, from the top."""
        core = self._core
        try:
            invocation = core.load(exec_key)
        except CorruptRecordError as exc:
            self._leave_corrupt(exec_key, exc)
            return
        if invocation.wake == 0:
            # Not runnable any more: an invocation that ended after this one was
            # queued already handled the wake-up (or the execution finished).
            core.finish(exec_key, False)
            return
        function = lookup(invocation.function)
        if function is None:
            log.warning(
                "perdure: execution %r needs durable function %r, which is not registered in this "
                "process; it stays pending",
                invocation.execution_id,
                invocation.function,
            )
            self._left_alone[exec_key] = "unregistered"
            core.park(exec_key)
            return
        if is_async(function):
            # An async function runs on the event loop; this worker is free
            # at once (the loop's invocation calls core.finish at its end).
            self._aio.submit(self, invocation, function)
            return
        state = _InvocationState(core, invocation, self.max_payload_size)
        started_ms = core.now_ms()
        ended: tuple[bool, Any] | None
        try:
            ended = (True, function(DurableContext(state), self._input_of(invocation)))
        except _Suspend:
            ended = None
        except _Abort:
            core.finish(exec_key, False)
            return
        except _Stall as stall:
            self._stalled(exec_key, stall.error)
            return
        except CorruptRecordError as exc:
            if exc.execution_id != invocation.execution_id:
                ended = (False, exc)
            else:
                # Its own journal is damaged (a record decoded, but holds
                # what no engine writes): not the workflow's failure.
                self._leave_corrupt(exec_key, exc)
                return
        except Exception as exc:
            ended = (False, exc)
        finally:
            state.ended = True  # a context kept beyond this point is refused
        final, records, timers = self._ending(state, started_ms, ended)
        try:
            rerun = core.end_invocation(exec_key, invocation.wake, final, records, timers)
        except (ExecutionFinishedError, LeaseLostError):
            rerun = False  # cancelled while it ran, or taken over by another engine
        except StoreError as exc:
            if not exc.storage_failed:
                raise
            self._stalled(exec_key, exc)
            return
        if final is not None:
            self._aio.poke(exec_key)  # wakes result_async callers
        core.finish(exec_key, rerun)

    @staticmethod
    def _input_of(invocation: Invocation) -> Any:
        raw = invocation.input
        if raw is None:
            return None
        return deserialize(None, raw, SerDesContext("input", invocation.execution_id))

    def _ending(
        self, state: _InvocationState, started_ms: int, ended: tuple[bool, Any] | None
    ) -> tuple[str | None, builtins.list[R.RecordIn], builtins.list[tuple[int, str]]]:
        """What an invocation writes at its end (sync or on an event loop):
        ``(final state, records, timers)``. ``ended`` is ``(True, result)``,
        ``(False, exception)``, or None when it suspended."""
        outcome = final = None
        if ended is not None:
            ok, value = ended
            if ok:
                try:
                    payload = serialize(None, value, SerDesContext("result", state.execution_id))
                    check_payload_size(payload, self.max_payload_size, "execution result")
                    outcome = R.record(R.SUCCEEDED, R.EXECUTION, R.SUB_NONE, "", payload=payload)
                    final = "SUCCEEDED"
                except Exception as exc:
                    value = exc
            if final is None:
                payload = serialize(None, error_object(value), _NO_CONTEXT)
                outcome = R.record(R.FAILED, R.EXECUTION, R.SUB_NONE, "", payload=payload)
                final = "FAILED"
        elapsed = state.now_ms() - started_ms
        deferred, timers = state.take_deferred()
        records = [
            *deferred,
            R.record(R.INVOCATION_COMPLETED, R.EXECUTION, R.SUB_NONE, "", aux=elapsed),
        ]
        if outcome is not None:
            records.append(outcome)
        return final, records, timers


def _weak_invoker(engine: Engine) -> Callable[[int], None]:
    method = weakref.WeakMethod(engine._run_invocation)

    def invoke(exec_key: int) -> None:
        run = method()
        if run is not None:
            run(exec_key)

    return invoke


def _close_at_exit(ref: weakref.ReferenceType[Engine]) -> None:
    engine = ref()
    if engine is not None:
        engine.close()


class ExecutionHandle:
    """A started execution: wait for its result, read its status and history."""

    def __init__(self, engine: Engine, exec_key: int, execution_id: str, function: str) -> None:
        self._engine = engine
        self._exec_key = exec_key
        self.execution_id = execution_id
        self.function = function

    def __repr__(self) -> str:
        return f"ExecutionHandle({self.execution_id!r}, function={self.function!r})"

    def info(self) -> ExecutionInfo:
        self._engine._check_open()
        row = self._engine._core.execution_by_key(self._exec_key)
        if row is None:
            raise ExecutionNotFoundError(
                f"execution {self.execution_id!r} vanished", execution_id=self.execution_id
            )
        return self._engine._info(row)

    def status(self) -> str:
        return self.info().status

    def history(self) -> list[dict[str, Any]]:
        self._engine._check_open()
        core = self._engine._core
        return build_history(self.execution_id, core.journal(self._exec_key), _function_of(core))

    def result(self, timeout: float | None = None) -> Any:
        """Waits for the execution to finish and returns its result; raises
        ExecutionFailedError (or Cancelled/TimedOut) if it did not succeed, and
        TimeoutError if ``timeout`` seconds pass first.

        If an invocation of the execution stops on a full disk while this
        waits, raises StoreFullError (StoreError for a failing disk): the
        execution has not failed, and runs again (every 50 ms to 5 s) until
        its writes succeed; call ``result()`` again to wait for it."""
        self._engine._check_open()
        timeout = _checks.optional_seconds(timeout, "timeout")
        row = self._engine._core.wait_finished(self._exec_key, timeout)
        return self._outcome(row, timeout)

    async def result_async(self, timeout: float | None = None) -> Any:
        """:meth:`result` for a caller on an event loop (any loop): awaits the
        end of the execution without blocking the loop or holding a thread.
        Raises StoreFullError/StoreError as :meth:`result` does."""
        self._engine._check_open()
        timeout = _checks.optional_seconds(timeout, "timeout")
        engine = self._engine
        row = await engine._aio.finished(engine._core, self._exec_key, timeout)
        return self._outcome(row, timeout)

    def _outcome(self, row: tuple[Any, ...] | None, timeout: float | None) -> Any:
        """The result of a finished execution (``row``: its summary), or the
        error it ended with; None: it did not finish within ``timeout``."""
        if row is None:
            raise TimeoutError(f"execution {self.execution_id!r} did not finish within {timeout} s")
        self._engine._check_open()
        core = self._engine._core
        state = row[3]
        last = core.last_record(self._exec_key)
        payload = last[9] if last is not None else None
        if state == "SUCCEEDED":
            return (
                None
                if payload is None
                else deserialize(None, payload, SerDesContext("result", self.execution_id))
            )
        obj = error_object_from_payload(payload)
        message = obj.get("ErrorMessage") or state.lower()
        if state == "CANCELLED":
            raise ExecutionCancelledError(
                f"execution {self.execution_id!r} was cancelled: {message}",
                execution_id=self.execution_id,
            )
        if state == "TIMED_OUT":
            raise ExecutionTimedOutError(
                f"execution {self.execution_id!r} timed out: {message}",
                execution_id=self.execution_id,
            )
        raise ExecutionFailedError(
            f"execution {self.execution_id!r} failed: {obj.get('ErrorType', 'Error')}: {message}",
            execution_id=self.execution_id,
            error_type=obj.get("ErrorType"),
            error_message=obj.get("ErrorMessage"),
            error_data=obj.get("ErrorData"),
            stack_trace=obj.get("StackTrace"),
        )


def _function_of(core: Core) -> Callable[[str], str | None]:
    """Finds the function of an execution by id (for invoked children)."""

    def function(execution_id: str) -> str | None:
        row = core.execution(execution_id)
        return None if row is None else str(row[2])

    return function


def _timeout_ms(timeout: Duration | float | None) -> int | None:
    if timeout is None:
        return None
    if isinstance(timeout, Duration):
        millis = timeout.to_millis()
    elif isinstance(timeout, int | float) and not isinstance(timeout, bool):
        try:
            seconds = float(timeout)
        except OverflowError:
            seconds = math.inf
        if math.isnan(seconds) or seconds < 0:
            millis = -1
        elif seconds == math.inf:
            millis = MAX_MILLIS + 1
        else:
            millis = math.ceil(seconds * 1000)
    else:
        raise ValidationError(
            f"execution timeout must be a Duration or seconds, got {type(timeout).__name__}"
        )
    if millis <= 0:
        raise ValidationError(f"execution timeout must be positive, got {timeout!r}")
    return _checks.millis_in_range(millis, "execution timeout")


def _check_callback_id(callback_id: object) -> None:
    _checks.text(callback_id, "callback id", max_bytes=1024)
