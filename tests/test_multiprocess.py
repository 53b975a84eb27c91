"""Several engine processes on one store (issue 3): leases, takeover after
SIGKILL, and fencing of an owner that hung and came back.

The servers are real processes (``tests/lease_workflows.py serve``); the test
process starts executions from a client engine (``owner=False``), which leaves
them for the servers to claim. Seed the random kills with
``PERDURE_LEASE_SEED``.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lease_workflows as lw
import perdure
import pytest
from support import store_exists, wait_for

HERE = Path(__file__).parent

LINE_FIELDS = {"proc": 3, "body": 6, "ack": 6}


class Servers:
    """Engine processes serving one store."""

    def __init__(self, tmp_path: Path, store: Path, log: Path, **engine: Any) -> None:
        self.tmp_path = tmp_path
        self.args = {
            "store": str(store),
            "log": str(log),
            "durability": "process",
            "workers": 4,
            "lease_timeout": 10.0,
            **engine,
        }
        self.live: list[subprocess.Popen[str]] = []
        self.all: list[subprocess.Popen[str]] = []

    def spawn(self, **overrides: Any) -> subprocess.Popen[str]:
        stderr = (self.tmp_path / f"server-{len(self.all)}.err").open("w")
        child = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "lease_workflows.py"),
                "serve",
                json.dumps({**self.args, **overrides}),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "READY", self.errors()
        self.live.append(child)
        self.all.append(child)
        return child

    def kill(self, child: subprocess.Popen[str]) -> None:
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
        self.live.remove(child)

    def stop_all(self) -> None:
        for child in self.all:
            if child.poll() is None:
                child.send_signal(signal.SIGCONT)
                assert child.stdin is not None
                child.stdin.close()
        for child in self.all:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def errors(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp_path.glob("server-*.err")))


def read_log(path: Path) -> list[tuple[str, ...]]:
    """The side-effect log's whole records (a line torn by a kill is dropped)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_bytes().decode().split("\n"):
        fields = tuple(line.split(" "))
        if fields[-1] == ";" and LINE_FIELDS.get(fields[0]) == len(fields):
            records.append(fields[:-1])
    return records


def violations(records: list[tuple[str, ...]], ids: list[str]) -> list[str]:
    """A body that ran after its step was acknowledged, or a step never acknowledged."""
    problems = []
    first_ack: dict[tuple[str, str], int] = {}
    for index, fields in enumerate(records):
        if fields[0] == "ack":
            first_ack.setdefault((fields[1], fields[2]), index)
    for index, fields in enumerate(records):
        if fields[0] == "body":
            acked = first_ack.get((fields[1], fields[2]))
            if acked is not None and index > acked:
                problems.append(
                    f"record {index + 1}: step {fields[2]} of {fields[1]} ran again in pid "
                    f"{fields[4]} after it was acknowledged in record {acked + 1}"
                )
    for eid in ids:
        for name in lw.step_names():
            if (eid, name) not in first_ack:
                problems.append(f"step {name} of {eid} was never acknowledged")
    return problems


def check_histories(client: perdure.Engine, ids: list[str]) -> list[str]:
    problems = []
    for eid in ids:
        events = client.history(eid)
        if events[-1]["EventType"] != "ExecutionSucceeded":
            problems.append(f"{eid}: history ends with {events[-1]['EventType']}")
        succeeded = collections.Counter(
            e["Name"] for e in events if e["EventType"] == "StepSucceeded"
        )
        for name in lw.step_names():
            if succeeded[name] != 1:
                problems.append(f"{eid}: {succeeded[name]} StepSucceeded events for {name}")
    return problems


