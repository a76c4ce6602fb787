#!/usr/bin/env bash
# End-to-end load test on loopback: requests per second of a bare axum route against the
# same route behind ApiKeyLayer + RateLimitLayer, measured with wrk: the layers added with
# two Router::layer calls ("auth"), with one call of a ServiceBuilder holding both
# ("auth-one"), and wrapped around the router ("auth-outer").
#
# The server runs on core 0 (one thread), wrk on core 1; the modes alternate for ROUNDS
# rounds of DURATION each, each round starting with the next mode. Needs wrk (apt-get
# install wrk), taskset and bc.
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

MODES=(bare auth auth-one auth-outer)
declare -A all ratios
for round in $(seq 1 "$ROUNDS"); do
    # Rotate which mode goes first, so that no mode always runs right after another.
    declare -A rps=()
    for i in "${!MODES[@]}"; do
        mode=${MODES[$(( (round + i) % ${#MODES[@]} ))]}
        rps[$mode]=$(run_mode "$mode")
    done
    line="round $round: bare ${rps[bare]}"
    for mode in "${MODES[@]:1}"; do
        ratio=$(echo "${rps[$mode]} / ${rps[bare]}" | bc -l)
        ratios[$mode]+="$ratio "
        line+=$(printf ', %s %s (%.3f)' "$mode" "${rps[$mode]}" "$ratio")
    done
    for mode in "${MODES[@]}"; do all[$mode]+="${rps[$mode]} "; done
    echo "$line req/s"
done
sum() { local s=0; for x in "$@"; do s=$(echo "$s + $x" | bc -l); done; echo "$s"; }
# Each round measures the modes back to back, so the ratio within a round is the figure
# least moved by the machine's drift between rounds: report its median too.
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# shellcheck disable=SC2086 # the lists are space-separated numbers
bare_sum=$(sum ${all[bare]})
means="mean of $ROUNDS rounds: bare $(printf '%.0f' "$(echo "$bare_sum / $ROUNDS" | bc -l)")"
medians="median of per-round ratios:"
for mode in "${MODES[@]:1}"; do
    # shellcheck disable=SC2086
    mode_sum=$(sum ${all[$mode]})
    means+=$(printf ', %s %.0f (ratio %.3f)' "$mode" "$(echo "$mode_sum / $ROUNDS" | bc -l)" \
        "$(echo "$mode_sum / $bare_sum" | bc -l)")
    # shellcheck disable=SC2086
    medians+=$(printf ' %s %.3f' "$mode" "$(median ${ratios[$mode]})")
done
echo "$means req/s"
echo "$medians; goal >= 0.93"
