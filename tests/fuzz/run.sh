#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) into build-fuzz/ and
# runs each for a bounded time (default 60 s each), with a corpus kept under
# build-fuzz/corpus/. Exits non-zero when a target finds a crash.
#
#   tests/fuzz/run.sh [seconds-per-target]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
secs=${1:-60}
build=$root/build-fuzz

command -v clang >/dev/null || { echo "clang is missing: apt-get install clang" >&2; exit 1; }
CC=clang cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Asan -DTALLY_FUZZ=ON >/dev/null
cmake --build "$build" -j"$(nproc)" --target fuzz_command fuzz_envelope fuzz_accept >/dev/null

seed_commands() {
    local dir=$1
    printf '\x00{"currency":"EUR","label":"savings"}' >"$dir/open"
    printf '\x01{"amount":1500,"currency":"EUR","reference":"r"}' >"$dir/deposit"
    printf '\x06{"from_account":"6b1f2e51-8c0d-4a3e-9f27-440b5da193c8","to_account":"7b1f2e51-8c0d-4a3e-9f27-440b5da193c8","amount":5,"currency":"USD"}' >"$dir/transfer"
}

for target in fuzz_command fuzz_envelope fuzz_accept; do
    corpus=$build/corpus/$target
    mkdir -p "$corpus"
    [[ $target != fuzz_envelope ]] && seed_commands "$corpus"
    echo "fuzzing $target for ${secs}s" >&2
    "$build/bin/$target" -max_total_time="$secs" -max_len=65536 -print_final_stats=1 \
        -artifact_prefix="$build/" "$corpus" 2>"$build/$target.log" ||
        { tail -n 40 "$build/$target.log" >&2; exit 1; }
    grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' "$build/$target.log" >&2
done
