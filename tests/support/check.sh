# shellcheck shell=bash
# Sourced by the shell tests: `check WHAT CMD...` runs CMD and prints one
# "ok"/"FAIL" line; `check_summary NAME` prints "NAME: N passed, N failed"
# and returns 1 when one failed.
fails=0 checks=0

check() {
    local what=$1
    shift
    checks=$((checks + 1))
    if "$@"; then printf 'ok   %s\n' "$what"; else printf 'FAIL %s\n' "$what"; fails=$((fails + 1)); fi
}

check_summary() {
    printf '%s: %d passed, %d failed\n' "$1" "$((checks - fails))" "$fails"
    ((fails == 0))
}
