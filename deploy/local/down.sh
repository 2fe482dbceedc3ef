#!/usr/bin/env bash
# Stops what deploy/local/up.sh started (by pid file, in reverse order).
# Data in $TALLY_VAR (default <repo>/var) is kept.
set -euo pipefail

# shellcheck source=deploy/local/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

tly_init
tly_stack_down
