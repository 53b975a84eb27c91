# Sourced by scripts/test.sh and .ci/run: start_test_postgres starts a
# throwaway PostgreSQL cluster on a Unix socket (installing Debian's server
# when missing and run as root), exports its URL as PERDURE_TEST_PG and stops
# it when the calling shell exits. A PERDURE_TEST_PG already set is kept.
# It then starts a second one with TLS on TCP (start_test_postgres_tls).

_perdure_pg_stops=()
_perdure_pg_cleanup() {
    local stop
    for stop in "${_perdure_pg_stops[@]}"; do eval "$stop" >/dev/null 2>&1; done
}

start_test_postgres() {
    if [ -z "${PERDURE_TEST_PG:-}" ]; then
        _start_test_postgres_plain || return 0
    fi
    start_test_postgres_tls
}

_start_test_postgres_plain() {
    if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null
        else
            echo "note: no PostgreSQL server (apt-get install postgresql); its tests will skip" >&2
            return 1
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
    _perdure_pg_stops+=("${as[*]} $bin/pg_ctl -D $PERDURE_PG_DIR/data -m fast -w stop; rm -rf $PERDURE_PG_DIR")
    # For tests that restart the server (tests/test_pg_faults.py): pg_ctl on
    # this cluster, run as the cluster's owner; its log is $PERDURE_PG_DIR/log.
    export PERDURE_PG_DIR
    export PERDURE_PG_CTL="${as[*]} $bin/pg_ctl -D $PERDURE_PG_DIR/data"
    trap _perdure_pg_cleanup EXIT
    export PERDURE_TEST_PG="postgresql://postgres@localhost/postgres?host=$PERDURE_PG_DIR&port=5439"
}

# A throwaway cluster with ssl=on on TCP localhost (a free port), its server
# certificate (for DNS name localhost only) signed by a CA made here: exports
# PERDURE_TEST_PG_TLS (its URL, no sslmode), PERDURE_TEST_PG_TLS_CA (the CA)
# and PERDURE_TEST_PG_TLS_OTHER_CA (an unrelated CA) for postgres_tls.rs.
start_test_postgres_tls() {
    if [ -n "${PERDURE_TEST_PG_TLS:-}" ] || ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
        return 0
    fi
    if ! command -v openssl >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get install -y -qq --no-install-recommends openssl >/dev/null
    fi
    local bin dir port as=()
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
    dir=$(mktemp -d)
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    (
        set -e
        cd "$dir"
        ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
        for ca in ca other; do
            openssl req -x509 "${ec[@]}" -keyout $ca.key -out $ca.pem -days 3 -subj "/CN=perdure test $ca" \
                -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
        done
        openssl req "${ec[@]}" -keyout server.key -out server.csr -subj /CN=localhost
        printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3 -extfile server.ext -out server.pem
        chmod 600 server.key
    ) >/dev/null 2>&1 || { echo "note: could not make TLS certificates (openssl)" >&2; rm -rf "$dir"; return 0; }
    if [ "$(id -u)" = 0 ]; then
        chown -R postgres "$dir"
        as=(runuser -u postgres --)
    fi
    "${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -N >/dev/null
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w start \
        -o "-c listen_addresses=localhost -c unix_socket_directories='$dir' -c port=$port -c ssl=on -c ssl_cert_file='$dir/server.pem' -c ssl_key_file='$dir/server.key'" >/dev/null
    _perdure_pg_stops+=("${as[*]} $bin/pg_ctl -D $dir/data -m fast -w stop; rm -rf $dir")
    trap _perdure_pg_cleanup EXIT
    export PERDURE_TEST_PG_TLS="postgresql://postgres@localhost:$port/postgres"
    export PERDURE_TEST_PG_TLS_CA="$dir/ca.pem" PERDURE_TEST_PG_TLS_OTHER_CA="$dir/other.pem"
}
