"""Tests of retry strategies, presets and error filters."""

from __future__ import annotations

import re
from typing import Any

import pytest
from perdure.duration import Duration
from perdure.errors import (
    CallableRuntimeError,
    StepInterruptedError,
    ValidationError,
    error_type_name,
)
from perdure.retries import (
    JitterStrategy,
    LinearRetryStrategyConfig,
    RetryDecision,
    RetryPresets,
    RetryStrategyConfig,
    create_linear_retry_strategy,
    create_retry_strategy,
)

ERR = RuntimeError("boom")


def delays_ms(strategy: Any, attempts: range, error: BaseException = ERR) -> list[int | None]:
    """Delay of each attempt's retry, or None where no retry is made."""
    out: list[int | None] = []
    for attempt in attempts:
        decision = strategy(error, attempt)
        out.append(decision.delay.to_millis() if decision.should_retry else None)
    return out


class PaymentError(Exception):
    pass


class CardDeclined(PaymentError):
    pass


# region RetryDecision


def test_retry_decision_constructors() -> None:
    decision = RetryDecision.retry(Duration.from_seconds(2.5))
    assert decision.should_retry is True
    assert decision.delay == Duration(milliseconds=2500)
    assert decision.delay_seconds == 2.5
    stop = RetryDecision.no_retry()
    assert stop.should_retry is False
    assert stop.delay.to_millis() == 0


def test_retry_decision_validates_its_fields() -> None:
    with pytest.raises(ValidationError, match="delay"):
        RetryDecision(should_retry=True, delay=5)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="should_retry"):
        RetryDecision(should_retry=1, delay=Duration())  # type: ignore[arg-type]


# endregion
# region config


def test_retry_strategy_config_defaults_match_aws() -> None:
    config = RetryStrategyConfig()
    assert config.max_attempts == 3
    assert config.initial_delay == Duration.from_seconds(5)
    assert config.max_delay == Duration.from_minutes(5)
    assert config.backoff_rate == 2.0
    assert config.jitter_strategy is JitterStrategy.FULL
    assert config.retryable_errors is None
    assert config.retryable_error_types is None
    assert config.initial_delay_seconds == 5.0
    assert config.max_delay_seconds == 300.0


def test_linear_config_defaults_match_aws() -> None:
    config = LinearRetryStrategyConfig()
    assert config.max_attempts == 6
    assert config.initial_delay == Duration.from_seconds(1)
    assert config.increment == Duration.from_seconds(1)
    assert config.max_delay == Duration.from_minutes(5)
    assert config.jitter_strategy is JitterStrategy.FULL


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -3}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"max_attempts": "3"}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"initial_delay": 5}, "initial_delay"),
        ({"max_delay": None}, "max_delay"),
        ({"backoff_rate": 0.5}, "backoff_rate"),
        ({"backoff_rate": -2}, "backoff_rate"),
        ({"backoff_rate": float("nan")}, "backoff_rate"),
        ({"backoff_rate": float("inf")}, "backoff_rate"),
        ({"backoff_rate": "2"}, "backoff_rate"),
        ({"jitter_strategy": "SOME"}, "jitter_strategy"),
        ({"jitter_strategy": 1}, "jitter_strategy"),
        ({"retryable_errors": "timeout"}, "retryable_errors"),
        ({"retryable_errors": [1]}, "retryable_errors"),
        ({"retryable_errors": [re.compile(b"x")]}, "retryable_errors"),
        ({"retryable_error_types": ValueError}, "retryable_error_types"),
        ({"retryable_error_types": [ValueError()]}, "retryable_error_types"),
        ({"retryable_error_types": [int]}, "retryable_error_types"),
    ],
)
def test_invalid_retry_config_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=rf"RetryStrategyConfig\.{field}"):
        RetryStrategyConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"increment": 1}, "increment"),
        ({"initial_delay": "1s"}, "initial_delay"),
        ({"jitter_strategy": "nope"}, "jitter_strategy"),
    ],
)
def test_invalid_linear_config_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=rf"LinearRetryStrategyConfig\.{field}"):
        LinearRetryStrategyConfig(**kwargs)


def test_jitter_strategy_accepts_its_string_value() -> None:
    assert RetryStrategyConfig(jitter_strategy="HALF").jitter_strategy is JitterStrategy.HALF  # type: ignore[arg-type]
    assert [m.value for m in JitterStrategy] == ["NONE", "FULL", "HALF"]


