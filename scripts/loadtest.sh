#!/usr/bin/env bash
# End-to-end load test on loopback: requests per second of a bare axum route against the
# same route behind ApiKeyLayer + RateLimitLayer, measured with wrk: the layers added with
# Router::layer ("auth") and wrapped around the router ("auth-outer").
#
# The server runs on core 0 (one thread), wrk on core 1; the modes alternate for ROUNDS
# rounds of DURATION each, each round starting with the next mode. Needs wrk (apt-get install wrk), taskset and bc.
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

bare_all=(); auth_all=(); outer_all=(); auth_ratios=(); outer_ratios=()
for round in $(seq 1 "$ROUNDS"); do
    # Rotate which mode goes first, so that no mode always runs right after another.
    for i in 0 1 2; do
        case $(( (round + i) % 3 )) in
            0) b=$(run_mode bare) ;;
            1) a=$(run_mode auth) ;;
            2) o=$(run_mode auth-outer) ;;
        esac
    done
    bare_all+=("$b"); auth_all+=("$a"); outer_all+=("$o")
    auth_ratios+=("$(echo "$a / $b" | bc -l)"); outer_ratios+=("$(echo "$o / $b" | bc -l)")
    printf 'round %d: bare %s, auth %s (%.3f), auth-outer %s (%.3f) req/s\n' "$round" \
        "$b" "$a" "$(echo "$a / $b" | bc -l)" "$o" "$(echo "$o / $b" | bc -l)"
done
sum() { local s=0; for x in "$@"; do s=$(echo "$s + $x" | bc -l); done; echo "$s"; }
b=$(sum "${bare_all[@]}"); a=$(sum "${auth_all[@]}"); o=$(sum "${outer_all[@]}")
printf 'mean of %d rounds: bare %.0f, auth %.0f (ratio %.3f), auth-outer %.0f (ratio %.3f) req/s; goal >= 0.93\n' \
    "$ROUNDS" "$(echo "$b / $ROUNDS" | bc -l)" "$(echo "$a / $ROUNDS" | bc -l)" \
    "$(echo "$a / $b" | bc -l)" "$(echo "$o / $ROUNDS" | bc -l)" "$(echo "$o / $b" | bc -l)"
# Each round measures the modes back to back, so the ratio within a round is the figure
# least moved by the machine's drift between rounds: report its median too.
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf 'median of per-round ratios: auth %.3f, auth-outer %.3f; goal >= 0.93\n' \
    "$(median "${auth_ratios[@]}")" "$(median "${outer_ratios[@]}")"
