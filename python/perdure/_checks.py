"""Checks of what callers pass to the public API, made before anything is
written: each refusal is a :class:`~perdure.errors.ValidationError` naming
the argument, never the TypeError, ValueError or OverflowError that Python or
the Rust bindings would raise further in (perhaps after part of the work)."""

from __future__ import annotations

import math
import os

from perdure.duration import MAX_MILLIS
from perdure.errors import ValidationError

#: Limits of what the store holds as unsigned 64-bit numbers.
U64_MAX = (1 << 64) - 1


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def text(
    value: object,
    what: str,
    *,
    max_bytes: int | None = None,
    empty: bool = False,
) -> str:
    """A str that encodes as UTF-8 (no lone surrogates), optionally bounded."""
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a str, got {type(value).__name__}: {_show(value)}")
    try:
        size = len(value.encode())
    except UnicodeEncodeError as exc:
        raise ValidationError(
            f"{what} must be valid Unicode text, got a lone surrogate at position {exc.start}: "
            f"{_show(value)}"
        ) from None
    if not empty and size == 0:
        raise ValidationError(f"{what} must not be empty")
    if max_bytes is not None and size > max_bytes:
        raise ValidationError(f"{what} must be at most {max_bytes} bytes, got {size}")
    return value


def optional_text(value: object, what: str, *, max_bytes: int | None = None) -> str | None:
    """None, or :func:`text` (empty allowed)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(
            f"{what} must be a str or None, got {type(value).__name__}: {_show(value)}"
        )
    return text(value, what, max_bytes=max_bytes, empty=True)


def integer(value: object, what: str, *, low: int = 0, high: int = U64_MAX) -> int:
    """An int (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{what} must be an int, got {type(value).__name__}: {_show(value)}")
    if not low <= value <= high:
        raise ValidationError(f"{what} must be between {low} and {high}, got {_show(value)}")
    return value


def seconds(
    value: object, what: str, *, positive: bool = False, high: float = MAX_MILLIS / 1000
) -> float:
    """A finite, non-negative number of seconds (not a bool), at most ``high``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(
            f"{what} must be a number of seconds, got {type(value).__name__}: {_show(value)}"
        )
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if math.isnan(number) or number < 0 or (positive and number == 0):
        bound = "positive" if positive else "zero or more"
        raise ValidationError(f"{what} must be {bound} seconds, got {_show(value)}")
    if number > high:
        raise ValidationError(f"{what} must be at most {high:g} seconds, got {_show(value)}")
    return number


def optional_seconds(value: object, what: str) -> float | None:
    return None if value is None else seconds(value, what)


def millis_in_range(millis: int, what: str) -> int:
    """A span in milliseconds no longer than :data:`perdure.duration.MAX_MILLIS`."""
    if millis > MAX_MILLIS:
        raise ValidationError(f"{what} must be at most 1000 years, got {millis} ms")
    return millis


def is_store_url(location: str | os.PathLike[str]) -> bool:
    """Whether a store location names a PostgreSQL server (``postgresql://``
    or ``postgres://``) rather than a directory."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))
