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

__all__ = ["durable", "function_name", "is_plain", "lookup", "register", "registered"]

F = TypeVar("F", bound=Callable[..., Any])

_functions: dict[str, Callable[..., Any]] = {}
_lock = threading.Lock()


class _Plain:
    """A plain function ``f(payload)`` registered for ``ctx.invoke``; run as
    an execution, it is called with the input and no context."""

    __slots__ = ("func",)

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func

    def __call__(self, _ctx: object, payload: Any) -> Any:
        return self.func(payload)


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

    def decorate(target: F) -> F:
        return _register(target, target, name, "@durable")

    return decorate(func) if func is not None else decorate


@overload
def register(func: F, /) -> F: ...
@overload
def register(*, name: str | None = None) -> Callable[[F], F]: ...


def register(func: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Registers a plain function ``func(payload)`` (no durable context) so
    ``ctx.invoke`` can call it by name. It runs as a child execution of its
    own, so its result is checkpointed once it returns."""

    def decorate(target: F) -> F:
        return _register(target, _Plain(target), name, "@register")

    return decorate(func) if func is not None else decorate


def _register(target: F, entry: Callable[..., Any], name: str | None, what: str) -> F:
    if not callable(target):
        raise ValidationError(f"{what} needs a function, got {type(target).__name__}")
    key = name if name is not None else _default_name(target)
    if not isinstance(key, str) or not key or len(key.encode()) > 256:
        raise ValidationError(f"durable function name must be 1 to 256 bytes of text, got {key!r}")
    with _lock:
        _functions[key] = entry
    target.__perdure_name__ = key  # type: ignore[attr-defined]
    return target


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
    entry = _functions.get(key) if key is not None else None
    if entry is None or (entry is not target and getattr(entry, "func", None) is not target):
        label = getattr(target, "__qualname__", repr(target))
        raise UnknownFunctionError(
            f"{label} is not a durable function: decorate it with @perdure.durable",
            function_name=str(label),
        )
    return str(key)


def lookup(key: str) -> Callable[..., Any] | None:
    return _functions.get(key)


def is_plain(key: str) -> bool:
    """Whether ``key`` names a plain function (registered with ``register``)."""
    return isinstance(_functions.get(key), _Plain)


def registered() -> list[str]:
    return sorted(_functions)
