"""Serialization of operation inputs, results and errors.

The default serdes is JSON with extended types. Its wire format is made for
replay speed:

- A value built only from plain JSON types (``None``, ``bool``, ``int`` that
  fits in 64 bits, finite ``float``, ``str``, ``list`` and ``dict`` with
  ``str`` keys) is stored as plain JSON text, with no wrapping, so reading
  it back costs one ``orjson.loads``.
- Any other value is stored as the marker byte ``~`` followed by JSON in
  which each extended value is a one-key object whose key starts with
  ``$``: ``{"$dt": "2024-05-01T12:00:00+00:00"}``, ``{"$tu": [1, 2]}``.
  ``~`` can never start JSON text, so the first byte tells the two forms
  apart, and only marked payloads are walked on decode. A one-key dict of
  the user's own whose key starts with ``$`` is escaped as ``{"$m": ...}``
  in this form, so it is never misread as a tag.

Extended types round-trip with their exact type: ``datetime`` (naive,
fixed-offset or ``zoneinfo``), ``date``, ``time``, ``timedelta``,
``Decimal``, ``UUID``, ``bytes``, ``bytearray``, ``tuple``, ``set``,
``frozenset``, dicts with non-``str`` keys, ints beyond 64 bits, NaN and the
infinities, and strings holding lone surrogates. Subclasses of supported
types (``OrderedDict``, ``IntEnum``, named tuples, ...) are refused rather
than silently turned into their base type, because replay must hand the
workflow the same value the first run saw.
"""

from __future__ import annotations

import base64
import math
import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any, Generic, TypeVar
from uuid import UUID
from zoneinfo import ZoneInfo

import orjson

from perdure.errors import SerDesError

__all__ = [
    "DEFAULT_SERDES",
    "EXTENDED_MARKER",
    "JsonSerDes",
    "PickleSerDes",
    "SerDes",
    "SerDesContext",
    "deserialize",
    "dumps",
    "error_object_from_payload",
    "loads",
    "payload_to_json_text",
    "serialize",
]

T = TypeVar("T")
_DateOrTime = TypeVar("_DateOrTime", datetime, time)

EXTENDED_MARKER = b"~"
"""First byte of a default-serdes payload that holds extended types."""

_MARKER_STR = "~"
_MARKER_BYTE = EXTENDED_MARKER[0]
_MIN_PICKLE_PROTOCOL = 2
_I64_MIN = -(1 << 63)
_U64_MAX = (1 << 64) - 1
_NONE_TYPE = type(None)
# Types that are plain JSON whatever their value (ints are range-checked by
# orjson itself, which refuses those beyond 64 bits).
_ATOMS = frozenset({str, int, bool, _NONE_TYPE})
_STR_ONLY = frozenset({str})
# Up to this many items, a Python loop over the items is cheaper than
# reading the encoded text back to check it.
_SMALL_CONTAINER = 8

_orjson_dumps = orjson.dumps
_orjson_loads = orjson.loads
_JSONEncodeError = orjson.JSONEncodeError
_JSONDecodeError = orjson.JSONDecodeError
_isfinite = math.isfinite

_SUPPORTED = (
    "None, bool, int, float, str, list, dict, tuple, set, frozenset, bytes, "
    "bytearray, datetime, date, time, timedelta, Decimal and UUID"
)


# region plain check

# orjson natively writes a few types that would not come back as themselves;
# these options make it refuse subclasses of builtins, datetimes and
# dataclasses instead, so that only exact plain JSON is written as such.
_PLAIN_OPTIONS = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


# endregion
# region extended encoding


