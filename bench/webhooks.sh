#!/usr/bin/env bash
# Webhook delivery bench, on its own: builds Tally (Release, no tests) into
# build-bench-webhooks/, compiles bench/webhooks.c with the tests' receiver,
# starts a throwaway stack whose worker runs every role but webhooks (the
# bench runs its own webhooks worker), runs the bench, stops the stack.
#
#   bench/webhooks.sh                       # about 2 minutes
#   TALLY_BENCH_ENV=DIR/env bench/webhooks.sh   # against a stack already up
#
# Knobs: BENCH_WH_EVENTS (2500), BENCH_WH_ENDPOINTS (8), BENCH_WH_RATE (50),
# BENCH_WH_SECONDS (10), BENCH_WH_ROUNDS (3), BENCH_BUILD_DIR (a build to
# use instead), BENCH_SKIP_BUILD=1 (with BENCH_BUILD_DIR: it holds bin/ and
# bench-webhooks already). The last line of output is JSON.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BENCH_BUILD_DIR:-$root/build-bench-webhooks}
stack=$root/bench/.stack-webhooks

cleanup() {
    if [[ -z ${TALLY_BENCH_ENV:-} ]]; then
        TALLY_BIN=$build/bin "$root/tests/stack.sh" down "$stack" >/dev/null 2>&1 || true
    fi
}

main() {
    if [[ ${BENCH_SKIP_BUILD:-} != 1 ]]; then
        cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF >/dev/null
        cmake --build "$build" -j"$(nproc)" >/dev/null
        # shellcheck disable=SC2046
        cc -O2 -std=gnu11 -Wall -Wextra -Wno-unused-parameter -D_GNU_SOURCE -I"$root/tests/support" \
            -o "$build/bench-webhooks" "$root/bench/webhooks.c" "$root/tests/support/tly_test_receiver.c" \
            $(pkg-config --cflags --libs libpq rdkafka openssl) -lpthread
    fi
    local env=${TALLY_BENCH_ENV:-}
    if [[ -z $env ]]; then
        trap cleanup EXIT
        TALLY_BIN=$build/bin TALLY_WORKER_ROLES=decider,saga,projector "$root/tests/stack.sh" up "$stack" >&2
        env=$stack/env
    fi
    local var
    var=$(sed -n 's/^TALLY_VAR=//p' "$env")
    "$build/bench-webhooks" "$env" "$build/bin/tally-worker" "${var:-/tmp}/log/bench-webhooks-worker.log"
}

main "$@"
