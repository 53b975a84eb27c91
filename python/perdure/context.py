"""DurableContext: the operations a workflow performs, each checkpointed.

Every operation gets a deterministic id from its position (its parent's id
and a per-context counter). The invocation's replay index, built in Rust from
the journal, answers whether that operation already happened; if so its
recorded outcome is returned without running user code, otherwise the
operation runs and its outcome is committed before user code sees it.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, NoReturn, TypeVar, cast

from perdure import _checks
from perdure import _records as R
from perdure._core import MISSING, NEW
from perdure.batch import BatchResult, MapConfig, ParallelConfig, run_batch
from perdure.config import (
    CallbackConfig,
    ChildConfig,
    InvokeConfig,
    StepConfig,
    StepSemantics,
    WaitForCallbackConfig,
)
from perdure.duration import Duration
from perdure.errors import (
    CallbackError,
    CallbackExternalError,
    CallbackSubmitterError,
    CallbackTimeoutError,
    ChildContextError,
    CorruptRecordError,
    EngineClosedError,
    ExecutionFinishedError,
    InvocationEndedError,
    InvokeError,
    LeaseLostError,
    NonDeterministicExecutionError,
    PayloadTooLargeError,
    SerDesError,
    StepError,
    StepInterruptedError,
    StoreError,
    UnknownFunctionError,
    ValidationError,
    error_object,
    rebuild_error,
)
from perdure.registry import function_name as registered_name
from perdure.retries import RetryDecision, RetryPresets
from perdure.serdes import (
    SerDes,
    SerDesContext,
    deserialize,
    dumps,
    error_object_from_payload,
    loads,
    serialize,
)

if TYPE_CHECKING:
    from perdure._core import Core, Invocation
    from perdure.verify import VerifyState
    from perdure.waits import WaitForConditionCheckContext, WaitForConditionConfig

__all__ = [
    "Callback",
    "DurableContext",
    "StepContext",
    "WaitForCallbackContext",
    "durable_step",
]

T = TypeVar("T")

_DEFAULT_STEP_CONFIG = StepConfig()
_MISSING = MISSING
_NEW = NEW
_SCALARS = frozenset({int, str, bool, float, type(None)})
_DEFAULT_RETRY = RetryPresets.default()
_workflow_logger = logging.getLogger("perdure.workflow")
# A commit refused with these ends the invocation (see _InvocationState.commit).
_ABORTING = (ExecutionFinishedError, EngineClosedError, LeaseLostError)
# The limits of a timer's delay (a u64 of ms: past it is never) and of an
# attempt number (a u32 in the journal).
_NEVER_MS = 2**63 - 1
_MAX_ATTEMPT = 2**32 - 1


class _Suspend(BaseException):
    """Unwinds an invocation that reached work it cannot finish now.

    A BaseException, so that a workflow's ``except Exception`` does not
    swallow it.
    """


class _Abort(BaseException):
    """Unwinds an invocation whose execution was finished elsewhere (cancelled)."""


class _Stall(BaseException):
    """Unwinds an invocation whose commit met a full or failing disk.

    Nothing of that commit is stored, and the execution's failure is not
    recorded either: the invocation stops where its journal ends and the
    engine runs it again later (see Engine._stalled). A BaseException, so
    that workflow code cannot swallow it."""

    def __init__(self, error: StoreError) -> None:
        super().__init__(str(error))
        self.error = error


#: Exceptions that stop an invocation without being its outcome: like an
#: AWS Lambda invocation that dies, it is not recorded as a failure, and the
#: execution runs again later from its journal.
INTERRUPTS = (KeyboardInterrupt, SystemExit, GeneratorExit)


class _InvocationState:
    """What one invocation shares across its contexts."""

    #: True only in a verifying replay (perdure.verify.VerifyState), which
    #: must never run user code for new work nor write anything.
    verify_only = False

    def __init__(self, core: Core, invocation: Invocation, max_payload: int) -> None:
        self.core = core
        self.invocation = invocation
        self.exec_key = invocation.exec_key
        self.execution_id = invocation.execution_id
        self.lookup = invocation.lookup
        self.replay_step = invocation.replay_step
        self.max_payload = max_payload
        self.has_history = invocation.op_count > 0
        # Records that need not be durable on their own (a context's START, a
        # wait's end): they ride along with the next commit. Timers are
        # (delay after that commit, op id). Branches of a map or parallel run
        # on several threads and share them, hence the lock.
        self.deferred: list[R.RecordIn] = []
        self.deferred_timers: list[tuple[int, str]] = []
        self._deferred_lock = threading.Lock()
        #: Set when the invocation ends: a context kept beyond it (in a
        #: global, a thread, a task) can neither replay nor write.
        self.ended = False

    def ended_error(self) -> InvocationEndedError:
        return InvocationEndedError(
            f"execution {self.execution_id!r}: this durable context belongs to an invocation "
            "that has ended; use the context handed to the function's current invocation",
            execution_id=self.execution_id,
        )

    def defer(self, record: R.RecordIn | None = None, timer: tuple[int, str] | None = None) -> None:
        with self._deferred_lock:
            if record is not None:
                self.deferred.append(record)
            if timer is not None:
                self.deferred_timers.append(timer)

    def take_deferred(self) -> tuple[list[R.RecordIn], list[tuple[int, str]]]:
        with self._deferred_lock:
            records, timers = self.deferred, self.deferred_timers
            self.deferred, self.deferred_timers = [], []
            return records, timers

    def now_ms(self) -> int:
        return self.core.now_ms()

    def commit(
        self,
        records: list[R.RecordIn],
        wake_at: list[tuple[int, str]] | None = None,
        callback: tuple[str, int, int] | None = None,
        child: tuple[str, str, bytes, str, int | None] | None = None,
    ) -> str | None:
        """Makes records durable (with anything deferred) before returning."""
        if self.ended:
            raise self.ended_error()
        if self.deferred or self.deferred_timers:
            records, timers = self.with_deferred(records, wake_at)
        else:
            timers = wake_at or []
        try:
            return self.core.append(self.exec_key, records, timers, callback, child)
        except _ABORTING:
            # Cancelled, the engine is closing, or another engine took the
            # execution over: stop this invocation in a way workflow code
            # cannot swallow; what is committed stays committed.
            raise _Abort() from None
        except StoreError as exc:
            # A full or failing disk: the invocation stops, and runs again later.
            if not exc.storage_failed:
                raise
            raise _Stall(exc) from None

    def with_deferred(
        self, records: list[R.RecordIn], wake_at: list[tuple[int, str]] | None
    ) -> tuple[list[R.RecordIn], list[tuple[int, str]]]:
        """A commit's records and timers, after anything deferred so far."""
        timers = wake_at or []
        if self.deferred or self.deferred_timers:
            earlier, earlier_timers = self.take_deferred()
            return [*earlier, *records], [*earlier_timers, *timers]
        return records, timers

    async def commit_async(self, *args: Any, **kwargs: Any) -> str | None:
        """``commit`` (same arguments) for an :class:`perdure.aio.AsyncDurableContext`.
        This state commits at once (a verifying replay refuses); the state of
        an invocation on an event loop (perdure.aio) awaits its commit instead."""
        return self.commit(*args, **kwargs)

    def check_size(self, payload: bytes, what: str) -> bytes:
        return check_payload_size(payload, self.max_payload, what)

    def wait_until(self, due_ms: int, op_id: str) -> None:
        """Returns if ``due_ms`` has passed, else suspends. The durable timer
        armed with the record normally wakes it; one is armed again in case
        the clock stepped back since."""
        now = self.now_ms()
        if now < due_ms:
            # ``due_ms`` adds numbers read from the journal: past the u64 a
            # timer holds, it is simply never.
            self.defer(timer=(min(due_ms - now, _NEVER_MS), op_id))
            raise _Suspend()

    def next_attempt(self, op: tuple[Any, ...], op_id: str) -> int:
        """The attempt after the recorded one. The attempt is a u32 in the
        journal: one recorded at its limit is a damaged record."""
        attempt: int = op[R.OP_ATTEMPT]
        if attempt >= _MAX_ATTEMPT:
            raise CorruptRecordError(
                f"corrupt journal record: execution {self.execution_id!r}, operation {op_id}: "
                f"attempt {attempt} is at its limit",
                execution_id=self.execution_id,
            )
        return attempt + 1