class _UnsupportedValueError(Exception):
    """An unsupported value was met; ``path`` is built on the way out."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value
        self.path: list[str] = []


def _simple_tz(tz: timezone) -> bool:
    # True when the ISO offset alone rebuilds the same timezone: no custom
    # name, and no sub-second part (CPython 3.11's fromisoformat drops the
    # microseconds of an offset that is otherwise zero).
    offset = tz.utcoffset(None)
    return offset.microseconds == 0 and tz.tzname(None) == timezone(offset).tzname(None)


def _tz_detail(tz: timezone | None) -> list[Any] | None:
    if tz is None:
        return None
    offset = tz.utcoffset(None)
    name = tz.tzname(None)
    micros = (offset.days * 86_400 + offset.seconds) * 1_000_000 + offset.microseconds
    return [micros, None if name == timezone(offset).tzname(None) else name]


def _enc_datetime(v: datetime, _strict: bool) -> Any:
    tz = v.tzinfo
    if tz is None or type(tz) is timezone:
        if v.fold or (tz is not None and not _simple_tz(tz)):
            # Rare: keep every detail explicitly rather than in ISO text.
            naive = v.replace(tzinfo=None).isoformat()
            return {"$dt": [naive, v.fold, _tz_detail(tz)]}
        return {"$dt": v.isoformat()}
    if type(tz) is ZoneInfo and tz.key is not None:
        # Keep the zone, not just today's offset, so arithmetic after replay
        # follows the same daylight-saving rules.
        return {"$dz": [v.replace(tzinfo=None).isoformat(), tz.key, v.fold]}
    offset = v.utcoffset()
    if offset is None:
        raise _UnsupportedValueError(v)
    # Other tzinfo implementations are kept as the fixed offset in force at
    # this instant: the instant is exact, the zone rules are not kept.
    return _enc_datetime(v.replace(tzinfo=timezone(offset)), _strict)


def _enc_time(v: time, _strict: bool) -> Any:
    tz = v.tzinfo
    if tz is not None and type(tz) is not timezone:
        # A time of day has no date, so a zone's offset is undefined for it.
        raise _UnsupportedValueError(v)
    if v.fold or (tz is not None and not _simple_tz(tz)):
        return {"$t": [v.replace(tzinfo=None).isoformat(), v.fold, _tz_detail(tz)]}
    return {"$t": v.isoformat()}


def _enc_seq(tag: str) -> Callable[[Any, bool], Any]:
    def encode(v: Any, strict: bool) -> Any:
        return {tag: _enc_items(v, strict)}

    return encode


def _enc_unordered(tag: str) -> Callable[[Any, bool], Any]:
    def encode(v: Any, strict: bool) -> Any:
        try:
            items = [_enc(x, strict) for x in v]
        except _UnsupportedValueError as exc:
            exc.path.append("<element>")
            raise
        # Ordered by their JSON text: equal sets then give equal bytes,
        # whatever the hash seed of the process that wrote them, and mixed
        # or unorderable elements (None, NaN) need no special case.
        items.sort(key=_orjson_dumps)
        return {tag: items}

    return encode


def _b64(v: bytes | bytearray) -> str:
    return base64.b64encode(v).decode("ascii")


_ENCODERS: dict[type, Callable[[Any, bool], Any]] = {
    tuple: _enc_seq("$tu"),
    set: _enc_unordered("$set"),
    frozenset: _enc_unordered("$fs"),
    bytes: lambda v, _s: {"$b": _b64(v)},
    bytearray: lambda v, _s: {"$ba": _b64(v)},
    datetime: _enc_datetime,
    date: lambda v, _s: {"$d": v.isoformat()},
    time: _enc_time,
    timedelta: lambda v, _s: {"$td": [v.days, v.seconds, v.microseconds]},
    Decimal: lambda v, _s: {"$dec": str(v)},
    UUID: lambda v, _s: {"$u": str(v)},
}


def _enc_items(v: Any, strict: bool) -> list[Any]:
    out = []
    for i, x in enumerate(v):
        try:
            out.append(_enc(x, strict))
        except _UnsupportedValueError as exc:
            exc.path.append(f"[{i}]")
            raise
    return out


def _utf8_ok(v: str) -> bool:
    if v.isascii():
        return True
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _enc_str(v: str, strict: bool) -> Any:
    if strict and not _utf8_ok(v):
        # Lone surrogates are valid in a Python str but not in UTF-8.
        return {"$s": _b64(v.encode("utf-8", "surrogatepass"))}
    return v


def _enc(v: Any, strict: bool) -> Any:
    """Encode ``v`` into a JSON-compatible tree with tags for extended types."""
    t = type(v)
    if t is str:
        return _enc_str(v, strict)
    if t is int:
        if _I64_MIN <= v <= _U64_MAX:
            return v
        # Hex is exempt from Python's int/str digit limit and is linear time.
        return {"$i": format(v, "x")}
    if t is bool or v is None:
        return v
    if t is float:
        return v if _isfinite(v) else {"$f": repr(v)}
    if t is list:
        return _enc_items(v, strict)
    if t is dict:
        if (
            _STR_ONLY.issuperset(map(type, v))
            and not (len(v) == 1 and next(iter(v)).startswith("$"))
            and not (strict and not all(map(_utf8_ok, v)))
        ):
            out = {}
            for k, x in v.items():
                try:
                    out[k] = _enc(x, strict)
                except _UnsupportedValueError as exc:
                    exc.path.append(f"[{k!r}]")
                    raise
            return out
        # Non-str keys, or a user dict that would look like a tag.
        pairs = []
        for k, x in v.items():
            try:
                ek = _enc(k, strict)
            except _UnsupportedValueError as exc:
                exc.path.append("<key>")
                raise
            try:
                pairs.append([ek, _enc(x, strict)])
            except _UnsupportedValueError as exc:
                exc.path.append(f"[{k!r}]")
                raise
        return {"$m": pairs}
    encoder = _ENCODERS.get(t)
    if encoder is not None:
        return encoder(v, strict)
    if isinstance(v, Enum) and isinstance(v, int | str | float):
        # IntEnum, StrEnum and the like are ints and strs: stored as their
        # value, as orjson writes them in plain JSON, and read back as such.
        return _enc(v.value, strict)
    raise _UnsupportedValueError(v)


def _type_name(value: Any) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _unsupported_message(exc: _UnsupportedValueError) -> str:
    where = "value" + "".join(reversed(exc.path))
    value = exc.value
    detail = ""
    if isinstance(value, datetime | time) and value.tzinfo is not None:
        detail = f" with tzinfo {_type_name(value.tzinfo)}"
    return (
        f"cannot serialize {where}: type {_type_name(value)}{detail} is not "
        f"supported by the default JSON serdes (it supports {_SUPPORTED}, with "
        "exact types); convert the value, or pass a custom serdes"
    )


def _dumps_extended(value: Any) -> bytes:
    try:
        try:
            tree = _enc(value, False)
            return EXTENDED_MARKER + _orjson_dumps(tree)
        except _JSONEncodeError:
            # Most likely a string with lone surrogates: encode them too.
            tree = _enc(value, True)
            return EXTENDED_MARKER + _orjson_dumps(tree)
    except _UnsupportedValueError as exc:
        raise SerDesError(_unsupported_message(exc)) from None
    except _JSONEncodeError as exc:
        msg = f"cannot serialize value: {exc}"
        raise SerDesError(msg) from exc
    except RecursionError:
        msg = "cannot serialize value: it contains a reference cycle or is nested too deeply"
        raise SerDesError(msg) from None


def dumps(value: Any) -> bytes:
    """Serialize ``value`` with the default serdes.

    Raises SerDesError for values the default serdes cannot round-trip.
    """
    t = type(value)
    # Scalars: one type test, then orjson.
    if t in _ATOMS:
        try:
            return _orjson_dumps(value)
        except _JSONEncodeError:
            return _dumps_extended(value)  # an int beyond 64 bits, or surrogates
    if t is float:
        if _isfinite(value):
            return _orjson_dumps(value)
        return _dumps_extended(value)
    if (t is dict or t is list) and len(value) <= _SMALL_CONTAINER:
        # A small flat container of exact scalars is common (a step's
        # result dict); a short loop settles it faster than a read-back.
        # orjson itself refuses dict keys that are not exactly str.
        for item in value.values() if t is dict else value:
            item_type = type(item)
            if item_type not in _ATOMS:
                if item_type in _ENCODERS:
                    # Certainly extended: skip a plain attempt bound to fail.
                    return _dumps_extended(value)
                break
        else:
            try:
                return _orjson_dumps(value, option=_PLAIN_OPTIONS)
            except _JSONEncodeError:
                return _dumps_extended(value)
    # Containers: let orjson (in C) do the type checking, then confirm that
    # the text reads back equal. Reading back catches what orjson writes
    # natively but JSON cannot give back: tuples, UUIDs, enums, NaN and the
    # infinities (written as null). It costs one parse, which is far cheaper
    # than walking the value in Python.
    try:
        data = _orjson_dumps(value, option=_PLAIN_OPTIONS)
    except _JSONEncodeError:
        return _dumps_extended(value)
    if _orjson_loads(data) == value:
        return data
    return _dumps_extended(value)


# endregion
# region extended decoding


def _dec(v: Any) -> Any:
    t = type(v)
    if t is list:
        return [_dec(x) for x in v]
    if t is dict:
        if len(v) == 1:
            ((k, x),) = v.items()
            if k.startswith("$"):
                decoder = _DECODERS.get(k)
                if decoder is None:
                    msg = f"cannot deserialize payload: unknown tag {k!r}"
                    raise SerDesError(msg)
                return decoder(x)
        return {k: _dec(x) for k, x in v.items()}
    return v


def _with_details(value: _DateOrTime, fold: int, tz: Any) -> _DateOrTime:
    if tz is not None:
        micros, name = tz
        offset = timedelta(microseconds=micros)
        value = value.replace(tzinfo=timezone(offset) if name is None else timezone(offset, name))
    if fold:
        value = value.replace(fold=fold)
    return value


def _dec_datetime(x: Any) -> datetime:
    if type(x) is str:
        return datetime.fromisoformat(x)
    iso, fold, tz = x
    return _with_details(datetime.fromisoformat(iso), fold, tz)


def _dec_zoned(x: Any) -> datetime:
    iso, key, fold = x
    return datetime.fromisoformat(iso).replace(tzinfo=ZoneInfo(key), fold=fold)


def _dec_time(x: Any) -> time:
    if type(x) is str:
        return time.fromisoformat(x)
    iso, fold, tz = x
    return _with_details(time.fromisoformat(iso), fold, tz)


def _dec_map(x: Any) -> dict[Any, Any]:
    return {_dec(k): _dec(v) for k, v in x}


def _dec_float(x: Any) -> float:
    value = float(x)
    if _isfinite(value):
        # Only NaN and the infinities are ever written with this tag.
        msg = f"cannot deserialize payload: bad $f value {x!r}"
        raise SerDesError(msg)
    return value


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "$tu": lambda x: tuple(_dec(i) for i in x),
    "$set": lambda x: {_dec(i) for i in x},
    "$fs": lambda x: frozenset(_dec(i) for i in x),
    "$m": _dec_map,
    "$b": lambda x: base64.b64decode(x, validate=True),
    "$ba": lambda x: bytearray(base64.b64decode(x, validate=True)),
    "$dt": _dec_datetime,
    "$dz": _dec_zoned,
    "$d": date.fromisoformat,
    "$t": _dec_time,
    "$td": lambda x: timedelta(days=x[0], seconds=x[1], microseconds=x[2]),
    "$dec": Decimal,
    "$u": UUID,
    "$i": lambda x: int(x, 16),
    "$f": _dec_float,
    "$s": lambda x: base64.b64decode(x, validate=True).decode("utf-8", "surrogatepass"),
}


def _loads_extended(data: Any) -> Any:
    try:
        tree = _orjson_loads(memoryview(data)[1:] if not isinstance(data, str) else data[1:])
        return _dec(tree)
    except SerDesError:
        raise
    except Exception as exc:
        msg = f"cannot deserialize payload: it is corrupt ({type(exc).__name__}: {exc})"
        raise SerDesError(msg) from exc


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Deserialize a payload written by :func:`dumps`."""
    try:
        # One integer compare picks the form; plain payloads, by far the
        # most common, then cost exactly one orjson parse. (Letting orjson
        # fail on the marker instead would cost microseconds per extended
        # payload: its exception carries a copy of the input.)
        if data[0] != _MARKER_BYTE:
            return _orjson_loads(data)
    except IndexError:
        msg = "cannot deserialize payload: it is empty"
        raise SerDesError(msg) from None
    except _JSONDecodeError as exc:
        if isinstance(data, str) and data[:1] == _MARKER_STR:
            return _loads_extended(data)
        msg = f"cannot deserialize payload: it is not valid JSON ({exc})"
        raise SerDesError(msg) from None
    return _loads_extended(data)


