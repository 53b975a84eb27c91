"""Retry strategies for steps: exponential, linear and fixed backoff.

A retry strategy is any callable ``(error, attempt) -> RetryDecision`` where
``attempt`` is the 1-based number of the attempt that just failed. The
helpers here build the usual ones; their names, fields and defaults follow
the AWS Durable Execution SDK for Python (v3).

Differences from the AWS SDK, on purpose:

- Delays keep millisecond precision. AWS rounds every delay up to whole
  seconds with a floor of one second; perdure rounds up to whole
  milliseconds, and only a zero base delay gives a zero delay.
- Configs are validated when built, so a bad field fails at the call site.
- Error filters also match the *stored* form of a failure: a
  :class:`~perdure.errors.DurableOperationError` (``StepError``,
  ``ChildContextError``, ...; ``CallableRuntimeError`` is its old name)
  matches an entry of ``retryable_error_types`` when its ``error_type``
  names that class (or a subclass of it that is loaded in this process),
  and message patterns are matched against its original ``error_message``. AWS only ever sees the
  live exception, so it needs no such rule; perdure adds it so a strategy
  gives the same answer for a failure whether it sees the live exception or
  the rebuilt one.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from numbers import Real
from typing import TypeAlias, cast

from perdure.duration import Duration
from perdure.errors import DurableOperationError, ValidationError, error_type_name

__all__ = [
    "JitterStrategy",
    "LinearRetryStrategyConfig",
    "RetryDecision",
    "RetryPresets",
    "RetryStrategy",
    "RetryStrategyConfig",
    "create_linear_retry_strategy",
    "create_retry_strategy",
]


class JitterStrategy(StrEnum):
    """How much randomness to add to a retry delay.

    Jitter spreads retries out so that many failing executions do not all
    come back at the same instant.
    """

    NONE = "NONE"
    """Use the computed delay as it is."""
    FULL = "FULL"
    """A random delay between 0 and the computed delay."""
    HALF = "HALF"
    """A random delay between half the computed delay and all of it."""

    def apply_jitter(self, delay: float) -> float:
        """Return ``delay`` with this strategy's randomness applied."""
        # random is fine here: jitter needs spread, not unpredictability.
        if self is JitterStrategy.NONE:
            return delay
        if self is JitterStrategy.HALF:
            return delay / 2 + random.random() * (delay / 2)
        return random.random() * delay

    def finalize_delay(self, base_delay_ms: float) -> int:
        """Apply jitter and round up to whole milliseconds, never below zero.

        A positive base delay gives at least one millisecond, so a retry is
        always scheduled strictly after the failure.
        """
        if base_delay_ms <= 0:
            return 0
        return max(1, math.ceil(self.apply_jitter(base_delay_ms)))


@dataclass(frozen=True)
class RetryDecision:
    """Whether to retry a failed attempt, and after how long."""

    should_retry: bool
    delay: Duration = field(default_factory=Duration)

    def __post_init__(self) -> None:
        if not isinstance(self.should_retry, bool):
            msg = (
                f"RetryDecision.should_retry must be a bool, got {type(self.should_retry).__name__}"
            )
            raise ValidationError(msg)
        if not isinstance(self.delay, Duration):
            msg = f"RetryDecision.delay must be a Duration, got {type(self.delay).__name__}"
            raise ValidationError(msg)

    @property
    def delay_seconds(self) -> float:
        """The delay in seconds."""
        return self.delay.to_seconds()

    @classmethod
    def retry(cls, delay: Duration) -> RetryDecision:
        """Retry after ``delay``."""
        return cls(should_retry=True, delay=delay)

    @classmethod
    def no_retry(cls) -> RetryDecision:
        """Do not retry; the failure is final."""
        return cls(should_retry=False, delay=Duration())


RetryStrategy: TypeAlias = Callable[[BaseException, int], RetryDecision]
"""The type of a retry strategy: ``(error, attempt) -> RetryDecision``."""


