"""Exceptions a perdure user can meet.

Every exception derives from :class:`PerdureError`. Constructors take the
message first and everything else as keyword attributes, so an error can be
built in one line where it is detected and inspected by attribute where it is
caught.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from typing import Any, Self

__all__ = [
    "CallableRuntimeError",
    "CallbackAlreadyCompletedError",
    "CallbackError",
    "CallbackExternalError",
    "CallbackSubmitterError",
    "CallbackTimeoutError",
    "ChildContextError",
    "CorruptRecordError",
    "CorruptStoreError",
    "DurableOperationError",
    "EngineClosedError",
    "ExecutionCancelledError",
    "ExecutionFailedError",
    "ExecutionFinishedError",
    "ExecutionNotFoundError",
    "ExecutionTimedOutError",
    "InvocationEndedError",
    "InvokeError",
    "LeaseLostError",
    "NonDeterministicExecutionError",
    "PayloadTooLargeError",
    "PerdureError",
    "SerDesError",
    "StepError",
    "StepInterruptedError",
    "StoreAccessError",
    "StoreError",
    "StoreFullError",
    "StoreVersionError",
    "UnknownCallbackError",
    "UnknownFunctionError",
    "ValidationError",
    "WaitForConditionError",
    "error_object",
    "error_type_name",
    "rebuild_error",
]

# A stored stack trace is for people, not for replay; bounding it keeps a
# failure record small even when the failing code recursed deeply.
_MAX_STACK_TRACE_LINES = 200


def error_type_name(exc_type: type[BaseException]) -> str:
    """Return the name recorded as ``ErrorType`` for an exception class.

    Builtins stay short (``ValueError``); anything else is qualified with its
    module (``myapp.errors.PaymentDeclined``), as the AWS SDK records it.
    """
    module = exc_type.__module__
    if module == "builtins":
        return exc_type.__qualname__
    return f"{module}.{exc_type.__qualname__}"


def _format_stack_trace(exc: BaseException) -> list[str] | None:
    if exc.__traceback__ is None and exc.__cause__ is None and exc.__context__ is None:
        return None
    lines = "".join(traceback.format_exception(exc)).splitlines()
    if len(lines) > _MAX_STACK_TRACE_LINES:
        # The innermost frames and the message are at the end: keep those.
        omitted = len(lines) - _MAX_STACK_TRACE_LINES
        lines = [f"... {omitted} lines omitted ...", *lines[-_MAX_STACK_TRACE_LINES:]]
    return lines


def _stack_trace_from(value: Any) -> list[str] | None:
    # Accept the list form perdure writes and a single string that other
    # writers (or people editing a record by hand) may have stored.
    if value is None:
        return None
    if isinstance(value, str):
        return value.splitlines()
    return [str(line) for line in value]


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


class PerdureError(Exception):
    """Base class of every perdure exception."""


class ValidationError(PerdureError, ValueError):
    """Invalid configuration or input, detected before anything is written."""


class SerDesError(PerdureError):
    """A value could not be serialized or deserialized."""

    def __init__(self, message: str, *, operation: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.operation = operation


class PayloadTooLargeError(ValidationError):
    """A serialized payload is larger than the configured limit."""

    def __init__(
        self,
        message: str,
        *,
        size: int | None = None,
        limit: int | None = None,
        operation: str | None = None,
    ) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit
        self.operation = operation


class NonDeterministicExecutionError(PerdureError):
    """Replayed code asked for a different operation than the journal recorded."""

    def __init__(
        self,
        message: str,
        *,
        execution_id: str | None = None,
        operation_id: str | None = None,
        recorded: Any = None,
        requested: Any = None,
    ) -> None:
        super().__init__(message)
        self.execution_id = execution_id
        self.operation_id = operation_id
        self.recorded = recorded
        self.requested = requested

    @property
    def step_id(self) -> str | None:
        """The operation id, under the name the AWS SDK uses."""
        return self.operation_id


class StoreError(PerdureError):
    """The store could not be read or written.

    ``storage_failed`` is True when a write failed because the disk is
    failing (EIO, an LMDB panic) or full (then the error is a
    :class:`StoreFullError`): nothing of that write is stored, no execution
    fails for it, and an invocation it stopped runs again later from its
    journal."""

    def __init__(
        self, message: str, *, path: str | None = None, storage_failed: bool = False
    ) -> None:
        super().__init__(message)
        self.path = path
        self.storage_failed = storage_failed


class StoreFullError(StoreError):
    """A write failed because the store's disk is full (ENOSPC, EDQUOT,
    EFBIG, or an LMDB map that cannot grow). Nothing of it is stored; the
    store stays usable, and executions stopped by it finish once space
    returns, in this engine or a reopened one."""

    def __init__(
        self, message: str, *, path: str | None = None, storage_failed: bool = True
    ) -> None:
        super().__init__(message, path=path, storage_failed=storage_failed)


class CorruptRecordError(StoreError):
    """A journal record failed its checksum or could not be decoded."""

    def __init__(
        self,
        message: str,
        *,
        execution_id: str | None = None,
        sequence: int | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message, path=path)
        self.execution_id = execution_id
        self.sequence = sequence


class StoreVersionError(StoreError):
    """The store was written by an incompatible format version."""

    def __init__(
        self,
        message: str,
        *,
        found: int | None = None,
        supported: int | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message, path=path)
        self.found = found
        self.supported = supported


class StoreAccessError(StoreError):
    """The store directory cannot be created, opened or written."""


class LeaseLostError(PerdureError):
    """This engine lost an execution's lease: another engine took the execution
    over (this one looked dead or hung), so this one's writes to it are refused.

    Workflow code never sees it: the invocation stops, and the engine that now
    holds the lease runs the execution.
    """

    def __init__(self, message: str, *, execution_id: str | None = None) -> None:
        super().__init__(message)
        self.execution_id = execution_id


class CorruptStoreError(StoreError):
    """A stored value other than a journal record is damaged: failed its
    checksum, or cannot be decoded. ``execution_id`` names the execution it
    belongs to, when it belongs to one; the other executions keep working."""

    def __init__(
        self, message: str, *, execution_id: str | None = None, path: str | None = None
    ) -> None:
        super().__init__(message, path=path)
        self.execution_id = execution_id


class EngineClosedError(PerdureError):
    """The engine was used after it was closed."""


class InvocationEndedError(PerdureError):
    """A durable context was used after the invocation it was handed to
    ended (kept in a global, a thread or a task that outlived the function).
    Nothing is written; the execution goes on in a new invocation with a new
    context."""

    def __init__(self, message: str, *, execution_id: str | None = None) -> None:
        super().__init__(message)
        self.execution_id = execution_id


class UnknownFunctionError(PerdureError):
    """No durable function is registered under this name in this process."""

    def __init__(self, message: str, *, function_name: str | None = None) -> None:
        super().__init__(message)
        self.function_name = function_name


class ExecutionNotFoundError(PerdureError):
    """No execution with this id exists in the store."""

    def __init__(self, message: str, *, execution_id: str | None = None) -> None:
        super().__init__(message)
        self.execution_id = execution_id


class ExecutionFinishedError(PerdureError):
    """The execution already finished (or was cancelled) while it was being run."""

    def __init__(self, message: str, *, execution_id: str | None = None) -> None:
        super().__init__(message)
        self.execution_id = execution_id


class ExecutionFailedError(PerdureError):
    """The execution did not succeed; raised by ``ExecutionHandle.result()``.

    The subclasses tell a cancelled or timed-out execution apart; catching
    this class catches every outcome other than success.
    """

    def __init__(
        self,
        message: str,
        *,
        execution_id: str | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        error_data: str | None = None,
        stack_trace: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.execution_id = execution_id
        self.error_type = error_type
        self.error_message = error_message
        self.error_data = error_data
        self.stack_trace = stack_trace


class ExecutionCancelledError(ExecutionFailedError):
    """The execution was cancelled."""


class ExecutionTimedOutError(ExecutionFailedError):
    """The execution ran past its timeout."""


class StepInterruptedError(PerdureError):
    """An AT_MOST_ONCE_PER_RETRY attempt was interrupted before it completed.

    The step body may or may not have run to the end; it is not re-run
    blindly. The step's retry strategy decides what happens next.
    """

    def __init__(
        self,
        message: str,
        *,
        execution_id: str | None = None,
        operation_id: str | None = None,
        attempt: int | None = None,
    ) -> None:
        super().__init__(message)
        self.execution_id = execution_id
        self.operation_id = operation_id
        self.attempt = attempt

    @property
    def step_id(self) -> str | None:
        """The operation id, under the name the AWS SDK uses."""
        return self.operation_id


# region operation errors


class DurableOperationError(PerdureError):
    """A failure that escaped a durable operation, rebuilt from its record.

    Workflow code sees the same exception on the first run and on replay:
    it is always built from the stored error object, never the original
    exception object (a type name read from the store is never imported).
    ``error_type`` names the original exception's class (``"KeyError"``,
    ``"myapp.errors.Declined"``); ``error_message``, ``error_data`` and
    ``stack_trace`` are as recorded. ``message`` and ``data`` are the AWS
    SDK's names for ``error_message`` and ``error_data``.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        error_type: str | None = None,
        error_data: str | None = None,
        stack_trace: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.error_message = message
        # As in AWS: with no inner type known, the class names itself.
        self.error_type = error_type or error_type_name(type(self))
        self.error_data = error_data
        self.stack_trace = stack_trace

    @property
    def message(self) -> str | None:
        """``error_message``, under the AWS SDK's name."""
        return self.error_message

    @property
    def data(self) -> str | None:
        """``error_data``, under the AWS SDK's name."""
        return self.error_data

    def __str__(self) -> str:
        # Show the original type, which is what a reader of a log looks for.
        message = "" if self.error_message is None else self.error_message
        if self.error_type != error_type_name(type(self)):
            return f"{self.error_type}: {message}" if message else self.error_type
        return message

    @classmethod
    def from_exception(cls, exc: BaseException) -> Self:
        """Build what replay would raise for ``exc``: its recorded form."""
        return cls.from_error_object(error_object(exc))

    @classmethod
    def from_error_object(cls, obj: Mapping[str, Any]) -> Self:
        """Rebuild from an error object; missing keys become None."""
        return cls(
            _opt_str(obj.get("ErrorMessage")),
            error_type=_opt_str(obj.get("ErrorType")),
            error_data=_opt_str(obj.get("ErrorData")),
            stack_trace=_stack_trace_from(obj.get("StackTrace")),
        )

    def to_error_object(self) -> dict[str, Any]:
        """Return the AWS-style error object of what this error carries.

        Fields that are None are left out, as in AWS history events. The
        type is ``error_type`` (the inner type), unlike :func:`error_object`
        applied to this exception, which records this class's own name.
        """
        obj: dict[str, Any] = {"ErrorType": self.error_type}
        if self.error_message is not None:
            obj["ErrorMessage"] = self.error_message
        if self.error_data is not None:
            obj["ErrorData"] = self.error_data
        if self.stack_trace is not None:
            obj["StackTrace"] = list(self.stack_trace)
        return obj


