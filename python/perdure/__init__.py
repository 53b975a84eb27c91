"""perdure: embedded durable execution for Python, with a Rust core.

Workflows are plain functions decorated with :func:`durable`; every operation
they perform through :class:`DurableContext` is checkpointed to an LMDB
journal, so after a crash, a restart or a long wait the function runs again
from the top and everything already done is replayed from the journal.
"""

from perdure._core import FORMAT_VERSION
from perdure._core import __version__ as __version__
from perdure.batch import (
    BatchItem,
    BatchItemStatus,
    BatchResult,
    CompletionConfig,
    CompletionReason,
    MapConfig,
    NestingType,
    ParallelConfig,
)
from perdure.config import (
    CallbackConfig,
    ChildConfig,
    StepConfig,
    StepSemantics,
    WaitForCallbackConfig,
)
from perdure.context import (
    Callback,
    DurableContext,
    StepContext,
    WaitForCallbackContext,
    durable_step,
)
from perdure.duration import Duration
from perdure.engine import Engine, ExecutionHandle, ExecutionInfo
from perdure.errors import (
    CallbackAlreadyCompletedError,
    CallbackError,
    CallbackExternalError,
    CallbackSubmitterError,
    CallbackTimeoutError,
    ChildContextError,
    CorruptRecordError,
    DurableOperationError,
    EngineClosedError,
    ExecutionCancelledError,
    ExecutionFailedError,
    ExecutionFinishedError,
    ExecutionNotFoundError,
    ExecutionTimedOutError,
    LeaseLostError,
    NonDeterministicExecutionError,
    PayloadTooLargeError,
    PerdureError,
    SerDesError,
    StepError,
    StepInterruptedError,
    StoreAccessError,
    StoreError,
    StoreVersionError,
    UnknownCallbackError,
    UnknownFunctionError,
    ValidationError,
)
from perdure.registry import durable
from perdure.retries import (
    JitterStrategy,
    RetryDecision,
    RetryPresets,
    RetryStrategyConfig,
    create_retry_strategy,
)
from perdure.serdes import JsonSerDes, PickleSerDes, SerDes, SerDesContext

__all__ = [
    "FORMAT_VERSION",
    "BatchItem",
    "BatchItemStatus",
    "BatchResult",
    "Callback",
    "CallbackAlreadyCompletedError",
    "CallbackConfig",
    "CallbackError",
    "CallbackExternalError",
    "CallbackSubmitterError",
    "CallbackTimeoutError",
    "ChildConfig",
    "ChildContextError",
    "CompletionConfig",
    "CompletionReason",
    "CorruptRecordError",
    "DurableContext",
    "DurableOperationError",
    "Duration",
    "Engine",
    "EngineClosedError",
    "ExecutionCancelledError",
    "ExecutionFailedError",
    "ExecutionFinishedError",
    "ExecutionHandle",
    "ExecutionInfo",
    "ExecutionNotFoundError",
    "ExecutionTimedOutError",
    "JitterStrategy",
    "JsonSerDes",
    "LeaseLostError",
    "MapConfig",
    "NestingType",
    "NonDeterministicExecutionError",
    "ParallelConfig",
    "PayloadTooLargeError",
    "PerdureError",
    "PickleSerDes",
    "RetryDecision",
    "RetryPresets",
    "RetryStrategyConfig",
    "SerDes",
    "SerDesContext",
    "SerDesError",
    "StepConfig",
    "StepContext",
    "StepError",
    "StepInterruptedError",
    "StepSemantics",
    "StoreAccessError",
    "StoreError",
    "StoreVersionError",
    "UnknownCallbackError",
    "UnknownFunctionError",
    "ValidationError",
    "WaitForCallbackConfig",
    "WaitForCallbackContext",
    "create_retry_strategy",
    "durable",
    "durable_step",
]
