"""`perdure bench --quick` runs end to end and reports every figure issue 2 asks for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_quick_reports_every_figure(tmp_path: Path) -> None:
    command = ["bench", "--quick", "--json", "--store-dir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "perdure", *command],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["raw_lmdb"]["synced_commits_per_s"]["median"] > 0
    for durability in ("full", "process"):
        sequential = figures[f"sequential_{durability}"]
        assert sequential["steps_per_s"]["median"] > 0
        assert sequential["ratio_to_raw"] > 0
    assert figures["replay"]["ops_per_s"]["median"] > 0
    assert 20 < figures["bytes_per_step"]["journal"]["bytes_per_step"] <= 64
    assert 20 < figures["bytes_per_step"]["data_mdb_growth_per_step"] <= 64
    assert "replay ops/s" in done.stderr  # the readable table goes to stderr with --json
