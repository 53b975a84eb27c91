# Sourced by scripts/test.sh and .ci/run: start_test_postgres starts a
# throwaway PostgreSQL cluster on a Unix socket (installing Debian's server
# when missing and run as root), exports its URL as PERDURE_TEST_PG and stops
# it when the calling shell exits. A PERDURE_TEST_PG already set is kept.

start_test_postgres() {
    if [ -n "${PERDURE_TEST_PG:-}" ]; then
        return 0
    fi
    if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null
        else
            echo "note: no PostgreSQL server (apt-get install postgresql); its tests will skip" >&2
            return 0
        fi
    fi
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
    PERDURE_PG_DIR=$(mktemp -d)
    # initdb refuses to run as root: the cluster then belongs to postgres.
    local as=()
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$PERDURE_PG_DIR"
        as=(runuser -u postgres --)
    fi
    "${as[@]}" "$bin/initdb" -D "$PERDURE_PG_DIR/data" -U postgres --auth=trust -N >/dev/null
    "${as[@]}" "$bin/pg_ctl" -D "$PERDURE_PG_DIR/data" -l "$PERDURE_PG_DIR/log" -w start \
        -o "-c listen_addresses='' -c unix_socket_directories='$PERDURE_PG_DIR' -c port=5439 -c max_connections=200" >/dev/null
    PERDURE_PG_STOP="${as[*]} $bin/pg_ctl -D $PERDURE_PG_DIR/data -m fast -w stop"
    # For tests that restart the server (tests/test_pg_faults.py): pg_ctl on
    # this cluster, run as the cluster's owner; its log is $PERDURE_PG_DIR/log.
    export PERDURE_PG_DIR
    export PERDURE_PG_CTL="${as[*]} $bin/pg_ctl -D $PERDURE_PG_DIR/data"
    trap 'eval "$PERDURE_PG_STOP" >/dev/null; rm -rf "$PERDURE_PG_DIR"' EXIT
    export PERDURE_TEST_PG="postgresql://postgres@localhost/postgres?host=$PERDURE_PG_DIR&port=5439"
}
