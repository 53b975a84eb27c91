"""Tests of the default JSON serdes, the pickle serdes and the serdes helpers."""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
import re
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from perdure.errors import SerDesError
from perdure.serdes import (
    DEFAULT_SERDES,
    EXTENDED_MARKER,
    JsonSerDes,
    PickleSerDes,
    SerDes,
    SerDesContext,
    deserialize,
    dumps,
    loads,
    payload_to_json_text,
    serialize,
)

CTX = SerDesContext(operation_id="op-7", execution_id="exec-1")


# region exact comparison


def _tz_key(tz: Any) -> Any:
    if tz is None:
        return None
    if isinstance(tz, ZoneInfo):
        return ("zone", tz.key)
    return ("fixed", tz.utcoffset(None), tz.tzname(None))


def canon(value: Any) -> Any:
    """A representation that differs whenever type, value or order differs."""
    t = type(value)
    if t in (list, tuple):
        return (t.__name__, tuple(canon(x) for x in value))
    if t is dict:
        return ("dict", tuple((canon(k), canon(v)) for k, v in value.items()))
    if t in (set, frozenset):
        return (t.__name__, tuple(sorted((canon(x) for x in value), key=repr)))
    if t is datetime:
        return (
            "datetime",
            value.replace(tzinfo=None).isoformat(),
            value.fold,
            _tz_key(value.tzinfo),
        )
    if t is time:
        return ("time", value.replace(tzinfo=None).isoformat(), value.fold, _tz_key(value.tzinfo))
    if t is int:
        # repr() of a huge int hits Python's digit limit; hex does not.
        return ("int", format(value, "x"))
    return (t.__name__, repr(value))


def assert_round_trip(value: Any) -> bytes:
    data = dumps(value)
    assert type(data) is bytes
    back = loads(data)
    assert canon(back) == canon(value), (value, data, back)
    return data


# endregion
# region strategies

fixed_offsets = st.builds(
    timezone,
    st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
    ),
)
named_offsets = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-12), max_value=timedelta(hours=12)).map(
        lambda d: timedelta(minutes=round(d.total_seconds() / 60))
    ),
    st.text(min_size=1, max_size=5),
)
tricky_keys = st.one_of(
    st.text(max_size=8),
    st.text(max_size=6).map(lambda s: "$" + s),
    st.sampled_from(["$", "$dt", "$tu", "$m", "$i", "$s", "~", "$set"]),
)

hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.text(alphabet=st.characters(codec=None, categories=["Cs", "Ll"]), max_size=5),
    st.binary(max_size=16),
    st.decimals(allow_nan=False, allow_infinity=True),
    st.sampled_from([Decimal("NaN"), Decimal("-0"), Decimal("1.10"), Decimal("1E+3")]),
    st.uuids(),
    st.datetimes(),
    st.datetimes(timezones=st.timezones()),
    st.datetimes(timezones=fixed_offsets),
    st.datetimes(timezones=named_offsets),
    st.dates(),
    st.times(),
    st.times(timezones=fixed_offsets),
    st.timedeltas(),
)
hashables = st.recursive(
    hashable_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(tuple),
        st.frozensets(children, max_size=4),
    ),
    max_leaves=8,
)
scalars = st.one_of(hashable_scalars, st.binary(max_size=16).map(bytearray))
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(tricky_keys, children, max_size=5),
        st.dictionaries(hashables, children, max_size=4),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
    ),
    max_leaves=25,
)
plain_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(alphabet=st.characters(exclude_categories=["Cs"])),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=12),
        st.dictionaries(
            st.text(alphabet=st.characters(exclude_categories=["Cs"])), children, max_size=12
        ),
    ),
    max_leaves=40,
)

# endregion
# region round trips


@settings(max_examples=600, deadline=None)
@given(values)
def test_any_supported_value_round_trips_with_exact_types(value: Any) -> None:
    assert_round_trip(value)


