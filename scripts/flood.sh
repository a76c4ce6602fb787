#!/usr/bin/env bash
# Unknown-key floods against the example server (release build), without and with its
# failed-authentication limit: a legitimate key sends GET /v1/whoami every 5 ms on one
# connection from 127.0.0.1 while 8 connections from another client, FLOOD_FROM (default
# 127.0.0.2), send well-formed keys that pass the public checksum but are in no store
# (examples/flood.rs), PER_MINUTE of them a minute (default 100 000), each one distinct,
# for FLOOD_SECONDS (default 60).
#
#   scripts/flood.sh                      # FAILURE_LIMIT=off, then the default (100/60s)
#   LIMITS="off 20/60s" scripts/flood.sh  # other settings
#
# For each setting it prints: the legitimate key's p50/p99/max latency alone (BASE_SECONDS,
# default 60) and during the flood, its statuses, the flood's statuses, the store lookups
# the flood caused (tower_api_key_store_call_duration_seconds_count{operation="resolve"}
# from /metrics, before and after), and the server's RSS before and after, and its peak.
# The server runs on core 0 with a throwaway SQLite file; the flood and the legitimate
# client on core 1. Loopback only; everything stops on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tower-api-key/target}"
LIMITS=${LIMITS:-"off 100/60s"}
PER_MINUTE=${PER_MINUTE:-100000}
FLOOD_SECONDS=${FLOOD_SECONDS:-60}
BASE_SECONDS=${BASE_SECONDS:-60}
FLOOD_FROM=${FLOOD_FROM:-127.0.0.2}
PORT=${PORT:-3390}
cargo build --quiet --release --features full --example server --example flood
bin=$CARGO_TARGET_DIR/release/examples
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT

resolves() {
    curl -sf -H "authorization: Bearer $admin" "http://127.0.0.1:$PORT/metrics" |
        awk '/^tower_api_key_store_call_duration_seconds_count\{/ && /operation="resolve"/ {n += $2} END {print n + 0}'
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$pid/status"; }

for limit in $LIMITS; do
    rm -f "$work"/keys.db*
    # A per-key budget the legitimate key cannot spend (it sends 12 000 a minute).
    FAILURE_LIMIT=$limit RATE_LIMIT=1000000/60s BIND=127.0.0.1:$PORT \
        DATABASE_URL="sqlite://$work/keys.db" taskset -c 0 "$bin/server" >"$work/server.log" 2>&1 &
    pid=$!
    deadline=$((SECONDS + 30))
    until admin=$(sed -n 's/^admin key: //p' "$work/server.log") && [ -n "$admin" ] &&
        curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null; do
        [ $SECONDS -lt $deadline ] || { echo "server did not start: $(cat "$work/server.log")" >&2; exit 1; }
        sleep 0.1
    done
    legit=$(curl -sf -H "authorization: Bearer $admin" -H 'content-type: application/json' \
        -d '{"consumer":"legit","name":"flood-test","scopes":["orders:read"]}' \
        "http://127.0.0.1:$PORT/admin/keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
    base=$(taskset -c 1 "$bin/flood" --addr "127.0.0.1:$PORT" --key "$legit" --per-minute 0 --seconds "$BASE_SECONDS")
    before=$(resolves); rss_before=$(rss_kib)
    during=$(taskset -c 1 "$bin/flood" --addr "127.0.0.1:$PORT" --key "$legit" \
        --per-minute "$PER_MINUTE" --seconds "$FLOOD_SECONDS" --flood-from "$FLOOD_FROM")
    after=$(resolves); rss_after=$(rss_kib); hwm=$(hwm_kib)
    echo "FAILURE_LIMIT=$limit"
    echo "  alone:  $base"
    echo "  flood:  $during"
    echo "  store lookups during the flood: $((after - before)) ($(( (after - before) * 60 / FLOOD_SECONDS )) a minute)"
    echo "  RSS: ${rss_before} KiB before, ${rss_after} KiB after, peak ${hwm} KiB"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
done
