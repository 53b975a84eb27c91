"""asyncio workflows: ``async def`` durable functions and their context.

A durable function written with ``async def`` receives an
:class:`AsyncDurableContext`, whose operations are coroutines::

    @perdure.durable(name="orders.place")
    async def place_order(ctx: perdure.AsyncDurableContext, order: dict) -> dict:
        stock = await ctx.step(lambda _: reserve(order), name="reserve")  # async def reserve
        await ctx.wait(Duration.from_minutes(5))
        callback = await ctx.create_callback(name="approval")
        ...
        return await callback.result()

    async def main() -> None:
        with perdure.Engine("./state") as engine:
            print(await engine.run_async(place_order, {"id": 1}))

The context is a :class:`~perdure.DurableContext` underneath: operations get
the same ids, write the same records and replay the same way, so an
execution's history does not depend on whether its code is sync or async,
and a sync workflow may invoke an async one and vice versa.

Where it runs: the engine hands every invocation of an async function to one
event loop (``Engine(event_loop=...)``: the application's own loop, or by
default a loop the engine runs on a thread of its own, "perdure-asyncio")
and frees its executor worker at once, so an async step that awaits I/O
holds no worker. Commits go to the Rust commit thread without blocking the
loop (``Core.append_async``), which group-commits them with everything else
in flight and answers on the loop.

Concurrency inside one workflow: use ``ctx.parallel`` / ``ctx.map`` (their
branches run as tasks on the loop, each in a child context numbered by its
index; the batch waits for every branch and is checkpointed as one). Do not
run one context's operations concurrently yourself (``asyncio.gather`` over
``ctx.step`` calls, or tasks): an operation takes its id when it starts, and
operations started concurrently are numbered in the order the event loop
happens to reach them, which a replay, where completed operations return at
once, need not repeat. And when one of them suspends the execution (a wait,
a callback), the invocation ends at once; what the others still do is cut
off (their commits are refused) and done again in the next invocation.

Blocking calls (``handle.result()``, ``engine.run()``) must not be made on
the loop that runs async invocations; ``await handle.result_async()`` and
``await engine.run_async()`` are made for that.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import CoroutineType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from perdure import _records as R
from perdure.batch import (
    _NOT_STARTED,
    BatchItem,
    BatchItemStatus,
    BatchResult,
    MapConfig,
    ParallelConfig,
    _Batch,
)
from perdure.config import (
    CallbackConfig,
    ChildConfig,
    InvokeConfig,
    StepConfig,
    StepSemantics,
    WaitForCallbackConfig,
)
from perdure.context import (
    _ABORTING,
    INTERRUPTS,
    Callback,
    DurableContext,
    StepContext,
    WaitForCallbackContext,
    _Abort,
    _InvocationState,
    _Stall,
    _step_error,
    _Suspend,
    _wait_for_callback_plan,
)
from perdure.duration import Duration
from perdure.errors import (
    ChildContextError,
    CorruptRecordError,
    EngineClosedError,
    ExecutionFinishedError,
    ExecutionNotFoundError,
    LeaseLostError,
    StoreError,
    ValidationError,
    error_object,
)
from perdure.registry import _Plain
from perdure.waits import WaitForConditionCheckContext, WaitForConditionConfig, poll_condition

if TYPE_CHECKING:
    from perdure._core import Core, Invocation
    from perdure.engine import Engine

__all__ = ["AsyncCallback", "AsyncDurableContext", "is_async"]

T = TypeVar("T")
Item = TypeVar("Item")

log = logging.getLogger("perdure")

#: How often the finish watcher looks at every execution awaited through
#: ``result_async`` (ends seen by this engine wake it at once).
_WATCH_POLL = 0.05
#: Threads that run ``start_async``'s blocking commits (they share fsyncs).
_START_THREADS = 32
#: How long close() waits for cancelled async invocations to unwind.
_UNWIND_TIMEOUT = 2.0
#: The end of an invocation refused with these leaves it to whoever ended it.
_ENDED = (ExecutionFinishedError, LeaseLostError, EngineClosedError)


class _Later:
    """What an operation of the sync context's code gives back where the
    asyncio context must await something (a commit, user code): the
    coroutine that finishes the operation."""

    __slots__ = ("coro",)

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro


async def _settle(value: Any) -> Any:
    return await value.coro if type(value) is _Later else value


_PLAIN = frozenset({int, str, float, bool, type(None), dict, list, tuple, bytes})


def _awaitable(value: Any) -> bool:
    """inspect.isawaitable, quick for the plain values most steps return."""
    kind = type(value)
    return kind is CoroutineType or (kind not in _PLAIN and inspect.isawaitable(value))


class AsyncCallback(Callback[T]):
    """A callback created by :meth:`AsyncDurableContext.create_callback`:
    ``await callback.result()``."""

    async def result(self) -> T:  # type: ignore[override]
        """The answer; suspends the execution until it arrives."""
        return Callback.result(self)


def _submit(submitter: Callable[..., Any], callback_id: str, step_context: StepContext) -> Any:
    return submitter(callback_id, WaitForCallbackContext(step_context.logger))


class AsyncDurableContext(DurableContext):
    """The context an ``async def`` durable function receives: the
    operations of :class:`~perdure.DurableContext`, as coroutines.

    Functions it is given (a step body, a child context's function, a map
    function, a parallel branch, a wait_for_callback submitter, a
    wait_for_condition check) may be ``async def`` or plain: what they
    return is awaited when it is awaitable.
    """

    _callback_class = AsyncCallback
    _awaits = True

    # -- step -------------------------------------------------------------------

    async def step(  # type: ignore[override]
        self,
        func: Callable[[StepContext], Awaitable[T] | T],
        name: str | None = None,
        config: StepConfig | None = None,
    ) -> T:
        """Runs ``func(step_context)`` once (awaiting it if it is async) and
        checkpoints its result; a replay returns the recorded result."""
        value = DurableContext.step(self, func, name, config)
        # That is the result the journal holds (plain data, decoded in Rust),
        # or, for a step to run or to replay the slow way, the coroutine of
        # _step below.
        if type(value) is CoroutineType:
            return cast(T, await value)
        return cast(T, value)

    async def _step(  # type: ignore[override]
        self,
        op_id: str,
        func: Callable[[StepContext], Any],
        name: str | None,
        config: StepConfig,
        sub_type: R.SubType,
        recorded: bool = True,
    ) -> Any:
        value, at, error = self._step_attempt(op_id, name, config, sub_type, recorded)
        if at is None:
            return value
        commit = self._state.commit_async
        if error is None:
            if config.step_semantics is StepSemantics.AT_MOST_ONCE_PER_RETRY:
                await commit(
                    [R.record(R.STARTED, R.STEP, sub_type, op_id, name, attempt=at.attempt)]
                )
            try:
                result = func(StepContext(at.attempt, op_id, self))
                if _awaitable(result):
                    result = await result
            except Exception as exc:
                error = exc
        if error is not None:
            await commit([self._step_failure(at, error)])
            raise _step_error(error_object(error)) from error
        record, value = self._step_succeeded(at, result)
        await commit([record])
        return value

    # -- wait -------------------------------------------------------------------

    async def wait(self, duration: Duration, name: str | None = None) -> None:  # type: ignore[override]
        """Suspends the execution for ``duration``; nothing waits meanwhile."""
        DurableContext.wait(self, duration, name)

    # -- callbacks --------------------------------------------------------------

    async def create_callback(  # type: ignore[override]
        self, name: str | None = None, config: CallbackConfig | None = None
    ) -> AsyncCallback[Any]:
        """Creates a callback whose id an external party answers with;
        ``await callback.result()`` gives the answer."""
        return cast(
            AsyncCallback[Any], await _settle(DurableContext.create_callback(self, name, config))
        )

    def _register_callback(self, *args: Any) -> Any:
        return _Later(self._register_callback_async(*args))

    async def wait_for_callback(
        self,
        submitter: Callable[[str, WaitForCallbackContext], Any],
        name: str | None = None,
        config: WaitForCallbackConfig | None = None,
    ) -> Any:
        """Creates a callback, hands its id to ``submitter`` (run as a step;
        sync or async) and waits for the answer."""
        self._check_live()
        config, prefix, callback_config, step_config = _wait_for_callback_plan(
            submitter, name, config
        )

        async def body(child: AsyncDurableContext) -> Any:
            label = f"{prefix}create callback id"
            callback = await _settle(child._create_callback(label, callback_config))
            submit = functools.partial(_submit, submitter, callback.callback_id)
            await child._step(
                child._next_id(), submit, f"{prefix}submitter", step_config, R.SUB_STEP
            )
            return await callback.result()

        op_id = self._next_id()
        child_config = ChildConfig(serdes=config.serdes)
        try:
            return await self._child_async(body, name, child_config, R.SUB_WAIT_FOR_CALLBACK, op_id)
        except ChildContextError as exc:
            self._wait_for_callback_failed(exc, op_id, config)

    # -- wait_for_condition -----------------------------------------------------

    async def wait_for_condition(  # type: ignore[override]
        self,
        check: Callable[[T, WaitForConditionCheckContext], Awaitable[T] | T],
        config: WaitForConditionConfig[T] | None = None,
        name: str | None = None,
    ) -> T:
        """Polls ``check(state, check_context)`` (sync or async) until the wait
        strategy stops; see :meth:`perdure.DurableContext.wait_for_condition`."""
        return await poll_condition(self, check, config, name, awaits=True)

    # -- fan-out ----------------------------------------------------------------

    async def map(  # type: ignore[override]
        self,
        items: Sequence[Item],
        func: Callable[[AsyncDurableContext, Item, int, Sequence[Item]], Any],
        name: str | None = None,
        config: MapConfig | None = None,
    ) -> BatchResult[Any]:
        """Runs ``func(ctx, item, index, items)`` for every item as tasks on
        this event loop, each in its own child context; returns a BatchResult."""
        batch = DurableContext.map(self, items, func, name, config)  # type: ignore[arg-type]
        return cast(BatchResult[Any], await _settle(batch))

    async def parallel(  # type: ignore[override]
        self,
        functions: Sequence[Callable[[AsyncDurableContext], Any]],
        name: str | None = None,
        config: ParallelConfig | None = None,
    ) -> BatchResult[Any]:
        """Runs every ``function(ctx)`` as a task on this event loop, each in
        its own child context; returns a BatchResult."""
        batch = DurableContext.parallel(self, functions, name, config)  # type: ignore[arg-type]
        return cast(BatchResult[Any], await _settle(batch))

    def _run_batch(self, *args: Any) -> Any:
        return _Later(_run_batch(self, *args))

    # -- invoke -------------------------------------------------------------------

    async def invoke(
        self,
        function_name: str | Callable[..., Any],
        payload: Any = None,
        name: str | None = None,
        config: InvokeConfig | None = None,
    ) -> Any:
        """Runs a registered function (durable or plain, sync or async) as a
        child execution and returns its result; see
        :meth:`perdure.DurableContext.invoke`."""
        return await _settle(DurableContext.invoke(self, function_name, payload, name, config))

    def _invoke_child(self, *args: Any) -> Any:
        return _Later(self._invoke_child_async(*args))

    # -- child contexts -----------------------------------------------------------

    async def run_in_child_context(  # type: ignore[override]
        self,
        func: Callable[[AsyncDurableContext], Awaitable[T] | T],
        name: str | None = None,
        config: ChildConfig | None = None,
    ) -> T:
        """Runs ``func(child_context)`` (awaiting it if it is async) in its own
        operation namespace and checkpoints its result."""
        child = DurableContext.run_in_child_context(self, func, name, config)  # type: ignore[arg-type]
        return cast(T, await _settle(child))

    def _child(self, *args: Any, **kwargs: Any) -> Any:
        return _Later(self._child_async(*args, **kwargs))

    async def _child_async(self, func: Any, *spec: Any) -> Any:
        """``_child(func, name, config, sub_type, op_id=None, flat=False)``, awaited."""
        done, value = self._child_open(*spec)
        if done:
            return value
        return await self._child_run(func, *value)


async def _run_batch(
    ctx: AsyncDurableContext,
    branches: list[tuple[str, Callable[[AsyncDurableContext], Any]]],
    name: str | None,
    config: MapConfig | ParallelConfig,
    sub_type: int,
    branch_sub_type: int,
) -> BatchResult[Any]:
    """A map's or parallel's branches as tasks on the event loop, at most
    ``max_concurrency`` at a time; policies and results as perdure.batch."""
    batch = _Batch(ctx, len(branches), name, config, sub_type, AsyncDurableContext)
    if batch.replayed is not None:
        return batch.replayed
    outer = cast(AsyncDurableContext, batch.outer)
    tally = batch.tally
    limit = config.max_concurrency
    gate = asyncio.Semaphore(limit) if limit is not None and limit < len(branches) else None

    async def branch(index: int, branch_name: str, body: Any) -> tuple[bool, Any]:
        if gate is not None:
            await gate.acquire()
        try:
            if tally.stopped:
                return True, _NOT_STARTED
            child_id = batch.branch_id(index)
            value = await outer._child_async(
                body, branch_name, batch.child_config, branch_sub_type, child_id, batch.flat
            )
        except ChildContextError as exc:
            tally.record(False)
            return True, exc
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a suspension, an abort, a bug: judged by batch.close
            return False, exc
        finally:
            if gate is not None:
                gate.release()
        tally.record(True)
        return True, BatchItem(index, BatchItemStatus.SUCCEEDED, value)

    outcomes = await asyncio.gather(*(branch(i, n, b) for i, (n, b) in enumerate(branches)))
    record, result = batch.close(outcomes)
    await ctx._state.commit_async([record])
    return result


# -- invocations on an event loop -------------------------------------------------


def is_async(function: Callable[..., Any]) -> bool:
    """Whether a registered function (durable, or plain with perdure.register)
    is ``async def`` (also through functools.partial or an async ``__call__``)."""
    try:
        return _ASYNC[function]
    except KeyError:
        pass
    except TypeError:  # unhashable
        return _is_async(function)
    answer = _ASYNC[function] = _is_async(function)
    return answer


_ASYNC: dict[Any, bool] = {}


def _is_async(function: Any) -> bool:
    if isinstance(function, _Plain):
        function = function.func
    if inspect.iscoroutinefunction(function):
        return True
    # An object whose class has an async __call__.
    return callable(function) and inspect.iscoroutinefunction(type(function).__call__)


def _resolve(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if not future.done():
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class _LoopState(_InvocationState):
    """The state of an invocation that runs on an event loop: its commits
    are awaited, never blocking the loop."""

    def __init__(
        self, core: Core, invocation: Invocation, max_payload: int, loop: EngineLoop
    ) -> None:
        super().__init__(core, invocation, max_payload)
        self._loop = loop.loop
        self._call = loop.call
        #: Set when the invocation ends: a coroutine the workflow left behind
        #: (a task it did not await) can no longer write to the execution.
        self.ended = False

    async def commit_async(
        self,
        records: list[R.RecordIn],
        wake_at: list[tuple[int, str]] | None = None,
        callback: tuple[str, int, int] | None = None,
        child: tuple[str, str, bytes, str, int | None] | None = None,
    ) -> str | None:
        if self.ended:
            raise self.ended_error()
        if self.deferred or self.deferred_timers or wake_at:
            records, wake_at = self.with_deferred(records, wake_at)
        future = self._loop.create_future()
        answer = functools.partial(self._call, _resolve, future)
        self.core.append_async(self.exec_key, records, wake_at or [], callback, child, answer)
        try:
            return cast("str | None", await future)
        except _ABORTING:
            # As in commit: cancelled, closing, or taken over by another engine.
            raise _Abort() from None
        except StoreError as exc:
            # As in commit: a full or failing disk stops the invocation.
            if not exc.storage_failed:
                raise
            raise _Stall(exc) from None

    async def end_async(
        self,
        seen_wake: int,
        final: str | None,
        records: list[R.RecordIn],
        timers: list[tuple[int, str]],
    ) -> bool:
        self.ended = True
        future = self._loop.create_future()
        answer = functools.partial(self._call, _resolve, future)
        self.core.end_invocation_async(self.exec_key, seen_wake, final, records, timers, answer)
        return bool(await future)


class _Run:
    """One invocation handed to the loop; it counts as running (for the
    scheduler, close() and the test clock) until ``finish``."""

    __slots__ = ("core", "done", "exec_key", "task")

    def __init__(self, core: Core, exec_key: int) -> None:
        self.core = core
        self.exec_key = exec_key
        self.done = False
        self.task: asyncio.Task[None] | None = None


class EngineLoop:
    """An engine's event loop for async invocations, and its asyncio calls.

    ``Engine(event_loop=None)`` starts a loop of its own on a daemon thread
    ("perdure-asyncio") when the first async invocation comes, and stops it
    in close(); a loop the application gives is used as it is (it must be
    running for async executions to make progress).
    """

    def __init__(self, event_loop: object | None) -> None:
        if event_loop is not None and (
            not isinstance(event_loop, asyncio.AbstractEventLoop) or event_loop.is_closed()
        ):
            what = (
                "a closed event loop"
                if isinstance(event_loop, asyncio.AbstractEventLoop)
                else type(event_loop).__name__
            )
            raise ValidationError(f"event_loop must be an open asyncio event loop, got {what}")
        self._loop: asyncio.AbstractEventLoop | None = event_loop
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # Calls to make on the loop, from any thread: one wake-up of the loop
        # serves every call queued before it runs (a group commit answers
        # many commits at once).
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._drain_pending = False
        self._runs: set[_Run] = set()
        self._closing = False
        self._unwound: threading.Event | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._watcher: _Watcher | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=_serve, args=(loop,), name="perdure-asyncio", daemon=True
                )
                thread.start()
                self._thread, self._loop = thread, loop
            return self._loop

    def call(self, func: Callable[..., Any], *args: Any) -> None:
        """Calls ``func(*args)`` on the loop soon; from any thread."""
        self._calls.append((func, args))
        if not self._drain_pending:
            self._drain_pending = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: nothing will run there again
                self._drain_pending = False

    def _drain(self) -> None:
        self._drain_pending = False
        calls = self._calls
        while calls:
            func, args = calls.popleft()
            try:
                func(*args)
            except Exception:
                log.exception("perdure: a call on the event loop failed")

    # -- invocations --------------------------------------------------------------

    def submit(self, engine: Engine, invocation: Invocation, function: Callable[..., Any]) -> None:
        """Hands an invocation of an async function to the loop (from an
        executor worker, which is free again once this returns)."""
        run = _Run(engine._core, invocation.exec_key)
        with self._lock:
            closing = self._closing
            if not closing:
                self._runs.add(run)
        if closing:
            # The engine is closing (perhaps on this loop, which then cannot
            # start it): the execution stays where its journal left it.
            self._finish(run, False)
            return
        if self.loop.is_closed():
            log.error(
                "perdure: execution %r cannot run: the engine's event loop is closed",
                invocation.execution_id,
            )
            self._finish(run, False)
            return
        self.call(self._start, engine, run, invocation, function)

    def _start(
        self, engine: Engine, run: _Run, invocation: Invocation, function: Callable[..., Any]
    ) -> None:
        if self._closing or run.done:
            self._finish(run, False)  # not begun: it stays where its journal left it
            return
        coroutine = self._invocation(engine, run, invocation, function)
        run.task = self.loop.create_task(coroutine)

    async def _invocation(
        self, engine: Engine, run: _Run, invocation: Invocation, function: Callable[..., Any]
    ) -> None:
        """One invocation, from the top, as Engine._invoke runs a sync one."""
        core = run.core
        rerun = False
        try:
            state = _LoopState(core, invocation, engine.max_payload_size, self)
            started_ms = core.now_ms()
            ended: tuple[bool, Any] | None
            try:
                result = function(AsyncDurableContext(state), engine._input_of(invocation))
                ended = (True, await result if inspect.isawaitable(result) else result)
            except _Suspend:
                ended = None
            except _Abort:
                return
            except _Stall as stall:
                self._stop(run, engine._stalled, stall.error)
                return
            except CorruptRecordError as exc:
                if exc.execution_id != invocation.execution_id:
                    ended = (False, exc)
                else:  # its own journal is damaged: left alone, as Engine._invoke does
                    leave = functools.partial(engine._leave_corrupt, run.exec_key, exc)
                    self._end_run(run, leave, "park")
                    return
            except Exception as exc:
                ended = (False, exc)
            finally:
                state.ended = True
            final, records, timers = engine._ending(state, started_ms, ended)
            try:
                with contextlib.suppress(*_ENDED):  # cancelled while it ran, taken over, closed
                    rerun = await state.end_async(invocation.wake, final, records, timers)
            except StoreError as exc:
                if not exc.storage_failed:
                    raise
                self._stop(run, engine._stalled, exc)
                return
            if final is not None:
                self.poke(run.exec_key)
        except asyncio.CancelledError:
            pass  # the engine is closing: the execution resumes where its journal ends
        except INTERRUPTS as exc:
            # As in Engine._run_invocation: not the execution's outcome; it
            # runs again later from its journal. Logged, as the loop is the
            # driver here.
            self._stop(run, engine._interrupted, type(exc).__name__)
        except BaseException:
            log.exception("perdure: invocation of execution key %s failed", run.exec_key)
        finally:
            self._finish(run, rerun)

    def _stop(self, run: _Run, retry_later: Callable[[int, Any], None], why: Any) -> None:
        """Ends a run whose invocation stopped without ending:
        ``retry_later(exec_key, why)`` queues the execution to run again (in
        place of ``core.finish``)."""
        self._end_run(run, lambda: retry_later(run.exec_key, why), "queue again")

    def _finish(self, run: _Run, rerun: bool) -> None:
        self._end_run(run, lambda: run.core.finish(run.exec_key, rerun), "finish")

    def _end_run(self, run: _Run, hand_back: Callable[[], None], what: str) -> None:
        """Ends a run once (``hand_back`` gives the execution back to the
        core), and tells a waiting close when the last run has ended."""
        with self._lock:
            if run.done:
                return
            run.done = True
            self._runs.discard(run)
            idle = not self._runs
        try:
            hand_back()
        except Exception:
            log.exception("perdure: could not %s execution key %s", what, run.exec_key)
        unwound = self._unwound
        if idle and unwound is not None:
            unwound.set()

    def _cancel_all(self) -> None:
        for run in list(self._runs):
            if run.task is not None:
                run.task.cancel()
            else:
                self._finish(run, False)

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def before_close(self) -> None:
        """Engine.close, before the core waits for running invocations."""
        with self._lock:
            self._closing = True
            runs = list(self._runs)
        if self._loop is not None and self._on_loop_thread():
            # close() blocks this loop, so its invocations (begun or still
            # queued for it) could not move while the core waits for them:
            # they stop here instead.
            for run in runs:
                if run.task is not None:
                    run.task.cancel()
                self._finish(run, False)

    def after_close(self) -> None:
        """Engine.close, after the core stopped: async invocations still in
        flight (past the timeout) are cancelled, the engine's own loop stops."""
        loop = self._loop
        on_loop = self._on_loop_thread()
        if loop is not None and self._runs and not on_loop and not loop.is_closed():
            self._unwound = threading.Event()
            self.call(self._cancel_all)
            if self._runs:
                self._unwound.wait(_UNWIND_TIMEOUT)
        thread = self._thread
        if loop is not None and thread is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
            if not on_loop:
                thread.join(_UNWIND_TIMEOUT)
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    # -- calls for coroutines on any loop -------------------------------------------

    async def blocking(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs a blocking call (a durable commit) off the caller's loop, on
        threads of the engine's own so that many such calls share fsyncs."""
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(_START_THREADS, "perdure-async-start")
                pool = self._pool
        call = functools.partial(func, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    async def finished(
        self, core: Core, exec_key: int, timeout: float | None
    ) -> tuple[Any, ...] | None:
        """The execution's summary once it finished; None if ``timeout``
        seconds passed first. Never blocks the caller's loop."""
        row = core.wait_finished(exec_key, 0)  # finished already: no thread hop
        if row is not None:
            return row
        if timeout is not None and timeout <= 0:
            return None
        watcher = self._watcher
        if watcher is None:
            with self._lock:
                if self._watcher is None:
                    self._watcher = _Watcher(core)
                watcher = self._watcher
        future = watcher.watch(exec_key, asyncio.get_running_loop())
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None

    def poke(self, exec_key: int) -> None:
        """An execution of this engine finished (wakes its result_async callers)."""
        watcher = self._watcher
        if watcher is not None:
            watcher.poke(exec_key)


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The engine's own event loop thread."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


class _Watcher:
    """Resolves futures on any event loop when executions finish, with one
    thread for all of them: ends seen by this engine wake it at once (poke),
    the others (another process, a timeout) are seen by polling."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._cond = threading.Condition()
        # Each waiter: its loop, its future, and where storage failures stood
        # when it began waiting (core.stall_seq).
        self._waiters: dict[
            int, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], int]]
        ] = {}
        self._fresh: set[int] = set()
        self._thread: threading.Thread | None = None

    def watch(self, exec_key: int, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = loop.create_future()
        seq = self._core.stall_seq()
        with self._cond:
            self._waiters.setdefault(exec_key, []).append((loop, future, seq))
            self._fresh.add(exec_key)  # it may have finished since the caller looked
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="perdure-async-results", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return future

    def poke(self, exec_key: int) -> None:
        if exec_key in self._waiters:
            with self._cond:
                self._fresh.add(exec_key)
                self._cond.notify()

    def _serve(self) -> None:
        core = self._core
        last_sweep = time.monotonic()
        while True:
            with self._cond:
                if not self._waiters:
                    self._thread = None
                    return
                if not self._fresh:
                    self._cond.wait(_WATCH_POLL)
                now = time.monotonic()
                sweep = now - last_sweep >= _WATCH_POLL
                if sweep:
                    last_sweep = now
                    keys = list(self._waiters)
                else:
                    keys = [key for key in self._fresh if key in self._waiters]
                self._fresh = set()
            ended: dict[int, tuple[bool, Any]] = {}
            active: list[int] = []
            for key in keys:
                try:
                    row = core.execution_by_key(key)
                except Exception as exc:
                    ended[key] = (False, exc)
                    continue
                if row is None:
                    gone = ExecutionNotFoundError(f"execution key {key} vanished")
                    ended[key] = (False, gone)
                elif row[3] != "ACTIVE":
                    ended[key] = (True, row)
                else:
                    active.append(key)
            answers: list[tuple[list[tuple[Any, ...]], tuple[bool, Any]]] = []
            with self._cond:
                answers = [(self._waiters.pop(key, []), ended[key]) for key in ended]
                # An invocation that stopped on a storage failure since a
                # caller began waiting: that caller gets the failure.
                for key in active:
                    waiters = self._waiters.get(key, [])
                    for waiter in list(waiters):
                        try:
                            core.check_stalled(key, waiter[2])
                        except StoreError as exc:
                            waiters.remove(waiter)
                            answers.append(([waiter], (False, exc)))
                if sweep:  # let go of callers that stopped waiting (a timeout)
                    for waiters in self._waiters.values():
                        waiters[:] = [w for w in waiters if not w[1].done()]
                if sweep or active:
                    for key, waiters in list(self._waiters.items()):
                        if not waiters:
                            del self._waiters[key]
            for waiters, (ok, value) in answers:
                for loop, future, _seq in waiters:
                    with contextlib.suppress(RuntimeError):  # unless that loop is closed
                        loop.call_soon_threadsafe(_resolve, future, ok, value)


# -- verifying replays (perdure.verify) ----------------------------------------------

_replay_loops = threading.local()


def replay_call(function: Callable[..., Any], state: _InvocationState, input: Any) -> Any:
    """Runs an async durable function from the top in a verifying replay
    (perdure.verify's state, which never writes): on an event loop of this
    thread's own, kept for the next replay. Returns what the function
    returns; raises what it raises (a suspension included)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        loop = getattr(_replay_loops, "loop", None)
        if loop is None:
            loop = _replay_loops.loop = asyncio.new_event_loop()
        return loop.run_until_complete(_replay(function, state, input))
    # This thread runs a loop already: replay on a thread of its own.
    with ThreadPoolExecutor(1, "perdure-replay") as pool:
        return pool.submit(replay_call, function, state, input).result()


async def _replay(function: Callable[..., Any], state: _InvocationState, input: Any) -> Any:
    result = function(AsyncDurableContext(state), input)
    return await result if inspect.isawaitable(result) else result
