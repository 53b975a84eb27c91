"""``perdure check``: read every entry of a store and report what is damaged.

perdure checks what it can before LMDB touches a store (the meta pages and
the length of ``data.mdb``, journal keys, every value's checksum), but a
damaged B-tree page can still make LMDB itself read through a bad pointer
and kill the process. The check therefore walks the store in a child
process: a crash there is reported as :class:`~perdure.errors.CorruptStoreError`
naming ``data.mdb``, and the caller lives on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from perdure._checks import is_store_url
from perdure.errors import CorruptStoreError, StoreAccessError

__all__ = ["CheckReport", "check_store"]

# What the child prints first on stdout: the number of entries read.
_ENTRIES = "entries "


@dataclass
class CheckReport:
    """What :func:`check_store` found: the entries read, and one message per
    damaged value (empty for a sound store)."""

    path: str
    entries: int
    damaged: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged


def check_store(path: str | os.PathLike[str], *, timeout: float = 600.0) -> CheckReport:
    """Read every entry of the store at ``path`` in a child process.

    Returns the report of damaged values (each naming its execution where it
    has one). Raises :class:`~perdure.errors.CorruptStoreError` (``path`` =
    ``data.mdb``) when the file itself is damaged, the child crashed on it
    included, and :class:`~perdure.errors.StoreAccessError` for a store that
    does not exist or cannot be opened.
    """
    if is_store_url(path):
        # Rows on a server cannot crash the reader: no child process needed.
        from perdure.engine import Engine

        with Engine(path, owner=False) as engine:
            entries, damaged = engine._core.check()
            return CheckReport(engine.store, entries, list(damaged))
    store = Path(path)
    if not store.is_dir():
        raise StoreAccessError(f"no store at {str(store)!r}", path=str(store))
    data = str(store / "data.mdb")
    child = subprocess.run(
        [sys.executable, "-m", "perdure.check", str(store)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if child.returncode < 0:
        try:
            name = signal.Signals(-child.returncode).name
        except ValueError:
            name = f"signal {-child.returncode}"
        raise CorruptStoreError(
            f"corrupt store file {data!r}: reading it crashed the checking process ({name}); "
            "a B-tree page is damaged. Restore the store from a backup.",
            path=data,
        )
    lines = child.stdout.splitlines()
    if child.returncode != 0 or not lines or not lines[0].startswith(_ENTRIES):
        last = (child.stderr.strip().splitlines() or ["the check failed"])[-1]
        kind, _, message = last.partition(": ")
        if kind == "StoreAccessError":
            raise StoreAccessError(message, path=str(store))
        if kind == "CorruptStoreError" or kind == "StoreError":
            raise CorruptStoreError(message, path=data)
        raise CorruptStoreError(f"the check of {data!r} failed: {last}", path=data)
    return CheckReport(str(store), int(lines[0][len(_ENTRIES) :]), lines[1:])


def _child(path: str) -> int:
    from perdure.engine import Engine
    from perdure.errors import PerdureError

    try:
        with Engine(path, owner=False) as engine:
            entries, damaged = engine._core.check()
    except PerdureError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"{_ENTRIES}{entries}")
    for message in damaged:
        print(message.replace("\n", " "))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
