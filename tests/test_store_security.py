"""A store another user could tamper with is refused (issue 9, "Security").

As ssh refuses loose key files, perdure refuses to open a store directory
that belongs to another user or that others can write to (group or world
writable without the sticky bit), and a store whose ``data.mdb``,
``lock.mdb``, marker ``perdure.store`` or ``owners`` folder is a symbolic
link or belongs to another user: ``StoreAccessError`` naming the path, and
nothing followed, created or changed through a planted link. The tests run
as root and hand files to the user nobody (uid 65534) with chown.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import copy_store, lmdb_only, perdure_cli, store_child

NOBODY = 65534

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="handing files to another user (chown) needs root"
)

pytestmark = lmdb_only("owners and modes of the LMDB store's files and links to them")


def _refused(path: Path, names: str, *words: str) -> None:
    report = store_child("walk", str(path))
    assert report["outcome"] == "error" and report["type"] == "StoreAccessError", report
    assert report["path"] == names, report
    for word in words:
        assert word in report["message"], report


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("security") / "store"
    assert store_child("build", str(path))["outcome"] == "ok"
    return path


@pytest.fixture
def store(base: Path, tmp_path: Path) -> Path:
    return copy_store(base, tmp_path)


def test_own_store_opens(store: Path) -> None:
    assert store_child("walk", str(store))["outcome"] == "ok"


def test_directory_of_another_user_is_refused(store: Path) -> None:
    os.chown(store, NOBODY, NOBODY)
    _refused(store, str(store), "uid 65534")


@pytest.mark.parametrize("mode", [0o770, 0o720, 0o707, 0o777])
def test_directory_writable_by_others_is_refused(store: Path, mode: int) -> None:
    store.chmod(mode)
    _refused(store, str(store), "writable by other users", oct(mode)[2:])


def test_sticky_directory_is_accepted(store: Path) -> None:
    store.chmod(0o1777)
    assert store_child("walk", str(store))["outcome"] == "ok"


def test_store_reached_through_a_link_opens(store: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(store)
    assert store_child("walk", str(link))["outcome"] == "ok"


@pytest.mark.parametrize("name", ["data.mdb", "lock.mdb", "perdure.store"])
def test_file_of_another_user_is_refused(store: Path, name: str) -> None:
    os.chown(store / name, NOBODY, NOBODY)
    _refused(store, str(store / name), "uid 65534")


def test_owners_folder_of_another_user_is_refused(store: Path) -> None:
    os.chown(store / "owners", NOBODY, NOBODY)
    _refused(store, str(store / "owners"), "uid 65534")


@pytest.mark.parametrize("name", ["data.mdb", "lock.mdb", "perdure.store"])
def test_file_replaced_by_a_link_is_refused_and_not_followed(
    store: Path, tmp_path: Path, name: str
) -> None:
    target = tmp_path / "elsewhere"
    (store / name).rename(target)
    target.chmod(0o644)
    before = target.read_bytes()
    (store / name).symlink_to(target)
    _refused(store, str(store / name), "symbolic link")
    assert target.read_bytes() == before
    assert target.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("name", ["data.mdb", "lock.mdb", "perdure.store"])
def test_link_planted_for_a_new_file_is_not_followed(tmp_path: Path, name: str) -> None:
    # A fresh store directory with a link where perdure will create a file.
    path = tmp_path / "fresh"
    path.mkdir(mode=0o700)
    target = tmp_path / "victim"
    (path / name).symlink_to(target)
    _refused(path, str(path / name), "symbolic link")
    assert not target.exists()


def test_owners_folder_replaced_by_a_link_is_refused(store: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (store / "owners").rename(elsewhere)
    (store / "owners").symlink_to(elsewhere)
    _refused(store, str(store / "owners"), "symbolic link")
    assert list(elsewhere.iterdir()) == []


def test_cli_refuses_a_loose_store(store: Path) -> None:
    store.chmod(0o777)
    done = perdure_cli("list", "--store", str(store))
    assert done.returncode == 1
    assert "StoreAccessError" in done.stderr and "writable by other users" in done.stderr
