"""``wait_for_condition``: durable polling with a wait strategy.

A workflow polls something outside itself (a job's status, a file, a
service) until a condition holds::

    def check(state, check_context):
        return {"status": job_status(state["job_id"]), "job_id": state["job_id"]}

    strategy = perdure.create_wait_strategy(
        perdure.WaitStrategyConfig(should_continue_polling=lambda s: s["status"] != "DONE")
    )
    final = ctx.wait_for_condition(
        check,
        perdure.WaitForConditionConfig(strategy, initial_state={"job_id": 7, "status": None}),
        name="await-job",
    )

Each poll runs ``check(state, WaitForConditionCheckContext)``; the wait
strategy then decides, from the new state and the number of the poll just
made, whether to stop or to poll again after a delay. As in the AWS Durable
Execution SDK, the operation is one STEP (sub-type ``WaitForCondition``):
every poll that continues records the new state in a RETRY record (shown in
history as ``StepSucceeded`` with ``RetryDetails``) and arms a durable timer,
and the invocation ends, so no thread and no memory is held between polls;
the poll that stops records ``SUCCEEDED`` with the final state. A check or a
strategy that raises fails the operation with :class:`WaitForConditionError`,
which replay raises again without polling.

Differences from AWS, on purpose: delays keep millisecond precision (never
below 1 ms), and every config is validated when it is built.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, cast

from perdure import _checks
from perdure import _records as R
from perdure.config import _check_serdes
from perdure.context import DurableContext, _error_payload, defer_retry, run_now
from perdure.duration import Duration
from perdure.errors import (
    ValidationError,
    WaitForConditionError,
    error_object,
    rebuild_error,
)
from perdure.retries import (
    JitterStrategy,
    _check_attempt,
    _check_backoff_rate,
    _check_duration,
    _check_jitter,
    _check_max_attempts,
    exponential_delay_ms,
)
from perdure.serdes import SerDes, error_object_from_payload

if TYPE_CHECKING:
    from perdure.verify import VerifyState

__all__ = [
    "WaitForConditionCheckContext",
    "WaitForConditionConfig",
    "WaitForConditionDecision",
    "WaitStrategyConfig",
    "create_wait_strategy",
    "poll_condition",
    "run_wait_for_condition",
]

T = TypeVar("T")


# region decisions and strategies


@dataclass(frozen=True)
class WaitForConditionDecision:
    """What a wait strategy decided after a poll: poll again after ``delay``,
    or stop (the condition holds)."""

    should_continue: bool
    delay: Duration = field(default_factory=Duration)

    def __post_init__(self) -> None:
        if not isinstance(self.should_continue, bool):
            got = type(self.should_continue).__name__
            msg = f"WaitForConditionDecision.should_continue must be a bool, got {got}"
            raise ValidationError(msg)
        if not isinstance(self.delay, Duration):
            got = type(self.delay).__name__
            msg = f"WaitForConditionDecision.delay must be a Duration, got {got}"
            raise ValidationError(msg)
        if self.should_continue and self.delay.to_millis() <= 0:
            msg = (
                "WaitForConditionDecision.delay must be longer than zero to continue "
                f"waiting, got {self.delay!r}"
            )
            raise ValidationError(msg)

    @property
    def delay_seconds(self) -> float:
        """The delay in seconds."""
        return self.delay.to_seconds()

    @classmethod
    def continue_waiting(cls, delay: Duration) -> WaitForConditionDecision:
        """Poll again after ``delay`` (a positive Duration)."""
        if not isinstance(delay, Duration):
            msg = f"continue_waiting needs a Duration delay, got {type(delay).__name__}"
            raise ValidationError(msg)
        if delay.to_millis() <= 0:
            msg = f"continue_waiting delay must be longer than zero, got {delay!r}"
            raise ValidationError(msg)
        return cls(should_continue=True, delay=delay)

    @classmethod
    def stop_polling(cls) -> WaitForConditionDecision:
        """Stop: the condition holds and the current state is the result."""
        return cls(should_continue=False, delay=Duration())


WaitStrategy = Callable[[Any, int], WaitForConditionDecision]
"""The type of a wait strategy: ``(state, attempt) -> WaitForConditionDecision``."""


@dataclass(frozen=True)
class WaitStrategyConfig(Generic[T]):
    """Polling with exponential backoff, as the AWS SDK's ``WaitStrategyConfig``.

    ``should_continue_polling(state)`` is True while the condition does not
    hold yet. After poll ``n`` the delay is ``initial_delay * backoff_rate **
    (n - 1)``, capped at ``max_delay``, then jittered. ``max_attempts``
    counts every poll; when the last one is made and the condition still
    does not hold, the operation fails with :class:`WaitForConditionError`.
    """

    should_continue_polling: Callable[[T], bool]
    max_attempts: int = 60
    initial_delay: Duration = field(default_factory=lambda: Duration.from_seconds(5))
    max_delay: Duration = field(default_factory=lambda: Duration.from_minutes(5))
    backoff_rate: float = 1.5
    jitter_strategy: JitterStrategy = JitterStrategy.FULL

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if not callable(self.should_continue_polling):
            got = type(self.should_continue_polling).__name__
            msg = f"{owner}.should_continue_polling must be a callable (state) -> bool, got {got}"
            raise ValidationError(msg)
        _check_max_attempts(owner, self.max_attempts)
        _check_duration(owner, "initial_delay", self.initial_delay)
        _check_duration(owner, "max_delay", self.max_delay)
        for name in ("initial_delay", "max_delay"):
            value: Duration = getattr(self, name)
            if value.to_millis() <= 0:
                msg = f"{owner}.{name} must be longer than zero, got {value!r}"
                raise ValidationError(msg)
        _check_backoff_rate(owner, self.backoff_rate)
        object.__setattr__(self, "jitter_strategy", _check_jitter(owner, self.jitter_strategy))

    @property
    def initial_delay_seconds(self) -> float:
        """``initial_delay`` in seconds."""
        return self.initial_delay.to_seconds()

    @property
    def max_delay_seconds(self) -> float:
        """``max_delay`` in seconds."""
        return self.max_delay.to_seconds()


class _WaitStrategy(Generic[T]):
    """The callable built by :func:`create_wait_strategy`."""

    __slots__ = ("config",)

    def __init__(self, config: WaitStrategyConfig[T]) -> None:
        self.config = config

    def base_delay_ms(self, attempt: int) -> float:
        """The delay before jitter after poll ``attempt``."""
        config = self.config
        return exponential_delay_ms(
            config.initial_delay.to_millis(),
            config.backoff_rate,
            attempt,
            config.max_delay.to_millis(),
        )

    def __call__(self, state: T, attempt: int) -> WaitForConditionDecision:
        attempt = _check_attempt(attempt, "wait")
        config = self.config
        if not config.should_continue_polling(state):
            return WaitForConditionDecision.stop_polling()
        if attempt >= config.max_attempts:
            polls = "poll" if attempt == 1 else "polls"
            raise WaitForConditionError(
                f"the condition still did not hold after {attempt} {polls} "
                f"(max_attempts={config.max_attempts})"
            )
        # finalize_delay rounds up to whole milliseconds; a positive base
        # never gives less than 1 ms.
        millis = max(1, config.jitter_strategy.finalize_delay(self.base_delay_ms(attempt)))
        return WaitForConditionDecision.continue_waiting(Duration.from_milliseconds(millis))

    def __repr__(self) -> str:
        return f"create_wait_strategy({self.config!r})"


def create_wait_strategy(
    config: WaitStrategyConfig[T],
) -> Callable[[T, int], WaitForConditionDecision]:
    """Build a wait strategy ``(state, attempt) -> WaitForConditionDecision``.

    ``attempt`` is the 1-based number of the poll just made. The strategy
    stops when ``config.should_continue_polling(state)`` is False, raises
    :class:`WaitForConditionError` when ``max_attempts`` polls were made and
    the condition still does not hold, and otherwise continues after an
    exponentially growing, jittered delay. The callable has a ``config``
    attribute for inspection.
    """
    if not isinstance(config, WaitStrategyConfig):
        msg = f"create_wait_strategy needs a WaitStrategyConfig, got {type(config).__name__}"
        raise ValidationError(msg)
    return _WaitStrategy(config)


# endregion
# region config


@dataclass(frozen=True)
class WaitForConditionConfig(Generic[T]):
    """Configuration of ``wait_for_condition``.

    ``wait_strategy(state, attempt)`` decides after each poll (build one
    with :func:`create_wait_strategy`, or write your own); ``initial_state``
    is the state the first poll receives; ``serdes`` serializes the state
    checkpointed after each poll (None: JSON with extended types).
    """

    wait_strategy: Callable[[T, int], WaitForConditionDecision]
    initial_state: T | None = None
    serdes: SerDes[Any] | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if not callable(self.wait_strategy):
            got = type(self.wait_strategy).__name__
            msg = (
                f"{owner}.wait_strategy must be a callable (state, attempt) -> "
                f"WaitForConditionDecision, got {got}"
            )
            raise ValidationError(msg)
        _check_serdes(owner, self.serdes)


@dataclass(frozen=True)
class WaitForConditionCheckContext:
    """Handed to a ``wait_for_condition`` check: a logger, and the 1-based
    number of the poll being made."""

    logger: logging.Logger | logging.LoggerAdapter  # type: ignore[type-arg]
    attempt: int


# endregion
# region the operation


def _condition_error(obj: dict[str, Any]) -> WaitForConditionError:
    return WaitForConditionError.from_error_object(obj)


def run_wait_for_condition(
    ctx: DurableContext,
    check: Callable[[T, WaitForConditionCheckContext], T],
    config: WaitForConditionConfig[T] | None,
    name: str | None = None,
) -> T:
    """``ctx.wait_for_condition``: polls ``check`` until the wait strategy stops."""
    return run_now(poll_condition(ctx, check, config, name))


async def poll_condition(
    ctx: DurableContext,
    check: Callable[[T, WaitForConditionCheckContext], Any],
    config: WaitForConditionConfig[T] | None,
    name: str | None = None,
    awaits: bool = False,
) -> T:
    """wait_for_condition for both kinds of context. For a sync context
    (``awaits=False``) nothing in here suspends (its commits are synchronous)
    and :func:`run_now` runs it; the asyncio context (perdure.aio) awaits it,
    and with ``awaits`` an awaitable a check returns is awaited."""
    ctx._check_live()
    if not callable(check):
        got = type(check).__name__
        raise ValidationError(f"wait_for_condition check needs a callable, got {got}")
    if config is None:
        raise ValidationError(
            "wait_for_condition needs a WaitForConditionConfig (with at least a wait_strategy)"
        )
    if not isinstance(config, WaitForConditionConfig):
        got = type(config).__name__
        msg = f"wait_for_condition config must be a WaitForConditionConfig, got {got}"
        raise ValidationError(msg)
    name = _checks.optional_text(name, "wait_for_condition name")

    state = ctx._state
    serdes = config.serdes
    sub_type = R.SUB_WAIT_FOR_CONDITION
    op_id = ctx._next_id()
    op = ctx._recorded(op_id, R.STEP, sub_type, name)
    current: Any
    if op is None:
        attempt = 1
        current = config.initial_state
        # Not durable on its own: it rides with this poll's outcome.
        state.defer(R.record(R.STARTED, R.STEP, sub_type, op_id, name, attempt=1))
    else:
        status = op[R.OP_STATUS]
        if status == R.SUCCEEDED:
            return cast(T, ctx._decode(serdes, op[R.OP_PAYLOAD], op_id))
        if status == R.FAILED:
            obj = error_object_from_payload(op[R.OP_PAYLOAD])
            raise _condition_error(obj) from rebuild_error(obj)
        if status == R.RETRY:
            # The previous poll continued: wait out its delay, then poll
            # again from the state it checkpointed.
            state.wait_until(op[R.OP_TIMESTAMP] + op[R.OP_AUX2], op_id)
            attempt = state.next_attempt(op, op_id)
            current = ctx._decode(serdes, op[R.OP_PAYLOAD], op_id)
        elif status == R.STARTED:
            # A poll was cut off before its outcome was written: make it again.
            attempt = max(1, op[R.OP_ATTEMPT])
            if attempt > 1 and op[R.OP_PAYLOAD] is not None:
                current = ctx._decode(serdes, op[R.OP_PAYLOAD], op_id)
            else:
                current = config.initial_state
        else:
            raise WaitForConditionError(
                f"wait_for_condition {name or op_id} has an unexpected recorded state ({status})"
            )
    if state.verify_only:  # a verifying replay never runs a check
        cast("VerifyState", state).frontier(op_id, f"WaitForCondition {name or op_id} poll")
    ctx._replaying = False
    started_ms = state.now_ms()
    try:
        new_state = check(current, WaitForConditionCheckContext(ctx.logger, attempt))
        if awaits and inspect.isawaitable(new_state):
            new_state = await new_state
    except Exception as exc:
        await _fail(ctx, op_id, name, attempt, started_ms, exc)
    try:
        decision = config.wait_strategy(new_state, attempt)
    except ValidationError:
        # A mistake in the strategy itself (a zero delay, a bad field) is
        # reported as such, like a strategy that returns the wrong type.
        raise
    except Exception as exc:
        await _fail(ctx, op_id, name, attempt, started_ms, exc)
    if not isinstance(decision, WaitForConditionDecision):
        raise ValidationError(
            f"wait strategy of wait_for_condition {name or op_id} returned "
            f"{type(decision).__name__}, not a WaitForConditionDecision"
        )
    payload, value = ctx._checkpoint(serdes, new_state, op_id, "wait_for_condition", name)
    duration = state.now_ms() - started_ms
    if decision.should_continue:
        # As a step retry, the RETRY record carrying the state.
        defer_retry(state, sub_type, op_id, name, attempt, duration, decision.delay, payload)
    done = R.record(
        R.SUCCEEDED, R.STEP, sub_type, op_id, name,
        attempt=attempt, aux=duration, payload=payload,
    )  # fmt: skip
    await state.commit_async([done])
    return cast(T, value)


async def _fail(
    ctx: DurableContext,
    op_id: str,
    name: str | None,
    attempt: int,
    started_ms: int,
    error: BaseException,
) -> NoReturn:
    state = ctx._state
    duration = state.now_ms() - started_ms
    failed = R.record(
        R.FAILED, R.STEP, R.SUB_WAIT_FOR_CONDITION, op_id, name,
        attempt=attempt, aux=duration, payload=_error_payload(error),
    )  # fmt: skip
    await state.commit_async([failed])
    obj = error_object(error)
    raise _condition_error(obj) from rebuild_error(obj)


# endregion
