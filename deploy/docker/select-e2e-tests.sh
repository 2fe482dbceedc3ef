#!/usr/bin/env bash
# Copies the end-to-end test programs of a build into DEST, for the image's
# `e2e` mode: the programs in BUILD/bin that ctest runs for its tests
# labelled integration or e2e (scripts such as the stack fixture's are not
# programs in BUILD/bin), except those whose source (tests/*/NAME.c, NAME
# the program's) needs what a container of the stack lacks:
#   TALLY_VAR  the local runner's state: the test controls the stack's
#              processes (e.g. freezes the broker)
#   psql       the PostgreSQL client, which the runtime image leaves out
# (tallyctl is there: TALLY_BIN=/usr/local/bin in the image.)
#   select-e2e-tests.sh BUILD SRC DEST
set -euo pipefail

build=$(cd "$1" && pwd) src=$2 dest=$3
mkdir -p "$dest"
shopt -s nullglob
# "N: Test command: <program> <args>" for each test with those labels.
ctest --test-dir "$build" -N -V -L '^(integration|e2e)$' | sed -n 's/^[0-9]*: Test command: \([^ ]*\).*/\1/p' |
    while read -r program; do
        [[ $program == "$build/bin/"* && -x $program ]] || continue
        t=${program##*/}
        sources=("$src"/tests/*/"$t".c)
        if ((${#sources[@]} > 0)) && grep -q 'TALLY_VAR' "${sources[@]}"; then
            printf 'not shipped: %s (reads TALLY_VAR: controls the local stack)\n' "$t"
            continue
        fi
        if ((${#sources[@]} > 0)) && grep -q '\bpsql\b' "${sources[@]}"; then
            printf 'not shipped: %s (runs psql, which the image has not)\n' "$t"
            continue
        fi
        cp "$program" "$dest/"
        printf 'shipped: %s\n' "$t"
    done
