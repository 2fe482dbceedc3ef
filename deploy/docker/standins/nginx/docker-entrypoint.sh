#!/bin/sh
# The stand-in's /docker-entrypoint.sh, after the official image's: for
# `nginx ...` commands it first runs the executable *.sh files of
# /docker-entrypoint.d/ in order; any other command is executed as given.
set -eu

if [ "${1:-}" = nginx ] || [ "${1:-}" = nginx-debug ]; then
    for f in /docker-entrypoint.d/*.sh; do
        [ -x "$f" ] || continue
        echo "$0: running $f" >&2
        "$f"
    done
fi
exec "$@"