def _check_max_attempts(owner: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"{owner}.max_attempts must be an int, got {type(value).__name__}"
        raise ValidationError(msg)
    if value < 1:
        msg = f"{owner}.max_attempts must be at least 1, got {value}"
        raise ValidationError(msg)


def _check_duration(owner: str, name: str, value: object) -> None:
    if not isinstance(value, Duration):
        msg = f"{owner}.{name} must be a Duration, got {type(value).__name__}"
        raise ValidationError(msg)


def _check_backoff_rate(owner: str, rate: object) -> None:
    if isinstance(rate, bool) or not isinstance(rate, Real):
        msg = f"{owner}.backoff_rate must be a number, got {type(rate).__name__}"
        raise ValidationError(msg)
    # An int too large for a float is refused before math.isfinite meets it.
    if cast(float, rate) > 1e6 or not math.isfinite(rate) or rate < 1:
        msg = f"{owner}.backoff_rate must be a finite number >= 1 (at most 1e6), got {rate!r:.40}"
        raise ValidationError(msg)


def exponential_delay_ms(initial_ms: int, rate: float, attempt: int, cap_ms: int) -> float:
    """``initial_ms * rate ** (attempt - 1)``, capped at ``cap_ms``: the delay
    before jitter after ``attempt`` (retries and polls grow the same way)."""
    if initial_ms == 0:
        return 0.0
    try:
        grown = initial_ms * rate ** (attempt - 1)
    except OverflowError:
        return float(cap_ms)  # many attempts at a high rate: far beyond any cap
    return float(min(grown, cap_ms))


def _check_jitter(owner: str, value: object) -> JitterStrategy:
    if isinstance(value, JitterStrategy):
        return value
    if isinstance(value, str):
        try:
            return JitterStrategy(value)
        except ValueError:
            pass
    choices = ", ".join(member.value for member in JitterStrategy)
    msg = f"{owner}.jitter_strategy must be one of {choices}, got {value!r}"
    raise ValidationError(msg)


def _check_error_filters(
    owner: str,
    retryable_errors: object,
    retryable_error_types: object,
) -> None:
    if retryable_errors is not None:
        if isinstance(retryable_errors, str | bytes) or not isinstance(retryable_errors, Sequence):
            msg = (
                f"{owner}.retryable_errors must be a list of str or re.Pattern, "
                f"got {type(retryable_errors).__name__}"
            )
            raise ValidationError(msg)
        for pattern in retryable_errors:
            # A bytes pattern would fail at match time against a str message.
            is_str_pattern = isinstance(pattern, re.Pattern) and isinstance(pattern.pattern, str)
            if not (isinstance(pattern, str) or is_str_pattern):
                msg = (
                    f"{owner}.retryable_errors entries must be str or a str "
                    f"re.Pattern, got {type(pattern).__name__}: {pattern!r}"
                )
                raise ValidationError(msg)
    if retryable_error_types is not None:
        if not isinstance(retryable_error_types, Sequence) or isinstance(
            retryable_error_types, str
        ):
            msg = (
                f"{owner}.retryable_error_types must be a list of exception "
                f"classes, got {type(retryable_error_types).__name__}"
            )
            raise ValidationError(msg)
        for error_type in retryable_error_types:
            if not (isinstance(error_type, type) and issubclass(error_type, BaseException)):
                msg = (
                    f"{owner}.retryable_error_types entries must be exception "
                    f"classes, got {error_type!r}"
                )
                raise ValidationError(msg)


@dataclass(frozen=True)
class RetryStrategyConfig:
    """Exponential backoff: ``initial_delay * backoff_rate ** (attempt - 1)``.

    The delay is capped at ``max_delay`` before jitter is applied.
    ``max_attempts`` counts every attempt, the first one included, so 3
    means at most two retries. With neither ``retryable_errors`` nor
    ``retryable_error_types`` set every error is retried; with either set,
    only errors that match one of them are. A ``str`` in
    ``retryable_errors`` matches when it occurs in the error message, an
    ``re.Pattern`` when ``pattern.search`` finds it there.
    """

    max_attempts: int = 3
    initial_delay: Duration = field(default_factory=lambda: Duration.from_seconds(5))
    max_delay: Duration = field(default_factory=lambda: Duration.from_minutes(5))
    backoff_rate: float = 2.0
    jitter_strategy: JitterStrategy = JitterStrategy.FULL
    retryable_errors: list[str | re.Pattern[str]] | None = None
    retryable_error_types: list[type[BaseException]] | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check_max_attempts(owner, self.max_attempts)
        _check_duration(owner, "initial_delay", self.initial_delay)
        _check_duration(owner, "max_delay", self.max_delay)
        _check_backoff_rate(owner, self.backoff_rate)
        object.__setattr__(self, "jitter_strategy", _check_jitter(owner, self.jitter_strategy))
        _check_error_filters(owner, self.retryable_errors, self.retryable_error_types)

    @property
    def initial_delay_seconds(self) -> float:
        """``initial_delay`` in seconds."""
        return self.initial_delay.to_seconds()

    @property
    def max_delay_seconds(self) -> float:
        """``max_delay`` in seconds."""
        return self.max_delay.to_seconds()


@dataclass(frozen=True)
class LinearRetryStrategyConfig:
    """Linear backoff: ``initial_delay + increment * (attempt - 1)``.

    Capped at ``max_delay`` before jitter; error filters and
    ``max_attempts`` work as in :class:`RetryStrategyConfig`.
    """

    max_attempts: int = 6
    initial_delay: Duration = field(default_factory=lambda: Duration.from_seconds(1))
    increment: Duration = field(default_factory=lambda: Duration.from_seconds(1))
    max_delay: Duration = field(default_factory=lambda: Duration.from_minutes(5))
    jitter_strategy: JitterStrategy = JitterStrategy.FULL
    retryable_errors: list[str | re.Pattern[str]] | None = None
    retryable_error_types: list[type[BaseException]] | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check_max_attempts(owner, self.max_attempts)
        _check_duration(owner, "initial_delay", self.initial_delay)
        _check_duration(owner, "increment", self.increment)
        _check_duration(owner, "max_delay", self.max_delay)
        object.__setattr__(self, "jitter_strategy", _check_jitter(owner, self.jitter_strategy))
        _check_error_filters(owner, self.retryable_errors, self.retryable_error_types)

    @property
    def initial_delay_seconds(self) -> float:
        """``initial_delay`` in seconds."""
        return self.initial_delay.to_seconds()

    @property
    def increment_seconds(self) -> float:
        """``increment`` in seconds."""
        return self.increment.to_seconds()

    @property
    def max_delay_seconds(self) -> float:
        """``max_delay`` in seconds."""
        return self.max_delay.to_seconds()


def _qualified_names(error_type: type[BaseException]) -> set[str]:
    # The names a stored failure of this class, or of any subclass loaded in
    # this process, could carry. Walking loaded classes never imports one.
    names: set[str] = set()
    stack: list[type[BaseException]] = [error_type]
    seen: set[type[BaseException]] = set()
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        names.add(error_type_name(cls))
        names.add(f"{cls.__module__}.{cls.__qualname__}")
        stack.extend(cls.__subclasses__())
    return names


class _ErrorFilter:
    """Decides whether an error is retryable under a config's filters."""

    __slots__ = ("_match_all", "_patterns", "_types")

    def __init__(
        self,
        retryable_errors: list[str | re.Pattern[str]] | None,
        retryable_error_types: list[type[BaseException]] | None,
    ) -> None:
        # As in AWS: no filter at all means "retry everything"; any filter
        # means "retry only what matches".
        self._match_all = retryable_errors is None and retryable_error_types is None
        self._patterns = tuple(retryable_errors or ())
        self._types = tuple(retryable_error_types or ())

    def __call__(self, error: BaseException) -> bool:
        if self._match_all:
            return True
        if self._types and isinstance(error, self._types):
            return True
        if isinstance(error, DurableOperationError):
            message = error.error_message or ""
            if error.error_type and self._types_match_name(error.error_type):
                return True
        else:
            message = str(error)
        for pattern in self._patterns:
            if isinstance(pattern, str):
                if pattern in message:
                    return True
            elif pattern.search(message):
                return True
        return False

    def _types_match_name(self, name: str) -> bool:
        # Exact names first; the subclass walk is only needed for a failure
        # of a subclass, and runs only on this (failure) path.
        if any(name == error_type_name(t) for t in self._types):
            return True
        return any(name in _qualified_names(t) for t in self._types)


def _check_attempt(attempt: object, strategy: str = "retry") -> int:
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        msg = f"{strategy} strategy attempt must be an int >= 1, got {attempt!r}"
        raise ValidationError(msg)
    return attempt


class _ExponentialRetryStrategy:
    """The callable built by :func:`create_retry_strategy`."""

    __slots__ = ("_filter", "config")

    def __init__(self, config: RetryStrategyConfig) -> None:
        self.config = config
        self._filter = _ErrorFilter(config.retryable_errors, config.retryable_error_types)

    def base_delay_ms(self, attempt: int) -> float:
        """Return the delay before jitter after ``attempt`` failed."""
        config = self.config
        return exponential_delay_ms(
            config.initial_delay.to_millis(),
            config.backoff_rate,
            attempt,
            config.max_delay.to_millis(),
        )

    def __call__(self, error: BaseException, attempt: int) -> RetryDecision:
        attempt = _check_attempt(attempt)
        config = self.config
        if attempt >= config.max_attempts or not self._filter(error):
            return RetryDecision.no_retry()
        millis = config.jitter_strategy.finalize_delay(self.base_delay_ms(attempt))
        return RetryDecision.retry(Duration.from_milliseconds(millis))

    def __repr__(self) -> str:
        return f"create_retry_strategy({self.config!r})"


class _LinearRetryStrategy:
    """The callable built by :func:`create_linear_retry_strategy`."""

    __slots__ = ("_filter", "config")

    def __init__(self, config: LinearRetryStrategyConfig) -> None:
        self.config = config
        self._filter = _ErrorFilter(config.retryable_errors, config.retryable_error_types)

    def base_delay_ms(self, attempt: int) -> float:
        """Return the delay before jitter after ``attempt`` failed."""
        config = self.config
        grown = config.initial_delay.to_millis() + config.increment.to_millis() * (attempt - 1)
        return float(min(grown, config.max_delay.to_millis()))

    def __call__(self, error: BaseException, attempt: int) -> RetryDecision:
        attempt = _check_attempt(attempt)
        config = self.config
        if attempt >= config.max_attempts or not self._filter(error):
            return RetryDecision.no_retry()
        millis = config.jitter_strategy.finalize_delay(self.base_delay_ms(attempt))
        return RetryDecision.retry(Duration.from_milliseconds(millis))

    def __repr__(self) -> str:
        return f"create_linear_retry_strategy({self.config!r})"


def create_retry_strategy(
    config: RetryStrategyConfig | None = None,
) -> Callable[[BaseException, int], RetryDecision]:
    """Build an exponential-backoff strategy (defaults: ``RetryStrategyConfig()``).

    The returned callable has a ``config`` attribute for inspection.
    """
    if config is None:
        config = RetryStrategyConfig()
    if not isinstance(config, RetryStrategyConfig):
        msg = f"create_retry_strategy needs a RetryStrategyConfig, got {type(config).__name__}"
        raise ValidationError(msg)
    return _ExponentialRetryStrategy(config)


def create_linear_retry_strategy(
    config: LinearRetryStrategyConfig | None = None,
) -> Callable[[BaseException, int], RetryDecision]:
    """Build a linear-backoff strategy (defaults: ``LinearRetryStrategyConfig()``).

    The returned callable has a ``config`` attribute for inspection.
    """
    if config is None:
        config = LinearRetryStrategyConfig()
    if not isinstance(config, LinearRetryStrategyConfig):
        msg = (
            "create_linear_retry_strategy needs a LinearRetryStrategyConfig, "
            f"got {type(config).__name__}"
        )
        raise ValidationError(msg)
    return _LinearRetryStrategy(config)


class RetryPresets:
    """Ready-made strategies, with the AWS SDK's names and values."""

    @classmethod
    def none(cls) -> Callable[[BaseException, int], RetryDecision]:
        """Never retry: the first failure is final."""
        return create_retry_strategy(RetryStrategyConfig(max_attempts=1))

    @classmethod
    def default(cls) -> Callable[[BaseException, int], RetryDecision]:
        """Retry as AWS does by default: 6 attempts, 5 s doubling to 1 min.

        Full jitter. The engine uses it for a step with no retry strategy.
        """
        return create_retry_strategy(
            RetryStrategyConfig(
                max_attempts=6,
                initial_delay=Duration.from_seconds(5),
                max_delay=Duration.from_minutes(1),
                backoff_rate=2,
                jitter_strategy=JitterStrategy.FULL,
            )
        )

    @classmethod
    def transient(cls) -> Callable[[BaseException, int], RetryDecision]:
        """Retry transient errors quickly: 3 attempts, half jitter."""
        return create_retry_strategy(
            RetryStrategyConfig(max_attempts=3, backoff_rate=2, jitter_strategy=JitterStrategy.HALF)
        )

    @classmethod
    def resource_availability(cls) -> Callable[[BaseException, int], RetryDecision]:
        """Retry while a resource comes back: 5 attempts, up to 5 min."""
        return create_retry_strategy(
            RetryStrategyConfig(
                max_attempts=5,
                initial_delay=Duration.from_seconds(5),
                max_delay=Duration.from_minutes(5),
                backoff_rate=2,
            )
        )

    @classmethod
    def critical(cls) -> Callable[[BaseException, int], RetryDecision]:
        """Retry persistently: 10 attempts, 1 s growing 1.5x to 1 min, no jitter."""
        return create_retry_strategy(
            RetryStrategyConfig(
                max_attempts=10,
                initial_delay=Duration.from_seconds(1),
                max_delay=Duration.from_minutes(1),
                backoff_rate=1.5,
                jitter_strategy=JitterStrategy.NONE,
            )
        )

    @classmethod
    def linear(cls) -> Callable[[BaseException, int], RetryDecision]:
        """Retry after 1, 2, 3, 4 and 5 s (6 attempts, no jitter)."""
        return create_linear_retry_strategy(
            LinearRetryStrategyConfig(
                max_attempts=6,
                initial_delay=Duration.from_seconds(1),
                increment=Duration.from_seconds(1),
                jitter_strategy=JitterStrategy.NONE,
            )
        )

    @classmethod
    def fixed(
        cls, interval: Duration | None = None
    ) -> Callable[[BaseException, int], RetryDecision]:
        """Retry after a fixed delay (5 s by default; 5 attempts, no jitter)."""
        delay = Duration.from_seconds(5) if interval is None else interval
        return create_retry_strategy(
            RetryStrategyConfig(
                max_attempts=5,
                initial_delay=delay,
                max_delay=delay,
                backoff_rate=1,
                jitter_strategy=JitterStrategy.NONE,
            )
        )
