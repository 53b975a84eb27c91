"""The workflow and server process of the lease-epoch test (test_lease_epochs.py).

``python tests/epoch_workflows.py serve ARGS_JSON`` opens an owning engine on
the shared store and serves until its stdin closes. The workflow's first step
behaves by role: in the server started as ``A`` it writes a marker file and
blocks until a release file exists (so the test can stop the process inside
it); anywhere else it returns at once. Its result names the process that ran
it, so the test sees whose write the journal kept.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import perdure
from perdure import StepContext

_args: dict[str, Any] = {}


def _long_step(_step: StepContext) -> str:
    role = _args.get("role", "client")
    if role == "A":
        Path(_args["in_step"]).write_text(str(os.getpid()))
        while not os.path.exists(_args["release"]):
            time.sleep(0.005)
    return f"from-{role}"


def _publish(callback_id: str, _step: StepContext) -> None:
    Path(_args["callback_file"]).write_text(callback_id)


@perdure.durable(name="epoch.reclaimed")
def reclaimed(ctx: perdure.DurableContext, _event: Any) -> str:
    first = ctx.step(_long_step, name="long")
    answer = ctx.wait_for_callback(_publish, name="answer")
    return f"{first}-{answer}"


def serve(args: dict[str, Any]) -> int:
    _args.update(args)
    engine = perdure.Engine(args["store"], workers=2, lease_timeout=args["lease_timeout"])
    print(json.dumps({"owner": engine.owner_id, "pid": os.getpid()}), flush=True)
    if args.get("start"):
        engine.start(reclaimed, None, execution_id=args["start"])
    sys.stdin.read()  # serve until the test closes stdin
    engine.close(timeout=1)
    return 0


if __name__ == "__main__":
    if sys.argv[1] != "serve":
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
    raise SystemExit(serve(json.loads(sys.argv[2])))
