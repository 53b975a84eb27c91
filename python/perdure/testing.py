"""Testing durable workflows without waiting.

:class:`TimeSkippingClock` replaces the engine's clock. Time stands still
until the test moves it, and while the engine has nothing to run it jumps
straight to the next wake-up (a wait, a step retry, a wait_for_condition
poll). A workflow that waits days between steps therefore runs end to end
in milliseconds, through the real engine and store.

Deadlines that someone else is supposed to beat (a callback's timeout or
heartbeat, an execution's timeout) are never jumped to, so the test can
answer a callback first; :meth:`TimeSkippingClock.advance` moves time past
them. A jump to a later wake-up passes them too, in order, as real time
would. Example::

    clock = TimeSkippingClock()
    with perdure.Engine(tmp_path, durability="none", clock=clock) as engine:
        run = engine.start(place_order, {"order_id": "o-1"})
        callback_id = ...                       # e.g. from the submitter
        clock.advance(Duration.from_days(2))    # nobody answered in time
        with pytest.raises(perdure.ExecutionFailedError):
            run.result(timeout=5)
"""

from __future__ import annotations

import time
import weakref
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from perdure._core import SkippingClock
from perdure.duration import Duration
from perdure.errors import ValidationError

if TYPE_CHECKING:
    from perdure._core import Core

__all__ = ["TimeSkippingClock"]

# The last moment a datetime can show: the clock is not moved beyond it.
_LAST_MS = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp() * 1000)


class TimeSkippingClock:
    """A clock for tests: moved by :meth:`advance`, and (with ``auto_skip``)
    jumped to the next wake-up whenever the engines using it are idle.

    ``start`` is where time begins (default: now). One clock may be shared
    by several engines of the test.
    """

    def __init__(self, start: datetime | None = None, *, auto_skip: bool = True) -> None:
        if start is None:
            start_ms = time.time_ns() // 1_000_000
        elif isinstance(start, datetime):
            if start.tzinfo is None:
                raise ValidationError("TimeSkippingClock start must be timezone-aware")
            start_ms = int(start.timestamp() * 1000)
            if start_ms < 0:
                raise ValidationError(f"TimeSkippingClock start must be after 1970, got {start}")
        else:
            raise ValidationError(
                f"TimeSkippingClock start must be a datetime, got {type(start).__name__}"
            )
        if not isinstance(auto_skip, bool):
            raise ValidationError(f"auto_skip must be a bool, got {type(auto_skip).__name__}")
        self._clock = SkippingClock(start_ms, auto_skip)
        self._cores: weakref.WeakSet[Core] = weakref.WeakSet()

    @property
    def auto_skip(self) -> bool:
        """Whether idle engines jump to their next wake-up."""
        return self._clock.auto_skip

    @auto_skip.setter
    def auto_skip(self, on: bool) -> None:
        if not isinstance(on, bool):
            raise ValidationError(f"auto_skip must be a bool, got {type(on).__name__}")
        self._clock.auto_skip = on
        self._poke()

    def now(self) -> datetime:
        """The clock's current time."""
        return datetime.fromtimestamp(self._clock.now_ms() / 1000, tz=UTC)

    def now_ms(self) -> int:
        """The clock's current time in milliseconds since the Unix epoch."""
        return self._clock.now_ms()

    def advance(self, duration: Duration) -> datetime:
        """Moves time forward by ``duration``; every timer that falls due
        fires (waits end, callbacks and executions time out). Returns the
        new time."""
        if not isinstance(duration, Duration):
            raise ValidationError(f"advance needs a Duration, got {type(duration).__name__}")
        millis = duration.to_millis()
        if millis < 0:
            raise ValidationError(f"cannot move a clock backwards ({duration!r})")
        if self._clock.now_ms() + millis > _LAST_MS:
            raise ValidationError(
                f"advance: {duration!r} would move the clock past the year 9999 ({self.now()})"
            )
        self._clock.advance(millis)
        self._poke()
        return self.now()

    def _attach(self, core: Core) -> None:
        self._cores.add(core)

    def _poke(self) -> None:
        for core in list(self._cores):
            core.poke_timers()

    def __repr__(self) -> str:
        return f"TimeSkippingClock({self.now().isoformat()}, auto_skip={self.auto_skip})"