@settings(max_examples=300, deadline=None)
@given(plain_values)
def test_plain_json_is_stored_as_plain_json(value: Any) -> None:
    data = assert_round_trip(value)
    assert not data.startswith(EXTENDED_MARKER)
    assert data == orjson.dumps(value)
    assert canon(orjson.loads(data)) == canon(value)


@settings(max_examples=200, deadline=None)
@given(values)
def test_extended_payload_is_marker_plus_json(value: Any) -> None:
    data = dumps(value)
    if data.startswith(EXTENDED_MARKER):
        orjson.loads(data[1:])  # the rest is valid JSON
    else:
        assert canon(orjson.loads(data)) == canon(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        2**63 - 1,
        -(2**63),
        2**64 - 1,
        1.5,
        -0.0,
        5e-324,
        1.7976931348623157e308,
        "",
        "héllo ☃ 𝄞",
        [],
        {},
        [1, "a", None, True, 2.5],
        {"status": "ok", "n": 3, "nested": {"deep": [1, [2, [3]]]}},
    ],
)
def test_plain_scalars_and_containers(value: Any) -> None:
    data = assert_round_trip(value)
    assert data == orjson.dumps(value)


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        (datetime(2024, 5, 1, 12, 30, 15, 123456), "$dt"),
        (datetime(2024, 5, 1, 12, 0, tzinfo=UTC), "$dt"),
        (datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=-5, minutes=-30))), "$dt"),
        (datetime(2024, 3, 31, 2, 30, tzinfo=ZoneInfo("Europe/Paris")), "$dz"),
        (date(1, 1, 1), "$d"),
        (time(23, 59, 59, 999999), "$t"),
        (time(8, 0, tzinfo=timezone(timedelta(hours=2))), "$t"),
        (timedelta(days=-3, seconds=5, microseconds=7), "$td"),
        (Decimal("3.14159265358979323846264338327950288"), "$dec"),
        (Decimal("-0"), "$dec"),
        (Decimal("sNaN"), "$dec"),
        (uuid.UUID("12345678-1234-5678-1234-567812345678"), "$u"),
        (b"\x00\xffbytes", "$b"),
        (bytearray(b"mutable"), "$ba"),
        ((1, "two", (3.0,)), "$tu"),
        ({1, 2, 3}, "$set"),
        (frozenset({"a", "b"}), "$fs"),
        ({1: "one", (2, 3): "tuple key", None: 0}, "$m"),
        (2**64, "$i"),
        (-(2**63) - 1, "$i"),
        (float("inf"), "$f"),
        (float("-inf"), "$f"),
        ("lone \ud800 surrogate", "$s"),
    ],
)
def test_extended_types_round_trip_with_their_tag(value: Any, tag: str) -> None:
    data = dumps(value)
    assert data.startswith(EXTENDED_MARKER)
    assert f'"{tag}"'.encode() in data
    back = loads(data)
    if isinstance(value, Decimal) and value.is_nan():
        assert type(back) is Decimal and str(back) == str(value)
    else:
        assert canon(back) == canon(value)


def test_nan_round_trips_as_nan() -> None:
    back = loads(dumps(float("nan")))
    assert type(back) is float and math.isnan(back)
    back_list = loads(dumps([1.0, float("nan")]))
    assert back_list[0] == 1.0 and math.isnan(back_list[1])


def test_negative_zero_keeps_its_sign() -> None:
    assert math.copysign(1.0, loads(dumps(-0.0))) == -1.0
    assert math.copysign(1.0, loads(dumps([-0.0]))[0]) == -1.0


def test_zoneinfo_datetime_keeps_its_zone_and_fold() -> None:
    paris = ZoneInfo("Europe/Paris")
    # 02:30 on 2024-10-27 happens twice in Paris; fold=1 is the second time.
    second = datetime(2024, 10, 27, 2, 30, tzinfo=paris, fold=1)
    back = loads(dumps(second))
    assert back.tzinfo is paris
    assert back.fold == 1
    assert back.utcoffset() == timedelta(hours=1)
    assert back == second


