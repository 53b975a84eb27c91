"""The PostgreSQL store as a user opens it: by URL, in a schema of its own,
with the CLI refusing a schema that holds no store (it creates nothing).
The rest of the suite runs on both stores; this module holds what only a
server has."""

from __future__ import annotations

import os
import secrets

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


def test_an_engine_over_tls_checks_the_servers_certificate() -> None:
    """The server with ssl=on that scripts/postgres.sh starts (certificate for
    localhost, signed by PERDURE_TEST_PG_TLS_CA); rust/core/tests/postgres_tls.rs
    covers each sslmode."""
    base = os.environ.get("PERDURE_TEST_PG_TLS")
    if not base:
        if os.environ.get("CI"):
            pytest.fail("PERDURE_TEST_PG_TLS is not set: scripts/postgres.sh starts it")
        pytest.skip("no PostgreSQL server with TLS (PERDURE_TEST_PG_TLS unset)")
    base = base.replace("postgresql://postgres@", "postgresql://postgres:s3cret@", 1)
    schema = f"t_{secrets.token_hex(6)}"
    right = f"{base}?sslmode=verify-full&sslrootcert={os.environ['PERDURE_TEST_PG_TLS_CA']}"
    with Engine(f"{right}&schema={schema}") as engine:
        assert engine.run(double, 4, execution_id="tls", timeout=30) == 8
    other_ca = os.environ["PERDURE_TEST_PG_TLS_OTHER_CA"]
    with pytest.raises(perdure.StoreError) as refused:
        Engine(f"{base}?sslmode=verify-full&sslrootcert={other_ca}&schema={schema}")
    message = str(refused.value)
    assert "TLS certificate is refused" in message and other_ca in message, message
    assert "s3cret" not in message