def error_object_from_payload(payload: bytes | None) -> dict[str, Any]:
    """The error object a FAILED/RETRY/TIMED_OUT record carries. An unreadable
    payload still yields an object, with its text as the message, so a damaged
    error never hides the failure itself."""
    if not payload:
        return {}
    try:
        obj = loads(payload)
    except SerDesError:
        return {"ErrorMessage": payload.decode("utf-8", "replace")}
    return obj if isinstance(obj, dict) else {"ErrorMessage": str(obj)}


def payload_to_json_text(data: bytes | bytearray | memoryview) -> str:
    """Show a default-serdes payload as JSON text (for history and tools).

    A plain payload is its own JSON text; an extended one is shown as its
    tagged JSON, without the marker byte.
    """
    raw = bytes(data)
    if raw[:1] == EXTENDED_MARKER:
        raw = raw[1:]
    return raw.decode("utf-8")


# endregion
# region SerDes API


@dataclass(frozen=True, slots=True)
class SerDesContext:
    """Where a value being (de)serialized belongs."""

    operation_id: str = ""
    execution_id: str = ""


class SerDes(ABC, Generic[T]):
    """Turns values into bytes for the journal, and back.

    ``serialize`` may return ``str`` (stored as UTF-8) or ``bytes``;
    ``deserialize`` always receives ``bytes``.
    """

    @abstractmethod
    def serialize(self, value: T, context: SerDesContext) -> bytes | str:
        """Serialize ``value``."""

    @abstractmethod
    def deserialize(self, data: bytes, context: SerDesContext) -> T:
        """Deserialize ``data`` produced by :meth:`serialize`."""


