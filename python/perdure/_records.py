"""Numeric codes of journal records, shared with the Rust core.

They mirror ``rust/core/src/record.rs`` and ``docs/format.md``; a record is
passed to the core as a tuple ``(kind, op_type, sub_type, op_id, name,
attempt, aux, aux2, extra, payload)``.
"""

from __future__ import annotations

from typing import Final, TypeAlias

# Record kinds.
STARTED = 1
SUCCEEDED = 2
FAILED = 3
RETRY = 4
CANCELLED = 5
TIMED_OUT = 6
INVOCATION_COMPLETED = 7

# Operation types.
EXECUTION = 0
STEP = 1
WAIT = 2
CALLBACK = 3
CONTEXT = 4
CHAINED_INVOKE = 5

OP_TYPE_NAMES = {
    EXECUTION: "EXECUTION",
    STEP: "STEP",
    WAIT: "WAIT",
    CALLBACK: "CALLBACK",
    CONTEXT: "CONTEXT",
    CHAINED_INVOKE: "CHAINED_INVOKE",
}

# Sub-types, as the AWS history names them.
SUB_NONE = 0
SUB_STEP = 1
SUB_WAIT = 2
SUB_CALLBACK = 3
SUB_CHILD_CONTEXT = 4
SUB_MAP = 5
SUB_MAP_ITERATION = 6
SUB_PARALLEL = 7
SUB_PARALLEL_BRANCH = 8
SUB_WAIT_FOR_CALLBACK = 9
SUB_WAIT_FOR_CONDITION = 10
SUB_CHAINED_INVOKE = 11
# Code 12 is a label of the user's own; Python passes and gets it as the
# label itself, so an operation's sub type is an int or a str.
SubType: TypeAlias = int | str

SUB_TYPE_NAMES = {
    SUB_NONE: None,
    SUB_STEP: "Step",
    SUB_WAIT: "Wait",
    SUB_CALLBACK: "Callback",
    SUB_CHILD_CONTEXT: "RunInChildContext",
    SUB_MAP: "Map",
    SUB_MAP_ITERATION: "MapIteration",
    SUB_PARALLEL: "Parallel",
    SUB_PARALLEL_BRANCH: "ParallelBranch",
    SUB_WAIT_FOR_CALLBACK: "WaitForCallback",
    SUB_WAIT_FOR_CONDITION: "WaitForCondition",
    SUB_CHAINED_INVOKE: "ChainedInvoke",
}
SUB_TYPE_CODES = {name: code for code, name in SUB_TYPE_NAMES.items() if name}


def sub_type_of(label: str | None, default: int) -> SubType:
    """The sub type a config's ``sub_type`` asks for: the default for None or
    "", a built-in one by its AWS name, otherwise the label itself."""
    if not label:
        return default
    return SUB_TYPE_CODES.get(label, label)


def sub_type_name(sub_type: SubType) -> str | None:
    """The history ``SubType`` of a sub type; None for execution records."""
    return sub_type if isinstance(sub_type, str) else SUB_TYPE_NAMES.get(sub_type)


RecordIn: TypeAlias = tuple[
    int, int, SubType, str, str | None, int, int, int, str | None, bytes | None
]

# Indexes into the tuple `Invocation.lookup` returns.
OP_TYPE: Final = 0
OP_SUB_TYPE: Final = 1
OP_NAME: Final = 2
OP_STATUS: Final = 3
OP_ATTEMPT: Final = 4
OP_AUX: Final = 5
OP_AUX2: Final = 6
OP_TIMESTAMP: Final = 7
OP_EXTRA: Final = 8
OP_PAYLOAD: Final = 9
OP_START_AUX: Final = 10
OP_STARTED_MS: Final = 11


def record(
    kind: int,
    op_type: int,
    sub_type: SubType,
    op_id: str,
    name: str | None = None,
    *,
    attempt: int = 0,
    aux: int = 0,
    aux2: int = 0,
    extra: str | None = None,
    payload: bytes | None = None,
) -> RecordIn:
    return (kind, op_type, sub_type, op_id, name, attempt, aux, aux2, extra, payload)
