#!/usr/bin/env bash
# Starts the whole stack on this machine, without Docker: PostgreSQL 15,
# Kafka 3.9 (KRaft), Redis 7 (the shared rate-limit state), the command API,
# the query API, the worker and the nginx gateway. State lives in $TALLY_VAR
# (default <repo>/var) and survives down/up. Whatever already runs is left alone, so a second run changes
# nothing.
#
# stdout: exactly two lines, TALLY_URL=... and TALLY_API_KEY=...; the same and
# more, shell-quoted, in $TALLY_VAR/local.env:   set -a; . var/local.env
#
# Ports (env): TALLY_GATEWAY_PORT 8080, TALLY_COMMAND_PORT 8081,
# TALLY_QUERY_PORT 8082, TALLY_PG_PORT 55432, TALLY_KAFKA_PORT 59092,
# TALLY_KAFKA_CONTROLLER_PORT 59093, TALLY_REDIS_PORT 56379.
# TALLY_API_INSTANCES=N (default 1): N command APIs and N query APIs behind
# the gateway (instance i > 1 on the first port + 100 * (i - 1)).
#
# Webhooks run in development mode here (TALLY_WEBHOOK_ALLOW_PRIVATE=true,
# unless set otherwise): endpoints on loopback and private addresses and
# plain http are accepted, so `tallyctl webhooks listen` works on this
# machine. compose.yaml leaves it off.
set -euo pipefail

# shellcheck source=deploy/local/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build() {
    local log=$TALLY_VAR/log/build.log t0=$EPOCHREALTIME
    tly_log "building (log: $log)"
    {
        cmake -S "$TALLY_ROOT" -B "$TALLY_ROOT/build" -DCMAKE_BUILD_TYPE=Release &&
            cmake --build "$TALLY_ROOT/build" -j2
    } >"$log" 2>&1 || {
        tail -n 40 "$log" >&2
        tly_die "could not build: see $log"
    }
    tly_log "built ($(tly_since "$t0"))"
}

main() {
    export TALLY_WEBHOOK_ALLOW_PRIVATE=${TALLY_WEBHOOK_ALLOW_PRIVATE:-true}
    tly_init
    "$TALLY_ROOT/deploy/install-deps.sh"
    build
    tly_stack_up demo "$TALLY_VAR/local.env"
    tly_write_env "$TALLY_VAR/local.env" shell
    if [[ $TALLY_WEBHOOK_ALLOW_PRIVATE == true ]]; then
        tly_log "webhooks: development mode (TALLY_WEBHOOK_ALLOW_PRIVATE=true): endpoints on loopback, private" \
            "addresses and plain http are accepted; try: tallyctl webhooks listen --forward-to http://127.0.0.1:PORT/PATH"
    fi
    printf 'TALLY_URL=%s\nTALLY_API_KEY=%s\n' "$TALLY_URL" "$TALLY_API_KEY"
}

main "$@"