@pytest.mark.parametrize("durability", ["process", "full"])
def test_engines_take_over_from_killed_ones_during_fan_out(
    tmp_path: Path, store: str, durability: str
) -> None:
    seed = int(os.environ.get("PERDURE_LEASE_SEED", str(random.randrange(2**32))))
    rng = random.Random(seed)
    log = tmp_path / "effects.log"
    gate = tmp_path / "gate"
    servers = Servers(tmp_path, store, log, durability=durability, gate=str(gate))
    client = perdure.Engine(store, owner=False)
    ids = [f"m-{n}" for n in range(24)]
    try:
        for _ in range(3):
            servers.spawn()
        for n, eid in enumerate(ids):
            client.start("lease.fanout", {"base": n}, execution_id=eid)

        def finished(eid: str) -> bool:
            return client.get(eid).status() == "SUCCEEDED"

        # The first kill is certain to land mid-execution: items from
        # GATED_FROM on wait for the gate, so the server running one has
        # acknowledged earlier items of that execution and cannot finish it.
        def gated_body() -> tuple[str, ...] | None:
            return next(
                (
                    fields
                    for fields in read_log(log)
                    if fields[0] == "body" and int(fields[2][1:]) >= lw.GATED_FROM
                ),
                None,
            )

        wait_for(lambda: gated_body() is not None, "a branch to reach the gate")
        first = gated_body()
        assert first is not None
        servers.kill(next(child for child in servers.live if str(child.pid) == first[4]))
        kills = 1
        servers.spawn()
        gate.touch()
        # Later kills land on a server while it has branches in flight: the
        # pid of the newest body line of an execution that is not finished.
        for _ in range(11):
            live = {str(child.pid): child for child in servers.live}
            victim = next(
                (
                    live[fields[4]]
                    for fields in reversed(read_log(log))
                    if fields[0] == "body" and fields[4] in live and not finished(fields[1])
                ),
                None,
            )
            if victim is None:
                break  # everything finished already
            servers.kill(victim)
            kills += 1
            servers.spawn()
            # Let the survivors and the newcomer get going before the next kill.
            time.sleep(rng.uniform(0.02, 0.3))
        results = {eid: client.get(eid).result(timeout=120) for eid in ids}
    except BaseException:
        print(f"PERDURE_LEASE_SEED={seed}\n{servers.errors()}", file=sys.stderr)
        raise
    finally:
        servers.stop_all()
        client.close()
    context = f"(PERDURE_LEASE_SEED={seed}, {kills} kills)"
    assert results == {eid: lw.expected_result(n) for n, eid in enumerate(ids)}, context
    records = read_log(log)
    assert violations(records, ids) == [], context
    # Takeover happened: some execution was acknowledged by more than one process.
    ack_pids: dict[str, set[str]] = collections.defaultdict(set)
    for fields in records:
        if fields[0] == "ack":
            ack_pids[fields[1]].add(fields[4])
    assert any(len(pids) > 1 for pids in ack_pids.values()), context
    with perdure.Engine(store, owner=False) as reader:
        assert check_histories(reader, ids) == [], context
        assert {info.status for info in reader.list()} == {"SUCCEEDED"}


def test_a_hung_owner_loses_its_lease_and_its_late_writes_are_refused(
    tmp_path: Path, store: str
) -> None:
    log = tmp_path / "effects.log"
    servers = Servers(tmp_path, store, log, lease_timeout=0.5)
    client = perdure.Engine(store, owner=False)
    try:
        hung = servers.spawn()
        client.start("lease.slow", {"base": 5}, execution_id="slow-1")
        wait_for(lambda: ("body", "slow-1", "slow", "1", str(hung.pid)) in read_log(log), "a body")
        hung.send_signal(signal.SIGSTOP)  # inside the step body: it neither renews nor writes
        rescuer = servers.spawn()
        wait_for(
            lambda: ("body", "slow-1", "slow", "1", str(rescuer.pid)) in read_log(log),
            "the other engine to take the execution over",
        )
        # The hung engine wakes while the rescuer runs the step: its step
        # returns, and its commit is refused (fenced), so it never acknowledges.
        hung.send_signal(signal.SIGCONT)
        assert client.get("slow-1").result(timeout=60) == {"slow": 5 * 3, "after": 16}
        # The engine that came back is still a working engine: with the
        # rescuer gone, it claims and runs new work.
        servers.kill(rescuer)
        client.start("lease.slow", {"base": 7}, execution_id="slow-2")
        assert client.get("slow-2").result(timeout=60) == {"slow": 7 * 3, "after": 22}
    except BaseException:
        print(servers.errors(), file=sys.stderr)
        raise
    finally:
        servers.stop_all()
        client.close()
    records = read_log(log)
    acks = [fields for fields in records if fields[0] == "ack" and fields[1] == "slow-1"]
    assert [(f[2], f[4]) for f in acks] == [("slow", str(rescuer.pid)), ("after", str(rescuer.pid))]
    assert all(f[4] == str(hung.pid) for f in records if f[0] == "ack" and f[1] == "slow-2")
    with perdure.Engine(store, owner=False) as reader:
        events = reader.history("slow-1")
        succeeded = [e["Name"] for e in events if e["EventType"] == "StepSucceeded"]
        assert succeeded == ["slow", "after"]


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), True, "5"])
def test_bad_lease_timeout_is_refused(store: str, timeout: Any) -> None:
    with pytest.raises(perdure.ValidationError, match="lease_timeout"):
        perdure.Engine(store, lease_timeout=timeout)
    assert not store_exists(store)