def test_naive_and_aware_datetimes_stay_apart() -> None:
    naive = datetime(2024, 1, 1, 12)
    aware = naive.replace(tzinfo=UTC)
    back_naive, back_aware = loads(dumps([naive, aware]))
    assert back_naive.tzinfo is None
    assert back_aware.tzinfo is UTC


def test_named_fixed_offset_keeps_its_name() -> None:
    cet = timezone(timedelta(hours=1), "CET")
    back = loads(dumps(datetime(2024, 1, 1, tzinfo=cet)))
    assert back.tzinfo.tzname(None) == "CET"


def test_datetime_with_other_tzinfo_keeps_the_instant() -> None:
    class Custom(tzinfo):
        def utcoffset(self, dt: datetime | None) -> timedelta:
            return timedelta(hours=3)

        def tzname(self, dt: datetime | None) -> str:
            return "X"

        def dst(self, dt: datetime | None) -> timedelta:
            return timedelta(0)

    value = datetime(2024, 1, 1, 12, tzinfo=Custom())
    back = loads(dumps(value))
    assert back == value
    assert back.utcoffset() == timedelta(hours=3)


def test_user_dicts_that_look_like_tags_are_not_misread() -> None:
    # Plain payload: never interpreted.
    assert loads(dumps({"$dt": "2024-01-01"})) == {"$dt": "2024-01-01"}
    assert loads(dumps({"$tu": [1, 2]})) == {"$tu": [1, 2]}
    # Extended payload: the one-key "$" dicts are escaped.
    value = {
        "when": date(2024, 1, 1),
        "a": {"$dt": "2024-01-01"},
        "b": [{"$tu": [1, 2]}, {"$m": []}, {"$": None}, {"$nope": 1}],
        "c": {"$dt": 1, "other": 2},
    }
    assert canon(loads(dumps(value))) == canon(value)
    # A tag-looking key among non-str keys is fine too.
    mixed = {1: {"$i": "ff"}, "$i": "ff"}
    assert canon(loads(dumps(mixed))) == canon(mixed)


def test_big_ints_at_the_64_bit_boundary() -> None:
    for value in (2**64 - 1, -(2**63)):
        assert not dumps(value).startswith(EXTENDED_MARKER)
        assert loads(dumps(value)) == value
    for value in (2**64, -(2**63) - 1, [2**100, 1]):
        assert dumps(value).startswith(EXTENDED_MARKER)
        assert loads(dumps(value)) == value


def test_ints_beyond_the_str_digit_limit_round_trip() -> None:
    value = 10**5000 + 7
    assert loads(dumps(value)) == value
    assert loads(dumps([-value])) == [-value]


def test_surrogates_in_keys_round_trip() -> None:
    value = {"\udfff": 1, "ok": "\ud83d"}
    assert canon(loads(dumps(value))) == canon(value)


def test_sets_encode_the_same_whatever_their_order() -> None:
    a = {3, 1, 2}
    b = {2, 3, 1}
    assert dumps(a) == dumps(b) == EXTENDED_MARKER + b'{"$set":[1,2,3]}'
    mixed = {1, "a", None}
    assert loads(dumps(mixed)) == mixed


def test_dict_order_is_kept() -> None:
    value = {"b": 1, "a": 2, "c": date(2024, 1, 1)}
    assert list(loads(dumps(value))) == ["b", "a", "c"]
    keyed = {3: "x", 1: "y"}
    assert list(loads(dumps(keyed))) == [3, 1]


def test_enum_mixins_are_stored_as_their_value() -> None:
    class Level(enum.IntEnum):
        HIGH = 3

    class Color(enum.StrEnum):
        RED = "red"

    for value in (Level.HIGH, [Level.HIGH], (Level.HIGH,), {"c": Color.RED}):
        back = loads(dumps(value))
        assert back == value
    assert type(loads(dumps(Level.HIGH))) is int
    assert type(loads(dumps((Color.RED,)))[0]) is str


