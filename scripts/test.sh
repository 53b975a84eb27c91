#!/usr/bin/env bash
# The whole test suite on a fresh machine: the system tools some tests drive,
# a throwaway PostgreSQL server, the Python test dependencies, then pytest
# (arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."

# libfaketime steps a process's clock back for tests/test_clock_step.py.
if ! ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq faketime >/dev/null
    else
        echo "note: libfaketime missing (apt-get install faketime); the clock-step tests will skip" >&2
    fi
fi

# A throwaway PostgreSQL server for the tests of the PostgreSQL store.
source scripts/postgres.sh
start_test_postgres

pip install ".[test]"
python -m pytest "$@"
