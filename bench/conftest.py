"""Fixtures of the pytest-benchmark suites (``python -m pytest bench/ --benchmark-only``).

Not collected by the normal test run (pyproject's testpaths is ``tests``).
Scratch stores go under ``$PERDURE_BENCH_DIR`` when set (put it on the disk
you want to measure), else under pytest's temporary directory.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("PERDURE_BENCH_DIR")
    if root:
        Path(root).mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="perdure-bench-", dir=root))
    return tmp_path_factory.mktemp("perdure-bench")


@pytest.fixture
def store_dir(bench_dir: Path) -> Iterator[Path]:
    """A fresh directory on the benchmarked disk for one test."""
    path = Path(tempfile.mkdtemp(prefix="store-", dir=bench_dir))
    yield path


def pytest_report_header(config: pytest.Config) -> list[str]:
    from perdure import bench

    info = bench.machine_info(os.environ.get("PERDURE_BENCH_DIR") or tempfile.gettempdir())
    lines = [
        f"perdure {info['perdure']} on {info['cpu']} ({info['cores']} cores), {info['kernel']}, "
        f"bench dir filesystem {info['filesystem']['type']}"
    ]
    if info["extension_debug_info"]:
        lines.append(
            "WARNING: perdure._core has debug info (a debug build?): figures are not representative"
        )
    return lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Prints each benchmark's extra_info (the per-second figures) after the table."""
    session = getattr(terminalreporter.config, "_benchmarksession", None)
    benchmarks = getattr(session, "benchmarks", None) or []
    rows = [(b.name, b.extra_info) for b in benchmarks if getattr(b, "extra_info", None)]
    if not rows:
        return
    terminalreporter.section("perdure figures (extra_info)")
    for name, info in rows:
        shown = []
        for key, value in info.items():
            if isinstance(value, dict) and "median" in value:
                value = value["median"]
            if isinstance(value, float):
                value = f"{value:,.1f}"
            shown.append(f"{key}={value}")
        terminalreporter.write_line(f"{name}: {', '.join(shown)}")
