#!/usr/bin/env bash
# A soak of the example server (release build): SOAK_SECONDS (default 600) of load over
# one million distinct keys — 100 000 valid ones across 1 000 consumers (imported by
# hash), 800 000 well-formed unknown ones, 100 000 that fail the checksum — from
# examples/soak.rs on 16 keep-alive connections, while this script samples the server's
# RSS every 10 s. Then it checks that no answer was a 5xx, that the server's usage counts
# equal the 200s sent (per key for 2 000 of the valid keys, and summed over all), and that
# RSS after warm-up (the first WARMUP_SECONDS, default 120) stays within 10 % of its level
# at the end of the warm-up.
#
#   scripts/soak.sh                          # 10 minutes
#   SOAK_SECONDS=60 WARMUP_SECONDS=20 scripts/soak.sh
#
# The server runs on core 0 with a throwaway SQLite file, FAILURE_LIMIT=off (all the
# load comes from one address; tests/floods.rs and scripts/flood.sh cover the limit) and
# a per-key budget the load cannot spend. The RSS samples go to $SOAK_OUT (default
# ./soak-rss.csv: seconds,rss_kib). Loopback only; everything stops on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tower-api-key/target}"
SOAK_SECONDS=${SOAK_SECONDS:-600}
WARMUP_SECONDS=${WARMUP_SECONDS:-120}
PORT=${PORT:-3391}
out=${SOAK_OUT:-soak-rss.csv}
cargo build --quiet --release --features full --example server --example soak
bin=$CARGO_TARGET_DIR/release/examples
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT

FAILURE_LIMIT=off RATE_LIMIT=1000000000/60s BIND=127.0.0.1:$PORT \
    DATABASE_URL="sqlite://$work/keys.db" taskset -c 0 "$bin/server" >"$work/server.log" 2>&1 &
pid=$!
deadline=$((SECONDS + 30))
until admin=$(sed -n 's/^admin key: //p' "$work/server.log") && [ -n "$admin" ] &&
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "server did not start: $(cat "$work/server.log")" >&2; exit 1; }
    sleep 0.1
done

ADMIN_KEY=$admin taskset -c 1 "$bin/soak" --addr "127.0.0.1:$PORT" --seconds "$SOAK_SECONDS" \
    >"$work/soak.out" 2>"$work/soak.err" &
load=$!
echo "seconds,rss_kib" >"$out"
start=$SECONDS
while kill -0 "$load" 2>/dev/null; do
    echo "$((SECONDS - start)),$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")" >>"$out"
    # Every 10 s, but notice the end of the load within a second.
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$load" 2>/dev/null && sleep 1; done
done
status=0
wait "$load" || status=$?
cat "$work/soak.out"
[ -s "$work/soak.err" ] && cat "$work/soak.err" >&2
grep -q 'panicked' "$work/server.log" && { echo "the server panicked" >&2; status=1; }
python3 - "$out" "$WARMUP_SECONDS" <<'PY' || status=1
import csv, sys
rows = [(int(r["seconds"]), int(r["rss_kib"])) for r in csv.DictReader(open(sys.argv[1]))]
warm = int(sys.argv[2])
after = [rss for s, rss in rows if s >= warm]
if len(after) < 2:
    sys.exit(f"too few samples after the warm-up: {rows}")
level = after[0]
low, high = min(after), max(after)
print(f"RSS: {rows[0][1]} KiB at the start, {level} KiB after the warm-up ({warm} s), "
      f"{low}..{high} KiB after it ({(high - level) / level:+.1%} at most), "
      f"{len(rows)} samples")
if high > level * 1.10 or low < level * 0.90:
    sys.exit("RSS moved by more than 10 % after the warm-up")
PY
exit "$status"
