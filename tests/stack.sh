#!/usr/bin/env bash
# A throwaway stack for the integration and end-to-end tests (ctest fixture
# `stack`): the same processes as deploy/local/up.sh, through the same
# deploy/local/lib.sh, but in a fresh directory and on free ports.
#
#   tests/stack.sh up DIR     wipe DIR, start everything, write DIR/env
#   tests/stack.sh down DIR   stop everything `up DIR` started
#   tests/stack.sh heal DIR   start again, on their own ports, whatever of
#                             `up DIR` is no longer running (after a kill)
#
# DIR/env has one KEY=VALUE per line, the value unquoted up to the end of the
# line (TALLY_PG_DSN holds spaces): TALLY_URL (gateway), TALLY_COMMAND_URL,
# TALLY_QUERY_URL, TALLY_COMMAND_ADMIN_URL, TALLY_QUERY_ADMIN_URL,
# TALLY_WORKER_ADMIN_URL (/metrics, /healthz, /readyz), TALLY_API_KEY, TALLY_PG_DSN, TALLY_KAFKA_BROKERS,
# TALLY_KAFKA_TOPIC, TALLY_KAFKA_PARTITIONS, TALLY_BIN, TALLY_VAR, TALLY_REDIS_URL,
# TALLY_API_INSTANCES and the space-separated URLs of every API instance
# (TALLY_COMMAND_URLS, TALLY_QUERY_URLS, TALLY_COMMAND_ADMIN_URLS,
# TALLY_QUERY_ADMIN_URLS). TALLY_API_INSTANCES=N (default 1) starts N command
# APIs and N query APIs behind the gateway.
# DIR/local.env holds the same, shell-quoted:  set -a; . DIR/local.env
#
# Binaries: $TALLY_BIN, else DIR/../bin if it holds tallyctl, else build/bin.
# TALLY_KAFKA_NODES=3 (for `up`): the replicated mode, three Kafka nodes
# (deploy/local/lib.sh); `down` and `heal` keep the mode DIR was made in.
set -euo pipefail

# shellcheck source=deploy/local/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../deploy/local/lib.sh"

marker=.tally-test-stack

usage() { tly_die "usage: tests/stack.sh up|down|heal DIR"; }

pick_bin() {
    local parent
    parent=$(dirname "$1")
    if [[ -z ${TALLY_BIN:-} && -x $parent/bin/tallyctl ]]; then
        TALLY_BIN=$(cd "$parent/bin" && pwd)
    fi
}

# Removes DIR, but only if it is ours (marker) or empty.
wipe() {
    local dir=$1
    [[ -d $dir ]] || return 0
    if [[ ! -f $dir/$marker && -n $(ls -A "$dir") ]]; then
        tly_die "could not reuse $dir: it is not a test stack directory, not removing it"
    fi
    down "$dir"
    rm -rf "$dir"
}

# Free ports for Redis and for API instances 2..TALLY_API_INSTANCES.
limits_ports() {
    local n=${TALLY_API_INSTANCES:-1} i var ports next=1
    read -r -a ports < <(tly_free_ports $((1 + 4 * (n - 1))))
    TALLY_REDIS_PORT=${ports[0]}
    for ((i = 2; i <= n; i++)); do
        for var in COMMAND_PORT QUERY_PORT COMMAND_ADMIN_PORT QUERY_ADMIN_PORT; do
            printf -v "TALLY_${var}_$i" '%s' "${ports[next++]}"
        done
    done
}

up() {
    local dir=$1 t0=$EPOCHREALTIME
    wipe "$dir"
    mkdir -p "$dir"
    touch "$dir/$marker"
    read -r TALLY_PG_PORT TALLY_KAFKA_PORT TALLY_KAFKA_CONTROLLER_PORT \
        TALLY_COMMAND_PORT TALLY_QUERY_PORT TALLY_GATEWAY_PORT \
        TALLY_COMMAND_ADMIN_PORT TALLY_QUERY_ADMIN_PORT TALLY_WORKER_ADMIN_PORT \
        TALLY_KAFKA_PORT_2 TALLY_KAFKA_CONTROLLER_PORT_2 TALLY_KAFKA_PORT_3 \
        TALLY_KAFKA_CONTROLLER_PORT_3 TALLY_PG_PORT_2 < <(tly_free_ports 14)
    limits_ports
    pick_bin "$dir"
    TALLY_VAR=$dir
    # The development mode of deploy/local/up.sh (test_webhooks_listen.sh
    # needs it; the SSRF tests start API instances of their own).
    export TALLY_WEBHOOK_ALLOW_PRIVATE=true
    tly_init
    # A failed start leaves nothing running.
    trap 'if (($? != 0)); then tly_stack_down; fi' EXIT
    tly_limits_write_ports
    tly_stack_up test "$TALLY_VAR/env"
    tly_write_env "$TALLY_VAR/env" raw
    tly_write_env "$TALLY_VAR/local.env" shell
    trap - EXIT
    tly_log "test stack up in $TALLY_VAR ($(tly_since "$t0"))"
}

heal() {
    local dir=$1 t0=$EPOCHREALTIME
    [[ -f $dir/$marker ]] || tly_die "could not heal $dir: it is not a test stack directory"
    pick_bin "$dir"
    TALLY_VAR=$dir
    tly_init
    tly_restore_ports
    tly_limits_restore_ports
    tly_stack_up "" ""
    tly_log "test stack healed in $TALLY_VAR ($(tly_since "$t0"))"
}

down() {
    local dir=$1
    [[ -f $dir/$marker ]] || return 0
    pick_bin "$dir"
    (
        TALLY_VAR=$dir
        tly_init
        tly_stack_down
    )
}

main() {
    (($# == 2)) || usage
    case $1 in
    up) up "$2" ;;
    heal) heal "$2" ;;
    down) down "$2" ;;
    *) usage ;;
    esac
}

main "$@"