def test_validation_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryStrategyConfig(max_attempts=0)


def test_create_retry_strategy_rejects_other_configs() -> None:
    with pytest.raises(ValidationError, match="RetryStrategyConfig"):
        create_retry_strategy(LinearRetryStrategyConfig())  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="LinearRetryStrategyConfig"):
        create_linear_retry_strategy(RetryStrategyConfig())  # type: ignore[arg-type]


# endregion
# region delays


def test_exponential_delays_without_jitter() -> None:
    strategy = create_retry_strategy(
        RetryStrategyConfig(
            max_attempts=8,
            initial_delay=Duration.from_seconds(1),
            max_delay=Duration.from_seconds(10),
            backoff_rate=2,
            jitter_strategy=JitterStrategy.NONE,
        )
    )
    assert delays_ms(strategy, range(1, 9)) == [1000, 2000, 4000, 8000, 10000, 10000, 10000, None]


def test_sub_second_delays_keep_millisecond_precision() -> None:
    strategy = create_retry_strategy(
        RetryStrategyConfig(
            max_attempts=5,
            initial_delay=Duration.from_milliseconds(250),
            max_delay=Duration.from_seconds(1),
            backoff_rate=1.5,
            jitter_strategy=JitterStrategy.NONE,
        )
    )
    # 250 * 1.5 ** n, rounded up to whole milliseconds: 250, 375, 562.5, 843.75
    assert delays_ms(strategy, range(1, 6)) == [250, 375, 563, 844, None]


def test_default_strategy_is_retry_strategy_config_defaults() -> None:
    strategy = create_retry_strategy()
    assert strategy.config == RetryStrategyConfig()  # type: ignore[attr-defined]
    for attempt in (1, 2):
        decision = strategy(ERR, attempt)
        assert decision.should_retry
        base = 5000 * 2 ** (attempt - 1)
        assert 1 <= decision.delay.to_millis() <= base
    assert not strategy(ERR, 3).should_retry


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5])
def test_full_jitter_stays_between_zero_and_the_base_delay(attempt: int) -> None:
    strategy = create_retry_strategy(
        RetryStrategyConfig(
            max_attempts=10,
            initial_delay=Duration.from_seconds(1),
            max_delay=Duration.from_seconds(60),
            jitter_strategy=JitterStrategy.FULL,
        )
    )
    base = 1000 * 2 ** (attempt - 1)
    samples = [strategy(ERR, attempt).delay.to_millis() for _ in range(2000)]
    assert all(1 <= d <= base for d in samples)
    # Spread over the whole range, not clustered at one end.
    assert min(samples) < base * 0.1
    assert max(samples) > base * 0.9


@pytest.mark.parametrize("attempt", [1, 3, 6])
def test_half_jitter_stays_between_half_and_all_of_the_base_delay(attempt: int) -> None:
    strategy = create_retry_strategy(
        RetryStrategyConfig(
            max_attempts=10,
            initial_delay=Duration.from_seconds(2),
            max_delay=Duration.from_seconds(60),
            jitter_strategy=JitterStrategy.HALF,
        )
    )
    base = min(2000 * 2 ** (attempt - 1), 60_000)
    samples = [strategy(ERR, attempt).delay.to_millis() for _ in range(2000)]
    assert all(base / 2 <= d <= base for d in samples)
    assert min(samples) < base * 0.55
    assert max(samples) > base * 0.95


def test_jitter_extremes(monkeypatch: pytest.MonkeyPatch) -> None:
    import perdure.retries as retries

    monkeypatch.setattr(retries.random, "random", lambda: 0.0)
    assert JitterStrategy.FULL.finalize_delay(5000) == 1  # never zero for a positive base
    assert JitterStrategy.HALF.finalize_delay(5000) == 2500
    assert JitterStrategy.NONE.finalize_delay(5000) == 5000
    monkeypatch.setattr(retries.random, "random", lambda: 0.9999999)
    assert JitterStrategy.FULL.finalize_delay(5000) == 5000
    assert JitterStrategy.HALF.finalize_delay(5000) == 5000
    assert JitterStrategy.NONE.finalize_delay(0.2) == 1  # rounded up, not down
    assert JitterStrategy.FULL.finalize_delay(0) == 0
    assert JitterStrategy.FULL.finalize_delay(-5) == 0