def test_tuple_and_list_are_distinguished_even_when_nested() -> None:
    value = {"a": [(1, 2), [1, 2]], "b": ((),)}
    back = loads(dumps(value))
    assert type(back["a"][0]) is tuple and type(back["a"][1]) is list
    assert back["b"] == ((),)


def test_large_plain_list_is_plain() -> None:
    value = list(range(10_000))
    assert dumps(value) == orjson.dumps(value)
    assert loads(dumps(value)) == value


# endregion
# region unsupported values


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


Pair = collections.namedtuple("Pair", "a b")


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (object(), "object"),
        (collections.OrderedDict(a=1), "collections.OrderedDict"),
        (collections.defaultdict(list), "collections.defaultdict"),
        (Pair(1, 2), "Pair"),
        (Color.RED, "Color"),
        (Point(1, 2), "Point"),
        (memoryview(b"x"), "memoryview"),
        (lambda: 1, "function"),
        (complex(1, 2), "complex"),
        (time(1, tzinfo=ZoneInfo("Europe/Paris")), "datetime.time"),
    ],
)
def test_unsupported_values_raise_serdes_error_naming_the_type(value: Any, type_name: str) -> None:
    with pytest.raises(SerDesError, match=re.escape(type_name)) as info:
        dumps(value)
    assert "not supported by the default JSON serdes" in str(info.value)
    with pytest.raises(SerDesError, match=re.escape(type_name)):
        dumps({"nested": [value]})


def test_error_names_where_the_bad_value_is() -> None:
    with pytest.raises(SerDesError) as info:
        dumps({"items": [1, 2, {"x": object()}]})
    assert "value['items'][2]['x']" in str(info.value)
    with pytest.raises(SerDesError) as info:
        dumps((1, {object()}))
    assert "value[1]<element>" in str(info.value)


def test_reference_cycle_raises_serdes_error() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(SerDesError, match="cycle"):
        dumps(cyclic)
    cyclic_dict: dict[str, Any] = {"when": date(2024, 1, 1)}
    cyclic_dict["self"] = cyclic_dict
    with pytest.raises(SerDesError, match="cycle"):
        dumps(cyclic_dict)


def test_serialize_names_the_operation() -> None:
    with pytest.raises(SerDesError) as info:
        serialize(None, {"a": object()}, CTX)
    assert info.value.operation == "op-7"
    assert "'op-7'" in str(info.value) and "'exec-1'" in str(info.value)
    assert "object" in str(info.value)
    with pytest.raises(SerDesError) as info:
        JsonSerDes().serialize(object(), CTX)
    assert info.value.operation == "op-7"


# endregion
# region decoding errors


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"~", "corrupt"),
        (b"~[1,", "corrupt"),
        (b'~{"$zz":1}', "unknown tag"),
        (b'~{"$b":"***"}', "corrupt"),
        (b'~{"$f":"1.5"}', r"\$f"),
        (b'~{"$dt":"yesterday"}', "corrupt"),
        (b'~{"$m":[[[1],2]]}', "corrupt"),
    ],
)
def test_bad_payloads_raise_serdes_error(data: bytes, match: str) -> None:
    with pytest.raises(SerDesError, match=match):
        loads(data)


def test_deserialize_names_the_operation() -> None:
    with pytest.raises(SerDesError) as info:
        deserialize(None, b"~[", CTX)
    assert info.value.operation == "op-7"
    assert "'op-7'" in str(info.value)


def test_loads_accepts_other_buffers_and_str() -> None:
    data = dumps({"d": date(2024, 2, 3)})
    expected = {"d": date(2024, 2, 3)}
    assert loads(bytearray(data)) == expected
    assert loads(memoryview(data)) == expected
    assert loads(data.decode()) == expected
    assert loads(memoryview(b'{"a":1}')) == {"a": 1}
    assert loads('{"a":1}') == {"a": 1}


