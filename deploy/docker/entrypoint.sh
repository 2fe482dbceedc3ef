#!/usr/bin/env bash
# Entrypoint of the Tally image: the first argument picks what runs.
#
#   command-api [--flag=value...]   the command API (exec, so it gets SIGTERM)
#   query-api   [--flag=value...]   the query API
#   worker      [--flag=value...]   the worker (roles: TALLY_WORKER_ROLES)
#   tallyctl ARGS...                the operator CLI, e.g. tallyctl keys list
#   migrate                         tallyctl migrate, then tallyctl topics create
#                                   (each retried until PostgreSQL / Kafka answer),
#                                   then with TALLY_BOOTSTRAP_API_KEY set
#                                   tallyctl bootstrap (its tenant and key)
#   e2e                             the end-to-end suite against TALLY_URL with
#                                   TALLY_API_KEY; without a key it creates a
#                                   tenant and an admin key with tallyctl
#   help                            this text
#   anything else                   executed as given (e.g. bash)
#
# Settings are the binaries' own environment variables (TALLY_PG_DSN,
# TALLY_KAFKA_BROKERS, TALLY_KAFKA_TOPIC, TALLY_KAFKA_PARTITIONS,
# TALLY_HTTP_HOST, TALLY_HTTP_PORT, TALLY_LOG_LEVEL, TALLY_WORKER_ROLES, ...);
# `<mode> --help` lists them. Only the modes below add their own:
#   TALLY_WAIT_SECONDS   how long migrate and e2e wait for a dependency (60)
#   TALLY_E2E_TESTS_DIR  where the e2e test programs are (set by the image)
#   TALLY_E2E_TENANT     tenant of the key e2e creates (e2e)
#   TALLY_BOOTSTRAP_API_KEY, TALLY_BOOTSTRAP_TENANT (bootstrap)
#                        the key and tenant migrate creates when the key is set
set -euo pipefail

log() { printf 'tally-entrypoint: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

wait_seconds=${TALLY_WAIT_SECONDS:-60}
# tallyctl's and the services' default topic; the e2e test programs need it named.
topic=${TALLY_KAFKA_TOPIC:-tally.events}

# Runs "$@" until it succeeds, for up to $wait_seconds ($1 says what, for
# the messages).
retry() {
    local what=$1 deadline=$((SECONDS + wait_seconds))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || die "could not $what within ${wait_seconds}s"
        log "could not $what yet, retrying"
        sleep 2
    done
}

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

migrate() {
    retry "migrate the database" timeout 60 tallyctl migrate
    # Creating the topic is also the real readiness probe of the broker.
    retry "create topic $topic" timeout 30 tallyctl topics create
    log "database migrated, topic ready"
    if [[ -n ${TALLY_BOOTSTRAP_API_KEY:-} ]]; then
        timeout 30 tallyctl bootstrap --tenant "${TALLY_BOOTSTRAP_TENANT:-bootstrap}" >/dev/null ||
            die "could not bootstrap the api key of TALLY_BOOTSTRAP_API_KEY"
    fi
}

# 0 when a request with the key gets anything but 401 (or no answer).
key_accepted() {
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $TALLY_API_KEY" "$@") ||
        return 1
    [[ $code != 000 && $code != 401 ]]
}

e2e() {
    local dir=${TALLY_E2E_TESTS_DIR:-/usr/local/lib/tally/tests} tenant t passed=0 failed=0 failed_names=()
    : "${TALLY_URL:?TALLY_URL must name the stack to test, e.g. http://gateway:8080}"
    export TALLY_URL
    export TALLY_KAFKA_TOPIC=$topic
    if [[ -z ${TALLY_API_KEY:-} ]]; then
        tenant=${TALLY_E2E_TENANT:-e2e}
        retry "create tenant $tenant" timeout 30 tallyctl tenants create --name "$tenant" >/dev/null
        # The key is printed by tallyctl once; it is kept, never logged.
        TALLY_API_KEY=$(timeout 30 tallyctl keys create --tenant "$tenant" --scopes read,write,admin --label "$tenant-admin") ||
            die "could not create an api key for tenant $tenant"
        [[ $TALLY_API_KEY == tly_live_* ]] || die "could not create an api key: tallyctl printed something else"
        log "created an admin key for tenant $tenant"
    fi
    export TALLY_API_KEY
    # Each API reloads keys every TALLY_KEY_REFRESH_MS (1 s): wait until the
    # query side (a GET) and the command side (a POST) both know the key.
    retry "reach $TALLY_URL with the key (query side)" \
        key_accepted "$TALLY_URL/v1/jobs/00000000-0000-4000-8000-000000000000"
    retry "reach $TALLY_URL with the key (command side)" \
        key_accepted -X POST -H 'Content-Type: text/plain' --data x "$TALLY_URL/v1/accounts"
    shopt -s nullglob
    local tests=("$dir"/test_*)
    ((${#tests[@]} > 0)) || die "no test programs in $dir"
    local t0
    for t in "${tests[@]}"; do
        log "running ${t##*/} against $TALLY_URL"
        t0=$SECONDS
        if "$t"; then
            passed=$((passed + 1))
            log "passed: ${t##*/} ($((SECONDS - t0))s)"
        else
            failed=$((failed + 1))
            failed_names+=("${t##*/}")
            log "failed: ${t##*/} ($((SECONDS - t0))s)"
        fi
    done
    ((failed == 0)) || log "failed: ${failed_names[*]}"
    printf 'e2e: %d passed, %d failed\n' "$passed" "$failed"
    ((failed == 0))
}

mode=${1:-help}
if (($# > 0)); then shift; fi
case $mode in
command-api) exec tally-command-api "$@" ;;
query-api) exec tally-query-api "$@" ;;
worker) exec tally-worker "$@" ;;
tallyctl) exec tallyctl "$@" ;;
migrate) migrate ;;
e2e) e2e ;;
help | --help | -h) usage ;;
*) exec "$mode" "$@" ;;
esac
