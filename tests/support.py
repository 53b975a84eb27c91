"""Helpers shared by the test modules (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

#: The child process that builds, opens and reads stores for the store-file tests.
STORE_CHILD = str(Path(__file__).with_name("store_files_child.py"))


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Polls ``predicate`` until it holds; fails naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def store_child(*args: str, stdin: str | None = None) -> dict[str, Any]:
    """Runs tests/store_files_child.py with ``args``; returns its last JSON
    line. A child that ends otherwise than with 0 (negative: killed by a
    signal) fails the test."""
    done = subprocess.run(
        [sys.executable, STORE_CHILD, *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (
        f"child {args[0]} ended with {done.returncode} (negative: a signal)\n{done.stderr}"
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def copy_store(base: Path, tmp_path: Path) -> Path:
    """A copy of the store ``base`` under ``tmp_path``, for a test to damage."""
    copy = tmp_path / "store"
    shutil.copytree(base, copy)
    return copy


def perdure_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m perdure *args``; its exit status and output, text."""
    return subprocess.run(
        [sys.executable, "-m", "perdure", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def lmdb_only(reason: str) -> pytest.MarkDecorator:
    """Keeps a test on the LMDB half: ``reason`` says what about LMDB files
    it tests (there is no PostgreSQL counterpart to run it on)."""
    return pytest.mark.lmdb_only(reason)


def is_pg(location: Any) -> bool:
    """Whether ``location`` names a PostgreSQL store."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def psql(server: str, sql: str) -> str:
    """Runs ``sql`` with psql on ``server``; its output. psql takes the URL
    as it is: perdure's own ``schema=`` option is the only one it would refuse,
    and ``server`` has none."""
    done = subprocess.run(
        [
            _pg_tool("psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            server,
        ],
        # On stdin, each statement is a transaction of its own: one DROP
        # SCHEMA of hundreds of stores would run out of lock slots.
        input=sql,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"psql {sql!r} failed: {done.stderr}"
    return done.stdout


def _pg_tool(name: str) -> str:
    """A PostgreSQL client program (psql, pg_dump): on PATH, or beside the
    server scripts/postgres.sh starts."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    assert candidates, f"{name} not found (apt-get install postgresql-client)"
    return str(candidates[-1])


def without_schema(url: str) -> str:
    """``url`` less its ``schema=`` query option (psql refuses it)."""
    parts = urllib.parse.urlsplit(url)
    query = [
        (key, value)
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if key != "schema"
    ]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, safe="/")))


def store_exists(location: str | Path) -> bool:
    """Whether the store at ``location`` has been created: its directory, or
    its PostgreSQL schema (for the tests that a refused call creates none)."""
    if not is_pg(location):
        return Path(location).exists()
    found = psql(
        without_schema(str(location)),
        f"SELECT count(*) FROM pg_namespace WHERE nspname = '{_schema(str(location))}'",
    )
    return found.strip() != "0"


def _schema(location: str) -> str:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))["schema"]


def make_empty_store(location: str) -> None:
    """Makes the store's place with nothing in it: an empty directory, or an
    empty PostgreSQL schema."""
    if is_pg(location):
        psql(without_schema(location), f'CREATE SCHEMA "{_schema(location)}"')
    else:
        Path(location).mkdir()


def store_is_empty(location: str) -> bool:
    """Whether the store's place holds nothing: no file in the directory, no
    table (or other relation) in the schema."""
    if not is_pg(location):
        return not any(Path(location).iterdir())
    found = psql(
        without_schema(location),
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname = '{_schema(location)}'",
    )
    return found.strip() == "0"


def pg_dump_rows(location: str) -> dict[str, list[str]]:
    """Every row of every table of the store's schema, by table (rows sorted,
    as pg_dump writes them in COPY text): two dumps differ exactly when a
    row was changed, added or removed."""
    done = subprocess.run(
        [
            _pg_tool("pg_dump"),
            "--data-only",
            "--schema",
            _schema(location),
            without_schema(location),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    tables: dict[str, list[str]] = {}
    rows: list[str] | None = None
    for line in done.stdout.splitlines():
        if line.startswith("COPY "):
            rows = tables.setdefault(line.split()[1], [])
        elif line == "\\.":
            rows = None
        elif rows is not None:
            rows.append(line)
    return {table: sorted(rows) for table, rows in tables.items()}


def pg_sql(location: str, sql: str) -> list[list[str]]:
    """Runs ``sql`` on the store's server, ``{schema}`` in it naming the
    store's schema (quoted); its rows, each a list of column texts."""
    out = psql(without_schema(location), sql.replace("{schema}", f'"{_schema(location)}"'))
    return [line.split("|") for line in out.splitlines() if line]
