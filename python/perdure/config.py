"""Configuration of steps, callbacks and child contexts.

Names, fields and defaults follow the AWS Durable Execution SDK for Python
(v3). Every config is validated when it is built, so a mistake is reported
where it was made, before anything is written. Differences from AWS: a
callback timeout of ``None`` means "no timeout" (AWS uses a zero duration for
that; perdure refuses a zero timeout as a likely mistake), and durations
keep millisecond precision.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from perdure.duration import Duration
from perdure.errors import ValidationError
from perdure.serdes import SerDes

if TYPE_CHECKING:
    from perdure.retries import RetryDecision

__all__ = [
    "CallbackConfig",
    "ChildConfig",
    "InvokeConfig",
    "StepConfig",
    "StepSemantics",
    "WaitForCallbackConfig",
]

_SUB_TYPE_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_")
_SUB_TYPE_MAX_LENGTH = 32


class StepSemantics(Enum):
    """How often one attempt of a step may run its function."""

    AT_MOST_ONCE_PER_RETRY = "AT_MOST_ONCE_PER_RETRY"
    """START is made durable before the body runs; an attempt interrupted by
    a crash is not run again but fails with StepInterruptedError, which the
    retry strategy then handles."""
    AT_LEAST_ONCE_PER_RETRY = "AT_LEAST_ONCE_PER_RETRY"
    """The body runs without waiting for START to be durable; an attempt
    interrupted by a crash runs again. The default."""


def _check_retry_strategy(owner: str, value: object) -> None:
    if value is not None and not callable(value):
        msg = (
            f"{owner}.retry_strategy must be a callable (error, attempt) -> "
            f"RetryDecision or None, got {type(value).__name__}"
        )
        raise ValidationError(msg)


def _check_serdes(owner: str, value: object, field: str = "serdes") -> None:
    if value is None or isinstance(value, SerDes):
        return
    if isinstance(value, type):
        # A class has the methods too, unbound: a common slip.
        msg = f"{owner}.{field} must be a SerDes instance, got the class {value.__name__}"
        raise ValidationError(msg)
    # Duck typing is enough: the engine only calls these two methods.
    if callable(getattr(value, "serialize", None)) and callable(
        getattr(value, "deserialize", None)
    ):
        return
    msg = (
        f"{owner}.{field} must be a SerDes (with serialize and deserialize) or "
        f"None, got {type(value).__name__}"
    )
    raise ValidationError(msg)


def _check_sub_type(owner: str, value: object) -> None:
    # None and "" select the operation's default sub-type, as in AWS.
    if value is None or value == "":
        return
    if not isinstance(value, str):
        msg = f"{owner}.sub_type must be a str or None, got {type(value).__name__}"
        raise ValidationError(msg)
    if len(value) > _SUB_TYPE_MAX_LENGTH or not set(value) <= _SUB_TYPE_CHARACTERS:
        msg = (
            f"{owner}.sub_type must be 1 to {_SUB_TYPE_MAX_LENGTH} characters "
            f"from A-Z, a-z, 0-9, '-' and '_', got {value!r}"
        )
        raise ValidationError(msg)


def _check_timeout(owner: str, name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, Duration):
        msg = f"{owner}.{name} must be a Duration or None, got {type(value).__name__}"
        raise ValidationError(msg)
    if value.to_millis() == 0:
        msg = f"{owner}.{name} must be longer than zero; use None for no {name.replace('_', ' ')}"
        raise ValidationError(msg)


@dataclass(frozen=True)
class StepConfig:
    """Configuration of a step.

    ``retry_strategy`` decides whether and when a failed attempt is retried
    (None: the engine's default, ``RetryPresets.default()``).
    ``step_semantics`` is AT_LEAST_ONCE_PER_RETRY by default. ``serdes``
    serializes the result (None: JSON with extended types). ``sub_type``
    labels the step in history and is checked on replay.
    """

    retry_strategy: Callable[[BaseException, int], RetryDecision] | None = None
    step_semantics: StepSemantics = StepSemantics.AT_LEAST_ONCE_PER_RETRY
    serdes: SerDes[Any] | None = None
    sub_type: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check_retry_strategy(owner, self.retry_strategy)
        if not isinstance(self.step_semantics, StepSemantics):
            choices = ", ".join(f"StepSemantics.{m.name}" for m in StepSemantics)
            msg = f"{owner}.step_semantics must be one of {choices}, got {self.step_semantics!r}"
            raise ValidationError(msg)
        _check_serdes(owner, self.serdes)
        _check_sub_type(owner, self.sub_type)


@dataclass(frozen=True)
class CallbackConfig:
    """Configuration of a callback.

    ``timeout`` bounds the wait for the result and ``heartbeat_timeout`` the
    time between heartbeats; None (the default) means no limit. ``serdes``
    decodes the result the callback is completed with (None: JSON with
    extended types). ``sub_type`` labels the callback in history and is
    checked on replay.
    """

    timeout: Duration | None = None
    heartbeat_timeout: Duration | None = None
    serdes: SerDes[Any] | None = None
    # Keyword-only so the positional order stays AWS's
    # (timeout, heartbeat_timeout, serdes[, retry_strategy]).
    sub_type: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check_timeout(owner, "timeout", self.timeout)
        _check_timeout(owner, "heartbeat_timeout", self.heartbeat_timeout)
        _check_serdes(owner, self.serdes)
        _check_sub_type(owner, self.sub_type)

    @property
    def timeout_seconds(self) -> float | None:
        """``timeout`` in seconds, or None."""
        return None if self.timeout is None else self.timeout.to_seconds()

    @property
    def heartbeat_timeout_seconds(self) -> float | None:
        """``heartbeat_timeout`` in seconds, or None."""
        if self.heartbeat_timeout is None:
            return None
        return self.heartbeat_timeout.to_seconds()


@dataclass(frozen=True)
class WaitForCallbackConfig(CallbackConfig):
    """Configuration of ``wait_for_callback``.

    The callback fields as in :class:`CallbackConfig`, plus the
    ``retry_strategy`` of the step that runs the submitter.
    """

    retry_strategy: Callable[[BaseException, int], RetryDecision] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_retry_strategy(type(self).__name__, self.retry_strategy)


@dataclass(frozen=True)
class ChildConfig:
    """Configuration of a child context.

    ``serdes`` serializes the child's result (None: JSON with extended
    types); ``sub_type`` labels the context in history and is checked on
    replay.
    """

    serdes: SerDes[Any] | None = None
    sub_type: str | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check_serdes(owner, self.serdes)
        _check_sub_type(owner, self.sub_type)


@dataclass(frozen=True)
class InvokeConfig:
    """Configuration of ``ctx.invoke``.

    ``serdes_payload`` serializes the payload handed to the invoked function
    and ``serdes_result`` decodes its result (None: JSON with extended
    types). The invoked function receives its payload decoded by the default
    serdes, as an AWS function receives its event, so a custom
    ``serdes_payload`` should write JSON. ``timeout`` (perdure's own) bounds
    the child execution: past it the child ends TIMED_OUT and ``invoke``
    raises InvokeError.
    """

    serdes_payload: SerDes[Any] | None = None
    serdes_result: SerDes[Any] | None = None
    timeout: Duration | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check_serdes(owner, self.serdes_payload, "serdes_payload")
        _check_serdes(owner, self.serdes_result, "serdes_result")
        _check_timeout(owner, "timeout", self.timeout)
