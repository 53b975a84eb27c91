"""Durations for waits, timeouts and retry delays."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from numbers import Real
from typing import cast

from perdure.errors import ValidationError

__all__ = ["Duration"]

_MS_PER_SECOND = 1000
_MS_PER_MINUTE = 60 * _MS_PER_SECOND
_MS_PER_HOUR = 60 * _MS_PER_MINUTE
_MS_PER_DAY = 24 * _MS_PER_HOUR
#: The longest duration: 1000 years of 365 days. Far beyond any wait or
#: timeout, far inside the clock's range (milliseconds in 64 bits).
MAX_MILLIS = 1000 * 365 * _MS_PER_DAY


def _check_total(what: str, millis: float) -> int:
    if not millis <= MAX_MILLIS:  # also catches an infinite sum
        raise ValidationError(f"{what} is longer than the longest duration, 1000 years")
    return round(millis)


def _check_amount(name: str, value: object) -> float:
    # bool is an int, but Duration(seconds=True) is a bug, not one second.
    if isinstance(value, bool) or not isinstance(value, Real):
        msg = f"Duration {name} must be a number, got {type(value).__name__}: {value!r}"
        raise ValidationError(msg)
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float
        finite = True
    if not finite:
        msg = f"Duration {name} must be finite, got {value!r}"
        raise ValidationError(msg)
    if cast(float, value) > MAX_MILLIS:  # more than 1000 years in any unit
        msg = f"Duration {name}={value!r:.40} is longer than the longest duration, 1000 years"
        raise ValidationError(msg)
    if value < 0:
        msg = f"Duration {name} must not be negative, got {value!r}"
        raise ValidationError(msg)
    # Returned as given (not float()), so whole numbers stay exact ints.
    return cast(float, value)


@dataclass(frozen=True, eq=False, kw_only=True)
class Duration:
    """A non-negative span of time with millisecond precision.

    The fields add up: ``Duration(minutes=1, seconds=30)`` is 90 seconds.
    Two durations are equal when they are equally long, whatever fields
    were used. The fields are keyword-only because AWS SDK v3 takes a single
    positional ``seconds``; refusing ``Duration(5)`` is safer than reading it
    as five days.
    """

    days: float = 0
    hours: float = 0
    minutes: float = 0
    seconds: float = 0
    milliseconds: float = 0
    _millis: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        total = (
            _check_amount("days", self.days) * _MS_PER_DAY
            + _check_amount("hours", self.hours) * _MS_PER_HOUR
            + _check_amount("minutes", self.minutes) * _MS_PER_MINUTE
            + _check_amount("seconds", self.seconds) * _MS_PER_SECOND
            + _check_amount("milliseconds", self.milliseconds)
        )
        # Computed once: timers and comparisons use it on every call.
        object.__setattr__(self, "_millis", _check_total(repr(self), total))

    @classmethod
    def _of(cls, name: str, value: float, unit_ms: int) -> Duration:
        amount = _check_amount(name, value)
        total = _check_total(f"Duration of {amount!r:.40} {name}", amount * unit_ms)
        # Normalise to seconds + milliseconds so that ``.seconds`` of a
        # duration built by a factory is its whole seconds, as in AWS SDK v3.
        seconds, millis = divmod(total, _MS_PER_SECOND)
        return cls(seconds=seconds, milliseconds=millis)

    @classmethod
    def from_milliseconds(cls, value: float) -> Duration:
        """Create a duration of ``value`` milliseconds."""
        return cls._of("milliseconds", value, 1)

    @classmethod
    def from_seconds(cls, value: float) -> Duration:
        """Create a duration of ``value`` seconds (fractions allowed)."""
        return cls._of("seconds", value, _MS_PER_SECOND)

    @classmethod
    def from_minutes(cls, value: float) -> Duration:
        """Create a duration of ``value`` minutes."""
        return cls._of("minutes", value, _MS_PER_MINUTE)

    @classmethod
    def from_hours(cls, value: float) -> Duration:
        """Create a duration of ``value`` hours."""
        return cls._of("hours", value, _MS_PER_HOUR)

    @classmethod
    def from_days(cls, value: float) -> Duration:
        """Create a duration of ``value`` days."""
        return cls._of("days", value, _MS_PER_DAY)

    @classmethod
    def from_timedelta(cls, value: timedelta) -> Duration:
        """Create a duration from a non-negative ``timedelta``."""
        if not isinstance(value, timedelta):
            msg = f"Duration.from_timedelta needs a timedelta, got {type(value).__name__}"
            raise ValidationError(msg)
        micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
        return cls._of("timedelta", micros / 1000, 1)

    def to_millis(self) -> int:
        """Total length in whole milliseconds (rounded to the nearest)."""
        return self._millis

    def to_seconds(self) -> float:
        """Total length in seconds."""
        return self._millis / _MS_PER_SECOND

    def to_timedelta(self) -> timedelta:
        """Total length as a ``timedelta``."""
        return timedelta(milliseconds=self._millis)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Duration):
            return self._millis == other._millis
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._millis)

    def __lt__(self, other: Duration) -> bool:
        if isinstance(other, Duration):
            return self._millis < other._millis
        return NotImplemented

    def __le__(self, other: Duration) -> bool:
        if isinstance(other, Duration):
            return self._millis <= other._millis
        return NotImplemented

    def __gt__(self, other: Duration) -> bool:
        if isinstance(other, Duration):
            return self._millis > other._millis
        return NotImplemented

    def __ge__(self, other: Duration) -> bool:
        if isinstance(other, Duration):
            return self._millis >= other._millis
        return NotImplemented

    def __bool__(self) -> bool:
        return self._millis != 0

    def __repr__(self) -> str:
        parts = [
            f"{name}={value!r}"
            for name, value in (
                ("days", self.days),
                ("hours", self.hours),
                ("minutes", self.minutes),
                ("seconds", self.seconds),
                ("milliseconds", self.milliseconds),
            )
            if value
        ]
        return f"Duration({', '.join(parts)})"
