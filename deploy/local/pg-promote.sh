#!/usr/bin/env bash
# Fails PostgreSQL over to its standby in the replicated mode
# (TALLY_KAFKA_NODES=3): promotes the standby, which then commits alone
# until a standby streams again. The old primary must be dead; --kill kills
# it first. The services find the new primary by themselves (their DSN
# lists both nodes, target_session_attrs=read-write). Afterwards
# `deploy/local/up.sh` (or `tests/stack.sh heal DIR`) makes the old primary
# a standby of the new one and commits wait for it again. See
# docs/failover.md.
#
#   deploy/local/pg-promote.sh [--kill]      TALLY_VAR: the state directory (default var/)
set -euo pipefail

# shellcheck source=deploy/local/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

tly_init
tly_restore_ports
tly_pg_promote "$@"