CallableRuntimeError = DurableOperationError
"""The older AWS SDK name of :class:`DurableOperationError`."""


class StepError(DurableOperationError):
    """A step failed (retries exhausted, or the error was not retryable)."""


class InvokeError(DurableOperationError):
    """An invoked execution failed."""


class ChildContextError(DurableOperationError):
    """A child context (``run_in_child_context``, ``map``, ``parallel``) failed."""


class WaitForConditionError(DurableOperationError):
    """A ``wait_for_condition`` failed or ran out of attempts."""


class CallbackError(DurableOperationError):
    """Base class of callback errors; catches all of them."""

    def __init__(
        self,
        message: str | None = None,
        *,
        callback_id: str | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        error_data: str | None = None,
        stack_trace: list[str] | None = None,
    ) -> None:
        super().__init__(
            message, error_type=error_type, error_data=error_data, stack_trace=stack_trace
        )
        if error_message is not None:
            # The external system's own message, when it differs from ours.
            self.error_message = error_message
        self.callback_id = callback_id


class UnknownCallbackError(CallbackError):
    """No callback with this id exists in the store."""


class CallbackAlreadyCompletedError(CallbackError):
    """The callback was already completed (succeeded, failed or timed out)."""


class CallbackTimeoutError(CallbackError):
    """The callback timed out, or its heartbeat timeout expired."""