def _describe(context: SerDesContext) -> str:
    parts = []
    if context.operation_id:
        parts.append(f"operation {context.operation_id!r}")
    if context.execution_id:
        parts.append(f"execution {context.execution_id!r}")
    return " of ".join(parts) if parts else "an unnamed operation"


def _in_context(exc: SerDesError, context: SerDesContext) -> SerDesError:
    return SerDesError(
        f"{_describe(context)}: {exc.message}",
        operation=context.operation_id or None,
    )


class JsonSerDes(SerDes[Any]):
    """The default: JSON with extended types (see the module docstring)."""

    def serialize(self, value: Any, context: SerDesContext) -> bytes:
        """Serialize ``value`` to JSON bytes."""
        try:
            return dumps(value)
        except SerDesError as exc:
            raise _in_context(exc, context) from exc

    def deserialize(self, data: bytes, context: SerDesContext) -> Any:
        """Deserialize JSON bytes written by :meth:`serialize`."""
        try:
            return loads(data)
        except SerDesError as exc:
            raise _in_context(exc, context) from exc


class PickleSerDes(SerDes[Any]):
    """Pickle, for values JSON cannot hold. Opt-in only.

    Loading a pickle executes code named in the data. Use it only for a
    store that no one but you can write: anyone who can change a record can
    run code in every process that replays it.
    """

    def __init__(self, protocol: int = 5) -> None:
        # A fixed protocol, not HIGHEST_PROTOCOL, so a newer Python does not
        # write records an older one cannot read.
        if isinstance(protocol, bool) or not isinstance(protocol, int):
            msg = f"PickleSerDes protocol must be an int, got {type(protocol).__name__}"
            raise SerDesError(msg)
        if not _MIN_PICKLE_PROTOCOL <= protocol <= pickle.HIGHEST_PROTOCOL:
            msg = (
                f"PickleSerDes protocol must be between 2 and "
                f"{pickle.HIGHEST_PROTOCOL}, got {protocol}"
            )
            raise SerDesError(msg)
        self.protocol = protocol

    def serialize(self, value: Any, context: SerDesContext) -> bytes:
        """Pickle ``value``."""
        try:
            return pickle.dumps(value, protocol=self.protocol)
        except Exception as exc:
            msg = f"{_describe(context)}: cannot pickle {_type_name(value)}: {exc}"
            raise SerDesError(msg, operation=context.operation_id or None) from exc

    def deserialize(self, data: bytes, context: SerDesContext) -> Any:
        """Unpickle ``data``. This executes code named in the data."""
        try:
            return pickle.loads(data)
        except Exception as exc:
            msg = f"{_describe(context)}: cannot unpickle payload: {exc}"
            raise SerDesError(msg, operation=context.operation_id or None) from exc


