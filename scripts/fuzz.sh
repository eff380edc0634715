#!/bin/bash
# Coverage-guided fuzzing with libFuzzer (make fuzz): runs tlsrelay-fuzz, built with
# -sanitize=fuzzer, on each target for SECONDS seconds, starting from the committed seeds in
# fuzz/corpus/<target>/ (they are only read; new inputs go to a scratch corpus). A crash, a
# broken invariant, a hang over 10 s or memory over 2 GiB fails the run and leaves the input
# in fuzz/findings/ (replay it with `.build/debug/tlsrelay-fuzz TARGET FILE`).
# Usage: scripts/fuzz.sh SECONDS TARGET...
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=$1
shift
binary=.build-fuzz/release/tlsrelay-fuzz
mkdir -p fuzz/findings
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
status=0
for target in "$@"; do
    mkdir -p "$scratch/$target"
    log="$scratch/$target.log"
    # Runs of at most 30 s, each a new process on the same scratch corpus: TOMLKit never frees
    # a parsed table (TOMLTable has no deinit; about 8 KiB per configuration parsed), so one
    # long run of the config target would end at libFuzzer's memory limit.
    left=$seconds
    runs=0
    while [ "$left" -gt 0 ]; do
        chunk=$(( left < 30 ? left : 30 ))
        if ! SWIFT_BACKTRACE=enable=no TLSRELAY_FUZZ_TARGET=$target "$binary" -max_total_time="$chunk" -max_len=8192 -timeout=10 \
            -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="fuzz/findings/$target-" \
            "$scratch/$target" "fuzz/corpus/$target" >"$log" 2>&1; then
            echo "fuzz $target: FAILED (input saved in fuzz/findings/)"
            grep -v '^#[0-9]' "$log" | tail -40
            status=1
            continue 2
        fi
        runs=$(( runs + $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0) ))
        left=$(( left - chunk ))
    done
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    echo "fuzz $target: clean, $runs inputs in $seconds s ($cov)"
done
exit $status
