"""Durable functions by name.

A name read from the store is only ever looked up here, never imported or
evaluated: an execution whose function this process has not registered is
left where it is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar, overload

from perdure.errors import UnknownFunctionError, ValidationError

__all__ = ["durable", "function_name", "lookup", "registered"]

F = TypeVar("F", bound=Callable[..., Any])

_functions: dict[str, Callable[..., Any]] = {}
_lock = threading.Lock()


def _default_name(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or "__main__"
    return f"{module}.{func.__qualname__}"


@overload
def durable(func: F, /) -> F: ...
@overload
def durable(*, name: str | None = None) -> Callable[[F], F]: ...


def durable(func: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Registers ``func(ctx, input)`` as a durable function.

    The name (default ``module.qualname``) is what the store records; keep it
    stable across deploys, or pass ``name=`` explicitly.
    """

    def register(target: F) -> F:
        if not callable(target):
            raise ValidationError(f"@durable needs a function, got {type(target).__name__}")
        key = name if name is not None else _default_name(target)
        if not isinstance(key, str) or not key or len(key.encode()) > 256:
            raise ValidationError(
                f"durable function name must be 1 to 256 bytes of text, got {key!r}"
            )
        with _lock:
            _functions[key] = target
        target.__perdure_name__ = key  # type: ignore[attr-defined]
        return target

    return register(func) if func is not None else register


def function_name(target: Callable[..., Any] | str) -> str:
    """The registered name of a function (or a name, checked)."""
    if isinstance(target, str):
        if target not in _functions:
            raise UnknownFunctionError(
                f"no durable function is registered as {target!r} in this process "
                f"(registered: {', '.join(sorted(_functions)) or 'none'})",
                function_name=target,
            )
        return target
    key = getattr(target, "__perdure_name__", None)
    if key is None or _functions.get(key) is not target:
        label = getattr(target, "__qualname__", repr(target))
        raise UnknownFunctionError(
            f"{label} is not a durable function: decorate it with @perdure.durable",
            function_name=str(label),
        )
    return str(key)


def lookup(key: str) -> Callable[..., Any] | None:
    return _functions.get(key)


def registered() -> list[str]:
    return sorted(_functions)
