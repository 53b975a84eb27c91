"""The system clock stepping back (NTP, an operator) does not delay a durable
wait: within a process the engine measures time on a monotonic basis, and a
new process fires a stored deadline that is already past at once.

The clock of the engine's process is stepped with libfaketime (Debian package
``faketime``): a timestamp file it re-reads on every call holds the offset,
which the test script changes while a wait is pending. The monotonic clocks
are left alone, as NTP leaves them. Without libfaketime these tests skip,
except under CI=true, where its absence is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)


def _libfaketime() -> str:
    for candidate in _CANDIDATES:
        if os.path.exists(candidate):
            return candidate
    message = "libfaketime is not installed (apt-get install faketime)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run the clock-step tests")
    pytest.skip(message)


SCRIPT = """
import json, sys, threading, time
import perdure
from perdure import Duration

@perdure.durable(name="clock_step.nap")
def nap(ctx, seconds):
    ctx.step(lambda _: None, name="before")
    ctx.wait(Duration(seconds=seconds), name="nap")
    return ctx.step(lambda _: "woke", name="after")

def pause(seconds):
    # threading waits, not time.sleep: libfaketime 0.9.10 breaks
    # clock_nanosleep when the monotonic clock is not faked.
    threading.Event().wait(seconds)

mode, store, offset_file, wait_seconds, step = sys.argv[1:6]
engine = perdure.Engine(store, durability="process", workers=2)
report = {"wall_before": time.time()}
if mode == "start":
    handle = engine.start(nap, float(wait_seconds), execution_id="nap")
    while handle.status() != "SUSPENDED":
        pause(0.01)
    if step != "none":
        # The system clock steps by `step` seconds while the wait is pending.
        with open(offset_file, "w") as out:
            out.write(step + "\\n")
    report["wall_after"] = time.time()
    if mode == "start" and sys.argv[6:] == ["leave"]:
        engine.close()
        print(json.dumps(report), flush=True)
        sys.exit(0)
else:
    handle = engine.get("nap")
try:
    report["result"] = handle.result(timeout=float(sys.argv[6]))
except TimeoutError:
    report["result"] = None
report["wall_end"] = time.time()
engine.close()
print(json.dumps(report), flush=True)
"""


def run(
    tmp_path: Path, store: str, offset: str, *args: str, fake: bool = True
) -> dict[str, float | str | None]:
    script = tmp_path / "clock_step.py"
    script.write_text(textwrap.dedent(SCRIPT))
    offset_file = tmp_path / "offset"
    offset_file.write_text(offset + "\n")
    env = dict(os.environ)
    if fake:
        env.update(
            LD_PRELOAD=_libfaketime(),
            FAKETIME_TIMESTAMP_FILE=str(offset_file),
            FAKETIME_NO_CACHE="1",
            FAKETIME_DONT_FAKE_MONOTONIC="1",
        )
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            args[0],
            str(store),
            str(offset_file),
            *args[1:],
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_a_step_back_does_not_delay_a_wait_in_the_process(tmp_path: Path, store: str) -> None:
    # A 2-second wait; an hour's step back while it is pending. The caller
    # gives it 60 seconds (measured on the unfaked monotonic clock): far
    # more than the wait, far less than the step.
    report = run(tmp_path, store, "+0", "start", "2", "-3600", "60")
    stepped = float(report["wall_after"]) - float(report["wall_before"])  # type: ignore[arg-type]
    assert stepped < -3000, f"the process's clock did not step back ({stepped:.0f} s)"
    assert report["result"] == "woke", "the wait was delayed by the clock's step back"


def test_a_deadline_in_the_past_fires_at_once_after_a_restart(tmp_path: Path, store: str) -> None:
    # The wait of an hour is left pending by a process that exits; the next
    # process finds the clock two hours on: the deadline has passed.
    first = run(tmp_path, store, "+0", "start", "3600", "none", "leave", fake=False)
    assert first["wall_after"] is not None
    later = run(tmp_path, store, "+7200", "resume", "0", "none", "60")
    moved = float(later["wall_before"]) - float(first["wall_after"])  # type: ignore[arg-type]
    assert moved > 7000, f"the second process's clock was not two hours on ({moved:.0f} s)"
    assert later["result"] == "woke"


def test_the_stepped_back_process_writes_no_time_before_its_records(
    tmp_path: Path, store: str
) -> None:
    # After the step back, records written by the same process still carry
    # times that do not go back: the history stays in order.
    report = run(tmp_path, store, "+0", "start", "1", "-3600", "60")
    assert report["result"] == "woke"
    import perdure

    with perdure.Engine(store, owner=False, durability="process") as engine:
        stamps = [event["EventTimestamp"] for event in engine.history("nap")]
    assert stamps == sorted(stamps), stamps