def defer_retry(
    state: _InvocationState,
    sub_type: R.SubType,
    op_id: str,
    name: str | None,
    attempt: int,
    duration_ms: int,
    delay: Duration,
    payload: bytes,
) -> NoReturn:
    """Ends the invocation with a RETRY of a step (or a continuing poll): the
    record and its timer commit with the end of this invocation, and the next
    attempt runs in a new one when due."""
    delay_ms = max(0, delay.to_millis())
    retry = R.record(
        R.RETRY, R.STEP, sub_type, op_id, name,
        attempt=attempt, aux=duration_ms, aux2=delay_ms, payload=payload,
    )  # fmt: skip
    state.defer(retry, (delay_ms, op_id))
    raise _Suspend()


def check_payload_size(payload: bytes, limit: int, what: str) -> bytes:
    """Refuses a payload over ``Engine(max_payload_size=...)`` before it is written."""
    if len(payload) > limit:
        raise PayloadTooLargeError(
            f"{what}: serialized payload is {len(payload)} bytes, over the limit of {limit} "
            "bytes (Engine(max_payload_size=...))",
            size=len(payload),
            limit=limit,
            operation=what,
        )
    return payload


class ReplayAwareLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """``ctx.logger``: drops records while its context replays, so a log line
    appears once per execution, not once per invocation."""

    def __init__(self, context: DurableContext, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self._context = context

    def isEnabledFor(self, level: int) -> bool:
        return not self._context.is_replaying() and self.logger.isEnabledFor(level)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("execution_id", self._context._state.execution_id)
        if self._context._parent_id is not None:
            extra.setdefault("parent_id", self._context._parent_id)
        kwargs["extra"] = extra
        return msg, kwargs


class StepContext:
    """Handed to a step body: which attempt this is, and a logger."""

    __slots__ = ("_context", "attempt", "operation_id")

    def __init__(self, attempt: int, operation_id: str, context: DurableContext) -> None:
        self.attempt = attempt
        self.operation_id = operation_id
        self._context = context

    @property
    def logger(self) -> ReplayAwareLogger:
        return self._context.logger

    def __repr__(self) -> str:
        return f"StepContext(attempt={self.attempt}, operation_id={self.operation_id!r})"


@dataclass(frozen=True)
class WaitForCallbackContext:
    """Handed to a wait_for_callback submitter."""

    logger: logging.Logger | logging.LoggerAdapter  # type: ignore[type-arg]


class Callback(Generic[T]):
    """A callback created by :meth:`DurableContext.create_callback`.

    Give :attr:`callback_id` to whoever will answer; :meth:`result` returns
    their answer, suspending the execution until it arrives.
    """

    def __init__(
        self,
        context: DurableContext,
        operation_id: str,
        callback_id: str,
        serdes: SerDes[Any] | None,
    ) -> None:
        self._context = context
        self.operation_id = operation_id
        self.callback_id = callback_id
        self._serdes = serdes

    def result(self) -> T:
        state = self._context._state
        if state.ended:
            raise state.ended_error()
        op = state.lookup(self.operation_id)
        status = op[R.OP_STATUS] if op is not None else R.STARTED
        if status == R.SUCCEEDED:
            payload = op[R.OP_PAYLOAD] if op is not None else None
            return cast(T, self._context._decode(self._serdes, payload, self.operation_id))
        if status == R.FAILED:
            obj = error_object_from_payload(op[R.OP_PAYLOAD] if op is not None else None)
            raise CallbackExternalError(
                obj.get("ErrorMessage") or "Callback failed",
                callback_id=self.callback_id,
                error_type=obj.get("ErrorType"),
                error_message=obj.get("ErrorMessage"),
                error_data=obj.get("ErrorData"),
            )
        if status == R.TIMED_OUT:
            heartbeat = op is not None and op[R.OP_AUX] == 1
            raise CallbackTimeoutError(
                "Callback timed out on heartbeat" if heartbeat else "Callback timed out",
                callback_id=self.callback_id,
            )
        # Not answered yet: end this invocation; the answer wakes a new one.
        self._context._replaying = False
        raise _Suspend()


def run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine that never suspends: an operation written once for
    both kinds of context (see perdure.waits.poll_condition), driven by a
    sync context, whose commits are synchronous."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return cast(T, stop.value)
    coroutine.close()
    raise RuntimeError("a durable operation of a sync context awaited something")


class _Attempt(NamedTuple):
    """One attempt of a step's body: where and when it runs."""

    op_id: str
    name: str | None
    config: StepConfig
    sub_type: R.SubType
    attempt: int
    started_ms: int


def _error_payload(exc: BaseException) -> bytes:
    return serialize(None, error_object(exc), SerDesContext("", ""))


def durable_step(func: Callable[..., T]) -> Callable[..., Callable[[StepContext], T]]:
    """Decorates ``f(step_context, *args)`` so ``ctx.step(f(*args))`` works.

    The step is named after the function unless ``ctx.step`` gives a name.
    """

    name = getattr(func, "__name__", None)

    def bind(*args: Any, **kwargs: Any) -> Callable[[StepContext], T]:
        def body(step_context: StepContext) -> T:
            return func(step_context, *args, **kwargs)

        body._perdure_name = name  # type: ignore[attr-defined]
        return body

    bind.__name__ = name or "durable_step"
    bind.__doc__ = func.__doc__
    bind.__wrapped__ = func  # type: ignore[attr-defined]
    return bind


class DurableContext:
    """The handle a durable function receives as its first argument."""

    #: What create_callback returns (perdure.aio's context returns callbacks
    #: whose result is awaited).
    _callback_class: type[Callback[Any]] = Callback
    #: Whether what user code returns is awaited when it is awaitable (only
    #: in perdure.aio's context).
    _awaits = False

    def __init__(
        self, state: _InvocationState, parent_id: str | None = None, replaying: bool | None = None
    ) -> None:
        self._state = state
        self._parent_id = parent_id
        self._prefix = "" if parent_id is None else f"{parent_id}-"
        self._counter = 0
        self._replaying = state.has_history if replaying is None else replaying
        self._replay_step = state.replay_step

    @property
    def logger(self) -> ReplayAwareLogger:
        """A logger that is silent while this context replays. Made on use, so
        a context and its logger never form a reference cycle that would keep
        an invocation's replay index alive until the garbage collector runs."""
        return ReplayAwareLogger(self, _workflow_logger)

    # -- identity -------------------------------------------------------------

    @property
    def execution_id(self) -> str:
        return self._state.execution_id

    def is_replaying(self) -> bool:
        """True while this context is re-running operations the journal already holds."""
        return self._replaying

    def _check_live(self) -> None:
        """Refuses an operation on a context whose invocation has ended."""
        if self._state.ended:
            raise self._state.ended_error()

    def _next_id(self) -> str:
        self._counter += 1
        return f"{self._prefix}{self._counter}"

    def _recorded(self, op_id: str, op_type: int, sub_type: R.SubType, name: str | None) -> Any:
        """The recorded state of this operation, checked against what the code asks for."""
        op = self._state.lookup(op_id)
        if op is None:
            if self._state.verify_only:  # a verifying replay reached new work: stop here
                cast("VerifyState", self._state).frontier(op_id, _describe(op_type, sub_type, name))
            self._replaying = False
            return None
        if (
            op[R.OP_TYPE] != op_type
            or op[R.OP_SUB_TYPE] != sub_type
            or (op[R.OP_NAME] or None) != (name or None)
        ):
            recorded = _describe(op[R.OP_TYPE], op[R.OP_SUB_TYPE], op[R.OP_NAME])
            requested = _describe(op_type, sub_type, name)
            error = NonDeterministicExecutionError(
                f"execution {self._state.execution_id!r}: operation {op_id} was recorded as "
                f"{recorded} but the code now asks for {requested}; the workflow code changed "
                "in a way that is not compatible with this execution's history",
                execution_id=self._state.execution_id,
                operation_id=op_id,
                recorded=recorded,
                requested=requested,
            )
            if self._state.verify_only:  # reported even where workflow code catches errors
                cast("VerifyState", self._state).diverged(error)
            raise error
        return op

    def _serdes_context(self, op_id: str) -> SerDesContext:
        return SerDesContext(op_id, self._state.execution_id)

    def _decode(self, serdes: SerDes[Any] | None, payload: bytes | None, op_id: str) -> Any:
        if payload is None:
            return None
        return deserialize(serdes, payload, self._serdes_context(op_id))

    def _checkpoint(
        self, serdes: SerDes[Any] | None, value: Any, op_id: str, kind: str, name: str | None
    ) -> tuple[bytes, Any]:
        """Serializes a result, and gives back what a replay will return: the
        value after a round trip through the serdes."""
        if serdes is None:
            try:
                payload = dumps(value)
            except SerDesError:
                payload = serialize(None, value, self._serdes_context(op_id))  # names the operation
            if len(payload) > self._state.max_payload:
                self._state.check_size(payload, f"{kind} {name or op_id}")
            # Plain scalars come back as themselves; skip the round trip.
            if type(value) in _SCALARS:
                return payload, value
            return payload, loads(payload)
        context = self._serdes_context(op_id)
        payload = serialize(serdes, value, context)
        self._state.check_size(payload, f"{kind} {name or op_id}")
        return payload, deserialize(serdes, payload, context)

    # -- step -------------------------------------------------------------------

    def step(
        self,
        func: Callable[[StepContext], T],
        name: str | None = None,
        config: StepConfig | None = None,
    ) -> T:
        """Runs ``func(step_context)`` once and checkpoints its result."""
        if self._state.ended:
            raise self._state.ended_error()
        if not callable(func):
            raise ValidationError(f"step needs a callable, got {type(func).__name__}")
        if config is None:
            config = _DEFAULT_STEP_CONFIG
        elif not isinstance(config, StepConfig):
            raise ValidationError(f"step config must be a StepConfig, got {type(config).__name__}")
        if name is None:
            name = getattr(func, "_perdure_name", None)
        if name is not None and (type(name) is not str or not name.isascii()):
            name = _checks.optional_text(name, "step name")
        self._counter = counter = self._counter + 1
        op_id = f"{self._prefix}{counter}"
        if config.serdes is None:
            # Replay fast path: one call into Rust finds the step and decodes
            # its result; anything unusual falls through to the slow path.
            value = self._replay_step(op_id, name)
            if value is _NEW:
                self._replaying = False
                sub_type = R.sub_type_of(config.sub_type, R.SUB_STEP)
                return self._step(op_id, func, name, config, sub_type, recorded=False)
            if value is not _MISSING:
                return value  # type: ignore[return-value]
        return self._step(op_id, func, name, config, R.sub_type_of(config.sub_type, R.SUB_STEP))

    def _step(
        self,
        op_id: str,
        func: Callable[[StepContext], T],
        name: str | None,
        config: StepConfig,
        sub_type: R.SubType,
        recorded: bool = True,
    ) -> T:
        """The full step: ``recorded=False`` when the caller already knows the
        journal has no such operation."""
        state = self._state
        if recorded or state.verify_only:
            value, at, error = self._step_attempt(op_id, name, config, sub_type, recorded)
            if at is None:
                return value  # type: ignore[no-any-return]
        else:
            # A new step's first attempt, the common case: nothing to look up.
            at, error = _Attempt(op_id, name, config, sub_type, 1, state.now_ms()), None
        if error is None:
            if config.step_semantics is StepSemantics.AT_MOST_ONCE_PER_RETRY:
                started = R.record(R.STARTED, R.STEP, sub_type, op_id, name, attempt=at.attempt)
                state.commit([started])
            try:
                result = func(StepContext(at.attempt, op_id, self))
            except Exception as exc:
                error = exc
        if error is not None:
            state.commit([self._step_failure(at, error)])
            raise _step_error(error_object(error)) from error
        record, value = self._step_succeeded(at, result)
        state.commit([record])
        return value  # type: ignore[no-any-return]

    def _step_attempt(
        self, op_id: str, name: str | None, config: StepConfig, sub_type: R.SubType, recorded: bool
    ) -> tuple[Any, _Attempt | None, BaseException | None]:
        """Where a step stands (shared by the sync and the asyncio step):
        ``(result, None, None)`` when the journal has it succeeded (a recorded
        failure raises); else ``(None, attempt, interrupted)``: run that
        attempt, unless ``interrupted`` is the error of an
        AT_MOST_ONCE_PER_RETRY attempt that was cut off."""
        state = self._state
        op = self._recorded(op_id, R.STEP, sub_type, name) if recorded else None
        attempt = 1
        interrupted = False
        if op is not None:
            status = op[R.OP_STATUS]
            if status == R.SUCCEEDED:
                return self._decode(config.serdes, op[R.OP_PAYLOAD], op_id), None, None
            if status == R.FAILED:
                raise _step_error(error_object_from_payload(op[R.OP_PAYLOAD]))
            if status == R.RETRY:
                state.wait_until(op[R.OP_TIMESTAMP] + op[R.OP_AUX2], op_id)
                attempt = state.next_attempt(op, op_id)
            elif status == R.STARTED:
                attempt = op[R.OP_ATTEMPT]
                interrupted = config.step_semantics is StepSemantics.AT_MOST_ONCE_PER_RETRY
        if state.verify_only:  # a verifying replay never runs a step body
            cast("VerifyState", state).frontier(op_id, _describe(R.STEP, sub_type, name))
        self._replaying = False
        at = _Attempt(op_id, name, config, sub_type, attempt, state.now_ms())
        if not interrupted:
            return None, at, None
        error = StepInterruptedError(
            f"step {op_id} ({name or 'unnamed'}) attempt {attempt} was interrupted before "
            "it completed; AT_MOST_ONCE_PER_RETRY does not run it again blindly",
            execution_id=state.execution_id,
            operation_id=op_id,
            attempt=attempt,
        )
        return None, at, error

    def _step_succeeded(self, at: _Attempt, result: Any) -> tuple[R.RecordIn, Any]:
        """The SUCCEEDED record of a step body's result, and the value to
        return (what a replay will return)."""
        op_id, name, config, sub_type, attempt, started_ms = at
        payload, value = self._checkpoint(config.serdes, result, op_id, "step", name)
        duration = self._state.now_ms() - started_ms
        record = (R.SUCCEEDED, R.STEP, sub_type, op_id, name, attempt, duration, 0, None, payload)
        return record, value

    def _step_failure(self, at: _Attempt, error: BaseException) -> R.RecordIn:
        """Decides a failed attempt by the retry strategy: a retry is
        deferred (its RETRY record and timer) and suspends; otherwise the
        FAILED record to commit before the step error is raised."""
        op_id, name, config, sub_type, attempt, started_ms = at
        state = self._state
        strategy = config.retry_strategy or _DEFAULT_RETRY
        decision = strategy(error, attempt)
        if not isinstance(decision, RetryDecision):
            raise ValidationError(
                f"retry strategy of step {name or op_id} returned {type(decision).__name__}, "
                "not a RetryDecision"
            )
        payload = _error_payload(error)
        duration = state.now_ms() - started_ms
        if decision.should_retry:
            defer_retry(state, sub_type, op_id, name, attempt, duration, decision.delay, payload)
        return R.record(
            R.FAILED, R.STEP, sub_type, op_id, name, attempt=attempt, aux=duration, payload=payload
        )

    # -- wait -------------------------------------------------------------------

    def wait(self, duration: Duration, name: str | None = None) -> None:
        """Suspends the execution for ``duration``; no thread waits meanwhile."""
        self._check_live()
        if not isinstance(duration, Duration):
            raise ValidationError(f"wait needs a Duration, got {type(duration).__name__}")
        millis = duration.to_millis()
        if millis <= 0:
            raise ValidationError(f"wait duration must be positive, got {duration!r}")
        name = _checks.optional_text(name, "wait name")
        state = self._state
        op_id = self._next_id()
        op = self._recorded(op_id, R.WAIT, R.SUB_WAIT, name)
        if op is None:
            started = R.record(R.STARTED, R.WAIT, R.SUB_WAIT, op_id, name, aux=millis)
            state.defer(started, (millis, op_id))
            raise _Suspend()
        if op[R.OP_STATUS] == R.SUCCEEDED:
            return
        state.wait_until(op[R.OP_STARTED_MS] + op[R.OP_START_AUX], op_id)
        self._replaying = False
        state.defer(R.record(R.SUCCEEDED, R.WAIT, R.SUB_WAIT, op_id, name, aux=op[R.OP_START_AUX]))

    # -- callbacks --------------------------------------------------------------

    def create_callback(
        self, name: str | None = None, config: CallbackConfig | None = None
    ) -> Callback[Any]:
        """Creates a callback whose id an external party answers with."""
        self._check_live()
        config = _checked_config(config, CallbackConfig, "create_callback")
        name = _checks.optional_text(name, "create_callback name")
        return self._create_callback(name, config)

    def _create_callback(self, name: str | None, config: CallbackConfig) -> Callback[Any]:
        op_id = self._next_id()
        sub_type = R.sub_type_of(config.sub_type, R.SUB_CALLBACK)
        op = self._recorded(op_id, R.CALLBACK, sub_type, name)
        if op is not None:
            return self._callback_class(self, op_id, op[R.OP_EXTRA], config.serdes)
        timeout_ms = config.timeout.to_millis() if config.timeout else 0
        heartbeat_ms = config.heartbeat_timeout.to_millis() if config.heartbeat_timeout else 0
        started = R.record(
            R.STARTED, R.CALLBACK, sub_type, op_id, name, aux=timeout_ms, aux2=heartbeat_ms
        )
        return self._register_callback(started, (op_id, timeout_ms, heartbeat_ms), config.serdes)

    def _register_callback(
        self, started: R.RecordIn, spec: tuple[str, int, int], serdes: SerDes[Any] | None
    ) -> Callback[Any]:
        """Commits a new callback's start, which registers its id (the
        asyncio context awaits this commit instead)."""
        return run_now(self._register_callback_async(started, spec, serdes))

    async def _register_callback_async(
        self, started: R.RecordIn, spec: tuple[str, int, int], serdes: SerDes[Any] | None
    ) -> Callback[Any]:
        callback_id = await self._state.commit_async([started], callback=spec)
        assert callback_id is not None
        return self._callback_class(self, spec[0], callback_id, serdes)

    def wait_for_callback(
        self,
        submitter: Callable[[str, WaitForCallbackContext], Any],
        name: str | None = None,
        config: WaitForCallbackConfig | None = None,
    ) -> Any:
        """Creates a callback, hands its id to ``submitter`` (run as a step) and
        waits for the answer."""
        self._check_live()
        config, prefix, callback_config, step_config = _wait_for_callback_plan(
            submitter, name, config
        )

        def body(child: DurableContext) -> Any:
            callback = child._create_callback(f"{prefix}create callback id", callback_config)

            def submit(step_context: StepContext) -> Any:
                return submitter(callback.callback_id, WaitForCallbackContext(step_context.logger))

            child._step(child._next_id(), submit, f"{prefix}submitter", step_config, R.SUB_STEP)
            return callback.result()

        try:
            return self._child(
                body, name, ChildConfig(serdes=config.serdes), R.SUB_WAIT_FOR_CALLBACK
            )
        except ChildContextError as exc:
            self._wait_for_callback_failed(exc, f"{self._prefix}{self._counter}", config)

    def _wait_for_callback_failed(
        self, exc: ChildContextError, op_id: str, config: WaitForCallbackConfig
    ) -> NoReturn:
        """Raises the error a failed wait_for_callback (child context
        ``op_id``) reports: the callback's own error, or the submitter's."""
        cause = exc.__cause__
        if isinstance(cause, CallbackError):
            # Raise what the callback itself recorded (the answerer's error
            # type, the kind of timeout), exactly as create_callback's
            # result() would, on the first run and on replay alike.
            callback_op = f"{op_id}-1"
            op = self._state.lookup(callback_op)
            if op is not None and op[R.OP_TYPE] == R.CALLBACK:
                Callback(self, callback_op, op[R.OP_EXTRA] or "", config.serdes).result()
            raise cause from None
        if isinstance(cause, StepError):
            raise CallbackSubmitterError(
                cause.error_message or "callback submitter failed",
                error_type=cause.error_type,
                error_data=cause.error_data,
                stack_trace=cause.stack_trace,
            ) from cause
        raise exc

    # -- wait_for_condition -----------------------------------------------------

    def wait_for_condition(
        self,
        check: Callable[[T, WaitForConditionCheckContext], T],
        config: WaitForConditionConfig[T] | None = None,
        name: str | None = None,
    ) -> T:
        """Polls ``check(state, check_context)`` until ``config.wait_strategy``
        stops; each poll's state is checkpointed and the waits between polls
        are durable. Returns the final state (see :mod:`perdure.waits`)."""
        from perdure.waits import run_wait_for_condition

        return run_wait_for_condition(self, check, config, name)

    # -- fan-out ----------------------------------------------------------------

    def map(
        self,
        items: Sequence[Item],
        func: Callable[[DurableContext, Item, int, Sequence[Item]], T],
        name: str | None = None,
        config: MapConfig | None = None,
    ) -> BatchResult[T]:
        """Runs ``func(ctx, item, index, items)`` for every item, concurrently on
        the executor, each in its own child context; returns a BatchResult."""
        self._check_live()
        _check_callable(func, "map")
        config = _checked_config(config, MapConfig, "map")
        name = _checks.optional_text(name, "map name")
        if not isinstance(items, Sequence) or isinstance(items, str | bytes):
            raise ValidationError(f"map needs a sequence of items, got {type(items).__name__}")
        namer = config.item_namer or (lambda _item, index: f"map-item-{index}")
        branches = [
            (
                _checks.optional_text(namer(item, index), "map item_namer result"),
                _map_branch(func, item, index, items),
            )
            for index, item in enumerate(items)
        ]
        return self._run_batch(branches, name, config, R.SUB_MAP, R.SUB_MAP_ITERATION)

    def parallel(
        self,
        functions: Sequence[Callable[[DurableContext], T]],
        name: str | None = None,
        config: ParallelConfig | None = None,
    ) -> BatchResult[T]:
        """Runs every ``function(ctx)`` concurrently on the executor, each in its
        own child context; returns a BatchResult."""
        self._check_live()
        config = _checked_config(config, ParallelConfig, "parallel")
        name = _checks.optional_text(name, "parallel name")
        if not isinstance(functions, Sequence):
            got = type(functions).__name__
            raise ValidationError(f"parallel needs a sequence of functions, got {got}")
        for index, function in enumerate(functions):
            _check_callable(function, f"parallel branch {index}")
        branches = [(f"parallel-branch-{index}", f) for index, f in enumerate(functions)]
        return self._run_batch(branches, name, config, R.SUB_PARALLEL, R.SUB_PARALLEL_BRANCH)

    def _run_batch(self, *args: Any) -> BatchResult[Any]:
        """``run_batch(self, branches, name, config, sub_type, branch_sub_type)``:
        a map's or parallel's branches on the executor (the asyncio context
        runs them as tasks on its event loop instead)."""
        return run_batch(self, *args)

    # -- invoke -------------------------------------------------------------------

    def invoke(
        self,
        function_name: str | Callable[..., Any],
        payload: Any = None,
        name: str | None = None,
        config: InvokeConfig | None = None,
    ) -> Any:
        """Runs a registered function (durable or plain) as a child execution
        with ``payload`` and returns its result; suspends until it is done.
        The child has its own id and history; cancelling this execution
        cancels it. A child that fails, times out or is stopped raises
        InvokeError."""
        self._check_live()
        config = _checked_config(config, InvokeConfig, "invoke")
        if not isinstance(function_name, str) and not callable(function_name):
            got = type(function_name).__name__
            raise ValidationError(f"invoke needs a function name, got {got}")
        if isinstance(function_name, str):
            _checks.text(function_name, "invoke function name")
        name = _checks.optional_text(name, "invoke name")
        state = self._state
        op_id = self._next_id()
        op = self._recorded(op_id, R.CHAINED_INVOKE, R.SUB_CHAINED_INVOKE, name)
        if op is None:
            try:
                target = registered_name(function_name)
            except UnknownFunctionError as exc:
                raise UnknownFunctionError(
                    f"invoke {name or op_id}: {exc}", function_name=exc.function_name
                ) from None
            child_id = f"{state.execution_id}/{op_id}"
            data = serialize(config.serdes_payload, payload, self._serdes_context(op_id))
            state.check_size(data, f"invoke {name or op_id} payload")
            timeout_ms = config.timeout.to_millis() if config.timeout else None
            started = R.record(
                R.STARTED,
                R.CHAINED_INVOKE,
                R.SUB_CHAINED_INVOKE,
                op_id,
                name,
                extra=child_id,
                payload=data,
            )
            return self._invoke_child(started, (child_id, target, data, op_id, timeout_ms))
        status = op[R.OP_STATUS]
        if status == R.SUCCEEDED:
            return self._decode(config.serdes_result, op[R.OP_PAYLOAD], op_id)
        if status in (R.FAILED, R.TIMED_OUT, R.CANCELLED):
            obj = error_object_from_payload(op[R.OP_PAYLOAD])
            ended = {R.FAILED: "failed", R.TIMED_OUT: "timed out", R.CANCELLED: "was stopped"}
            message = obj.get("ErrorMessage") or ended[status]
            stopped = "Execution.Stopped" if status == R.CANCELLED else None
            raise InvokeError(
                f"invoked execution {op[R.OP_EXTRA]!r} {ended[status]}: {message}",
                error_type=obj.get("ErrorType") or stopped,
                error_data=obj.get("ErrorData"),
                stack_trace=obj.get("StackTrace"),
            )
        # The child is still running: its end wakes this execution.
        self._replaying = False
        raise _Suspend()

    def _invoke_child(
        self, started: R.RecordIn, child: tuple[str, str, bytes, str, int | None]
    ) -> NoReturn:
        """Commits an invoke's start, which starts the child execution, and
        suspends until the child ends (the asyncio context awaits the commit)."""
        run_now(self._invoke_child_async(started, child))

    async def _invoke_child_async(
        self, started: R.RecordIn, child: tuple[str, str, bytes, str, int | None]
    ) -> NoReturn:
        await self._state.commit_async([started], child=child)
        self._replaying = False
        raise _Suspend()

    # -- child contexts -----------------------------------------------------------

    def run_in_child_context(
        self,
        func: Callable[[DurableContext], T],
        name: str | None = None,
        config: ChildConfig | None = None,
    ) -> T:
        """Runs ``func(child_context)`` in its own operation namespace and
        checkpoints its result; a completed child is not run again."""
        self._check_live()
        _check_callable(func, "run_in_child_context")
        config = _checked_config(config, ChildConfig, "run_in_child_context")
        if name is None:
            name = getattr(func, "_perdure_name", None)
        name = _checks.optional_text(name, "run_in_child_context name")
        return self._child(func, name, config, R.sub_type_of(config.sub_type, R.SUB_CHILD_CONTEXT))

    def _child(
        self,
        func: Callable[[DurableContext], T],
        name: str | None,
        config: ChildConfig,
        sub_type: R.SubType,
        op_id: str | None = None,
        flat: bool = False,
    ) -> T:
        """Runs a child context at the next id (or at ``op_id``: a batch numbers
        its branches by index). A ``flat`` child writes no records of its own;
        its operations alone make it replayable."""
        done, value = self._child_open(name, config, sub_type, op_id, flat)
        if done:
            return value  # type: ignore[no-any-return]
        return run_now(self._child_run(func, *value))  # type: ignore[no-any-return]

    def _child_open(
        self,
        name: str | None,
        config: ChildConfig,
        sub_type: R.SubType,
        op_id: str | None = None,
        flat: bool = False,
    ) -> tuple[bool, Any]:
        """Where a child context stands (shared by the sync and the asyncio
        context): ``(True, result)`` when the journal has it succeeded (a
        recorded failure raises); else ``(False, run)``: run its body with
        ``_child_run(func, *run)``, replaying if it started before (a new
        one's start is deferred; a flat one records nothing of its own)."""
        if op_id is None:
            op_id = self._next_id()
        if flat:
            return False, (name, config, sub_type, op_id, flat, self._replaying)
        op = self._recorded(op_id, R.CONTEXT, sub_type, name)
        if op is not None:
            status = op[R.OP_STATUS]
            if status == R.SUCCEEDED:
                return True, self._decode(config.serdes, op[R.OP_PAYLOAD], op_id)
            if status == R.FAILED:
                obj = error_object_from_payload(op[R.OP_PAYLOAD])
                raise _child_error(obj) from rebuild_error(obj)
        else:
            self._state.defer(R.record(R.STARTED, R.CONTEXT, sub_type, op_id, name))
        return False, (name, config, sub_type, op_id, flat, self._replaying and op is not None)

    async def _child_run(
        self,
        func: Callable[[Any], Any],
        name: str | None,
        config: ChildConfig,
        sub_type: R.SubType,
        op_id: str,
        flat: bool,
        replaying: bool,
    ) -> Any:
        """Runs a child context's body and checkpoints its outcome, for both
        kinds of context: a sync context's commits never suspend (``_child``
        drives this with run_now); an asyncio context awaits this, and what
        its body returns when that is awaitable."""
        state = self._state
        child = type(self)(state, op_id, replaying=replaying)
        try:
            result = func(child)
            if self._awaits and inspect.isawaitable(result):
                result = await result
        except NonDeterministicExecutionError:
            raise  # not the child's failure: the code no longer fits the history
        except Exception as exc:
            failed, obj = _context_failed(op_id, name, sub_type, exc)
            if not flat:
                await state.commit_async([failed])
            raise _child_error(obj) from rebuild_error(obj)
        if flat:
            return result
        payload, value = self._checkpoint(config.serdes, result, op_id, "child context", name)
        done = R.record(R.SUCCEEDED, R.CONTEXT, sub_type, op_id, name, payload=payload)
        await state.commit_async([done])
        self._replaying = child._replaying and self._replaying
        return value


C = TypeVar("C")
Item = TypeVar("Item")


def _map_branch(
    func: Callable[[DurableContext, Item, int, Sequence[Item]], T],
    item: Item,
    index: int,
    items: Sequence[Item],
) -> Callable[[DurableContext], T]:
    return lambda ctx: func(ctx, item, index, items)


def _wait_for_callback_plan(
    submitter: object, name: str | None, config: WaitForCallbackConfig | None
) -> tuple[WaitForCallbackConfig, str, CallbackConfig, StepConfig]:
    """wait_for_callback's checked config, the prefix of its operations'
    names, and the configs of its callback and of its submitter step."""
    _check_callable(submitter, "wait_for_callback submitter")
    config = _checked_config(config, WaitForCallbackConfig, "wait_for_callback")
    name = _checks.optional_text(name, "wait_for_callback name")
    callback_config = CallbackConfig(
        timeout=config.timeout,
        heartbeat_timeout=config.heartbeat_timeout,
        serdes=config.serdes,
        sub_type=config.sub_type,
    )
    step_config = StepConfig(retry_strategy=config.retry_strategy)
    return config, f"{name} " if name else "", callback_config, step_config


def _check_callable(func: object, what: str) -> None:
    if not callable(func):
        raise ValidationError(f"{what} needs a callable, got {type(func).__name__}")


def _checked_config(config: C | None, cls: type[C], what: str) -> C:
    """The config, or a default one; anything else is refused by name."""
    if config is None:
        return cls()
    if not isinstance(config, cls):
        got = type(config).__name__
        raise ValidationError(f"{what} config must be a {cls.__name__}, got {got}")
    return config


def _describe(op_type: int, sub_type: R.SubType, name: str | None) -> str:
    label = R.sub_type_name(sub_type) or R.OP_TYPE_NAMES.get(op_type, str(op_type))
    return f"{label} {name!r}" if name else f"unnamed {label}"


def _step_error(obj: dict[str, Any]) -> StepError:
    return StepError.from_error_object(obj)


def _context_failed(
    op_id: str, name: str | None, sub_type: R.SubType, exc: BaseException
) -> tuple[R.RecordIn, dict[str, Any]]:
    """The FAILED record of a child context whose body raised ``exc``, and
    the error object it records."""
    obj = error_object(exc)
    payload = serialize(None, obj, SerDesContext("", ""))
    return R.record(R.FAILED, R.CONTEXT, sub_type, op_id, name, payload=payload), obj


def _child_error(obj: dict[str, Any]) -> ChildContextError:
    return ChildContextError.from_error_object(obj)
