"""Crash safety: workflows SIGKILLed at random moments, hundreds of times.

A supervisor loop starts a child process that opens ``Engine(store)``,
starts a round of executions by fixed ids (idempotently) and waits for their
results; after a random delay the child is SIGKILLed, and the next child
opens the same store again. When a child finishes its round before the kill,
the next round's executions are added. At the end one child in a fresh
interpreter runs everything to completion. Most children are forked from a
"zygote" process that has perdure imported already (so that 200 kills fit in
about 20 s on two cores); every tenth is a fresh interpreter.

Side effects are counted outside the store, in an append-only log that step
bodies and the workflow code write (see ``tests/crash_workflows.py``). From
that log the test checks that

- no step body ran after its completion was acknowledged to the workflow
  (``ctx.step`` returned, and the workflow logged ``ack``), and no completed
  child context's body ran again;
- an AT_MOST_ONCE_PER_RETRY step never ran twice in one attempt;
- a retried (AT_LEAST_ONCE) step's attempt N+1 only ran after its attempt N ran;

and from the results and the store that every execution returned exactly
what an uninterrupted run returns, with one recorded success per step.

Set PERDURE_CRASH_SEED to replay a failing schedule and PERDURE_CRASH_KILLS
to run more kills.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import perdure
import pytest

HERE = Path(__file__).resolve().parent
HELPER = HERE / "crash_workflows.py"

_spec = importlib.util.spec_from_file_location("perdure_tests_crash_workflows", HELPER)
assert _spec is not None and _spec.loader is not None
cw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cw)

KILLS = int(os.environ.get("PERDURE_CRASH_KILLS", "200"))
EXECUTIONS_PER_ROUND = ("seq-0", "seq-1", "mix-0", "mix-1", "mix-2")
FRESH_EVERY = 10  # every 10th child is a fresh interpreter instead of a fork
FULL_SHARE = 0.25  # share of children that run at durability="full"


def round_ids(round_no: int) -> list[str]:
    return [f"r{round_no}-{suffix}" for suffix in EXECUTIONS_PER_ROUND]


class Zygote:
    """``crash_workflows.py zygote``: forks children with perdure already imported."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HELPER), "zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"zygote died (exit {self.proc.poll()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def spawn(self, args: dict[str, Any], stderr: Path) -> int:
        return int(self._ask({"op": "spawn", "args": args, "stderr": str(stderr)})["pid"])

    def reap(self, pid: int) -> int:
        return int(self._ask({"op": "reap", "pid": pid})["status"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


LINE_FIELDS = {"proc": 4, "body": 6, "ack": 6, "enter": 6, "ackctx": 6}


def parse_log(path: Path) -> tuple[list[tuple[str, ...]], int]:
    """The side-effect log's records (without the trailing ``;``), and how
    many lines were torn by a kill in the middle of their ``write(2)``."""
    text = path.read_bytes().decode()
    assert text.endswith(" ;\n"), "the side-effect log does not end with a whole line"
    lines = [line for line in text.split("\n") if line]
    records: list[tuple[str, ...]] = []
    torn = 0
    for index, line in enumerate(lines):
        fields = tuple(line.split(" "))
        if fields[-1] == ";" and LINE_FIELDS.get(fields[0]) == len(fields):
            records.append(fields[:-1])
            continue
        # A torn line is only possible as a killed process's last write,
        # which the next process's first line ("\nproc ...") follows.
        following = lines[index + 1] if index + 1 < len(lines) else ""
        assert following.startswith("proc "), f"malformed side-effect log line {line!r}"
        torn += 1
    return records, torn


def log_violations(lines: list[tuple[str, ...]], ids: list[str]) -> list[str]:
    """Everything in the side-effect log that a crash-safe engine never does."""
    problems: list[str] = []
    first_ack: dict[tuple[str, str], int] = {}
    first_ackctx: dict[tuple[str, str], int] = {}
    for index, fields in enumerate(lines):
        if fields[0] == "ack":
            first_ack.setdefault((fields[1], fields[2]), index)
        elif fields[0] == "ackctx":
            first_ackctx.setdefault((fields[1], fields[2]), index)

    amo_attempts: collections.Counter[tuple[str, str]] = collections.Counter()
    attempts_seen: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
    bodies: collections.Counter[tuple[str, str]] = collections.Counter()
    for index, fields in enumerate(lines):
        kind = fields[0]
        if kind == "body":
            _, eid, name, attempt_text, pid = fields
            key = (eid, name)
            attempt = int(attempt_text)
            bodies[key] += 1
            acked = first_ack.get(key)
            if acked is not None and index > acked:
                problems.append(
                    f"record {index + 1}: step {name} of {eid} ran again (attempt {attempt}, "
                    f"pid {pid}) after its completion was acknowledged in record {acked + 1}"
                )
            if name == "amo":
                amo_attempts[(eid, attempt_text)] += 1
                if amo_attempts[(eid, attempt_text)] == 2:
                    problems.append(
                        f"record {index + 1}: AT_MOST_ONCE step amo of {eid} ran twice "
                        f"in attempt {attempt}"
                    )
            # (An AT_MOST_ONCE attempt may be cut off after its START record
            # and before its body began: its next attempt follows no body line.)
            if name != "amo" and attempt > 1 and attempt - 1 not in attempts_seen[key]:
                problems.append(
                    f"record {index + 1}: step {name} of {eid} ran attempt {attempt} "
                    f"before any run of attempt {attempt - 1}"
                )
            attempts_seen[key].add(attempt)
        elif kind == "enter":
            _, eid, name, _, pid = fields
            acked = first_ackctx.get((eid, name))
            if acked is not None and index > acked:
                problems.append(
                    f"record {index + 1}: child context {name} of {eid} ran its body again "
                    f"(pid {pid}) after it completed in record {acked + 1}"
                )
    for eid in ids:
        for name in cw.step_names(eid):
            if bodies[(eid, name)] == 0:
                problems.append(f"step {name} of {eid} never ran")
            if (eid, name) not in first_ack:
                problems.append(f"step {name} of {eid} was never acknowledged")
        if cw.workflow_for(eid) == "crash.mixed" and (eid, "child") not in first_ackctx:
            problems.append(f"child context of {eid} was never acknowledged")
    return problems


def check_results(results: dict[str, Any], ids: list[str]) -> list[str]:
    problems = []
    for eid in ids:
        got = results.get(eid)
        want = ["ok", cw.expected_result(eid)]
        if got != want:
            problems.append(f"{eid}: got {got!r}, expected {want!r}")
    return problems


def check_store(store: Path, ids: list[str]) -> tuple[list[str], int]:
    """One StepSucceeded per step in every history; counts interrupted
    AT_MOST_ONCE attempts (for the report)."""
    problems = []
    interrupted = 0
    with perdure.Engine(store, owner=False) as engine:
        listed = {info.execution_id: info.status for info in engine.list()}
        for eid in ids:
            if listed.get(eid) != "SUCCEEDED":
                problems.append(f"{eid}: status {listed.get(eid)!r} in the store")
            events = engine.history(eid)
            ends = (events[0]["EventType"], events[-1]["EventType"])
            if ends != ("ExecutionStarted", "ExecutionSucceeded"):
                problems.append(f"{eid}: history runs from {ends[0]} to {ends[1]}")
            succeeded = collections.Counter(
                e["Name"] for e in events if e["EventType"] == "StepSucceeded"
            )
            for name in cw.step_names(eid):
                if succeeded[name] != 1:
                    problems.append(
                        f"{eid}: {succeeded[name]} StepSucceeded events for step {name}"
                    )
            if cw.workflow_for(eid) == "crash.mixed":
                flaky = [
                    e["StepFailedDetails"]["RetryDetails"]["CurrentAttempt"]
                    for e in events
                    if e["EventType"] == "StepFailed" and e["Name"] == "flaky"
                ]
                if flaky != list(range(1, cw.FLAKY_FAILURES + 1)):
                    problems.append(f"{eid}: flaky step failed in attempts {flaky}")
                interrupted += sum(
                    1
                    for e in events
                    if e["EventType"] == "StepFailed"
                    and e["Name"] == "amo"
                    and str(e["StepFailedDetails"]["Error"]["Payload"].get("ErrorType")).endswith(
                        "StepInterruptedError"
                    )
                )
    return problems, interrupted


def test_sigkill_at_random_moments(tmp_path: Path, store: str) -> None:
    seed = int(os.environ.get("PERDURE_CRASH_SEED", str(random.randrange(2**32))))
    print(f"crash test seed: {seed} (rerun with PERDURE_CRASH_SEED={seed})")
    rng = random.Random(seed)
    log = tmp_path / "side-effects.log"
    stderr = tmp_path / "children.stderr"

    def fail(what: str, problems: list[str]) -> NoReturn:
        shown = "\n  ".join(problems[:30])
        more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
        err = stderr.read_text()[-4000:] if stderr.exists() else ""
        pytest.fail(
            f"seed {seed} (PERDURE_CRASH_SEED={seed}): {what}:\n  {shown}{more}\n"
            f"children's stderr (tail):\n{err}",
            pytrace=False,
        )

    round_no = 0
    ids = round_ids(round_no)
    all_ids = list(ids)
    kills = fresh_kills = full_kills = completed_rounds = cycles = 0
    zygote = Zygote()
    started = time.monotonic()
    try:
        while kills < KILLS:
            cycles += 1
            durability = "full" if rng.random() < FULL_SHARE else "process"
            fresh = cycles % FRESH_EVERY == 0
            results = tmp_path / f"results-{cycles}.json"
            args = {
                "store": str(store),
                "log": str(log),
                "durability": durability,
                "ids": ids,
                "results": str(results),
                "timeout": 60,
            }
            # A quarter of the kills land in the first few milliseconds: engine
            # startup and recovery of what the previous child left behind.
            delay = rng.uniform(0.0, 0.01) if rng.random() < 0.25 else rng.uniform(0.0, 0.1)
            if fresh:
                with stderr.open("a") as err:
                    child = subprocess.Popen(
                        [sys.executable, str(HELPER), "child", json.dumps(args)],
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
                # the interpreter and perdure take ~0.2 s to import first
                time.sleep(0.15 + delay * 2)
                child.send_signal(signal.SIGKILL)
                status = child.wait()
            else:
                pid = zygote.spawn(args, stderr)
                time.sleep(delay)
                os.kill(pid, signal.SIGKILL)
                status = zygote.reap(pid)
            if status == -signal.SIGKILL:
                kills += 1
                fresh_kills += fresh
                full_kills += durability == "full"
            elif status == 0:  # the round finished before the kill came
                problems = check_results(json.loads(results.read_text()), ids)
                if problems:
                    fail("wrong results from a round that finished between kills", problems)
                completed_rounds += 1
                round_no += 1
                ids = round_ids(round_no)
                all_ids += ids
            else:
                fail(f"child exited with status {status}", [f"cycle {cycles}"])
    finally:
        zygote.close()
    kill_phase_s = time.monotonic() - started

    # Finally one child, in a fresh interpreter, runs everything to the end.
    final_results = tmp_path / "results-final.json"
    args = {
        "store": str(store),
        "log": str(log),
        "durability": "process",
        "ids": all_ids,
        "results": str(final_results),
        "timeout": 60,
    }
    with stderr.open("a") as err:
        done = subprocess.run(
            [sys.executable, str(HELPER), "child", json.dumps(args)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            timeout=120,
        )
    if done.returncode != 0:
        fail(f"final child exited with status {done.returncode}", [])

    problems = check_results(json.loads(final_results.read_text()), all_ids)
    if problems:
        fail("wrong results", problems)
    try:
        lines, torn = parse_log(log)
    except AssertionError as exc:
        fail("the side-effect log is damaged", [str(exc)])
    problems = log_violations(lines, all_ids)
    if problems:
        fail("side effects show a crash-safety violation", problems)
    problems, interrupted = check_store(store, all_ids)
    if problems:
        fail("the store's histories are wrong", problems)

    bodies = collections.Counter((f[1], f[2], f[3]) for f in lines if f[0] == "body")
    reruns = sum(count - 1 for count in bodies.values())
    processes = sum(1 for f in lines if f[0] == "proc")
    print(
        f"{kills} kills ({fresh_kills} of fresh interpreters, {full_kills} at full durability) "
        f"in {cycles} cycles and {kill_phase_s:.1f} s; {processes} processes logged; "
        f"{completed_rounds} rounds finished between kills; {len(all_ids)} executions; "
        f"{reruns} un-acknowledged step attempts ran again; "
        f"{interrupted} AT_MOST_ONCE attempts interrupted; {torn} log lines torn by kills"
    )
    assert kills >= KILLS
    # The kills really landed inside the work (both happen dozens of times in
    # a run of 200 kills): steps cut off between their body and their commit
    # ran again, and AT_MOST_ONCE attempts cut off were retried, not re-run.
    assert reruns > 0, f"seed {seed}: no kill landed between a step body and its commit"
    assert interrupted > 0, f"seed {seed}: no kill landed inside an AT_MOST_ONCE attempt"


def _complete_log(eid: str) -> list[tuple[str, ...]]:
    """A side-effect log of one clean, uninterrupted run of ``eid``."""
    lines: list[tuple[str, ...]] = [("proc", "1", "process")]
    for name in cw.step_names(eid):
        if name == "c0":
            lines.append(("enter", eid, "child", "-", "1"))
        attempts = cw.FLAKY_FAILURES + 1 if name == "flaky" else 1
        lines += [("body", eid, name, str(a), "1") for a in range(1, attempts + 1)]
        lines.append(("ack", eid, name, "-", "1"))
        if name == f"c{cw.CHILD_STEPS - 1}":
            lines.append(("ackctx", eid, "child", "-", "1"))
    return lines


def test_log_checker_finds_each_kind_of_violation() -> None:
    # The crash test can only fail if its checker sees violations: show it does.
    eid = "r0-mix-0"
    clean = _complete_log(eid)
    assert log_violations(clean, [eid]) == []
    # a crash before the ack: running the step again is allowed
    rerun = [*clean[:2], ("body", eid, "first", "1", "1"), *clean[2:]]
    assert log_violations(rerun, [eid]) == []

    again = [*clean, ("proc", "2", "full"), ("body", eid, "first", "1", "2")]
    assert any("ran again" in p for p in log_violations(again, [eid]))
    amo_at = clean.index(("body", eid, "amo", "1", "1"))
    twice = [*clean[: amo_at + 1], ("body", eid, "amo", "1", "2"), *clean[amo_at + 1 :]]
    assert any("ran twice in attempt 1" in p for p in log_violations(twice, [eid]))
    reentered = [*clean, ("enter", eid, "child", "-", "2")]
    assert any("child context child" in p for p in log_violations(reentered, [eid]))
    skipped = [line for line in clean if line != ("body", eid, "flaky", "2", "1")]
    assert any("before any run of attempt 2" in p for p in log_violations(skipped, [eid]))
    unacked = [line for line in clean if line != ("ack", eid, "last", "-", "1")]
    assert any("never acknowledged" in p for p in log_violations(unacked, [eid]))

    results = {eid: ["ok", cw.expected_result(eid)]}
    assert check_results(results, [eid]) == []
    results[eid][1] = {**results[eid][1], "last": 0}
    assert check_results(results, [eid]) != []