def test_payload_to_json_text() -> None:
    assert payload_to_json_text(dumps({"a": 1})) == '{"a":1}'
    assert payload_to_json_text(dumps((1, 2))) == '{"$tu":[1,2]}'


# endregion
# region SerDes API


class UpperSerDes(SerDes[str]):
    def serialize(self, value: str, context: SerDesContext) -> str:
        return value.upper()

    def deserialize(self, data: bytes, context: SerDesContext) -> str:
        return data.decode().lower()


class FailingSerDes(SerDes[Any]):
    def serialize(self, value: Any, context: SerDesContext) -> bytes:
        raise ValueError("no thanks")

    def deserialize(self, data: bytes, context: SerDesContext) -> Any:
        raise KeyError("missing")


class WrongTypeSerDes(SerDes[Any]):
    def serialize(self, value: Any, context: SerDesContext) -> Any:
        return 42

    def deserialize(self, data: bytes, context: SerDesContext) -> Any:
        return data


def test_default_helpers_use_the_default_serdes() -> None:
    value = {"when": datetime(2024, 1, 1, tzinfo=UTC), "n": 1}
    data = serialize(None, value, CTX)
    assert data == dumps(value)
    assert deserialize(None, data, CTX) == value
    assert DEFAULT_SERDES.serialize(value, CTX) == data
    assert DEFAULT_SERDES.deserialize(data, CTX) == value


def test_custom_serdes_str_output_is_stored_as_utf8() -> None:
    data = serialize(UpperSerDes(), "héllo", CTX)
    assert data == "HÉLLO".encode()
    assert deserialize(UpperSerDes(), data, CTX) == "héllo"


def test_custom_serdes_errors_are_wrapped_naming_the_operation() -> None:
    with pytest.raises(SerDesError) as info:
        serialize(FailingSerDes(), 1, CTX)
    assert info.value.operation == "op-7"
    assert "FailingSerDes.serialize" in str(info.value)
    assert "no thanks" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(SerDesError) as info:
        deserialize(FailingSerDes(), b"x", CTX)
    assert "FailingSerDes.deserialize" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)


def test_custom_serdes_must_return_bytes_or_str() -> None:
    with pytest.raises(SerDesError, match="returned int"):
        serialize(WrongTypeSerDes(), 1, CTX)


def test_serdes_error_from_custom_serdes_gets_the_operation() -> None:
    class Raising(FailingSerDes):
        def serialize(self, value: Any, context: SerDesContext) -> bytes:
            raise SerDesError("custom failure")

    with pytest.raises(SerDesError, match="custom failure") as info:
        serialize(Raising(), 1, CTX)
    assert info.value.operation == "op-7"


def test_pickle_serdes_round_trips_what_json_cannot() -> None:
    serdes = PickleSerDes()
    value = {"point": Point(1, 2), "pair": Pair(1, 2), "od": collections.OrderedDict(a=1)}
    data = serialize(serdes, value, CTX)
    assert deserialize(serdes, data, CTX) == value


def test_pickle_serdes_errors() -> None:
    with pytest.raises(SerDesError, match="cannot pickle") as info:
        serialize(PickleSerDes(), lambda: 1, CTX)
    assert info.value.operation == "op-7"
    with pytest.raises(SerDesError, match="cannot unpickle"):
        deserialize(PickleSerDes(), b"not a pickle", CTX)
    with pytest.raises(SerDesError, match="protocol"):
        PickleSerDes(protocol=99)


def test_serdes_context_defaults_and_immutability() -> None:
    context = SerDesContext()
    assert context.operation_id == "" and context.execution_id == ""
    with pytest.raises(dataclasses.FrozenInstanceError):
        context.operation_id = "x"  # type: ignore[misc]


# endregion
