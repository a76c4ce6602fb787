#!/usr/bin/env bash
# Instructions per request, end to end through a real server, with valgrind's callgrind:
# instruction counts repeat from run to run where wall times do not (a busy machine,
# another tenant). For each variant the server is run twice under callgrind, serving
# FEW and then MANY requests on one keep-alive connection; (Ir(MANY) - Ir(FEW)) /
# (MANY - FEW) is what one request costs, start-up and shutdown cancelled out.
#
#   scripts/callgrind.sh                       # our loadtest_server modes beside the peers
#   VARIANTS="ours_bare ours_auth" scripts/callgrind.sh
#   FEW=2000 MANY=12000 KEEP=/tmp/cg scripts/callgrind.sh   # keep the profiles for callgrind_annotate
#
# Variants: ours_<MODE> (examples/loadtest_server, MODE bare, auth, auth-one, auth-outer) and
# peer_<name> (../shared/peers: bare, bearer, governor, bearer+governor, naive_ref).
set -euo pipefail
proj=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS_DIR:-$proj/../shared/peers}
FEW=${FEW:-2000}
MANY=${MANY:-12000}
VARIANTS=${VARIANTS:-"peer_bare peer_bearer peer_governor peer_bearer+governor peer_naive_ref ours_bare ours_auth ours_auth-outer"}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tower-api-key/target}
peers_target=${PEERS_TARGET_DIR:-$HOME/.cache/tower-api-key/peers-target}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
(cd "$proj" && cargo build --quiet --release --features full --example loadtest_server)
[ -d "$peers" ] && (cd "$peers" && CARGO_TARGET_DIR="$peers_target" cargo build --quiet --release --bin server)
out=${KEEP:-$(mktemp -d)}
mkdir -p "$out"
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$out"' EXIT
# The peers' server serves its variants on consecutive ports from PORT_BASE.
peer_index() {
  case $1 in bare) echo 0 ;; bearer) echo 1 ;; governor) echo 2 ;; bearer+governor) echo 3 ;; naive_ref) echo 4 ;;
    *) echo "unknown peer $1" >&2; exit 1 ;; esac
}

# Sends N GETs on one connection with these Authorization and X-API-Key values (as
# e2e.sh does: the peers' bearer check wants "token", their governor keys by x-api-key)
# and checks every answer is 200.
drive() {
  python3 - "$@" <<'PY'
import http.client, sys
host, port, auth, api_key, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
conn = http.client.HTTPConnection(host, port, timeout=120)
for i in range(n):
    conn.request("GET", "/", headers={"Authorization": auth, "x-api-key": api_key})
    r = conn.getresponse(); r.read()
    if r.status != 200:
        sys.exit(f"request {i}: {r.status}")
PY
}

# Runs variant $1 under callgrind serving $2 requests; prints its total instructions.
measure() {
  local variant=$1 n=$2 log="$out/$1.$2.log" file="$out/callgrind.$1.$2" url key port
  case $variant in
    ours_*)
      MODE=${variant#ours_} valgrind --tool=callgrind --callgrind-out-file="$file" \
        "$CARGO_TARGET_DIR/release/examples/loadtest_server" >"$log" 2>&1 &
      pid=$! ;;
    peer_*)
      PORT_BASE=${PEER_PORT_BASE:-3101} valgrind --tool=callgrind --callgrind-out-file="$file" \
        "$peers_target/release/server" >"$log" 2>&1 &
      pid=$! ;;
  esac
  local deadline=$((SECONDS + 120))
  while :; do
    case $variant in
      ours_*) url=$(sed -n 's/^listening on http:\/\///p' "$log"); key=$(sed -n 's/^key: //p' "$log") ;;
      peer_*) key=$(grep -o 'sk_live_[A-Za-z0-9]*' "$log" | head -1 || true)
              port=$(( ${PEER_PORT_BASE:-3101} + $(peer_index "${variant#peer_}") ))
              grep -q "listening on" "$log" 2>/dev/null && url=127.0.0.1:$port || url= ;;
    esac
    [ -n "$url" ] && [ -n "$key" ] && break
    [ $SECONDS -lt $deadline ] || { echo "$variant did not start: $(cat "$log")" >&2; exit 1; }
    sleep 0.2
  done
  case $variant in
    ours_*) drive "${url%:*}" "${url#*:}" "Bearer $key" "unused" "$n" ;;
    peer_*) drive "${url%:*}" "${url#*:}" "Bearer token" "$key" "$n" ;;
  esac
  # SIGTERM: a background job of a non-interactive shell ignores SIGINT. Callgrind
  # writes its profile as the server dies of it.
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=
  awk '/^(summary|totals):/ {print $2; exit}' "$file"
}

printf '%-24s %14s\n' variant "instr/request"
for v in $VARIANTS; do
  few=$(measure "$v" "$FEW"); many=$(measure "$v" "$MANY")
  printf '%-24s %14d\n' "$v" $(( (many - few) / (MANY - FEW) ))
done
