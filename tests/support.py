"""Helpers shared by the test modules (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
