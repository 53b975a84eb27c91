"""The PostgreSQL store as a user opens it: by URL, in a schema of its own,
with the CLI refusing a schema that holds no store (it creates nothing).
The rest of the suite runs on both stores; this module holds what only a
server has."""

from __future__ import annotations

import perdure
import pytest
from perdure import DurableContext, Engine
from perdure._core import postgres_store_exists
from support import perdure_cli

# What only a server has: the conftest's store fixture, on its pg half only.
pytestmark = pytest.mark.pg_only("PostgreSQL URLs and schemas")


@pytest.fixture
def pg_url(store: str) -> str:
    """A URL naming a fresh schema on the test server; dropped after."""
    return store


@perdure.durable(name="pg-double")
def double(ctx: DurableContext, n: int) -> int:
    return ctx.step(lambda _: n * 2, name="double")


def test_a_url_opens_a_store_in_its_schema_and_hides_the_password(pg_url: str) -> None:
    with_password = pg_url.replace("postgresql://postgres@", "postgresql://postgres:s3cret@", 1)
    assert not postgres_store_exists(pg_url)
    with Engine(with_password) as engine:
        assert engine.path is None
        assert "s3cret" not in engine.store and ":***@" in engine.store
        assert engine.run(double, 21, execution_id="d", timeout=30) == 42
    assert postgres_store_exists(pg_url)
    with Engine(pg_url, owner=False) as reader:
        assert reader.get("d").status() == "SUCCEEDED"
    done = perdure_cli("list", "--store", pg_url)
    assert done.returncode == 0 and "pg-double" in done.stdout, done


def test_the_cli_refuses_a_schema_without_a_store_and_creates_nothing(pg_url: str) -> None:
    for command in (["list"], ["show", "x"], ["history", "x"], ["check"]):
        done = perdure_cli(*command, "--store", pg_url)
        assert done.returncode == 2, (command, done)
        assert "no perdure store" in done.stderr, done
    assert not postgres_store_exists(pg_url)