DEFAULT_SERDES: SerDes[Any] = JsonSerDes()
"""The serdes used when none is configured."""


def _wrap_custom_error(
    exc: Exception, serdes: SerDes[Any], context: SerDesContext, action: str
) -> SerDesError:
    if isinstance(exc, SerDesError):
        if exc.operation is not None:
            return exc
        return _in_context(exc, context)
    msg = (
        f"{_describe(context)}: {type(serdes).__name__}.{action} failed: "
        f"{type(exc).__name__}: {exc}"
    )
    return SerDesError(msg, operation=context.operation_id or None)


def serialize(serdes: SerDes[Any] | None, value: Any, context: SerDesContext) -> bytes:
    """Serialize with ``serdes``, or with the fast default when it is None.

    Any failure is raised as SerDesError naming the operation.
    """
    if serdes is None:
        try:
            return dumps(value)
        except SerDesError as exc:
            raise _in_context(exc, context) from exc
    try:
        data = serdes.serialize(value, context)
    except Exception as exc:
        error = _wrap_custom_error(exc, serdes, context, "serialize")
        if error is exc:
            raise
        raise error from exc
    if type(data) is bytes:
        return data
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    msg = (
        f"{_describe(context)}: {type(serdes).__name__}.serialize returned "
        f"{type(data).__name__}; it must return bytes or str"
    )
    raise SerDesError(msg, operation=context.operation_id or None)


def deserialize(serdes: SerDes[Any] | None, data: bytes, context: SerDesContext) -> Any:
    """Deserialize with ``serdes``, or with the fast default when it is None.

    Any failure is raised as SerDesError naming the operation.
    """
    if serdes is None:
        try:
            return loads(data)
        except SerDesError as exc:
            raise _in_context(exc, context) from exc
    try:
        return serdes.deserialize(data, context)
    except Exception as exc:
        error = _wrap_custom_error(exc, serdes, context, "deserialize")
        if error is exc:
            raise
        raise error from exc


# endregion
