#!/usr/bin/env bash
# End-to-end load test on loopback: requests per second of a bare axum route against the
# same route behind ApiKeyLayer + RateLimitLayer, measured with wrk.
#
# The server runs on core 0 (one thread), wrk on core 1; the two modes alternate for
# ROUNDS rounds of DURATION each. Needs wrk (apt-get install wrk) and taskset.
#
#   scripts/loadtest.sh            # 3 rounds of 10 s
#   ROUNDS=5 DURATION=20s scripts/loadtest.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tower-api-key/target}"

command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install wrk" >&2; exit 1; }
cargo build --release --features full --example loadtest_server >&2
server_bin="$CARGO_TARGET_DIR/release/examples/loadtest_server"

run_mode() { # mode -> prints requests/s
    local mode=$1 out addr key pid rps
    out=$(mktemp)
    MODE=$mode taskset -c 0 "$server_bin" >"$out" 2>&1 &
    pid=$!
    for _ in $(seq 1 200); do
        grep -q '^listening on' "$out" && break
        sleep 0.05
    done
    addr=$(sed -n 's/^listening on //p' "$out")
    key=$(sed -n 's/^key: //p' "$out")
    [ -n "$addr" ] || { echo "server did not start: $(cat "$out")" >&2; kill $pid; exit 1; }
    rps=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" \
        -H "Authorization: Bearer $key" "$addr/" | awk '/^Requests\/sec:/ {print $2}')
    kill $pid; wait $pid 2>/dev/null || true
    rm -f "$out"
    echo "$rps"
}

bare_all=(); auth_all=()
for round in $(seq 1 "$ROUNDS"); do
    b=$(run_mode bare); a=$(run_mode auth)
    bare_all+=("$b"); auth_all+=("$a")
    printf 'round %d: bare %s req/s, auth+ratelimit %s req/s, ratio %.3f\n' \
        "$round" "$b" "$a" "$(echo "$a / $b" | bc -l)"
done
sum() { local s=0; for x in "$@"; do s=$(echo "$s + $x" | bc -l); done; echo "$s"; }
b=$(sum "${bare_all[@]}"); a=$(sum "${auth_all[@]}")
printf 'mean over %d rounds: bare %.0f req/s, auth+ratelimit %.0f req/s, ratio %.3f (goal >= 0.93)\n' \
    "$ROUNDS" "$(echo "$b / $ROUNDS" | bc -l)" "$(echo "$a / $ROUNDS" | bc -l)" "$(echo "$a / $b" | bc -l)"
