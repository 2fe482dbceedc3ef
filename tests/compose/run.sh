#!/usr/bin/env bash
# The compose stack, run for real (ctest label `compose`): what a team that
# runs its integration tests against `docker compose` does, on this machine.
#
#   tests/compose/run.sh
#
# 1. The engine: Debian's docker.io when no dockerd is installed, the
#    Compose v2 plugin (COMPOSE_VERSION, built from the Go module proxy once,
#    cached under ~/.cache/tally), and a private dockerd (data root under
#    ~/.cache/tally/docker, so images survive between runs) when no engine
#    answers; that dockerd is stopped at the end.
# 2. The images: the official ones, or where no registry answers the
#    stand-ins of deploy/docker/standins/ (built once); then the Tally images.
# 3. The checks, each one line "ok"/"FAIL" with its time, on a project of
#    its own (PROJECT) with free host ports: `up -d --wait` with a bootstrap
#    key, the README's compose commands and API walkthrough, the admin ports'
#    /metrics, the whole e2e profile, --scale worker=3 under a steady load
#    with one worker container killed and the money checked, the gateway
#    balancing --scale command-api=2 --scale query-api=2 and finding
#    recreated containers, `down -v`.
# It ends with the line "compose: N passed, N failed" and exits 1 when one
# failed. Logs of each step: $TALLY_COMPOSE_LOGS (build/compose-logs).
# TALLY_COMPOSE_CHECKS="up-wait scale-workers-kill-one ..." runs only the
# steps named (images, build, up-wait and down always run), for working on one.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${TALLY_CACHE:-$HOME/.cache/tally}
logs=${TALLY_COMPOSE_LOGS:-$root/build/compose-logs}
COMPOSE_VERSION=v5.6.0
COMPOSE_MODULE=github.com/docker/compose/v5
PROJECT=tally-compose-test
# The load of the scale check: deposits per second, seconds before and after the kill.
LOAD_RATE=20 LOAD_BEFORE_S=10 LOAD_AFTER_S=15
started=$SECONDS passed=0 failed=0 dockerd_pid=''

log() { printf 'compose: %s\n' "$*" >&2; }
die() {
    log "$*"
    printf 'compose: %d passed, %d failed\n' "$passed" "$((failed + 1))"
    exit 1
}

# step NAME CMD...: runs CMD in a subshell with `set -e` (so a failing
# command fails the step; what a step leaves for later ones goes to a file
# in $logs), its output in $logs/NAME.log; one line each.
step() {
    local name=$1 t0=$SECONDS rc
    shift
    case " images build up-wait down ${TALLY_COMPOSE_CHECKS:-$name} " in
    *" $name "*) ;;
    *) return 0 ;;
    esac
    set +e
    (
        set -e
        "$@"
    ) >"$logs/$name.log" 2>&1
    rc=$?
    set -e
    if ((rc == 0)); then
        passed=$((passed + 1))
        printf 'ok   %-28s %4ds\n' "$name" $((SECONDS - t0))
    else
        failed=$((failed + 1))
        printf 'FAIL %-28s %4ds (last lines of %s:)\n' "$name" $((SECONDS - t0)) "$logs/$name.log"
        tail -n 25 "$logs/$name.log" | sed 's/^/     /'
    fi
}

dc() { docker compose --project-directory "$root" -f "$root/compose.yaml" -p "$PROJECT" "$@"; }

# --- the engine --------------------------------------------------------------

