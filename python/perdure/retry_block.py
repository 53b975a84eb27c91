"""``with_retry``: retry a whole block of durable code.

A step retries one function; ``with_retry`` retries a *block* that may
itself run steps, waits and callbacks::

    def transfer(ctx: DurableContext, attempt: int) -> str:
        hold = ctx.step(lambda _: reserve(), name="reserve")
        return ctx.step(lambda _: commit(hold), name="commit")

    receipt = perdure.with_retry(ctx, transfer, name="transfer")

Each attempt runs in its own child context (named ``"<name> attempt <n>"``),
so a failed attempt is checkpointed as failed and is never run again on
replay, and an attempt that suspends (a wait inside the block) resumes
where it stopped, its completed steps replayed rather than re-run. When an
attempt fails, the retry strategy (``RetryPresets.default()`` unless given)
decides; a retry waits durably (a wait named ``"<name>-backoff-<n>"``) and
runs the next attempt. When the strategy gives up, the last attempt's error
is raised: a :class:`~perdure.errors.ChildContextError` whose ``error_type``
names the exception the block raised.

With ``WithRetryConfig(wrap_with_run_in_child_context=False)`` the block runs
directly in the caller's context and the block's own exception is raised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from perdure.aio import AsyncDurableContext
from perdure.config import ChildConfig
from perdure.context import DurableContext, run_now
from perdure.errors import NonDeterministicExecutionError, ValidationError
from perdure.retries import RetryDecision, RetryPresets

__all__ = ["WithRetryConfig", "with_retry"]

T = TypeVar("T")


@dataclass(frozen=True)
class WithRetryConfig:
    """Configuration of :func:`with_retry`.

    ``retry_strategy(error, attempt) -> RetryDecision`` decides after a
    failed attempt (None: ``RetryPresets.default()``: 6 attempts, 5 s
    doubling). ``wrap_with_run_in_child_context`` runs each attempt in its
    own child context (the default), configured by ``child_context_config``.
    """

    retry_strategy: Callable[[BaseException, int], RetryDecision] | None = None
    wrap_with_run_in_child_context: bool = True
    child_context_config: ChildConfig | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.retry_strategy is not None and not callable(self.retry_strategy):
            got = type(self.retry_strategy).__name__
            msg = (
                f"{owner}.retry_strategy must be a callable (error, attempt) -> "
                f"RetryDecision or None, got {got}"
            )
            raise ValidationError(msg)
        if not isinstance(self.wrap_with_run_in_child_context, bool):
            got = type(self.wrap_with_run_in_child_context).__name__
            msg = f"{owner}.wrap_with_run_in_child_context must be a bool, got {got}"
            raise ValidationError(msg)
        if self.child_context_config is not None and not isinstance(
            self.child_context_config, ChildConfig
        ):
            got = type(self.child_context_config).__name__
            msg = f"{owner}.child_context_config must be a ChildConfig or None, got {got}"
            raise ValidationError(msg)


def with_retry(
    ctx: DurableContext,
    func: Callable[[DurableContext, int], T],
    config: WithRetryConfig | None = None,
    name: str | None = None,
) -> T:
    """Runs ``func(ctx, attempt)`` (attempt is 1-based), retrying the whole
    block per the retry strategy; returns what the successful attempt
    returned, or raises the last attempt's error."""
    if not isinstance(ctx, DurableContext):
        raise ValidationError(f"with_retry ctx must be a DurableContext, got {type(ctx).__name__}")
    if not callable(func):
        raise ValidationError(f"with_retry func needs a callable, got {type(func).__name__}")
    if config is None:
        config = WithRetryConfig()
    elif not isinstance(config, WithRetryConfig):
        got = type(config).__name__
        raise ValidationError(f"with_retry config must be a WithRetryConfig, got {got}")
    if name is not None and not isinstance(name, str):
        raise ValidationError(f"with_retry name must be a str or None, got {type(name).__name__}")
    strategy = config.retry_strategy or RetryPresets.default()
    loop = _retry_loop(ctx, func, config, name or "with_retry", strategy)
    if isinstance(ctx, AsyncDurableContext):
        return loop  # type: ignore[return-value]  # awaited by the async workflow
    return run_now(loop)  # type: ignore[no-any-return]


async def _retry_loop(
    ctx: DurableContext,
    func: Callable[[DurableContext, int], Any],
    config: WithRetryConfig,
    label: str,
    strategy: Callable[[BaseException, int], RetryDecision],
) -> Any:
    """The retry loop, written once: a sync context drives it with run_now
    (its operations return values), an async one awaits it (they return
    awaitables)."""
    awaits = isinstance(ctx, AsyncDurableContext)
    attempt = 1
    while True:
        try:
            if config.wrap_with_run_in_child_context:
                outcome = ctx.run_in_child_context(
                    _attempt(func, attempt),
                    name=f"{label} attempt {attempt}",
                    config=config.child_context_config,
                )
            else:
                outcome = func(ctx, attempt)
            return await outcome if awaits else outcome
        except NonDeterministicExecutionError:
            raise  # the code changed: retrying cannot help
        except Exception as exc:
            decision = strategy(exc, attempt)
            if not isinstance(decision, RetryDecision):
                raise ValidationError(
                    f"retry strategy of with_retry {label} returned "
                    f"{type(decision).__name__}, not a RetryDecision"
                ) from exc
            if not decision.should_retry:
                raise
            if decision.delay.to_millis() > 0:
                waited: Any = ctx.wait(decision.delay, name=f"{label}-backoff-{attempt}")  # type: ignore[func-returns-value]
                if awaits:
                    await waited
        attempt += 1


def _attempt(
    func: Callable[[DurableContext, int], T], attempt: int
) -> Callable[[DurableContext], T]:
    return lambda child: func(child, attempt)
