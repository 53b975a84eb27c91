"""Tests of the exception hierarchy and of stored error objects."""

from __future__ import annotations

import pytest
from perdure import errors as E
from perdure.serdes import dumps, loads


class AppError(Exception):
    pass


def _raise(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_hierarchy() -> None:
    assert issubclass(E.ValidationError, E.PerdureError)
    assert issubclass(E.ValidationError, ValueError)
    assert issubclass(E.PayloadTooLargeError, E.ValidationError)
    for cls in (E.CorruptRecordError, E.StoreVersionError, E.StoreAccessError):
        assert issubclass(cls, E.StoreError)
    for cls in (
        E.UnknownCallbackError,
        E.CallbackAlreadyCompletedError,
        E.CallbackTimeoutError,
        E.CallbackExternalError,
    ):
        assert issubclass(cls, E.CallbackError)
    for name in E.__all__:
        obj = getattr(E, name)
        if isinstance(obj, type):
            assert issubclass(obj, E.PerdureError), name


def test_keyword_attributes() -> None:
    nd = E.NonDeterministicExecutionError(
        "changed", execution_id="o-1", operation_id="1-2", recorded="step a", requested="wait"
    )
    assert (nd.execution_id, nd.operation_id, nd.recorded, nd.requested) == (
        "o-1",
        "1-2",
        "step a",
        "wait",
    )
    assert nd.step_id == "1-2"
    assert str(nd) == "changed"
    corrupt = E.CorruptRecordError("bad checksum", execution_id="o-1", sequence=7)
    assert (corrupt.execution_id, corrupt.sequence) == ("o-1", 7)
    failed = E.ExecutionFailedError(
        "failed", execution_id="o-1", error_type="ValueError", error_message="m", stack_trace=["x"]
    )
    assert failed.error_type == "ValueError" and failed.stack_trace == ["x"]
    ext = E.CallbackExternalError(
        "rejected", callback_id="cb", error_type="Denied", error_message="no", error_data="{}"
    )
    assert (ext.callback_id, ext.error_type, ext.error_message, ext.error_data) == (
        "cb",
        "Denied",
        "no",
        "{}",
    )
    assert E.SerDesError("x", operation="3").operation == "3"
    too_big = E.PayloadTooLargeError("big", size=10, limit=5)
    assert (too_big.size, too_big.limit) == (10, 5)
    assert E.UnknownFunctionError("nope", function_name="f").function_name == "f"
    assert E.ExecutionNotFoundError("nope", execution_id="x").execution_id == "x"
    interrupted = E.StepInterruptedError("crash", operation_id="4", attempt=2)
    assert (interrupted.step_id, interrupted.attempt) == ("4", 2)


def test_callable_runtime_error_from_a_builtin_exception() -> None:
    exc = _raise(ValueError("bad amount"))
    err = E.CallableRuntimeError.from_exception(exc)
    assert err.error_type == "ValueError"
    assert err.error_message == "bad amount"
    assert err.error_data is None
    assert err.stack_trace is not None
    assert err.stack_trace[-1] == "ValueError: bad amount"
    assert any("_raise" in line for line in err.stack_trace)
    assert str(err) == "ValueError: bad amount"


def test_callable_runtime_error_from_an_application_exception() -> None:
    err = E.CallableRuntimeError.from_exception(_raise(AppError("declined")))
    assert err.error_type == f"{__name__}.AppError"
    assert err.error_type == E.error_type_name(AppError)


def test_operation_errors_record_their_own_class_and_rebuild_as_it() -> None:
    step_error = E.StepError("x", error_type="KeyError", error_data="d", stack_trace=["t"])
    obj = E.error_object(_raise(step_error))
    assert obj == {
        "ErrorType": "perdure.errors.StepError",
        "ErrorMessage": "x",
        "ErrorData": "d",
        "StackTrace": ["t"],
    }
    rebuilt = E.rebuild_error(obj)
    assert type(rebuilt) is E.StepError
    assert (rebuilt.error_message, rebuilt.error_data, rebuilt.stack_trace) == ("x", "d", ["t"])
    # what the error carries (its inner type) is kept by to_error_object
    assert step_error.to_error_object()["ErrorType"] == "KeyError"


@pytest.mark.parametrize(
    "cls",
    [
        E.StepError,
        E.ChildContextError,
        E.InvokeError,
        E.WaitForConditionError,
        E.CallbackError,
        E.CallbackExternalError,
        E.CallbackTimeoutError,
        E.CallbackSubmitterError,
    ],
)
def test_every_operation_error_rebuilds_as_its_class(cls: type[E.DurableOperationError]) -> None:
    rebuilt = E.rebuild_error(E.error_object(cls("m")))
    assert type(rebuilt) is cls
    assert rebuilt.error_message == "m"
    assert str(rebuilt) == "m"


def test_other_recorded_types_rebuild_as_the_base_class() -> None:
    for error_type in ("ValueError", "os.system", "perdure.errors.StoreError", None):
        obj = {"ErrorMessage": "m"} if error_type is None else {"ErrorType": error_type}
        rebuilt = E.rebuild_error(obj)
        assert type(rebuilt) is E.DurableOperationError
    assert E.rebuild_error({"ErrorType": "ValueError", "ErrorMessage": "m"}).error_type == (
        "ValueError"
    )


def test_serdes_error_records_the_base_class() -> None:
    class CustomSerDesError(E.SerDesError):
        pass

    obj = E.error_object(CustomSerDesError("cannot encode", operation="1"))
    assert obj["ErrorType"] == "perdure.errors.SerDesError"
    assert obj["ErrorMessage"] == "cannot encode"


def test_operation_error_defaults_and_aws_aliases() -> None:
    err = E.StepError("boom")
    assert err.error_type == "perdure.errors.StepError"
    assert err.message == "boom" and err.data is None
    assert str(err) == "boom"
    assert E.CallableRuntimeError is E.DurableOperationError
    assert issubclass(E.StepError, E.CallableRuntimeError)
    cb = E.CallbackExternalError(
        "Callback failed", callback_id="c", error_type="Denied", error_message="no"
    )
    assert (cb.error_message, cb.error_type, cb.callback_id) == ("no", "Denied", "c")
    assert str(cb) == "Denied: no"


def test_execution_outcome_errors() -> None:
    for cls in (E.ExecutionCancelledError, E.ExecutionTimedOutError):
        assert issubclass(cls, E.ExecutionFailedError)
        assert cls("m", execution_id="x").execution_id == "x"
    assert E.ExecutionFinishedError("done", execution_id="x").execution_id == "x"
    assert issubclass(E.CorruptStoreError, E.StoreError)
    assert str(E.EngineClosedError("closed")) == "closed"


def test_error_data_of_other_perdure_errors_is_kept() -> None:
    ext = E.CallbackExternalError("failed", error_data='{"reason": 1}')
    err = E.CallableRuntimeError.from_exception(ext)
    assert err.error_type == "perdure.errors.CallbackExternalError"
    assert err.error_data == '{"reason": 1}'


def test_error_object_round_trip() -> None:
    err = E.CallableRuntimeError.from_exception(_raise(AppError("declined")))
    obj = err.to_error_object()
    assert set(obj) == {"ErrorType", "ErrorMessage", "StackTrace"}
    assert obj["ErrorType"] == err.error_type
    assert obj["ErrorMessage"] == "declined"
    back = E.CallableRuntimeError.from_error_object(loads(dumps(obj)))
    assert back.to_error_object() == obj
    assert str(back) == str(err)


def test_error_object_with_missing_or_odd_fields() -> None:
    empty = E.CallableRuntimeError.from_error_object({})
    assert (empty.error_message, empty.error_data, empty.stack_trace) == (None, None, None)
    assert empty.error_type == "perdure.errors.DurableOperationError"
    assert empty.to_error_object() == {"ErrorType": "perdure.errors.DurableOperationError"}
    assert str(empty) == ""
    odd = E.CallableRuntimeError.from_error_object(
        {"ErrorType": "T", "ErrorData": "d", "StackTrace": "line 1\nline 2"}
    )
    assert odd.stack_trace == ["line 1", "line 2"]
    assert str(odd) == "T"
    assert odd.to_error_object() == {
        "ErrorType": "T",
        "ErrorData": "d",
        "StackTrace": ["line 1", "line 2"],
    }


def test_exception_never_raised_has_no_stack_trace() -> None:
    err = E.CallableRuntimeError.from_exception(RuntimeError("made, not raised"))
    assert err.stack_trace is None
    assert err.error_message == "made, not raised"


def test_stack_trace_is_bounded() -> None:
    # Two functions calling each other: traceback folds repeated identical
    # frames, not alternating ones, so the trace really is long.
    def ping(n: int) -> None:
        if n == 0:
            raise RuntimeError("deep")
        pong(n - 1)

    def pong(n: int) -> None:
        ping(n)

    try:
        ping(300)
    except RuntimeError as exc:
        err = E.CallableRuntimeError.from_exception(exc)
    assert err.stack_trace is not None
    assert len(err.stack_trace) == 201
    assert err.stack_trace[0].startswith("... ") and "omitted" in err.stack_trace[0]
    assert err.stack_trace[-1] == "RuntimeError: deep"


def test_callable_runtime_error_can_be_raised_and_caught_as_perdure_error() -> None:
    with pytest.raises(E.PerdureError, match="ValueError: x"):
        raise E.CallableRuntimeError("x", error_type="ValueError")
