"""The ``perdure`` command: look into a store and answer callbacks from any
process, and run the demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from perdure import _checks
from perdure.errors import PerdureError

__all__ = ["main"]

DEFAULT_STORE = "./perdure-store"


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


class _UsageError(Exception):
    """A command line that cannot be served (exit code 2, like argparse's)."""


def _existing_store(store: str) -> str | Path:
    """The store directory of a command that reads or answers: it must hold
    a store already. Opening it would create an empty one, and show an empty
    store where the user mistyped a path."""
    if _checks.is_store_url(store):
        from perdure._core import postgres_store_exists

        if not postgres_store_exists(store):
            raise _UsageError(
                "no perdure store at the --store URL: its schema holds no perdure tables"
            )
        return store
    path = Path(store)
    if not path.is_dir():
        raise _UsageError(f"no perdure store at {store}: the directory does not exist")
    if not (path / "data.mdb").is_file():
        raise _UsageError(f"no perdure store at {store}: the directory holds no data.mdb")
    return path


def _client(args: argparse.Namespace) -> Any:
    from perdure.engine import Engine

    store = _existing_store(args.store)
    # The CLI never runs executions: it works beside an engine in another process.
    return Engine(store, owner=False, durability=args.durability)


def _cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as engine:
        rows = engine.list(status=args.status, name=args.function, limit=args.limit)
        for info in rows:
            print(
                f"{info.execution_id}\t{info.status}\t{info.function}\t{info.updated_at.isoformat()}"
            )
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as engine:
        info = engine.get(args.execution_id).info()
        _print_json(
            {
                "ExecutionId": info.execution_id,
                "Function": info.function,
                "Status": info.status,
                "CreatedAt": info.created_at.isoformat(),
                "UpdatedAt": info.updated_at.isoformat(),
            }
        )
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    with _client(args) as engine:
        _print_json({"Events": engine.history(args.execution_id)})
    return 0


def _cmd_callback(args: argparse.Namespace) -> int:
    with _client(args) as engine:
        if args.action == "succeed":
            result = None
            if args.payload is not None:
                try:
                    result = orjson.loads(args.payload)
                except orjson.JSONDecodeError as exc:
                    raise PerdureError(f"--payload is not valid JSON: {exc}") from None
            engine.send_callback_success(args.callback_id, result)
        elif args.action == "fail":
            engine.send_callback_failure(
                args.callback_id, args.message, error_type=args.error_type, error_data=args.payload
            )
        else:
            engine.send_callback_heartbeat(args.callback_id)
    print(f"callback {args.callback_id}: {args.action} sent")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from perdure.check import check_store

    if _checks.is_store_url(args.store):
        _existing_store(args.store)
    elif not Path(args.store).is_dir():
        print(f"perdure: no store at {args.store!r}", file=sys.stderr)
        return 2
    report = check_store(args.store)
    for message in report.damaged:
        print(message)
    verdict = "ok" if report.ok else f"{len(report.damaged)} damaged"
    print(f"{report.path}: {report.entries} entries read, {verdict}")
    return 0 if report.ok else 1


def _import_user_code(targets: Sequence[str]) -> None:
    """Imports the modules (or ``.py`` files) named by ``--import``: the user's
    own code that registers durable functions. Names read from a store are
    never imported; these come from the command line."""
    import importlib
    import importlib.util
    import os

    # As ``python -m`` does: modules of the current directory are importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for target in targets:
        path = Path(target)
        if target.endswith(".py") or path.is_file():
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None or not path.is_file():
                raise ImportError(f"no Python file at {target}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(target)


class _ReplayProgress:
    """Prints a progress line to stderr at most about once a second."""

    def __init__(self) -> None:
        import time

        self._clock = time.monotonic
        self._started = self._last = self._clock()
        self._printed = False

    def __call__(self, done: int, total: int, operations: int) -> None:
        now = self._clock()
        if now - self._last < 1.0 and not (done == total and self._printed):
            return
        self._last = now
        self._printed = True
        rate = operations / max(now - self._started, 1e-9)
        print(
            f"replayed {done:,} / {total:,} executions, {operations:,} operations, "
            f"{rate:,.0f} ops/s",
            file=sys.stderr,
            flush=True,
        )


def _cmd_replay(args: argparse.Namespace) -> int:
    """Exit 0: every execution replays deterministically; 1: some do not (or
    could not be replayed); 2: a usage error."""

    def usage(message: str) -> int:
        print(f"perdure replay: {message}", file=sys.stderr)
        return 2

    store = _existing_store(args.store)
    try:
        _import_user_code(args.imports or [])
    except Exception as exc:
        return usage(f"cannot import user code: {type(exc).__name__}: {exc}")
    from perdure.engine import Engine
    from perdure.registry import registered
    from perdure.verify import replay_executions

    if args.function is not None and args.function not in registered():
        return usage(
            f"no durable function {args.function!r} is registered; import the module that "
            "registers it with --import MODULE"
        )
    try:
        with Engine(store, owner=False, durability=args.durability) as engine:
            report = replay_executions(
                engine,
                args.function,
                verify=args.verify,
                workers=args.workers,
                progress=_ReplayProgress(),
            )
    except PerdureError as exc:
        return usage(f"{type(exc).__name__}: {exc}")
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.summary())
    if report.skipped and not args.json:
        print(
            "perdure replay: executions of functions not registered in this process were "
            "skipped; import the modules that register them with --import MODULE",
            file=sys.stderr,
        )
    return 0 if report.ok else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from perdure.demo import run_demo

    return run_demo(args.store, cool_off=args.cool_off)


def _cmd_bench(args: argparse.Namespace) -> int:
    from perdure import bench

    def progress(message: str) -> None:
        print(f"perdure bench: {message}", file=sys.stderr, flush=True)

    results: dict[str, Any] = {}
    reports: list[str] = []
    if args.suite in ("core", "all"):
        results["core"] = bench.run_all(
            args.quick,
            store_dir=args.store_dir,
            steps=args.steps,
            repeats=args.repeats,
            progress=progress,
        )
        reports.append(bench.format_report(results["core"]))
    if args.suite in ("concurrency", "all"):
        from perdure import bench_concurrency

        results["concurrency"] = bench_concurrency.run_concurrency(
            args.quick, store_dir=args.store_dir, repeats=args.repeats, progress=progress
        )
        reports.append(bench_concurrency.format_concurrency_report(results["concurrency"]))
    if args.suite in ("replay", "all"):
        from perdure import bench_replay

        results["replay"] = bench_replay.run_replay(
            args.quick, store_dir=args.store_dir, repeats=args.repeats, progress=progress
        )
        reports.append(bench_replay.format_replay_report(results["replay"]))
    report = "\n\n".join(reports)
    # One suite prints its figures as they were; "all" nests them by suite.
    figures = results if args.suite == "all" else results[args.suite]
    if args.json:
        # The table goes to stderr so that stdout stays parseable JSON.
        print(report, file=sys.stderr)
        _print_json(figures)
    else:
        print(report)
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perdure", description="Embedded durable execution.")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(
        name: str, help: str, default_store: str | None = DEFAULT_STORE
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument(
            "--store",
            default=default_store,
            help=f"store directory or postgresql:// URL (default {default_store})",
        )
        sub.add_argument(
            "--durability",
            default="full",
            choices=("full", "process", "none"),
            help=argparse.SUPPRESS,
        )
        return sub

    demo = command("demo", "run the order workflow demo on a fresh store", default_store=None)
    demo.add_argument("--cool-off", type=float, default=2.0, help="seconds of the durable wait")
    demo.set_defaults(run=_cmd_demo)

    listing = command("list", "list executions")
    listing.add_argument(
        "--status",
        choices=(
            "PENDING",
            "RUNNING",
            "SUSPENDED",
            "SUCCEEDED",
            "FAILED",
            "CANCELLED",
            "TIMED_OUT",
        ),
    )
    listing.add_argument("--function")
    listing.add_argument("--limit", type=int)
    listing.set_defaults(run=_cmd_list)

    show = command("show", "show one execution")
    show.add_argument("execution_id")
    show.set_defaults(run=_cmd_show)

    history = command("history", "print an execution's history as JSON (AWS event shape)")
    history.add_argument("execution_id")
    history.set_defaults(run=_cmd_history)

    callback = command("callback", "complete or heartbeat a callback")
    callback.add_argument("action", choices=("succeed", "fail", "heartbeat"))
    callback.add_argument("callback_id")
    callback.add_argument("--payload", help="JSON result (succeed) or error data (fail)")
    callback.add_argument("--message", default="Callback failed", help="error message (fail)")
    callback.add_argument("--error-type", default="CallbackFailure", help="error type (fail)")
    callback.set_defaults(run=_cmd_callback)

    check_help = (
        "read every entry of the store in a child process and report damage: values that fail "
        "their checksum, bad journal keys, and a data.mdb that LMDB cannot read (a crash of "
        "the child included); exit 1 when anything is damaged"
    )
    check = command("check", check_help)
    check.set_defaults(run=_cmd_check)

    replay_help = (
        "re-run stored executions against the current code without running any step, and "
        "report every execution that is no longer deterministic (exit 1), with its first "
        "differing operation"
    )
    replay = command("replay", replay_help)
    replay.add_argument("--function", help="only the executions of this registered function")
    replay.add_argument(
        "--verify",
        action="store_true",
        help="also check that finished executions replay to their end and end as recorded",
    )
    replay.add_argument(
        "--import",
        dest="imports",
        action="extend",
        nargs="+",
        metavar="MODULE",
        help="import these modules (or .py files) first: the code that registers the durable "
        "functions",
    )
    replay.add_argument(
        "--workers", type=_positive_int, help="executions replayed at once (default: CPU count)"
    )
    replay.add_argument("--json", action="store_true", help="print the report as JSON")
    replay.set_defaults(run=_cmd_replay)

    bench_help = (
        "measure this machine: raw LMDB commits/s, sequential durable steps/s at full and "
        "process durability, replay ops/s, bytes on disk per step (suite core); steps/s with "
        "many executions in flight, steps blocking on I/O, map, many executions, suspended "
        "executions' memory and threads, timers due together (suite concurrency); "
        "perdure replay --verify over 10,000 stored executions of 100 steps (suite replay)"
    )
    bench = commands.add_parser("bench", help=bench_help, description=bench_help)
    bench.add_argument(
        "--suite",
        choices=("core", "concurrency", "replay", "all"),
        default="core",
        help="which figures to measure (default core)",
    )
    bench.add_argument(
        "--store-dir",
        help="directory under which the scratch stores are made, on the disk to measure "
        "(default: a new temporary directory)",
    )
    bench.add_argument(
        "--steps",
        type=_positive_int,
        help="suite core: timed sequential steps (and synced LMDB commits) per sample at full "
        "durability; 10x that at process (default 3000, 300 with --quick)",
    )
    bench.add_argument(
        "--repeats",
        type=_positive_int,
        help="samples per figure; medians are reported (default 5, 1 with --quick; the "
        "concurrency suite's larger figures take at most 3)",
    )
    bench.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.set_defaults(run=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except _UsageError as exc:
        print(f"perdure {args.command}: {exc}", file=sys.stderr)
        return 2
    except PerdureError as exc:
        print(f"perdure: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