install_engine() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    ((${#missing[@]} > 0)) || return 0
    [[ $(id -u) == 0 ]] || die "could not install ${missing[*]}: not root (install them, or run as root)"
    log "installing ${missing[*]} (Debian packages)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "could not install ${missing[*]}"
}

# The Compose plugin at COMPOSE_VERSION: go build inside the module's own
# directory (`go install` refuses a go.mod with exclude directives).
install_compose() {
    local plugin=$HOME/.docker/cli-plugins/docker-compose bin=$cache/compose-$COMPOSE_VERSION/docker-compose dir go
    if [[ ! -x $bin ]]; then
        go=$(command -v go || echo /usr/local/go/bin/go)
        [[ -x $go ]] || die "could not build docker compose: go not found"
        log "building docker compose $COMPOSE_VERSION from the Go module proxy (a few minutes, once)"
        dir=$(cd "$cache" && "$go" mod download -json "$COMPOSE_MODULE@$COMPOSE_VERSION" |
            sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p') || true
        [[ -n $dir && -d $dir ]] || die "could not download $COMPOSE_MODULE@$COMPOSE_VERSION"
        mkdir -p "${bin%/*}"
        (cd "$dir" && "$go" build -trimpath -ldflags "-s -w -X $COMPOSE_MODULE/internal.Version=$COMPOSE_VERSION" \
            -o "$bin.tmp" ./cmd) >"$cache/compose-build.log" 2>&1 || {
            tail -n 20 "$cache/compose-build.log" >&2
            die "could not build docker compose"
        }
        mv "$bin.tmp" "$bin"
    fi
    mkdir -p "${plugin%/*}"
    [[ $(readlink "$plugin" 2>/dev/null) == "$bin" ]] || ln -sf "$bin" "$plugin"
}

# An engine that answers, or a private dockerd of our own.
start_engine() {
    local dir=$cache/docker
    if docker info >/dev/null 2>&1; then
        log "using the running engine (${DOCKER_HOST:-default socket})"
        return
    fi
    mkdir -p "$dir"
    export DOCKER_HOST=unix://$dir/docker.sock
    log "starting a private dockerd (data root $dir/data)"
    dockerd --data-root "$dir/data" --exec-root /run/tally-docker --pidfile "$dir/dockerd.pid" \
        -H "$DOCKER_HOST" >>"$dir/dockerd.log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 120); do
        docker info >/dev/null 2>&1 && return
        kill -0 "$dockerd_pid" 2>/dev/null || break
        sleep 0.5
    done
    tail -n 20 "$dir/dockerd.log" >&2
    die "could not start dockerd (log: $dir/dockerd.log)"
}

stop_engine() {
    [[ -n $dockerd_pid ]] || return 0
    kill "$dockerd_pid" 2>/dev/null || return 0
    for _ in $(seq 60); do
        kill -0 "$dockerd_pid" 2>/dev/null || return 0
        sleep 0.5
    done
    kill -9 "$dockerd_pid" 2>/dev/null || true
}

finish() {
    local rc=$?
    if [[ -n ${DOCKER_HOST:-} || -S /var/run/docker.sock ]] && docker info >/dev/null 2>&1; then
        dc --profile test --profile tools down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    stop_engine
    log "done in $((SECONDS - started))s"
    exit "$rc"
}

# --- helpers for the checks --------------------------------------------------

# host:port of a published container port: hport SERVICE PORT [INDEX]
hport() { dc port --index "${3:-1}" "$1" "$2" | tail -n 1; }

# A key in the API's format, random: tly_live_<16 base32>_<43 base64url>.
random_key() {
    local id secret
    id=$(LC_ALL=C tr -dc 'a-z2-7' </dev/urandom | head -c 16)
    secret=$(LC_ALL=C tr -dc 'A-Za-z0-9_-' </dev/urandom | head -c 43)
    printf 'tly_live_%s_%s\n' "$id" "$secret"
}

# api METHOD PATH [BODY] [extra curl args]: through the gateway with $KEY;
# prints the body, then the status on its own last line.
api() {
    local method=$1 path=$2 body=${3:-}
    shift 3 || shift $#
    curl -sS --max-time 30 -X "$method" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        ${body:+-d "$body"} -w '\n%{http_code}\n' "$@" "$GATEWAY$path"
}

# json FIELD.PATH < body: one value of a JSON document.
json() { python3 -c 'import json,sys; v=json.load(sys.stdin)
for k in sys.argv[1].split("."): v=v[int(k)] if isinstance(v,list) else v[k]
print(v)' "$1"; }

# Waits (120 s at most: a killed worker's partitions move after its session
# times out) until GET PATH answers 200 with FIELD equal to VALUE.
wait_field() {
    local path=$1 field=$2 want=$3 out deadline=$((SECONDS + 120))
    while ((SECONDS < deadline)); do
        out=$(api GET "$path" "" || true)
        if [[ ${out##*$'\n'} == 200 ]] && [[ $(sed '$d' <<<"$out" | json "$field" 2>/dev/null) == "$want" ]]; then
            return 0
        fi
        sleep 0.3
    done
    echo "GET $path: $field never became $want; last answer: $out"
    return 1
}

# Opens an account, prints its id; tries for 15 s (a gateway whose DNS
# answer for recreated containers is still cached answers 502 for <= 5 s).
open_account() {
    local out deadline=$((SECONDS + 15))
    while :; do
        out=$(api POST /v1/accounts '{"currency":"EUR","label":"compose test"}' || true)
        [[ ${out##*$'\n'} != 202 ]] || break
        ((SECONDS < deadline)) || { echo "open account: $out" >&2; return 1; }
        sleep 1
    done
    sed '$d' <<<"$out" | json job.resource.id
}

# --- the checks --------------------------------------------------------------

check_up() {
    local t0=$EPOCHREALTIME
    dc up -d --wait --wait-timeout 300
    awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "up --wait: %.1fs\n", b - a }' | tee "$logs/up-wait.time"
    dc ps
    GATEWAY=http://$(hport gateway 8080)
    printf 'GATEWAY=%s\n' "$GATEWAY" >"$logs/gateway.env"
}

# The bootstrap key works on both sides right after up --wait (keys are
# reloaded every second: allow that).
check_bootstrap() {
    local out
    KEY=$BOOTSTRAP_KEY
    for _ in $(seq 20); do
        out=$(api GET /v1/accounts/00000000-0000-4000-8000-000000000000 "" || true)
        [[ ${out##*$'\n'} == 404 ]] && break
        sleep 0.5
    done
    [[ ${out##*$'\n'} == 404 ]] || { echo "bootstrap key refused by the query side: $out"; return 1; }
    dc logs migrate | grep 'bootstrap api key .* created for tenant compose-it' >/dev/null ||
        { echo "migrate did not say it created the bootstrap key"; dc logs migrate; return 1; }
    # a second start keeps the key (stored hashed, found again)
    dc run --rm -T migrate 2>&1 | tee /dev/stderr | grep 'bootstrap api key .* exists already for tenant compose-it' >/dev/null
    account=$(open_account)
    wait_field "/v1/accounts/$account" status open
}

# The README's compose commands: tools' tallyctl, then its API walkthrough.
check_readme() {
    local tenant account out
    tenant=$(dc run --rm -T tools tallyctl tenants create --name demo)
    echo "tenant demo: $tenant"
    KEY=$(dc run --rm -T tools tallyctl keys create --tenant demo --scopes read,write,admin)
    [[ $KEY == tly_live_* ]] || { echo "keys create printed: $KEY"; return 1; }
    account=$(open_account)
    wait_field "/v1/accounts/$account" status open
    out=$(api POST "/v1/accounts/$account/deposits" '{"amount":1500,"currency":"EUR","reference":"first deposit"}' \
        -H 'Idempotency-Key: compose-deposit-0001')
    [[ ${out##*$'\n'} == 202 ]] || { echo "deposit: $out"; return 1; }
    wait_field "/v1/accounts/$account" balance 1500
    out=$(api POST "/v1/accounts/$account/withdrawals" '{"amount":500,"currency":"EUR"}' -H 'Idempotency-Key: compose-wd-0001')
    [[ ${out##*$'\n'} == 202 ]] || { echo "withdrawal: $out"; return 1; }
    wait_field "/v1/accounts/$account" balance 1000
    printf 'KEY=%s\n' "$KEY" >"$logs/demo.env"
}

# /metrics on every admin port the stack publishes.
check_admin() {
    local target metrics
    for target in "command-api 9181" "query-api 9182" "worker 9183"; do
        read -r svc port <<<"$target"
        set -- "$svc" "$port"
        metrics=$(curl -fsS --max-time 5 "http://$(hport "$1" "$2")/metrics")
        grep -q '^tally_' <<<"$metrics" || { echo "$1: no tally_ metrics on its admin port"; return 1; }
        curl -fsS --max-time 5 "http://$(hport "$1" "$2")/readyz"
        echo "$1: /metrics and /readyz answer on $(hport "$1" "$2")"
    done
    docker inspect -f '{{.State.Health.Status}}' "$(dc ps -q worker | head -n 1)" | grep -x healthy
}

check_e2e() {
    local out
    out=$(dc --profile test run --rm -T e2e 2>&1) || { printf '%s\n' "$out"; return 1; }
    printf '%s\n' "$out"
    grep -q '^e2e: [0-9]* passed, 0 failed' <<<"$out"
}

# load FILE SECONDS PHASE: deposits of 1 cent at LOAD_RATE/s to ACCOUNTS,
# each with its own idempotency key (PHASE keeps those of two calls apart);
# every answer's status is appended to FILE.
load() {
    local out=$1 seconds=$2 phase=$3 i=0 n account
    n=$((LOAD_RATE * seconds))
    while ((i < n)); do
        account=${ACCOUNTS[i % ${#ACCOUNTS[@]}]}
        api POST "/v1/accounts/$account/deposits" '{"amount":1,"currency":"EUR"}' \
            -H "Idempotency-Key: load-$LOAD_ID-$phase-$i" | tail -n 1 | sed "s|^|$account |" >>"$out" &
        i=$((i + 1))
        ((i % LOAD_RATE != 0)) || { wait; sleep 0.5; }
    done
    wait
}

check_scale_kill() {
    local statuses=$logs/load.statuses victim a want got total=0
    KEY=$BOOTSTRAP_KEY LOAD_ID=$RANDOM$RANDOM
    dc up -d --wait --wait-timeout 180 --scale worker=3 --no-recreate
    [[ $(dc ps -q worker | wc -l) == 3 ]] || { echo "not 3 workers"; return 1; }
    ACCOUNTS=()
    for _ in 1 2 3 4 5 6; do ACCOUNTS+=("$(open_account)"); done
    for a in "${ACCOUNTS[@]}"; do wait_field "/v1/accounts/$a" status open; done
    : >"$statuses"
    load "$statuses" "$LOAD_BEFORE_S" before
    victim=$(dc ps -q worker | sed -n 2p)
    echo "killing worker container $victim"
    docker kill "$victim"
    load "$statuses" "$LOAD_AFTER_S" after
    echo "answers: $(cut -d' ' -f2 "$statuses" | sort | uniq -c | tr '\n' ' ')"
    # every accepted deposit is in its account's balance, none twice
    for a in "${ACCOUNTS[@]}"; do
        want=$(grep -c "^$a 202$" "$statuses" || true)
        total=$((total + want))
        wait_field "/v1/accounts/$a" balance "$want" || return 1
    done
    got=$(grep -c ' 202$' "$statuses" || true)
    echo "money: $got deposits accepted, all $total in the balances"
    ((got > LOAD_RATE * (LOAD_BEFORE_S + LOAD_AFTER_S) * 9 / 10)) || { echo "too few deposits accepted"; return 1; }
    # the ledger's own invariants, rebuilt from the log
    dc run --rm -T tools tallyctl verify --quiet
    dc up -d --wait --wait-timeout 120 --scale worker=1
}

# requests_of SERVICE PORT INDEX: the HTTP requests that instance served (its /metrics).
requests_of() {
    curl -fsS --max-time 5 "http://$(hport "$1" "$2" "$3")/metrics" |
        awk '/^tally_http_requests_total/ {n += $NF} END {printf "%d\n", n}'
}

check_balance_recreate() {
    local i before1 before2 after1 after2 gw out
    KEY=$BOOTSTRAP_KEY
    gw=$(dc ps -q gateway)
    dc up -d --wait --wait-timeout 180 --scale command-api=2 --scale query-api=2 --no-recreate
    [[ $(dc ps -q query-api | wc -l) == 2 && $(dc ps -q command-api | wc -l) == 2 ]] || { echo "not 2 + 2 APIs"; return 1; }
    for svc in "query-api 9182" "command-api 9181"; do
        read -r name port <<<"$svc"
        set -- "$name" "$port"
        before1=$(requests_of "$1" "$2" 1) before2=$(requests_of "$1" "$2" 2)
        for i in $(seq 40); do
            if [[ $1 == query-api ]]; then
                api GET "/v1/jobs/00000000-0000-4000-8000-00000000000$((i % 10))" "" >/dev/null
            else
                api POST /v1/accounts '{"currency":"EUR","label":"balance"}' >/dev/null
            fi
        done
        after1=$(requests_of "$1" "$2" 1) after2=$(requests_of "$1" "$2" 2)
        echo "$1: instance 1 served $((after1 - before1)), instance 2 $((after2 - before2)) of 40"
        ((after1 - before1 >= 8 && after2 - before2 >= 8)) || { echo "$1: not balanced"; return 1; }
    done
    # recreated containers (new addresses), the gateway not restarted
    dc up -d --wait --wait-timeout 180 --force-recreate --no-deps --scale query-api=2 --scale command-api=2 query-api command-api
    [[ $(dc ps -q gateway) == "$gw" ]] || { echo "the gateway was recreated"; return 1; }
    account=$(open_account)
    wait_field "/v1/accounts/$account" status open
    out=$(api GET "/v1/accounts/$account" "")
    [[ ${out##*$'\n'} == 200 ]] || { echo "after recreate: $out"; return 1; }
    echo "after recreating the APIs the gateway (container $gw, not restarted) reaches them"
    dc up -d --wait --wait-timeout 120 --scale command-api=1 --scale query-api=1
}

check_down() {
    dc --profile test --profile tools down -v --remove-orphans
    [[ -z $(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT") ]] || { echo "containers left"; return 1; }
    [[ -z $(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT") ]] || { echo "volumes left"; return 1; }
}

main() {
    mkdir -p "$logs" "$cache"
    trap finish EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    install_engine
    install_compose
    start_engine
    log "docker compose $(docker compose version --short), engine $(docker version -f '{{.Server.Version}}')"

    # free host ports; stand-ins where no registry answers
    export TALLY_GATEWAY_PORT=0 TALLY_COMMAND_ADMIN_PORT=0 TALLY_QUERY_ADMIN_PORT=0
    BOOTSTRAP_KEY=$(random_key)
    export TALLY_BOOTSTRAP_API_KEY=$BOOTSTRAP_KEY TALLY_BOOTSTRAP_TENANT=compose-it
    dc --profile test --profile tools down -v --remove-orphans >/dev/null 2>&1 || true
    step images bash -c "'$root/deploy/docker/standins/build.sh' >'$logs/images.env'"
    set -a
    # shellcheck disable=SC1091
    . "$logs/images.env"
    set +a
    step build dc --profile test build
    step up-wait check_up
    [[ -f $logs/gateway.env ]] || die "the stack did not come up; nothing more to check"
    # shellcheck disable=SC1091
    . "$logs/gateway.env"
    step bootstrap-key check_bootstrap
    step readme-commands check_readme
    step admin-ports check_admin
    step e2e-profile check_e2e
    step scale-workers-kill-one check_scale_kill
    step gateway-balance-recreate check_balance_recreate
    step down check_down
    printf 'compose: %d passed, %d failed\n' "$passed" "$failed"
    ((failed == 0))
}

main "$@"
