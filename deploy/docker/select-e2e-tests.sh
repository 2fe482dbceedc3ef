#!/usr/bin/env bash
# Copies the end-to-end test programs of a build into DEST, for the image's
# `e2e` mode: the ctest tests labelled integration or e2e that are programs
# in BUILD/bin (the stack fixture's scripts are not), except those whose
# source (tests/*/NAME.c) needs what a container of the stack lacks:
#   TALLY_VAR  the local runner's state: the test controls the stack's
#              processes (e.g. freezes the broker)
#   psql       the PostgreSQL client, which the runtime image leaves out
# (tallyctl is there: TALLY_BIN=/usr/local/bin in the image.)
#   select-e2e-tests.sh BUILD SRC DEST
set -euo pipefail

build=$1 src=$2 dest=$3
mkdir -p "$dest"
shopt -s nullglob
ctest --test-dir "$build" -N -L '^(integration|e2e)$' | sed -n 's/^ *Test *#[0-9]*: *//p' |
    while read -r t; do
        [[ -x $build/bin/$t ]] || continue
        sources=("$src"/tests/*/"$t".c)
        if ((${#sources[@]} > 0)) && grep -q 'TALLY_VAR' "${sources[@]}"; then
            printf 'not shipped: %s (reads TALLY_VAR: controls the local stack)\n' "$t"
            continue
        fi
        if ((${#sources[@]} > 0)) && grep -q '\bpsql\b' "${sources[@]}"; then
            printf 'not shipped: %s (runs psql, which the image has not)\n' "$t"
            continue
        fi
        cp "$build/bin/$t" "$dest/"
        printf 'shipped: %s\n' "$t"
    done
