#!/usr/bin/env bash
# Installs what is missing, builds into build/ and runs every test (unit,
# integration, e2e) with ctest. The integration and e2e tests share one
# throwaway stack (tests/stack.sh, ctest fixture `stack`); whatever happens,
# including Ctrl-C, that stack is stopped on exit.
#
#   ./tests/run.sh [ctest args...]    e.g. ./tests/run.sh -L unit
#
# Env: CI=true adds -DTALLY_WERROR=ON; TALLY_COMPOSE_TESTS=1 adds the compose
# suite (tests/compose/run.sh: Docker Engine, Compose, the stack in containers); TALLY_TEST_TIMEOUT (s, default 300) is
# the per-test timeout for tests that set none.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$root/build
started=$SECONDS

finish() {
    local rc=$?
    "$root/tests/stack.sh" down "$build/test-stack" || true
    printf 'tests %s in %ds\n' "$( ((rc == 0)) && echo passed || echo failed)" \
        $((SECONDS - started)) >&2
    exit "$rc"
}

main() {
    local werror=OFF
    [[ ${CI:-} == true ]] && werror=ON
    "$root/deploy/install-deps.sh"
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTALLY_WERROR="$werror"
    cmake --build "$build" -j"$(nproc)"
    # The compose suite (label compose, about 13 minutes warm on this 2-core
    # machine) runs on demand: TALLY_COMPOSE_TESTS=1 ./tests/run.sh -L compose
    local skip=()
    [[ ${TALLY_COMPOSE_TESTS:-0} == 1 ]] || skip=(-LE compose)
    ctest --test-dir "$build" --output-on-failure --timeout "${TALLY_TEST_TIMEOUT:-300}" "${skip[@]}" "$@"
}

trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
main "$@"
