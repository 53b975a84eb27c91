"""Tests of Duration and of the operation configs."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from fractions import Fraction
from typing import Any

import pytest
from perdure.config import (
    CallbackConfig,
    ChildConfig,
    StepConfig,
    StepSemantics,
    WaitForCallbackConfig,
)
from perdure.duration import Duration
from perdure.errors import ValidationError
from perdure.retries import RetryPresets
from perdure.serdes import JsonSerDes, PickleSerDes

# region Duration


def test_duration_fields_add_up() -> None:
    d = Duration(days=1, hours=2, minutes=3, seconds=4, milliseconds=5)
    assert d.to_millis() == ((1 * 24 + 2) * 60 + 3) * 60_000 + 4_000 + 5
    assert d.to_seconds() == 93784.005
    assert Duration().to_millis() == 0


def test_duration_factories() -> None:
    assert Duration.from_milliseconds(1500).to_millis() == 1500
    assert Duration.from_seconds(1.5).to_millis() == 1500
    assert Duration.from_seconds(0.001).to_millis() == 1
    assert Duration.from_minutes(2).to_millis() == 120_000
    assert Duration.from_hours(0.5).to_millis() == 1_800_000
    assert Duration.from_days(7).to_seconds() == 7 * 86_400
    assert Duration.from_seconds(Fraction(1, 4)).to_millis() == 250
    assert Duration.from_timedelta(timedelta(minutes=1, microseconds=2600)).to_millis() == 60_003


def test_factories_normalise_to_seconds_like_aws() -> None:
    # In AWS SDK v3 a Duration is its total seconds; code reading .seconds
    # of a factory-built duration keeps working.
    assert Duration.from_minutes(5).seconds == 300
    assert Duration.from_days(1).seconds == 86_400
    d = Duration.from_seconds(2.25)
    assert (d.seconds, d.milliseconds) == (2, 250)


def test_durations_compare_by_length() -> None:
    assert Duration(minutes=1, seconds=30) == Duration.from_seconds(90)
    assert Duration(hours=24) == Duration(days=1)
    assert hash(Duration(hours=24)) == hash(Duration(days=1))
    assert Duration(seconds=1) < Duration(milliseconds=1001)
    assert Duration(minutes=1) >= Duration(seconds=60)
    assert sorted([Duration(hours=1), Duration(seconds=5)]) == [
        Duration(seconds=5),
        Duration(hours=1),
    ]
    assert Duration(seconds=1) != 1000
    assert not Duration()
    assert Duration(milliseconds=1)


def test_duration_conversions() -> None:
    assert Duration(seconds=90).to_timedelta() == timedelta(seconds=90)
    assert Duration(milliseconds=1).to_seconds() == 0.001
    assert Duration(seconds=0.0004).to_millis() == 0  # below a millisecond rounds away


def test_duration_repr_shows_the_set_fields() -> None:
    assert repr(Duration(minutes=1, seconds=30)) == "Duration(minutes=1, seconds=30)"
    assert repr(Duration.from_seconds(2.5)) == "Duration(seconds=2, milliseconds=500)"
    assert repr(Duration()) == "Duration()"


@pytest.mark.parametrize("field", ["days", "hours", "minutes", "seconds", "milliseconds"])
def test_negative_duration_field_names_the_field(field: str) -> None:
    with pytest.raises(ValidationError, match=rf"Duration {field} must not be negative, got -1"):
        Duration(**{field: -1})


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (Duration.from_milliseconds, "milliseconds"),
        (Duration.from_seconds, "seconds"),
        (Duration.from_minutes, "minutes"),
        (Duration.from_hours, "hours"),
        (Duration.from_days, "days"),
    ],
)
def test_negative_factory_argument_names_the_field(factory: Any, field: str) -> None:
    with pytest.raises(ValidationError, match=rf"Duration {field} must not be negative"):
        factory(-0.5)


@pytest.mark.parametrize("value", ["5", None, True, [1], 1 + 2j])
def test_non_numbers_are_rejected(value: Any) -> None:
    with pytest.raises(ValidationError, match="Duration seconds must be a number"):
        Duration(seconds=value)
    with pytest.raises(ValidationError, match="Duration seconds must be a number"):
        Duration.from_seconds(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_numbers_are_rejected(value: float) -> None:
    with pytest.raises(ValidationError, match="Duration minutes must be finite"):
        Duration(minutes=value)


def test_negative_timedelta_is_rejected() -> None:
    with pytest.raises(ValidationError, match="must not be negative"):
        Duration.from_timedelta(timedelta(seconds=-1))
    with pytest.raises(ValidationError, match="timedelta"):
        Duration.from_timedelta(5)  # type: ignore[arg-type]


def test_duration_fields_are_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        Duration(5)  # type: ignore[misc]
    d = Duration(seconds=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.seconds = 2  # type: ignore[misc]


# endregion
# region StepConfig


def test_step_config_defaults() -> None:
    config = StepConfig()
    assert config.retry_strategy is None
    assert config.step_semantics is StepSemantics.AT_LEAST_ONCE_PER_RETRY
    assert config.serdes is None
    assert config.sub_type is None


def test_step_config_accepts_valid_values() -> None:
    serdes = PickleSerDes()
    strategy = RetryPresets.transient()
    config = StepConfig(strategy, StepSemantics.AT_MOST_ONCE_PER_RETRY, serdes, sub_type="Charge-1")
    assert config.retry_strategy is strategy
    assert config.step_semantics is StepSemantics.AT_MOST_ONCE_PER_RETRY
    assert config.serdes is serdes
    assert config.sub_type == "Charge-1"


def test_step_semantics_values_match_aws() -> None:
    assert StepSemantics.AT_MOST_ONCE_PER_RETRY.value == "AT_MOST_ONCE_PER_RETRY"
    assert StepSemantics.AT_LEAST_ONCE_PER_RETRY.value == "AT_LEAST_ONCE_PER_RETRY"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"retry_strategy": 3}, "retry_strategy"),
        ({"retry_strategy": "default"}, "retry_strategy"),
        ({"step_semantics": "AT_MOST_ONCE_PER_RETRY"}, "step_semantics"),
        ({"step_semantics": None}, "step_semantics"),
        ({"serdes": object()}, "serdes"),
        ({"serdes": JsonSerDes}, "serdes"),
        ({"sub_type": "has space"}, "sub_type"),
        ({"sub_type": "x" * 33}, "sub_type"),
        ({"sub_type": 5}, "sub_type"),
    ],
)
def test_invalid_step_config_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=rf"StepConfig\.{field}"):
        StepConfig(**kwargs)


def test_step_config_accepts_a_duck_typed_serdes() -> None:
    class Duck:
        def serialize(self, value: Any, context: Any) -> bytes:
            return b""

        def deserialize(self, data: bytes, context: Any) -> Any:
            return None

    duck = Duck()
    assert StepConfig(serdes=duck).serdes is duck  # type: ignore[arg-type]


def test_empty_sub_type_selects_the_default() -> None:
    assert StepConfig(sub_type="").sub_type == ""
    assert StepConfig(sub_type="x" * 32).sub_type == "x" * 32


def test_configs_are_frozen() -> None:
    config = StepConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.serdes = None  # type: ignore[misc]


# endregion
# region callbacks


def test_callback_config_defaults_mean_no_timeout() -> None:
    config = CallbackConfig()
    assert config.timeout is None
    assert config.heartbeat_timeout is None
    assert config.serdes is None
    assert config.timeout_seconds is None
    assert config.heartbeat_timeout_seconds is None


def test_callback_config_positional_order_matches_aws() -> None:
    serdes = JsonSerDes()
    config = CallbackConfig(Duration.from_days(7), Duration.from_minutes(5), serdes)
    assert config.timeout == Duration.from_days(7)
    assert config.heartbeat_timeout == Duration.from_minutes(5)
    assert config.serdes is serdes
    assert config.timeout_seconds == 7 * 86_400
    assert config.heartbeat_timeout_seconds == 300


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": Duration()}, r"CallbackConfig\.timeout must be longer than zero"),
        (
            {"heartbeat_timeout": Duration(seconds=0)},
            r"CallbackConfig\.heartbeat_timeout must be longer than zero",
        ),
        ({"timeout": 60}, r"CallbackConfig\.timeout must be a Duration"),
        ({"heartbeat_timeout": timedelta(seconds=5)}, r"CallbackConfig\.heartbeat_timeout"),
        ({"serdes": "json"}, r"CallbackConfig\.serdes"),
        ({"sub_type": "a/b"}, r"CallbackConfig\.sub_type"),
    ],
)
def test_invalid_callback_config(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CallbackConfig(**kwargs)


def test_zero_timeout_error_says_how_to_disable_it() -> None:
    with pytest.raises(ValidationError, match="use None for no timeout"):
        CallbackConfig(timeout=Duration())


def test_sub_millisecond_timeout_counts_as_zero() -> None:
    with pytest.raises(ValidationError, match="timeout"):
        CallbackConfig(timeout=Duration(milliseconds=0.2))


def test_wait_for_callback_config() -> None:
    strategy = RetryPresets.none()
    config = WaitForCallbackConfig(Duration.from_hours(1), None, None, strategy)
    assert isinstance(config, CallbackConfig)
    assert config.timeout == Duration.from_hours(1)
    assert config.retry_strategy is strategy
    assert WaitForCallbackConfig().retry_strategy is None
    with pytest.raises(ValidationError, match=r"WaitForCallbackConfig\.retry_strategy"):
        WaitForCallbackConfig(retry_strategy=5)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"WaitForCallbackConfig\.timeout"):
        WaitForCallbackConfig(timeout=Duration())


# endregion
# region child contexts


def test_child_config() -> None:
    assert ChildConfig() == ChildConfig(serdes=None, sub_type=None)
    serdes = PickleSerDes()
    assert ChildConfig(serdes, "Batch").serdes is serdes
    with pytest.raises(ValidationError, match=r"ChildConfig\.serdes"):
        ChildConfig(serdes=42)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"ChildConfig\.sub_type"):
        ChildConfig(sub_type="ünïcode")


# endregion
