#!/usr/bin/env bash
# Throwaway PostgreSQL for tests: installs Debian's postgresql if missing, starts a
# cluster in a temporary directory on 127.0.0.1 as the postgres user (PostgreSQL will
# not run as root), and prints the TEST_POSTGRES_URL to export.
#
#   url=$(.ci/postgres.sh start)   # ... then: .ci/postgres.sh stop
set -euo pipefail

PORT=${TEST_POSTGRES_PORT:-54329}
STATE=/tmp/tower-api-key-postgres

# The newest installed server (a client-only install has no initdb).
bin_dir() {
    local initdb
    initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
    [ -n "$initdb" ] && dirname "$initdb"
    return 0
}

as_postgres() {
    if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi
}

case "${1:-}" in
start)
    if [ -z "$(bin_dir)" ]; then
        echo "installing postgresql" >&2
        if [ "$(id -u)" = 0 ]; then
            apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        else
            echo "postgresql is not installed and this is not root" >&2
            exit 1
        fi
    fi
    bin=$(bin_dir)
    "$0" stop >/dev/null 2>&1 || true
    mkdir -p "$STATE"
    data="$STATE/data"
    rm -rf "$data"
    mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown -R postgres "$STATE"
    as_postgres "$bin/initdb -D '$data' -U postgres -A trust --no-sync" >/dev/null
    as_postgres "$bin/pg_ctl -D '$data' -l '$STATE/log' -w -t 60 \
        -o \"-p $PORT -c listen_addresses=127.0.0.1 -k '$STATE' -c fsync=off\" start" >/dev/null
    echo "postgres://postgres@127.0.0.1:$PORT/postgres"
    ;;
stop)
    bin=$(bin_dir)
    [ -n "$bin" ] && [ -d "$STATE/data" ] && as_postgres "$bin/pg_ctl -D '$STATE/data' -m fast -w stop" >/dev/null
    rm -rf "$STATE"
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
