#!/usr/bin/env bash
# Throwaway Redis for tests: installs Debian's redis-server if missing, starts it on
# 127.0.0.1 with no persistence, and prints the TEST_REDIS_URL to export.
#
#   url=$(.ci/redis.sh start)   # ... then: .ci/redis.sh stop
set -euo pipefail

PORT=${TEST_REDIS_PORT:-63790}
STATE=/tmp/tower-api-key-redis

case "${1:-}" in
start)
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        echo "installing redis-server" >&2
        if [ "$(id -u)" = 0 ]; then
            apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >&2
        else
            echo "redis-server is not installed and this is not root" >&2
            exit 1
        fi
    fi
    "$0" stop >/dev/null 2>&1 || true
    mkdir -p "$STATE"
    redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$STATE" --pidfile "$STATE/redis.pid" --logfile "$STATE/log" \
        --daemonize yes >&2
    # Wait (up to 30 s) until it answers.
    for _ in $(seq 300); do
        if [ "$(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null)" = PONG ]; then
            echo "redis://127.0.0.1:$PORT/"
            exit 0
        fi
        sleep 0.1
    done
    echo "redis-server did not answer on port $PORT; its log:" >&2
    cat "$STATE/log" >&2 || true
    exit 1
    ;;
stop)
    if [ -f "$STATE/redis.pid" ]; then
        redis-cli -h 127.0.0.1 -p "$PORT" shutdown nosave >/dev/null 2>&1 ||
            kill "$(cat "$STATE/redis.pid")" 2>/dev/null || true
    fi
    rm -rf "$STATE"
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