def test_zero_initial_delay_retries_immediately() -> None:
    strategy = create_retry_strategy(
        RetryStrategyConfig(max_attempts=4, initial_delay=Duration(), jitter_strategy="FULL")  # type: ignore[arg-type]
    )
    assert delays_ms(strategy, range(1, 5)) == [0, 0, 0, None]


def test_huge_attempt_numbers_do_not_overflow() -> None:
    strategy = create_retry_strategy(
        RetryStrategyConfig(
            max_attempts=1_000_000,
            initial_delay=Duration.from_seconds(1),
            max_delay=Duration.from_hours(1),
            backoff_rate=10,
            jitter_strategy=JitterStrategy.NONE,
        )
    )
    assert strategy(ERR, 5000).delay == Duration.from_hours(1)


def test_max_attempts_counts_the_first_attempt() -> None:
    strategy = create_retry_strategy(RetryStrategyConfig(max_attempts=3))
    assert strategy(ERR, 1).should_retry
    assert strategy(ERR, 2).should_retry
    assert not strategy(ERR, 3).should_retry
    assert not strategy(ERR, 4).should_retry


@pytest.mark.parametrize("attempt", [0, -1, 1.0, True, "1"])
def test_attempt_must_be_a_positive_int(attempt: Any) -> None:
    strategy = create_retry_strategy()
    with pytest.raises(ValidationError, match="attempt"):
        strategy(ERR, attempt)


def test_linear_delays() -> None:
    strategy = create_linear_retry_strategy(
        LinearRetryStrategyConfig(
            max_attempts=6,
            initial_delay=Duration.from_milliseconds(500),
            increment=Duration.from_milliseconds(250),
            max_delay=Duration.from_seconds(1),
            jitter_strategy=JitterStrategy.NONE,
        )
    )
    assert delays_ms(strategy, range(1, 7)) == [500, 750, 1000, 1000, 1000, None]


# endregion
# region error filters


def test_no_filter_retries_every_error() -> None:
    strategy = create_retry_strategy(RetryStrategyConfig(max_attempts=5))
    for error in (ValueError("x"), KeyError("k"), StepInterruptedError("crash")):
        assert strategy(error, 1).should_retry


def test_message_filters() -> None:
    strategy = create_retry_strategy(
        RetryStrategyConfig(retryable_errors=["timed out", re.compile(r"^5\d\d ")])
    )
    assert strategy(ValueError("request timed out after 3s"), 1).should_retry
    assert strategy(OSError("503 Service Unavailable"), 1).should_retry
    assert not strategy(OSError("error 503 Service Unavailable"), 1).should_retry
    assert not strategy(ValueError("bad input"), 1).should_retry


def test_type_filters_match_subclasses() -> None:
    strategy = create_retry_strategy(RetryStrategyConfig(retryable_error_types=[PaymentError]))
    assert strategy(PaymentError("x"), 1).should_retry
    assert strategy(CardDeclined("x"), 1).should_retry
    assert not strategy(ValueError("x"), 1).should_retry


def test_type_filter_alone_does_not_retry_by_message() -> None:
    # As in AWS: the match-all default applies only when neither filter is set.
    strategy = create_retry_strategy(RetryStrategyConfig(retryable_error_types=[TimeoutError]))
    assert not strategy(ValueError("anything"), 1).should_retry
    strategy = create_retry_strategy(RetryStrategyConfig(retryable_errors=[]))
    assert not strategy(ValueError("anything"), 1).should_retry


def test_message_or_type_filter_is_enough() -> None:
    strategy = create_retry_strategy(
        RetryStrategyConfig(retryable_errors=["throttled"], retryable_error_types=[TimeoutError])
    )
    assert strategy(TimeoutError("slow"), 1).should_retry
    assert strategy(ValueError("you are throttled"), 1).should_retry
    assert not strategy(ValueError("bad"), 1).should_retry


