"""Type stubs of the Rust extension ``perdure._core`` (rust/python)."""

import builtins
from collections.abc import Callable
from os import PathLike

FORMAT_VERSION: int
MISSING: object
NEW: object
__version__: str

def postgres_store_exists(url: str) -> bool: ...

# (kind, op_type, sub_type, op_id, name, attempt, aux, aux2, extra, payload)
# The sub type (third) is a built-in code or a custom label.
_RecordIn = tuple[int, int, int | str, str, str | None, int, int, int, str | None, bytes | None]
# _RecordIn plus the commit timestamp in ms
_RecordOut = tuple[
    int, int, int | str, str, str | None, int, int, int, str | None, bytes | None, int
]
# (exec_key, execution_id, function, state, pending, created_ms, updated_ms)
_Summary = tuple[int, str, str, str, bool, int, int]
# (op_type, sub_type, name, status, attempt, aux, aux2, timestamp_ms, extra, payload,
#  start_aux, started_ms)
_OpState = tuple[
    int, int | str, str | None, int, int, int, int, int, str | None, bytes | None, int, int
]

class Invocation:
    exec_key: int
    execution_id: str
    function: str
    wake: int
    created_ms: int
    @property
    def input(self) -> bytes | None: ...
    @property
    def op_count(self) -> int: ...
    @property
    def invocations(self) -> int: ...
    def lookup(self, op_id: str) -> _OpState | None: ...
    def replay_step(self, op_id: str, name: str | None = None) -> object: ...

class SkippingClock:
    def __init__(self, start_ms: int, auto_skip: bool = True) -> None: ...
    def now_ms(self) -> int: ...
    def advance(self, ms: int) -> int: ...
    @property
    def auto_skip(self) -> bool: ...
    @auto_skip.setter
    def auto_skip(self, on: bool) -> None: ...

class Core:
    def __init__(
        self,
        path: str | PathLike[str],
        *,
        durability: str = "full",
        owner: bool = True,
        map_size: int = ...,
        poll_interval: float = 0.005,
        lease_timeout: float = 10.0,
        clock: SkippingClock | None = None,
    ) -> None: ...
    @property
    def path(self) -> str: ...
    @property
    def owner(self) -> bool: ...
    @property
    def owner_id(self) -> int | None: ...
    def lease(self, exec_key: int) -> int | None: ...
    def check(self) -> tuple[int, list[str]]: ...
    @property
    def pending_timers(self) -> int: ...
    def now_ms(self) -> int: ...
    def poke_timers(self) -> None: ...
    def start(
        self, execution_id: str, function: str, input: bytes, timeout_ms: int | None = None
    ) -> tuple[int, bool]: ...
    def load(self, exec_key: int) -> Invocation: ...
    def append(
        self,
        exec_key: int,
        records: list[_RecordIn],
        wake_at: list[tuple[int, str]] = ...,
        callback: tuple[str, int, int] | None = None,
        child: tuple[str, str, bytes, str, int | None] | None = None,
    ) -> str | None: ...
    def end_invocation(
        self,
        exec_key: int,
        seen_wake: int,
        final_state: str | None,
        records: list[_RecordIn],
        wake_at: list[tuple[int, str]] = ...,
    ) -> bool: ...
    def append_async(
        self,
        exec_key: int,
        records: list[_RecordIn],
        wake_at: list[tuple[int, str]],
        callback: tuple[str, int, int] | None,
        child: tuple[str, str, bytes, str, int | None] | None,
        on_done: Callable[[bool, object], object],
    ) -> None:
        """``append`` that returns at once; the commit thread calls
        ``on_done(True, callback_id_or_None)`` or ``on_done(False, exception)``
        holding the GIL."""
    def end_invocation_async(
        self,
        exec_key: int,
        seen_wake: int,
        final_state: str | None,
        records: list[_RecordIn],
        wake_at: list[tuple[int, str]],
        on_done: Callable[[bool, object], object],
    ) -> None:
        """``end_invocation`` that returns at once; ``on_done(True, rerun)`` or
        ``on_done(False, exception)`` from the commit thread."""
    def complete_callback(
        self, callback_id: str, success: bool, payload: bytes | None = None
    ) -> None: ...
    def heartbeat(self, callback_id: str) -> None: ...
    def cancel(self, execution_id: str, error_payload: bytes) -> None: ...
    def start_executor(self, workers: int, invoke: Callable[[int], object]) -> None: ...
    def run_batch(
        self, funcs: builtins.list[Callable[[], object]], max_concurrency: int
    ) -> builtins.list[tuple[bool, object]]: ...
    def finish(self, exec_key: int, rerun: bool) -> None: ...
    def retry_later(self, exec_key: int, full: bool | None = None, detail: str = "") -> float: ...
    def stall_seq(self) -> int: ...
    def check_stalled(self, exec_key: int, seq: int) -> None: ...
    def park(self, exec_key: int) -> None: ...
    def is_running(self, exec_key: int) -> bool: ...
    def execution(self, execution_id: str) -> _Summary | None: ...
    def execution_by_key(self, exec_key: int) -> _Summary | None: ...
    def list(
        self, state: str | None = None, function: str | None = None, limit: int = 0
    ) -> list[_Summary]: ...
    def journal(self, exec_key: int) -> builtins.list[_RecordOut]: ...
    def last_record(self, exec_key: int) -> _RecordOut | None: ...
    def wait_finished(self, exec_key: int, timeout: float | None = None) -> _Summary | None: ...
    def close(self, timeout: float = 10.0) -> bool: ...
