"""An execution's journal as AWS Durable Execution history events.

The journal keeps one record per event except where an event is implied:
an AT_LEAST_ONCE step writes only its outcome (which carries the attempt's
duration), and its ``StepStarted`` is derived from that record here.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from perdure import _records as R
from perdure.errors import CorruptRecordError
from perdure.serdes import error_object_from_payload, payload_to_json_text

__all__ = ["build_history"]

_KIND_SUFFIX = {
    R.STARTED: "Started",
    R.SUCCEEDED: "Succeeded",
    R.FAILED: "Failed",
    R.CANCELLED: "Cancelled",
    R.TIMED_OUT: "TimedOut",
}
_OP_PREFIX = {
    R.STEP: "Step",
    R.WAIT: "Wait",
    R.CALLBACK: "Callback",
    R.CONTEXT: "Context",
    R.CHAINED_INVOKE: "ChainedInvoke",
}
_CALLBACK_TIMEOUTS = (
    {"ErrorType": "Callback.Timeout", "ErrorMessage": "Callback timed out"},
    {"ErrorType": "Callback.Heartbeat", "ErrorMessage": "Callback timed out on heartbeat"},
)


def _iso(ms: int) -> str:
    """The ISO 8601 form of ``ms``; ValueError past the calendar (years 1 to 9999)."""
    try:
        moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError) as exc:
        raise ValueError(str(exc)) from None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _text(payload: bytes | None) -> str | None:
    if payload is None:
        return None
    try:
        return payload_to_json_text(payload)
    except (UnicodeDecodeError, ValueError):
        return base64.b64encode(payload).decode("ascii")


def _seconds(ms: int) -> int | float:
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


def _error(payload: bytes | None) -> dict[str, Any]:
    return {"Payload": error_object_from_payload(payload)}


def _parent(op_id: str) -> str | None:
    cut = op_id.rfind("-")
    return op_id[:cut] if cut > 0 else None


def build_history(
    execution_id: str,
    records: list[tuple[Any, ...]],
    function_of: Callable[[str], str | None] | None = None,
) -> list[dict[str, Any]]:
    """Events for ``records`` (tuples as ``Core.journal`` returns them);
    ``function_of`` names the function of an invoked child execution."""
    events: list[dict[str, Any]] = []
    names: dict[str, str | None] = {}  # op id -> the name its first record gave
    sub_types: dict[str, R.SubType] = {}  # op id -> its first record's sub type
    started_attempts: dict[str, int] = {}
    function = None
    invocation = 0
    sequence = 0

    def iso(ms: int) -> str:
        # A record's numbers are whatever its bytes say: a time past the
        # calendar is a damaged record, named as the core names one.
        try:
            return _iso(ms)
        except ValueError:
            raise CorruptRecordError(
                f"corrupt journal record: execution {execution_id!r}, sequence {sequence}: "
                f"time {ms} ms is out of range",
                execution_id=execution_id,
                sequence=sequence,
            ) from None

    def emit(
        event_type: str,
        timestamp: int,
        details: dict[str, Any],
        op_id: str | None = None,
        sub_type: R.SubType = R.SUB_NONE,
        name: str | None = None,
    ) -> None:
        event: dict[str, Any] = {"EventId": len(events) + 1, "EventType": event_type}
        sub_name = R.sub_type_name(sub_type)
        if sub_name:
            event["SubType"] = sub_name
        if op_id is not None:
            event["Id"] = op_id
            parent = _parent(op_id) if op_id != execution_id else None
            if parent is not None:
                event["ParentId"] = parent
        if name:
            event["Name"] = name
        event["EventTimestamp"] = iso(timestamp)
        event[f"{event_type}Details"] = details
        event["_ms"] = timestamp
        events.append(event)

    for sequence, record in enumerate(records):  # noqa: B007 (read by iso)
        kind, op_type, sub_type, op_id, name, attempt, aux, aux2, extra, payload, ts = record
        if op_type == R.EXECUTION:
            if kind == R.STARTED:
                function = name
                details: dict[str, Any] = {"Input": {"Payload": _text(payload)}}
                emit("ExecutionStarted", ts, details, execution_id, name=function)
            elif kind == R.INVOCATION_COMPLETED:
                invocation += 1
                emit(
                    "InvocationCompleted",
                    ts,
                    {
                        "StartTimestamp": iso(ts - aux),
                        "EndTimestamp": iso(ts),
                        "RequestId": f"{execution_id}/{invocation}",
                    },
                )
            elif kind == R.SUCCEEDED:
                emit(
                    "ExecutionSucceeded",
                    ts,
                    {"Result": {"Payload": _text(payload)}},
                    execution_id,
                    name=function,
                )
            elif kind == R.FAILED:
                emit("ExecutionFailed", ts, {"Error": _error(payload)}, execution_id, name=function)
            elif kind == R.CANCELLED:
                emit(
                    "ExecutionStopped", ts, {"Error": _error(payload)}, execution_id, name=function
                )
            elif kind == R.TIMED_OUT:
                emit(
                    "ExecutionTimedOut", ts, {"Error": _error(payload)}, execution_id, name=function
                )
            continue

        if name is None:
            name = names.get(op_id)  # records written by the core (a timeout) carry no name
        names.setdefault(op_id, name)
        # As the name, the sub type is the first record's (the core writes
        # callback answers and timeouts without the operation's label).
        sub_type = sub_types.setdefault(op_id, sub_type)
        prefix = _OP_PREFIX.get(op_type, "Operation")

        if op_type == R.STEP:
            if kind == R.STARTED:
                started_attempts[op_id] = attempt
                emit("StepStarted", ts, {}, op_id, sub_type, name)
                continue
            if started_attempts.get(op_id) != attempt:
                # AT_LEAST_ONCE attempts record only their outcome.
                # Its start time is its outcome's time less its duration, but
                # never before the event it follows.
                previous = events[-1]["_ms"] if events else ts
                emit("StepStarted", max(ts - aux, previous), {}, op_id, sub_type, name)
            started_attempts[op_id] = attempt
            retry = {"CurrentAttempt": attempt}
            continued_poll = kind == R.RETRY and sub_type == R.SUB_WAIT_FOR_CONDITION
            if kind == R.SUCCEEDED or continued_poll:
                # A wait_for_condition poll that continues is, as the AWS SDK
                # records it, a success carrying the state and the delay.
                if continued_poll:
                    retry["NextAttemptDelaySeconds"] = _seconds(aux2)
                emit(
                    "StepSucceeded",
                    ts,
                    {"Result": {"Payload": _text(payload)}, "RetryDetails": retry},
                    op_id,
                    sub_type,
                    name,
                )
            else:
                retry["NextAttemptDelaySeconds"] = _seconds(aux2) if kind == R.RETRY else 0
                emit(
                    "StepFailed",
                    ts,
                    {"Error": _error(payload), "RetryDetails": retry},
                    op_id,
                    sub_type,
                    name,
                )
            continue

        event_type = prefix + _KIND_SUFFIX.get(kind, "Unknown")
        if op_type == R.CHAINED_INVOKE and kind == R.CANCELLED:
            event_type = "ChainedInvokeStopped"
        if op_type == R.WAIT:
            if kind == R.STARTED:
                details = {"Duration": _seconds(aux), "ScheduledEndTimestamp": iso(ts + aux)}
            elif kind == R.CANCELLED:
                details = {"Error": _error(payload)}
            else:
                details = {"Duration": _seconds(aux)}
        elif op_type == R.CALLBACK and kind == R.STARTED:
            details = {"CallbackId": extra}
            if aux:
                details["Timeout"] = _seconds(aux)
            if aux2:
                details["HeartbeatTimeout"] = _seconds(aux2)
        elif op_type == R.CHAINED_INVOKE and kind == R.STARTED:
            details = {
                "FunctionName": function_of(extra) if function_of and extra else None,
                "Input": {"Payload": _text(payload)},
                "DurableExecutionArn": extra,
            }
        elif op_type == R.CALLBACK and kind == R.TIMED_OUT:
            details = {"Error": {"Payload": dict(_CALLBACK_TIMEOUTS[1 if aux == 1 else 0])}}
        elif kind == R.SUCCEEDED:
            details = {"Result": {"Payload": _text(payload)}}
        elif kind in (R.FAILED, R.CANCELLED, R.TIMED_OUT):
            details = {"Error": _error(payload)}
        else:
            details = {}
        emit(event_type, ts, details, op_id, sub_type, name)
    for event in events:
        del event["_ms"]
    return events
