"""Runs the suite on both stores (issue 10): a test that takes the ``store``
fixture (or ``new_store``, or ``store_kind``) runs once on a fresh LMDB
directory (id ``lmdb``) and once on a fresh PostgreSQL schema (id ``pg``).

The PostgreSQL server is the one named by env PERDURE_TEST_PG (a URL with a
``?``, as scripts/postgres.sh exports it). Without it the ``pg`` half skips,
except under CI, where a missing server is a failure. Select one half with
``-m lmdb`` or ``-m pg``.

A test about the LMDB files themselves (their bytes, modes, map size) is
marked ``@lmdb_only("why")`` and runs on the ``lmdb`` half only; one about
PostgreSQL URLs is marked ``@pytest.mark.pg_only("why")``.
"""

from __future__ import annotations

import os
import secrets
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import is_pg, psql

#: The PostgreSQL server the ``pg`` half runs on; see the module docstring.
PG_URL_ENV = "PERDURE_TEST_PG"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lmdb: runs on an LMDB store directory")
    config.addinivalue_line("markers", "pg: runs on a PostgreSQL store (env PERDURE_TEST_PG)")
    config.addinivalue_line(
        "markers", "lmdb_only(reason): a test about LMDB files, not run on PostgreSQL"
    )
    config.addinivalue_line(
        "markers", "pg_only(reason): a test about PostgreSQL URLs, not run on LMDB"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # store_kind is in the closure of the store fixtures below (not of a
    # module's own fixture of the same name, which overrides them).
    if "store_kind" not in metafunc.fixturenames:
        return
    params = []
    if metafunc.definition.get_closest_marker("pg_only") is None:
        params.append(pytest.param("lmdb", id="lmdb", marks=pytest.mark.lmdb))
    if metafunc.definition.get_closest_marker("lmdb_only") is None:
        params.append(pytest.param("pg", id="pg", marks=pytest.mark.pg))
    # Module scope groups each module's tests by store, so module-scoped
    # fixtures built on a store are built once per store.
    metafunc.parametrize("store_kind", params, scope="module")


def pg_server_url() -> str:
    """PERDURE_TEST_PG; skips the test when unset, fails it under CI."""
    url = os.environ.get(PG_URL_ENV)
    if not url:
        message = f"{PG_URL_ENV} is unset: no PostgreSQL server to test on"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (under CI a missing server is a failure)")
        pytest.skip(f"{message} (scripts/postgres.sh starts one)")
    return url


def pg_schema_url(server: str, schema: str) -> str:
    """The store URL of ``schema`` on ``server`` (which already has a ``?``)."""
    return f"{server}&schema={schema}"


@pytest.fixture
def new_store(store_kind: str, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Makes fresh, empty store locations of this test's kind, each call a
    new one: an LMDB directory under ``tmp_path`` (not yet created), or the
    URL of a PostgreSQL schema not yet created, dropped after the test."""
    made: list[str] = []
    server = pg_server_url() if store_kind == "pg" else ""

    def make() -> str:
        if store_kind == "lmdb":
            location = str(tmp_path / f"store{len(made) or ''}")
        else:
            location = pg_schema_url(server, f"t_{secrets.token_hex(6)}")
        made.append(location)
        return location

    yield make
    _drop_schemas(server, made)


def _drop_schemas(server: str, locations: list[str]) -> None:
    # One psql for all: a hypothesis test makes hundreds of stores.
    schemas = [
        dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))["schema"]
        for location in locations
        if is_pg(location)
    ]
    if schemas:
        psql(server, "".join(f'DROP SCHEMA IF EXISTS "{name}" CASCADE;' for name in schemas))


@pytest.fixture(scope="module")
def module_new_store(
    store_kind: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], str]]:
    """:func:`new_store` for module-scoped fixtures: its locations last the
    module's tests on this store kind."""
    made: list[str] = []
    server = pg_server_url() if store_kind == "pg" else ""
    base = tmp_path_factory.mktemp("stores") if store_kind == "lmdb" else None

    def make() -> str:
        if base is not None:
            location = str(base / f"store{len(made) or ''}")
        else:
            location = pg_schema_url(server, f"t_{secrets.token_hex(6)}")
        made.append(location)
        return location

    yield make
    _drop_schemas(server, made)


@pytest.fixture
def store(new_store: Callable[[], str]) -> str:
    """A fresh store location of this test's kind; see :func:`new_store`."""
    return new_store()


@pytest.fixture
def lmdb_store(store_kind: str, store: str) -> Path:
    """The store directory of an ``@lmdb_only`` test, as a Path."""
    assert store_kind == "lmdb", "a test on LMDB files must be marked @lmdb_only"
    return Path(store)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # An @lmdb_only test that opens its own directory (not through the
    # fixtures above) is on the LMDB half too: ``-m lmdb`` selects it.
    for item in items:
        if item.get_closest_marker("lmdb_only") and not item.get_closest_marker("lmdb"):
            item.add_marker(pytest.mark.lmdb)
