"""The AWS Durable Execution SDK's local test runner (in memory, not durable).

Package: ``aws-durable-execution-sdk-python-testing`` (pulls in
``aws-durable-execution-sdk-python``). One execution runs ``steps`` steps,
each returning a small int, then a 1 s durable wait (the runner skips the
time), so a second invocation replays every step. The handler timestamps its
own loop in each invocation:

- sequential steps/s: the first invocation's loop (each step checkpoints
  through the runner's in-memory service);
- replay steps/s: the second invocation's loop (every step answered from the
  checkpointed state). This excludes the runner's work to hand the state to
  the invocation, so it flatters the peer a little.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from perdure.bench import stats

AVAILABLE_ERROR: str | None = None
try:
    from aws_durable_execution_sdk_python import DurableContext, durable_execution
    from aws_durable_execution_sdk_python.config import Duration
    from aws_durable_execution_sdk_python_testing.runner import DurableFunctionTestRunner
except ImportError as exc:  # pragma: no cover - depends on the bench environment
    AVAILABLE_ERROR = (
        f"aws-durable-execution-sdk-python-testing is not installed ({exc}); "
        "pip install aws-durable-execution-sdk-python-testing"
    )

# perf_counter marks (loop start, loop end) of every invocation, in order.
_marks: list[tuple[float, float]] = []

if AVAILABLE_ERROR is None:

    @durable_execution
    def handler(event: dict[str, Any], context: DurableContext) -> int:
        steps = int(event["steps"])
        started = time.perf_counter()
        total = 0
        for i in range(steps):
            total += context.step(lambda _, i=i: i)
        _marks.append((started, time.perf_counter()))
        context.wait(Duration.from_seconds(1))
        return total


def version() -> str | None:
    try:
        from importlib.metadata import version as _version

        return _version("aws-durable-execution-sdk-python-testing")
    except Exception:  # pragma: no cover
        return None


def run_once(steps: int) -> dict[str, float]:
    """One execution: returns sequential and replay steps/s of that execution."""
    if AVAILABLE_ERROR is not None:
        raise RuntimeError(AVAILABLE_ERROR)
    _marks.clear()
    with DurableFunctionTestRunner(handler=handler, poll_interval=0.001) as runner:
        result = runner.run(input=json.dumps({"steps": steps}), execution_timeout=3600)
    if str(result.status).split(".")[-1] != "SUCCEEDED":
        raise RuntimeError(f"AWS local runner execution ended {result.status}: {result.error}")
    if len(_marks) != 2:
        raise RuntimeError(f"expected 2 invocations, saw {len(_marks)}")
    (a0, a1), (b0, b1) = _marks
    return {"steps_per_s": steps / (a1 - a0), "replay_steps_per_s": steps / (b1 - b0)}


def measure(steps: int = 1000, repeats: int = 3) -> dict[str, Any]:
    if AVAILABLE_ERROR is not None:
        return {"available": False, "error": AVAILABLE_ERROR}
    run_once(min(steps, 50))  # warm-up: imports, first-use paths
    samples = [run_once(steps) for _ in range(repeats)]
    seq = [s["steps_per_s"] for s in samples]
    rep = [s["replay_steps_per_s"] for s in samples]
    return {
        "available": True,
        "peer": "aws-durable-execution-sdk-python-testing (local runner, in memory)",
        "version": version(),
        "steps": steps,
        "steps_per_s": stats(seq),
        "replay_steps_per_s": stats(rep),
    }


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    r = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    print(json.dumps(measure(n, r)))
