#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ (cargo-fuzz, libFuzzer, nightly) for a number of
# executions each, one target at a time, and prints per target the executions done,
# the speed and the crashes found. See docs/fuzzing.md.
#
#   scripts/fuzz.sh [RUNS] [TARGET...]
#   scripts/fuzz.sh 10000000                  # every target, 10 million executions each
#   scripts/fuzz.sh 10000000 key_validation   # one target
#
# Installs the nightly toolchain and cargo-fuzz if they are missing. The committed
# seeds (fuzz/corpus/<target>/) are read, never written: what the fuzzer finds goes to a
# working corpus outside the clone ($FUZZ_WORK, default ~/.cache/tower-api-key/fuzz-corpus),
# crashes to fuzz/artifacts/<target>/ (ignored by git). Runs under `nice -n 19`.
# Exits 1 if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."

all=(key_validation key_source rate_limit_policy scopes admin_api secret_scanning)
runs=${1:-1000000}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
case $runs in '' | *[!0-9]*) echo "RUNS must be a number, not $runs" >&2; exit 2 ;; esac

cache="$HOME/.cache/tower-api-key"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$cache/target-fuzz}"
work="${FUZZ_WORK:-$cache/fuzz-corpus}"
# Optimised, with overflow checks and debug assertions on (fuzz/Cargo.toml's release
# profile: an overflow is a bug to find; not in the elliptic-curve crates, see there). No
# sanitizer (-s none): the crate forbids unsafe code; the checks look for panics and
# wrong answers, and ASan would halve the speed.
flags=(-O -s none)

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    CARGO_TARGET_DIR="$cache/target-tools" cargo install cargo-fuzz
fi

cd fuzz
for t in "${targets[@]}"; do
    [ -f "fuzz_targets/$t.rs" ] || { echo "no fuzz target $t (have: ${all[*]})" >&2; exit 2; }
done
nice -n 19 cargo +nightly fuzz build "${flags[@]}"

summary=()
failed=0
for t in "${targets[@]}"; do
    mkdir -p "$work/$t" "artifacts/$t"
    log="$work/$t.log"
    before=$(find "artifacts/$t" -type f | wc -l)
    dict=()
    [ -f "dicts/$t.dict" ] && dict=(-dict="dicts/$t.dict")
    echo "==> $t: $runs executions (log: $log)"
    status=0
    started=$(date +%s.%N)
    nice -n 19 cargo +nightly fuzz run "${flags[@]}" "$t" "$work/$t" "corpus/$t" -- \
        -runs="$runs" -print_final_stats=1 -timeout=30 "${dict[@]}" >"$log" 2>&1 || status=$?
    done_runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    secs=$(echo "$(date +%s.%N) - $started" | bc)
    speed=$(echo "${done_runs:-0} / $secs" | bc)
    crashes=$(( $(find "artifacts/$t" -type f | wc -l) - before ))
    if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes=1
    fi
    if [ "$crashes" -gt 0 ]; then
        failed=1
        grep -E 'panicked|Test unit written|SUMMARY' "$log" | head -n 5 || true
    fi
    line=$(printf '%-18s %12s executions in %6.0f s: %8s exec/s, %d crashes' \
        "$t" "${done_runs:-?}" "$secs" "$speed" "$crashes")
    echo "$line"
    summary+=("$line")
done

echo
echo "==> summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
