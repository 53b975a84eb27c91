"""Fan-out and fan-in: ``ctx.map`` and ``ctx.parallel``.

A batch is a child context (sub-type Map or Parallel) whose branches are child
contexts of their own (MapIteration / ParallelBranch), numbered by index so a
replay finds each branch whatever order the branches ran in. Branches run
concurrently on the Rust executor; the calling worker helps run them. The
batch's result, a :class:`BatchResult`, is checkpointed on the outer context.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from perdure import _records as R
from perdure.errors import (
    ChildContextError,
    DurableOperationError,
    ValidationError,
    error_object,
    rebuild_error,
)
from perdure.serdes import SerDes, SerDesContext, deserialize

if TYPE_CHECKING:
    from perdure.context import DurableContext

__all__ = [
    "BatchItem",
    "BatchItemStatus",
    "BatchResult",
    "CompletionConfig",
    "CompletionReason",
    "MapConfig",
    "NestingType",
    "ParallelConfig",
]

T = TypeVar("T")


# Counts travel to the executor as 64-bit numbers.
_MAX_COUNT = (1 << 63) - 1


def _check_count(owner: str, name: str, value: object, *, minimum: int) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= _MAX_COUNT:
        raise ValidationError(
            f"{owner}.{name} must be an int >= {minimum} (at most 2**63-1) or None, "
            f"got {value!r:.40}"
        )


@dataclass(frozen=True)
class CompletionConfig:
    """When a batch is done: after ``min_successful`` successes, or when more
    branches failed than tolerated, or else when every branch finished."""

    min_successful: int | None = None
    tolerated_failure_count: int | None = None
    tolerated_failure_percentage: float | None = None

    def __post_init__(self) -> None:
        _check_count("CompletionConfig", "min_successful", self.min_successful, minimum=1)
        _check_count(
            "CompletionConfig", "tolerated_failure_count", self.tolerated_failure_count, minimum=0
        )
        pct = self.tolerated_failure_percentage
        if pct is not None and (
            not isinstance(pct, int | float) or isinstance(pct, bool) or not 0 <= pct <= 100
        ):
            raise ValidationError(
                f"CompletionConfig.tolerated_failure_percentage must be in [0, 100], got {pct!r}"
            )

    @classmethod
    def all_successful(cls) -> CompletionConfig:
        """Every branch must succeed; the first failure ends the batch."""
        return cls(tolerated_failure_count=0, tolerated_failure_percentage=0)

    @classmethod
    def all_completed(cls) -> CompletionConfig:
        """Run every branch, whatever fails."""
        return cls(tolerated_failure_percentage=100)

    @classmethod
    def first_successful(cls) -> CompletionConfig:
        """Done at the first success."""
        return cls(min_successful=1)


class NestingType(Enum):
    """NESTED: each branch is a checkpointed child context. FLAT: branches
    write no context records of their own (fewer records, same replay)."""

    NESTED = "NESTED"
    FLAT = "FLAT"


def _check_batch_config(owner: str, config: Any) -> None:
    _check_count(owner, "max_concurrency", config.max_concurrency, minimum=1)
    if not isinstance(config.completion_config, CompletionConfig):
        raise ValidationError(f"{owner}.completion_config must be a CompletionConfig")
    if not isinstance(config.nesting_type, NestingType):
        raise ValidationError(f"{owner}.nesting_type must be a NestingType")
    for name in ("serdes", "item_serdes"):
        value = getattr(config, name)
        if value is not None and not isinstance(value, SerDes):
            raise ValidationError(f"{owner}.{name} must be a SerDes or None")


@dataclass(frozen=True)
class ParallelConfig:
    max_concurrency: int | None = None
    completion_config: CompletionConfig = field(default_factory=CompletionConfig.all_successful)
    serdes: SerDes[Any] | None = None
    item_serdes: SerDes[Any] | None = None
    nesting_type: NestingType = NestingType.NESTED

    def __post_init__(self) -> None:
        _check_batch_config("ParallelConfig", self)


@dataclass(frozen=True)
class MapConfig:
    max_concurrency: int | None = None
    completion_config: CompletionConfig = field(default_factory=CompletionConfig)
    serdes: SerDes[Any] | None = None
    item_serdes: SerDes[Any] | None = None
    nesting_type: NestingType = NestingType.NESTED
    item_namer: Callable[[Any, int], str] | None = None

    def __post_init__(self) -> None:
        _check_batch_config("MapConfig", self)
        if self.item_namer is not None and not callable(self.item_namer):
            raise ValidationError("MapConfig.item_namer must be callable or None")


class BatchItemStatus(Enum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STARTED = "STARTED"


class CompletionReason(Enum):
    ALL_COMPLETED = "ALL_COMPLETED"
    MIN_SUCCESSFUL_REACHED = "MIN_SUCCESSFUL_REACHED"
    FAILURE_TOLERANCE_EXCEEDED = "FAILURE_TOLERANCE_EXCEEDED"


@dataclass(frozen=True)
class BatchItem(Generic[T]):
    index: int
    status: BatchItemStatus
    result: T | None = None
    error: DurableOperationError | None = None


@dataclass(frozen=True)
class BatchResult(Generic[T]):
    """What a map or parallel gave, branch by branch, in index order."""

    all: list[BatchItem[T]]
    completion_reason: CompletionReason

    def succeeded(self) -> list[BatchItem[T]]:
        return [i for i in self.all if i.status is BatchItemStatus.SUCCEEDED]

    def failed(self) -> list[BatchItem[T]]:
        return [i for i in self.all if i.status is BatchItemStatus.FAILED]

    def started(self) -> list[BatchItem[T]]:
        return [i for i in self.all if i.status is BatchItemStatus.STARTED]

    def get_results(self) -> list[T]:
        return [i.result for i in self.succeeded()]  # type: ignore[misc]

    def get_errors(self) -> list[DurableOperationError]:
        return [i.error for i in self.failed() if i.error is not None]

    def throw_if_error(self) -> None:
        errors = self.get_errors()
        if errors:
            raise errors[0]

    @property
    def status(self) -> BatchItemStatus:
        return BatchItemStatus.FAILED if self.failed() else BatchItemStatus.SUCCEEDED

    @property
    def success_count(self) -> int:
        return len(self.succeeded())

    @property
    def failure_count(self) -> int:
        return len(self.failed())

    @property
    def started_count(self) -> int:
        return len(self.started())

    @property
    def total_count(self) -> int:
        return len(self.all)

    def to_record(self) -> dict[str, Any]:
        return {
            "completionReason": self.completion_reason.value,
            "all": [
                {
                    "index": item.index,
                    "status": item.status.value,
                    "result": item.result,
                    "error": None if item.error is None else error_object(item.error),
                }
                for item in self.all
            ],
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> BatchResult[Any]:
        return cls(
            all=[
                BatchItem(
                    index=item["index"],
                    status=BatchItemStatus(item["status"]),
                    result=item["result"],
                    error=None if item["error"] is None else rebuild_error(item["error"]),
                )
                for item in record["all"]
            ],
            completion_reason=CompletionReason(record["completionReason"]),
        )


class _Tally:
    """Branch outcomes as they come in, and whether to start more."""

    def __init__(self, total: int, policy: CompletionConfig) -> None:
        self.total = total
        self.policy = policy
        self.succeeded = 0
        self.failed = 0
        self.reason: CompletionReason | None = None
        self._lock = threading.Lock()

    @property
    def stopped(self) -> bool:
        return self.reason is not None

    def record(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self.succeeded += 1
            else:
                self.failed += 1
            if self.reason is None:
                self.reason = self._early_reason()

    def _early_reason(self) -> CompletionReason | None:
        policy = self.policy
        if policy.min_successful is not None and self.succeeded >= policy.min_successful:
            return CompletionReason.MIN_SUCCESSFUL_REACHED
        count = policy.tolerated_failure_count
        pct = policy.tolerated_failure_percentage
        if (count is not None and self.failed > count) or (
            pct is not None and self.total and self.failed * 100 / self.total > pct
        ):
            return CompletionReason.FAILURE_TOLERANCE_EXCEEDED
        return None


_NOT_STARTED = object()


class _Batch:
    """One map or parallel, the parts shared by the sync and the asyncio
    contexts: numbering and replaying it, its branches' ids, and judging
    their outcomes."""

    def __init__(
        self,
        ctx: DurableContext,
        count: int,
        name: str | None,
        config: MapConfig | ParallelConfig,
        sub_type: int,
        context_class: type[DurableContext],
    ) -> None:
        from perdure.config import ChildConfig

        policy = config.completion_config
        if policy.min_successful is not None and policy.min_successful > count:
            raise ValidationError(
                f"CompletionConfig.min_successful is {policy.min_successful}, "
                f"more than the {count} branches"
            )
        self.ctx = ctx
        self.name = name
        self.config = config
        self.sub_type = sub_type
        state = ctx._state
        self.op_id = op_id = ctx._next_id()
        self.serdes_context = SerDesContext(op_id, state.execution_id)
        op = ctx._recorded(op_id, R.CONTEXT, sub_type, name)
        #: The result, when the journal has the batch finished.
        self.replayed: BatchResult[Any] | None = None
        if op is not None and op[R.OP_STATUS] == R.SUCCEEDED:
            record = deserialize(config.serdes, op[R.OP_PAYLOAD], self.serdes_context)
            self.replayed = BatchResult.from_record(record)
        elif op is None:
            state.defer(R.record(R.STARTED, R.CONTEXT, sub_type, op_id, name))
        self.outer = context_class(state, op_id, replaying=ctx._replaying and op is not None)
        self.flat = config.nesting_type is NestingType.FLAT
        self.child_config = ChildConfig(serdes=config.item_serdes)
        self.tally = _Tally(count, policy)

    def branch_id(self, index: int) -> str:
        return f"{self.op_id}-{index + 1}"

    def close(self, outcomes: list[tuple[bool, Any]]) -> tuple[R.RecordIn, BatchResult[Any]]:
        """Judges the branches' outcomes (in index order): suspends while the
        policy is not met and some branch waits; else the batch's SUCCEEDED
        record to commit, and its result."""
        from perdure.context import _Abort, _Suspend

        items: list[BatchItem[Any]] = []
        suspended = False
        for index, (ok, value) in enumerate(outcomes):
            if isinstance(value, _Abort):
                raise value
            if isinstance(value, _Suspend) or value is _NOT_STARTED:
                suspended = suspended or isinstance(value, _Suspend)
                items.append(BatchItem(index, BatchItemStatus.STARTED))
            elif isinstance(value, ChildContextError):
                error = rebuild_error(error_object(value.__cause__ or value))
                items.append(BatchItem(index, BatchItemStatus.FAILED, error=error))
            elif isinstance(value, BaseException):
                raise value  # a bug in perdure or an error that is not a branch failure
            else:
                assert ok and isinstance(value, BatchItem)
                items.append(value)
        tally = self.tally
        if tally.reason is None:
            if suspended:
                # Some branches wait (a timer, a callback, a retry): the batch
                # finishes in a later invocation; finished branches will replay.
                self.outer._replaying = False
                raise _Suspend()
            tally.reason = CompletionReason.ALL_COMPLETED
        result: BatchResult[Any] = BatchResult(items, tally.reason)
        serdes, op_id, name = self.config.serdes, self.op_id, self.name
        payload, _ = self.ctx._checkpoint(serdes, result.to_record(), op_id, "batch", name)
        record = R.record(R.SUCCEEDED, R.CONTEXT, self.sub_type, op_id, name, payload=payload)
        return record, BatchResult.from_record(deserialize(serdes, payload, self.serdes_context))


def run_batch(
    ctx: DurableContext,
    branches: list[tuple[str, Callable[[DurableContext], Any]]],
    name: str | None,
    config: MapConfig | ParallelConfig,
    sub_type: int,
    branch_sub_type: int,
) -> BatchResult[Any]:
    """Runs a map's or parallel's branches; see the module docstring."""
    from perdure.context import DurableContext

    batch = _Batch(ctx, len(branches), name, config, sub_type, DurableContext)
    if batch.replayed is not None:
        return batch.replayed
    outer, tally = batch.outer, batch.tally

    def runner(index: int, branch_name: str, body: Callable[[DurableContext], Any]) -> Any:
        def run() -> Any:
            if tally.stopped:
                return _NOT_STARTED
            try:
                value = outer._child(
                    body,
                    branch_name,
                    batch.child_config,
                    branch_sub_type,
                    batch.branch_id(index),
                    batch.flat,
                )
            except ChildContextError as exc:
                tally.record(False)
                return exc
            tally.record(True)
            return BatchItem(index, BatchItemStatus.SUCCEEDED, value)

        return run

    runners = [runner(i, n, body) for i, (n, body) in enumerate(branches)]
    state = ctx._state
    outcomes = state.core.run_batch(runners, config.max_concurrency or max(1, len(runners)))
    record, result = batch.close(outcomes)
    state.commit([record])
    return result
