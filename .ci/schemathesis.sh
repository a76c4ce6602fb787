#!/usr/bin/env bash
# Holds the admin API and the portal to their OpenAPI documents: runs schemathesis (PyPI,
# major version 4, in a venv) with every check against the example server, once for
# /admin/openapi.json with the admin key and once for /portal/openapi.json with a key of
# scope keys:self made for it, and fails on any failure.
#
#   bash .ci/schemathesis.sh [extra schemathesis options]
#
# Expects the example server built (`cargo build --features full --examples`) in
# $CARGO_TARGET_DIR (default: target), or at $EXAMPLE_SERVER. Starts it on loopback with a throwaway SQLite
# file, GitHub secret scanning (a public key of no one's) and webhooks to a port where
# nothing listens (so that the delivery log has entries), and stops it on any exit.
#
# Schemathesis gets the keys through its OpenAPI-aware auth (both key schemes of a
# document get the same key), from the environment, never on a command line.
# SCHEMATHESIS_VENV (default ~/.cache/tower-api-key/schemathesis-venv) is reused when
# it already has a schemathesis 4. SCHEMATHESIS_SEED (default 1) makes a run
# repeatable; SCHEMATHESIS_EXAMPLES (default 100) is the number of cases per operation.
# SCHEMATHESIS_DATABASE_URL runs the server on another (empty) store, such as PostgreSQL.
# Every check, use_after_free too: revoking is POST …/revoke, because a revoked key stays
# readable at its URI, and DELETE removes the key from it (404 from then on).
# One worker: with two, CPython 3.11's ast module, which hypothesis calls from both
# threads, now and then fails with "AST constructor recursion depth mismatch" (a
# runtime error of the tool, not a finding).
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
server_bin=${EXAMPLE_SERVER:-$target/debug/examples/server}
venv=${SCHEMATHESIS_VENV:-$HOME/.cache/tower-api-key/schemathesis-venv}
seed=${SCHEMATHESIS_SEED:-1}
examples=${SCHEMATHESIS_EXAMPLES:-100}

if [ ! -x "$server_bin" ]; then
    echo "schemathesis.sh: $server_bin is missing; run cargo build --features full --examples" >&2
    exit 1
fi

if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q 'version 4\.'; then
    rm -rf "$venv"
    if ! python3 -m venv "$venv"; then
        # Debian's python3 makes venvs only with python3-venv (ensurepip).
        rm -rf "$venv"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis>=4,<5'
fi
"$venv/bin/schemathesis" --version

work=$(mktemp -d)
server_pid=
stop() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap stop EXIT

# A P-256 public key (from the secret_scanning module's example): with it, the endpoint
# is mounted, and every report schemathesis sends fails its signature check.
cat >"$work/github-keys.json" <<'EOF'
{"public_keys":[{"key_identifier":"ci","is_current":true,"key":"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEtxOaNlumnsq8qF4uMi+RHEVRq1AS\n1w9c7Kwz7Satdj2qqnLmbLLV4MM8OIufeWqXkQPssdXur5yUX/khkTFepQ==\n-----END PUBLIC KEY-----\n"}]}
EOF
# A loopback port nothing listens on: deliveries fail and are retried, and listed.
nowhere=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

BIND=127.0.0.1:0 \
    DATABASE_URL="${SCHEMATHESIS_DATABASE_URL:-sqlite://$work/keys.db}" \
    GITHUB_SECRET_SCANNING_KEYS="$work/github-keys.json" \
    WEBHOOK_URL="http://127.0.0.1:$nowhere/hooks" \
    WEBHOOK_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw \
    RUST_LOG=warn \
    "$server_bin" >"$work/stdout" 2>"$work/stderr" &
server_pid=$!

# The server prints `admin key: …` and then `listening on http://ADDR`.
deadline=$((SECONDS + 30))
until grep -q '^listening on ' "$work/stdout"; do
    if ! kill -0 "$server_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
        echo "schemathesis.sh: the example server did not start:" >&2
        cat "$work/stderr" >&2
        exit 1
    fi
    sleep 0.1
done
base=$(sed -n 's/^listening on //p' "$work/stdout")
ADMIN_KEY=$(sed -n 's/^admin key: //p' "$work/stdout")
export ADMIN_KEY
echo "example server at $base"

# One run per document, each with its API's key through schemathesis's OpenAPI-aware
# auth: both key schemes of the document get the same key.
run() {
    local document=$1 key_var=$2
    cat >"$work/schemathesis.toml" <<EOF
[auth.openapi.bearer]
bearer = "\${$key_var}"

[auth.openapi.api_key]
api_key = "\${$key_var}"

# An import whose rows match the schema is still refused, 422 naming the row, when a
# row's hash is already stored (an earlier case imported the same hash): issue 13 wants
# duplicates 422 like any bad row, all or nothing. So 422 is a valid answer to valid
# data here, and only here.
[[operations]]
include-path = "/admin/keys/import"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
EOF
    echo "==> schemathesis: $document"
    (
        cd "$work"
        "$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" --no-color \
            run "$base$document" \
            --checks all \
            --max-examples "$examples" \
            --seed "$seed" \
            --workers 1 \
            --generation-database none \
            --request-timeout 10 \
            "${extra[@]}"
    )
}

extra=("$@")
status=0
run /admin/openapi.json ADMIN_KEY || status=$?

# A key of the portal's (scope keys:self), made with the admin key after the admin
# run (which could have revoked one made before).
PORTAL_KEY=$(python3 - "$base" <<'EOF'
import json, os, sys, urllib.request
request = urllib.request.Request(
    sys.argv[1] + "/admin/keys",
    data=json.dumps({"consumer": "portal-ci", "scopes": ["keys:self", "orders:read"]}).encode(),
    headers={"Authorization": "Bearer " + os.environ["ADMIN_KEY"], "Content-Type": "application/json"},
)
print(json.load(urllib.request.urlopen(request))["key"])
EOF
)
export PORTAL_KEY
run /portal/openapi.json PORTAL_KEY || status=$?

if [ "$status" -ne 0 ]; then
    echo "schemathesis.sh: failures (exit $status); the server's log:" >&2
    tail -n 50 "$work/stderr" >&2
fi
exit "$status"
