#!/usr/bin/env bash
# One chaos run on a stack of its own: starts it (tests/stack.sh, Kafka mode
# NODES: 1 or 3), runs the chaos binary against it, stops it whatever
# happened. The stack's logs stay in DIR/log.
#
#   tests/chaos/run.sh NODES DIR BINARY
#
# Env: TALLY_CHAOS_SECONDS (default 45), TALLY_CHAOS_CLIENTS (6),
# TALLY_CHAOS_RATE (120 commands/s), TALLY_CHAOS_SEED (the time).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

(($# == 3)) || { echo "usage: tests/chaos/run.sh NODES DIR BINARY" >&2; exit 2; }
nodes=$1 dir=$2 binary=$3

trap '"$root/tests/stack.sh" down "$dir" || true' EXIT
TALLY_KAFKA_NODES=$nodes "$root/tests/stack.sh" up "$dir"
TALLY_CHAOS_SECONDS=${TALLY_CHAOS_SECONDS:-45} TALLY_TEST_ENV=$dir/env "$binary"