def test_stored_failures_match_type_filters_by_recorded_name() -> None:
    strategy = create_retry_strategy(
        RetryStrategyConfig(retryable_error_types=[TimeoutError, PaymentError])
    )

    def stored(exc: BaseException) -> CallableRuntimeError:
        return CallableRuntimeError.from_exception(exc)

    assert stored(TimeoutError("t")).error_type == "TimeoutError"
    assert strategy(stored(TimeoutError("t")), 1).should_retry
    assert strategy(stored(PaymentError("p")), 1).should_retry
    # A subclass loaded in this process is recognised by its recorded name.
    assert stored(CardDeclined("c")).error_type == error_type_name(CardDeclined)
    assert strategy(stored(CardDeclined("c")), 1).should_retry
    assert not strategy(stored(ValueError("v")), 1).should_retry
    assert not strategy(CallableRuntimeError("x", error_type="some.other.Error"), 1).should_retry
    assert not strategy(CallableRuntimeError("x"), 1).should_retry


def test_stored_failures_match_message_filters_on_the_original_message() -> None:
    strategy = create_retry_strategy(RetryStrategyConfig(retryable_errors=[re.compile("^conn")]))
    error = CallableRuntimeError("connection reset", error_type="ConnectionResetError")
    assert str(error) == "ConnectionResetError: connection reset"
    assert strategy(error, 1).should_retry
    assert strategy(ConnectionResetError("connection reset"), 1).should_retry


def test_step_interrupted_can_be_filtered_by_type() -> None:
    strategy = create_retry_strategy(
        RetryStrategyConfig(retryable_error_types=[StepInterruptedError])
    )
    assert strategy(StepInterruptedError("interrupted"), 1).should_retry
    assert not strategy(ValueError("x"), 1).should_retry


# endregion
# region presets


def test_preset_none_never_retries() -> None:
    strategy = RetryPresets.none()
    assert strategy.config.max_attempts == 1  # type: ignore[attr-defined]
    assert not strategy(ERR, 1).should_retry


def test_preset_default() -> None:
    config = RetryPresets.default().config  # type: ignore[attr-defined]
    assert config == RetryStrategyConfig(
        max_attempts=6,
        initial_delay=Duration.from_seconds(5),
        max_delay=Duration.from_minutes(1),
        backoff_rate=2,
        jitter_strategy=JitterStrategy.FULL,
    )
    strategy = RetryPresets.default()
    assert all(1 <= strategy(ERR, a).delay.to_millis() <= 60_000 for a in range(1, 6))
    assert not strategy(ERR, 6).should_retry


def test_preset_transient() -> None:
    config = RetryPresets.transient().config  # type: ignore[attr-defined]
    assert config.max_attempts == 3
    assert config.backoff_rate == 2
    assert config.jitter_strategy is JitterStrategy.HALF
    assert config.initial_delay == Duration.from_seconds(5)
    assert config.max_delay == Duration.from_minutes(5)
    delay = RetryPresets.transient()(ERR, 1).delay.to_millis()
    assert 2500 <= delay <= 5000


def test_preset_resource_availability() -> None:
    config = RetryPresets.resource_availability().config  # type: ignore[attr-defined]
    assert config.max_attempts == 5
    assert config.initial_delay == Duration.from_seconds(5)
    assert config.max_delay == Duration.from_minutes(5)
    assert config.backoff_rate == 2
    assert config.jitter_strategy is JitterStrategy.FULL


def test_preset_critical() -> None:
    strategy = RetryPresets.critical()
    config = strategy.config  # type: ignore[attr-defined]
    assert config.max_attempts == 10
    assert config.backoff_rate == 1.5
    assert config.jitter_strategy is JitterStrategy.NONE
    # 1 s * 1.5 ** n, capped at 60 s; AWS would round each up to whole seconds.
    assert delays_ms(strategy, range(1, 11)) == [
        1000,
        1500,
        2250,
        3375,
        5063,
        7594,
        11391,
        17086,
        25629,
        None,
    ]


def test_preset_linear() -> None:
    strategy = RetryPresets.linear()
    assert delays_ms(strategy, range(1, 7)) == [1000, 2000, 3000, 4000, 5000, None]


def test_preset_fixed() -> None:
    assert delays_ms(RetryPresets.fixed(), range(1, 6)) == [5000, 5000, 5000, 5000, None]
    strategy = RetryPresets.fixed(Duration.from_milliseconds(200))
    assert delays_ms(strategy, range(1, 6)) == [200, 200, 200, 200, None]


def test_presets_return_fresh_strategies() -> None:
    assert RetryPresets.default() is not RetryPresets.default()


# endregion