class CallbackExternalError(CallbackError):
    """Raised in the workflow when the callback was completed with a failure.

    ``error_type``, ``error_message`` and ``error_data`` are what the
    completer sent.
    """


class CallbackSubmitterError(CallbackError):
    """The submitter step of ``wait_for_callback`` failed."""


# Classes that rebuild_error may create from a recorded ErrorType: only
# perdure's own operation errors, so no name read from the store ever picks
# a constructor perdure does not control.
_REBUILDABLE: dict[str, type[DurableOperationError]] = {
    error_type_name(cls): cls
    for cls in (
        DurableOperationError,
        StepError,
        InvokeError,
        ChildContextError,
        WaitForConditionError,
        CallbackError,
        CallbackTimeoutError,
        CallbackExternalError,
        CallbackSubmitterError,
    )
}


def error_object(exc: BaseException) -> dict[str, Any]:
    """Return the error object recorded for ``exc`` (AWS ``ErrorObject`` shape).

    ``ErrorType`` is the exception's class name (builtins bare, others
    module-qualified). A :class:`DurableOperationError` records its own
    class with the message, data and stack trace it carries, so that
    :func:`rebuild_error` can give back the same class. Any other exception
    records ``str(exc)`` and its stack trace (which AWS does not keep).
    Fields that are None are left out.
    """
    if isinstance(exc, DurableOperationError):
        obj: dict[str, Any] = {"ErrorType": error_type_name(type(exc))}
        message, data, trace = exc.error_message, exc.error_data, exc.stack_trace
    elif isinstance(exc, SerDesError):
        # Pinned to the base class, as AWS does, whatever the subclass.
        obj = {"ErrorType": error_type_name(SerDesError)}
        message, data, trace = exc.message, None, _format_stack_trace(exc)
    else:
        obj = {"ErrorType": error_type_name(type(exc))}
        message, trace = str(exc), _format_stack_trace(exc)
        # Other perdure errors (a child execution's failure) carry data
        # worth keeping across the operation boundary.
        extra = getattr(exc, "error_data", None)
        data = extra if isinstance(extra, str) else None
    if message is not None:
        obj["ErrorMessage"] = message
    if data is not None:
        obj["ErrorData"] = data
    if trace is not None:
        obj["StackTrace"] = list(trace)
    return obj


def rebuild_error(obj: Mapping[str, Any]) -> DurableOperationError:
    """Rebuild the exception a recorded error object stands for.

    A perdure operation error comes back as its own class; any other type
    comes back as a :class:`DurableOperationError` whose ``error_type``
    names it. Used as the ``__cause__`` of an operation's error, the same
    on the first run and on replay.
    """
    error_type = _opt_str(obj.get("ErrorType"))
    cls = _REBUILDABLE.get(error_type or "", DurableOperationError)
    return cls.from_error_object(obj)


# endregion
