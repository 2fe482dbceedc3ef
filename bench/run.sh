#!/usr/bin/env bash
# Tally benchmarks: every hot path against a ceiling measured in the same run.
#
#   bench/run.sh [scenario...]     scenarios: ingest read e2e project replay (default: all, in that order)
#
# Builds Release into build-bench/ (Tally itself, plus bench/'s own programs
# into build-bench/bench), starts a throwaway stack with tests/stack.sh in
# bench/.stack (or uses the one whose env file is TALLY_BENCH_ENV), runs each
# scenario for a bounded time, prints one table and writes
# bench/results/<timestamp>.json. Stops what it started, also on failure.
#
# Knobs (environment): BENCH_DURATION (s per closed-loop run, 15),
# BENCH_E2E_RATE (1000/s), BENCH_E2E_DURATION (60 s, as the goal states it), BENCH_BACKLOG
# (deposits in the projector backlog, 100000 = 200000 events),
# BENCH_REPLAY_EVENTS (1000000), BENCH_SKIP_BUILD=1, BENCH_KEEP_STACK=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
BUILD=$ROOT/build-bench
BB=$BUILD/bench
DUR=${BENCH_DURATION:-15}
E2E_RATE=${BENCH_E2E_RATE:-1000}
E2E_DUR=${BENCH_E2E_DURATION:-60}
BACKLOG=${BENCH_BACKLOG:-100000}
REPLAY_EVENTS=${BENCH_REPLAY_EVENTS:-1000000}
REPLAY_BUSY_RATE=25000 # tallyctl replay's default --busy-rate (TLY_CTL_REPLAY_BUSY_RATE), for the label
THREADS=2 # the APIs' default TALLY_HTTP_THREADS; the HTTP ceiling uses the same
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RUN_ID=b$(date +%s)
WORK=$(mktemp -d /tmp/tally-bench.XXXXXX)
ROWS=$WORK/rows.tsv # one figure per line, see rec()
: >"$ROWS"
ALL_SCENARIOS=(ingest read e2e project replay webhooks)
PG_CEILING= # ceiling_pg's JSON, measured once per run (project or replay, whichever comes first)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# rec ID LABEL VALUE UNIT CEILING CEILING_LABEL GOAL [NOTE]
# GOAL: "ratio>=0.5", "value<20", "value>=60000" or "" (no goal).
rec() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" "${6:-}" "${7:-}" "${8:-}" >>"$ROWS"
}

# jv JSON PATH: a field of a JSON object
jv() { jq -r "$2" <<<"$1"; }

# ---- set-up ------------------------------------------------------------------

need_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v jq >/dev/null || missing+=(jq)
    command -v python3 >/dev/null || missing+=(python3)
    command -v psql >/dev/null || missing+=(postgresql-client)
    command -v curl >/dev/null || missing+=(curl)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

build() {
    if [[ ${BENCH_SKIP_BUILD:-0} == 1 && -x $BB/openloop && -x $BUILD/bin/tally-command-api ]]; then
        return 0
    fi
    log "building Release into $BUILD"
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF >"$WORK/build.log" 2>&1 &&
        cmake --build "$BUILD" -j"$(nproc)" >>"$WORK/build.log" 2>&1 &&
        cmake -S "$BENCH" -B "$BB" -DCMAKE_BUILD_TYPE=Release >>"$WORK/build.log" 2>&1 &&
        cmake --build "$BB" -j"$(nproc)" >>"$WORK/build.log" 2>&1 ||
        { tail -n 30 "$WORK/build.log" >&2; die "build failed (see above)"; }
}

OWN_STACK=false
CHILDREN=()

cleanup() {
    local rc=$?
    for pid in "${CHILDREN[@]}"; do kill "$pid" 2>/dev/null || true; done
    worker_thaw
    [[ -n ${TALLY_PG_DSN:-} ]] && psql "$TALLY_PG_DSN" -qAtc 'DROP TABLE IF EXISTS bench_accounts, bench_accounts_copy' >/dev/null 2>&1 || true
    if $OWN_STACK && [[ ${BENCH_KEEP_STACK:-0} != 1 ]]; then
        log "stopping the stack"
        "$ROOT/tests/stack.sh" down "$BENCH/.stack" >>"$WORK/stack.log" 2>&1 || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}

envget() { sed -n "s/^$2=//p" "$1" | tail -n 1 | sed "s/^'\(.*\)'\$/\1/"; }

stack_up() {
    local env
    if [[ -n ${TALLY_BENCH_ENV:-} ]]; then
        env=$TALLY_BENCH_ENV
        log "using the running stack described by $env"
    else
        log "starting a stack in $BENCH/.stack"
        OWN_STACK=true
        TALLY_BIN=$BUILD/bin "$ROOT/tests/stack.sh" up "$BENCH/.stack" >"$WORK/stack.log" 2>&1 ||
            { tail -n 30 "$WORK/stack.log" >&2; die "could not start the stack"; }
        env=$BENCH/.stack/env
    fi
    for k in TALLY_URL TALLY_COMMAND_URL TALLY_QUERY_URL TALLY_PG_DSN TALLY_KAFKA_BROKERS TALLY_KAFKA_TOPIC TALLY_BIN TALLY_VAR; do
        export "$k=$(envget "$env" "$k")"
    done
    [[ -n $TALLY_PG_DSN && -n $TALLY_COMMAND_URL ]] || die "$env lacks TALLY_PG_DSN or TALLY_COMMAND_URL"
}

port_of() { sed 's|.*:||; s|/.*||' <<<"$1"; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# A tenant and a key of our own with a contract rate no benchmark reaches.
make_key() {
    local tenant
    tenant=$("$TALLY_BIN/tallyctl" tenants create --name "bench-$RUN_ID" 2>>"$WORK/tallyctl.log")
    KEY=$("$TALLY_BIN/tallyctl" keys create --tenant "$tenant" --scopes read,write,admin \
        --rate 1000000 --burst 1000000 --label bench 2>>"$WORK/tallyctl.log")
    [[ $KEY == tly_live_* ]] || die "could not create an API key (see $WORK/tallyctl.log)"
    TENANT=$tenant
    sleep 1.5 # the APIs load new keys every TALLY_KEY_REFRESH_MS (1 s)
}

# Opens 101 EUR accounts (100 for deposits, 1 for reads) and waits until the projector shows all of them.
open_accounts() {
    local n=101 i body id
    : >"$WORK/accounts"
    for ((i = 0; i < n; i++)); do
        body=$(curl -fsS -X POST "$TALLY_COMMAND_URL/v1/accounts" -H "Authorization: Bearer $KEY" \
            -H 'Content-Type: application/json' -d "{\"currency\":\"EUR\",\"label\":\"bench $i\"}") ||
            die "could not open account $i"
        id=$(jq -r .job.resource.id <<<"$body")
        echo "$id" >>"$WORK/accounts"
    done
    local deadline=$((SECONDS + 60))
    until [[ $(psql "$TALLY_PG_DSN" -qAtc "SELECT count(*) FROM accounts WHERE tenant_id = '$TENANT'") == "$n" ]]; do
        ((SECONDS < deadline)) || die "accounts were not projected within 60 s"
        sleep 0.2
    done
    ACCOUNT=$(head -n 1 "$WORK/accounts")
    # The read scenario's account gets no deposits, so its ETag stays valid.
    READ_ACCOUNT=$(tail -n 1 "$WORK/accounts")
    sed -i '$d' "$WORK/accounts"
    # One real 202 and one real account body: the HTTP ceiling answers exactly these.
    curl -fsS -X POST "$TALLY_COMMAND_URL/v1/accounts/$ACCOUNT/deposits" -H "Authorization: Bearer $KEY" \
        -H 'Content-Type: application/json' -H "Idempotency-Key: $RUN_ID-probe" \
        -d '{"amount":1,"currency":"EUR","reference":"bench"}' >"$WORK/post_body.json"
    curl -fsS -D "$WORK/get_headers" "$TALLY_QUERY_URL/v1/accounts/$READ_ACCOUNT" -H "Authorization: Bearer $KEY" \
        >"$WORK/get_body.json"
    ETAG=$(sed -n 's/^etag: *//Ip' "$WORK/get_headers" | tr -d '\r')
    [[ -n $ETAG ]] || die "GET account had no ETag"
    log "101 accounts open; 202 body $(wc -c <"$WORK/post_body.json") B, account body $(wc -c <"$WORK/get_body.json") B, ETag $ETAG"
}

CEIL_PID=
ceiling_start() {
    CEIL_PORT=$(free_port)
    "$BB/ceiling_h2o" --port="$CEIL_PORT" --threads=$THREADS --post-body="$WORK/post_body.json" \
        --get-body="$WORK/get_body.json" --etag="$ETAG" 2>>"$WORK/ceiling.log" &
    CEIL_PID=$!
    CHILDREN+=("$CEIL_PID")
    local deadline=$((SECONDS + 10))
    until curl -fsS -o /dev/null "http://127.0.0.1:$CEIL_PORT/"; do
        ((SECONDS < deadline)) || die "ceiling_h2o did not start"
        sleep 0.1
    done
}

# ---- RSS of every service --------------------------------------------------

SERVICES=(tally-command-api tally-query-api tally-worker)

svc_pid() {
    local f=$TALLY_VAR/run/$1.pid pid
    [[ -f $f ]] || return 1
    pid=$(<"$f")
    [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "/$1" && echo "$pid"
}

kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

# CPU time of every process group (bench/cpu.py: each Tally process, the
# broker, PostgreSQL by session name) into file $1.
cpu_snap() { python3 "$BENCH/cpu.py" snap "$TALLY_VAR" "$TALLY_PG_DSN" >"$1"; }

# rec_cpu ID LABEL BEFORE AFTER COMMANDS [PATH_GOAL]: CPU microseconds per
# command of each process group between two cpu_snap files, and their sum.
# With PATH_GOAL (the ingest runs, worker frozen): also the durable 202 path,
# i.e. the command API, the broker and every PostgreSQL process but the
# worker's, query API's and tallyctl's sessions.
rec_cpu() {
    local id=$1 label=$2 split g
    split=$(python3 "$BENCH/cpu.py" diff "$3" "$4" "$5" | jq -c 'with_entries(select(.value > 0))')
    echo "$id $5 $split" >>"$WORK/cpu.log"
    [[ $split != "{}" ]] || return 0
    for g in $(jq -r 'keys[]' <<<"$split"); do
        rec "$id.$g" "CPU per $label: $g" "$(jq -r --arg g "$g" '.[$g]' <<<"$split")" us "" "" ""
    done
    rec "$id.total" "CPU per $label: all of the stack" "$(jq '[.[]] | add' <<<"$split")" us "" "" "" \
        "user + system time / $5; the machine has $(nproc) CPUs"
    if [[ -n ${6:-} ]]; then
        rec "$id.path" "CPU per $label: durable 202 path (API + PostgreSQL + broker)" \
            "$(jq '[to_entries[] | select(.key == "tally-command-api" or .key == "kafka" or
                (.key | startswith("pg:")) and .key != "pg:tally-query-api" and .key != "pg:tallyctl"
                and (.key | startswith("pg:tally-worker") | not)) | .value] | add' <<<"$split")" us "" "" "$6" \
            "worker frozen (SIGSTOP) during the run: no consumer fetches"
    fi
}

# The worker frozen (SIGSTOP) while the ingest runs measure the 202 path alone, and thawed after.
FROZEN=
worker_freeze() { FROZEN=$(svc_pid tally-worker) && kill -STOP "$FROZEN" || FROZEN=; }
worker_thaw() { [[ -z $FROZEN ]] || kill -CONT "$FROZEN" 2>/dev/null || true; FROZEN=; }

# Samples VmRSS of each service every 0.5 s into $WORK/rss.<scenario> (max per service).
RSS_PID=
rss_start() {
    local scen=$1
    (
        declare -A max
        while true; do
            for s in "${SERVICES[@]}"; do
                pid=$(svc_pid "$s") || continue
                v=$(kb "$pid" VmRSS)
                [[ -n $v ]] && ((v > ${max[$s]:-0})) && max[$s]=$v
            done
            for s in "${SERVICES[@]}"; do echo "$s ${max[$s]:-0}"; done >"$WORK/rss.$scen.tmp"
            mv "$WORK/rss.$scen.tmp" "$WORK/rss.$scen"
            sleep 0.5
        done
    ) &
    RSS_PID=$!
    CHILDREN+=("$RSS_PID")
}

rss_stop() {
    local scen=$1 s v goal
    kill "$RSS_PID" 2>/dev/null || true
    wait "$RSS_PID" 2>/dev/null || true
    [[ -f $WORK/rss.$scen ]] || return 0
    while read -r s v; do
        ((v > 0)) || continue
        goal="value<64"
        [[ $s == tally-worker ]] && goal="value<128"
        rec "rss.$scen.$s" "RSS max during $scen: $s" "$(awk -v v="$v" 'BEGIN{printf "%.1f", v/1024}')" MB "" "" "$goal"
    done <"$WORK/rss.$scen"
}

# ---- load generators -------------------------------------------------------

# wrk_post URL CONNS SECONDS -> BENCHJSON line
wrk_post() {
    BENCH_ACCOUNTS=$WORK/accounts BENCH_KEY=$KEY BENCH_RUN="$RUN_ID-$RANDOM$RANDOM" \
        wrk -t2 -c"$2" -d"$3"s --timeout 10s -s "$BENCH/lua/post.lua" "$1" 2>&1 | tee -a "$WORK/wrk.log" |
        sed -n 's/^BENCHJSON //p'
}

# wrk_get URL PATH CONNS SECONDS EXPECT [IF-NONE-MATCH]
wrk_get() {
    BENCH_PATH=$2 BENCH_KEY=$KEY BENCH_EXPECT=$5 BENCH_INM=${6:-} \
        wrk -t2 -c"$3" -d"$4"s --timeout 10s -s "$BENCH/lua/get.lua" "$1" 2>&1 | tee -a "$WORK/wrk.log" |
        sed -n 's/^BENCHJSON //p'
}

# ---- scenarios ---------------------------------------------------------------

INGEST_MAX=

scenario_ingest() {
    local c api ceil
    rss_start ingest
    for c in 64 256; do
        log "ingest: bare h2o 202 ceiling, $c connections, ${DUR}s"
        ceil=$(wrk_post "http://127.0.0.1:$CEIL_PORT" "$c" "$DUR")
        log "ingest: POST deposits to the command API, $c connections, ${DUR}s (worker frozen)"
        worker_freeze
        cpu_snap "$WORK/cpu.a"
        api=$(wrk_post "$TALLY_COMMAND_URL" "$c" "$DUR")
        cpu_snap "$WORK/cpu.b"
        worker_thaw
        [[ -n $api && -n $ceil ]] || die "wrk printed no result (see $WORK/wrk.log)"
        rec_cpu "ingest.c$c.cpu" "202 ($c conns)" "$WORK/cpu.a" "$WORK/cpu.b" "$(jv "$api" .ok)" "value<=95"
        rec "ingest.c$c.rate" "POST deposit 202/s, $c conns (command API)" "$(jv "$api" .ok_rps)" req/s \
            "$(jv "$ceil" .rps)" "bare h2o 202/s" "ratio>=0.5" \
            "non-202: $(jv "$api" .bad_status), socket errors: $(jv "$api" .socket_errors)"
        rec "ingest.c$c.p50" "POST deposit p50, $c conns" "$(jv "$api" .p50_ms)" ms "" "" "" "bare h2o p50 $(jv "$ceil" .p50_ms) ms"
        rec "ingest.c$c.p99" "POST deposit p99, $c conns" "$(jv "$api" .p99_ms)" ms "" "" "" "bare h2o p99 $(jv "$ceil" .p99_ms) ms"
        rec "ingest.c$c.non202" "POST deposit non-202 answers, $c conns" "$(jv "$api" .bad_status)" count "" "" ""
        if [[ -z $INGEST_MAX ]] || awk -v a="$(jv "$api" .ok_rps)" -v b="$INGEST_MAX" 'BEGIN{exit !(a>b)}'; then
            INGEST_MAX=$(jv "$api" .ok_rps)
        fi
    done
    if [[ ${BENCH_GATEWAY:-1} == 1 ]]; then
        log "ingest: POST deposits through the nginx gateway, 64 connections, ${DUR}s"
        api=$(wrk_post "$TALLY_URL" 64 "$DUR")
        rec "ingest.gw.c64.rate" "POST deposit 202/s, 64 conns, via gateway" "$(jv "$api" .ok_rps)" req/s "" "" "" \
            "p50 $(jv "$api" .p50_ms) ms, p99 $(jv "$api" .p99_ms) ms, non-202 $(jv "$api" .bad_status)"
    fi
    local half
    half=$(awk -v m="$INGEST_MAX" 'BEGIN{printf "%d", m/2}')
    log "ingest: open loop at $half/s (half the max), 128 connections, ${DUR}s"
    local ol
    ol=$("$BB/openloop" --port="$(port_of "$TALLY_COMMAND_URL")" --key="$KEY" --accounts="$WORK/accounts" \
        --rate="$half" --duration="$DUR" --conns=128 --tag="$RUN_ID-ol")
    echo "$ol" >>"$WORK/openloop.log"
    rec "ingest.open.p50" "POST deposit p50, open loop at $half/s" "$(jv "$ol" .lat_ms.p50)" ms "" "" ""
    rec "ingest.open.p99" "POST deposit p99, open loop at $half/s" "$(jv "$ol" .lat_ms.p99)" ms "" "" "value<20" \
        "achieved $(jv "$ol" .achieved_rate)/s, non-202 $(jv "$ol" .non202), errors $(jv "$ol" .errors), max queue $(jv "$ol" .max_queue)"
    rss_stop ingest
}

scenario_read() {
    local api ceil path=/v1/accounts/$READ_ACCOUNT
    rss_start read
    log "read: bare h2o 200 ceiling, 64 connections, ${DUR}s"
    ceil=$(wrk_get "http://127.0.0.1:$CEIL_PORT" "$path" 64 "$DUR" 200)
    log "read: GET account, 64 connections, ${DUR}s"
    cpu_snap "$WORK/cpu.a"
    api=$(wrk_get "$TALLY_QUERY_URL" "$path" 64 "$DUR" 200)
    cpu_snap "$WORK/cpu.b"
    rec_cpu read.200.cpu "200 GET" "$WORK/cpu.a" "$WORK/cpu.b" "$(jv "$api" .ok)"
    rec read.200.rate "GET account 200/s, 64 conns (query API)" "$(jv "$api" .ok_rps)" req/s "$(jv "$ceil" .rps)" \
        "bare h2o 200/s" "ratio>=0.4" "p50 $(jv "$api" .p50_ms) ms, p99 $(jv "$api" .p99_ms) ms (ceiling p99 $(jv "$ceil" .p99_ms) ms), wrong status $(jv "$api" .bad_status)"
    local ceil200=$ceil
    log "read: bare h2o 304 ceiling, 64 connections, ${DUR}s"
    ceil=$(wrk_get "http://127.0.0.1:$CEIL_PORT" "$path" 64 "$DUR" 304 "$ETAG")
    log "read: GET account with If-None-Match, 64 connections, ${DUR}s"
    cpu_snap "$WORK/cpu.a"
    api=$(wrk_get "$TALLY_QUERY_URL" "$path" 64 "$DUR" 304 "$ETAG")
    cpu_snap "$WORK/cpu.b"
    rec_cpu read.304.cpu "304 GET" "$WORK/cpu.a" "$WORK/cpu.b" "$(jv "$api" .ok)"
    rec read.304.rate "GET account 304/s, 64 conns (query API)" "$(jv "$api" .ok_rps)" req/s "$(jv "$ceil" .rps)" \
        "bare h2o 304/s" "ratio>=0.7" "p50 $(jv "$api" .p50_ms) ms, p99 $(jv "$api" .p99_ms) ms, wrong status $(jv "$api" .bad_status)"
    rec read.304.vs200 "GET account 304/s vs bare h2o 200/s" "$(jv "$api" .ok_rps)" req/s "$(jv "$ceil200" .rps)" \
        "bare h2o 200/s" "" "the goal's wording: 304s against the 200 ceiling"
    read_longpolls "$path"
    rss_stop read
}

# 1,000 long-polls held at once (jobs that stay queued: accepted command
# records with no event behind them) and the GET rate beside them, against
# the GET rate without them measured just before.
read_longpolls() {
    local path=$1 base with lp n=1000 tag=lp-$RUN_ID
    psql "$TALLY_PG_DSN" -qAt -v ON_ERROR_STOP=1 -c "INSERT INTO command_requests (job_id, event_id, tenant_id,
        idempotency_key, request_hash, state, locked_until, resource_type, resource_id) SELECT gen_random_uuid(),
        gen_random_uuid(), '$TENANT', '$tag-' || g, '\\x00', 'accepted', now(), 'account', gen_random_uuid()
        FROM generate_series(1, $n) g" >/dev/null
    psql "$TALLY_PG_DSN" -qAt -c "SELECT job_id FROM command_requests WHERE tenant_id = '$TENANT'
        AND idempotency_key LIKE '$tag-%'" >"$WORK/lp_jobs"
    log "read: GET account without long-polls, 64 connections, ${DUR}s"
    base=$(wrk_get "$TALLY_QUERY_URL" "$path" 64 "$DUR" 200)
    rm -f "$WORK/lp_ready"
    python3 "$BENCH/longpoll.py" --url="$TALLY_QUERY_URL" --key="$KEY" --jobs="$WORK/lp_jobs" \
        --hold=$((DUR + 8)) --ready-file="$WORK/lp_ready" >"$WORK/longpoll.out" 2>&1 &
    local lp_pid=$!
    CHILDREN+=("$lp_pid")
    local deadline=$((SECONDS + 30))
    until [[ -f $WORK/lp_ready ]]; do
        ((SECONDS < deadline)) || die "the long-polls were not all sent within 30 s"
        sleep 0.2
    done
    sleep 1
    log "read: GET account beside $n held long-polls, 64 connections, ${DUR}s"
    with=$(wrk_get "$TALLY_QUERY_URL" "$path" 64 "$DUR" 200)
    wait "$lp_pid" || true
    lp=$(sed -n 's/^BENCHJSON //p' "$WORK/longpoll.out")
    [[ -n $lp ]] || die "longpoll.py printed no result (see $WORK/longpoll.out)"
    rec read.longpoll "GET account 200/s beside $n long-polls" "$(jv "$with" .ok_rps)" req/s "$(jv "$base" .ok_rps)" \
        "the same GET without them" "ratio>=0.9" \
        "held $(jv "$lp" .held) of $n to the end, answered early $(jv "$lp" .answered_early), connect errors $(jv "$lp" .connect_errors); p99 $(jv "$with" .p99_ms) ms vs $(jv "$base" .p99_ms) ms"
}

scenario_e2e() {
    local ol
    # The target is 1,000/s; offering more than the API sustains would
    # measure a growing queue, so below 2x headroom the run uses 200/s (and says so).
    if [[ -z ${BENCH_E2E_RATE:-} && -n $INGEST_MAX ]] && awk -v m="$INGEST_MAX" 'BEGIN{exit !(m < 2000)}'; then
        E2E_RATE=200
        log "e2e: the command API peaked at $INGEST_MAX/s, so e2e runs at 200/s instead of 1000/s"
    fi
    rss_start e2e
    log "e2e: $E2E_RATE deposits/s for ${E2E_DUR}s, open loop; 202 -> job terminal (NOTIFY tally_jobs)"
    cpu_snap "$WORK/cpu.a"
    ol=$("$BB/openloop" --port="$(port_of "$TALLY_COMMAND_URL")" --key="$KEY" --accounts="$WORK/accounts" \
        --rate="$E2E_RATE" --duration="$E2E_DUR" --conns=64 --tag="$RUN_ID-e2e" --listen-dsn="$TALLY_PG_DSN" --drain=20)
    cpu_snap "$WORK/cpu.b" # after the drain: every accepted command's work is in it
    echo "$ol" >>"$WORK/openloop.log"
    rec_cpu e2e.cpu "command at $E2E_RATE/s, 202 to terminal" "$WORK/cpu.a" "$WORK/cpu.b" "$(jv "$ol" .e2e_ms.jobs)"
    local note
    note="jobs $(jv "$ol" .e2e_ms.jobs), matched $(jv "$ol" .e2e_ms.matched), achieved $(jv "$ol" .achieved_rate)/s, non-202 $(jv "$ol" .non202)"
    rec e2e.p50 "e2e 202 -> job terminal p50 at $E2E_RATE/s" "$(jv "$ol" .e2e_ms.p50)" ms "" "" "value<15" "$note"
    rec e2e.p99 "e2e 202 -> job terminal p99 at $E2E_RATE/s" "$(jv "$ol" .e2e_ms.p99)" ms "" "" "value<50" \
        "max $(jv "$ol" .e2e_ms.max) ms"
    rec e2e.post.p99 "POST deposit p99 during e2e" "$(jv "$ol" .lat_ms.p99)" ms "" "" ""
    # The database's own view: command recorded (before the produce) -> decided (outcome occurred_at).
    local db
    db=$(psql "$TALLY_PG_DSN" -qAt -F ' ' -c "SELECT round((percentile_cont(0.5) WITHIN GROUP (ORDER BY d))::numeric, 3),
            round((percentile_cont(0.99) WITHIN GROUP (ORDER BY d))::numeric, 3)
        FROM (SELECT extract(epoch FROM j.updated_at - c.created_at) * 1000 AS d
              FROM command_requests c JOIN jobs j ON j.id = c.job_id
              WHERE c.tenant_id = '$TENANT' AND c.idempotency_key LIKE '$RUN_ID-e2e-%'
                AND j.status IN ('succeeded', 'failed')) x")
    rec e2e.db.p50 "command recorded -> outcome decided p50 (DB clocks)" "${db% *}" ms "" "" "" \
        "jobs.updated_at (decider's occurred_at) - command_requests.created_at"
    rec e2e.db.p99 "command recorded -> outcome decided p99 (DB clocks)" "${db#* }" ms "" "" ""
    rss_stop e2e
}

# Worker control: the same command line as deploy/local/lib.sh's tly_service_start.
worker_stop() {
    local pid
    pid=$(svc_pid tally-worker) || return 0
    kill -TERM "$pid"
    local deadline=$((SECONDS + 20))
    while [[ -r /proc/$pid/cmdline ]]; do
        ((SECONDS < deadline)) || { kill -KILL "$pid"; break; }
        sleep 0.1
    done
    rm -f "$TALLY_VAR/run/tally-worker.pid"
}

worker_start() { # extra args, e.g. --roles=decider
    (
        export TALLY_LOG_LEVEL=${TALLY_LOG_LEVEL:-info}
        setsid env -u TALLY_HTTP_PORT "$TALLY_BIN/tally-worker" "$@" >>"$TALLY_VAR/log/tally-worker.log" 2>&1 </dev/null &
        echo $! >"$TALLY_VAR/run/tally-worker.pid"
    )
    sleep 0.3
    svc_pid tally-worker >/dev/null || die "tally-worker did not start (see $TALLY_VAR/log/tally-worker.log)"
}

# After each scenario: every service still alive? A dead one is recorded (a
# figure with goal "alive") and restarted the way lib.sh starts it, so the
# next scenarios still run.
check_alive() {
    local scen=$1 s port
    for s in "${SERVICES[@]}"; do
        svc_pid "$s" >/dev/null && continue
        log "$s DIED during $scen (see $TALLY_VAR/log/$s.log and dmesg); restarting it"
        rec "crash.$scen.$s" "$s died during $scen" 1 count "" "" "value<1" \
            "$(dmesg 2>/dev/null | grep -F "${s:0:15}" | tail -n 1 | sed 's/^\[[^]]*\] //' | cut -c1-160)"
        case $s in
        tally-command-api) port=$(port_of "$TALLY_COMMAND_URL") ;;
        tally-query-api) port=$(port_of "$TALLY_QUERY_URL") ;;
        *) port= ;;
        esac
        (
            . "$ROOT/deploy/local/lib.sh"
            tly_init
            tly_service_start "$s" $port
        ) >>"$WORK/stack.log" 2>&1 || die "could not restart $s"
    done
}

q() { PGOPTIONS='-c client_min_messages=warning' psql "$TALLY_PG_DSN" -qAtc "$1"; } # no "drop cascades to" notices

# Waits until SQL $1 returns >= $2; prints seconds since $3 (EPOCHREALTIME) at the first and at the last step.
# Polls every 0.25 s: a psql every 0.1 s cost 9 % of the 2 CPUs (perf) during the projector's catch-up.
wait_count() {
    # The first step is SQL $1 above $5, or, given $6 and $7, SQL $6 above $7 (e.g. the first row a batch writes).
    local sql=$1 want=$2 t0=$3 limit=$4 first="" v first_sql=${6:-} first_base=${7:-0}
    local deadline=$((SECONDS + limit))
    while :; do
        v=$(q "$sql")
        if [[ -z $first && -n $first_sql ]]; then
            (($(q "$first_sql") > first_base)) && first=$EPOCHREALTIME
        elif [[ -z $first && $v -gt $5 ]]; then first=$EPOCHREALTIME; fi
        ((v >= want)) && break
        ((SECONDS < deadline)) || { log "timed out at $v of $want"; echo "timeout"; return 0; }
        sleep 0.25
    done
    awk -v a="$t0" -v f="${first:-$EPOCHREALTIME}" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.3f %.3f\n", b-a, b-f}'
}

scenario_project() {
    rss_start project
    local dec_base job_base jobs_all rate n=$BACKLOG
    log "project: stopping the worker, posting $n deposits (= $((2 * n)) events once decided)"
    worker_stop
    dec_base=$(q "SELECT coalesce(sum(version), 0) FROM decider_accounts WHERE tenant_id = '$TENANT'")
    job_base=$(q "SELECT count(*) FROM jobs WHERE tenant_id = '$TENANT' AND status IN ('succeeded', 'failed')")
    jobs_all=$(q "SELECT count(*) FROM jobs WHERE tenant_id = '$TENANT'")
    rate=$(awk -v m="${INGEST_MAX:-4000}" 'BEGIN{printf "%d", m*0.8}')
    local ol
    ol=$("$BB/openloop" --port="$(port_of "$TALLY_COMMAND_URL")" --key="$KEY" --accounts="$WORK/accounts" \
        --rate="$rate" --duration="$(awk -v n="$n" -v r="$rate" 'BEGIN{printf "%.3f", n/r}')" --conns=128 \
        --tag="$RUN_ID-backlog")
    echo "$ol" >>"$WORK/openloop.log"
    local accepted
    accepted=$(jv "$ol" .accepted)
    log "project: $accepted deposits accepted at $(jv "$ol" .achieved_rate)/s; deciding them (--roles=decider)"
    local t0=$EPOCHREALTIME r
    worker_start --roles=decider
    cpu_snap "$WORK/cpu.a"
    r=$(wait_count "SELECT coalesce(sum(version), 0) FROM decider_accounts WHERE tenant_id = '$TENANT'" \
        $((dec_base + accepted)) "$t0" 240 "$dec_base")
    local outbox_wait
    outbox_wait=$(wait_count "SELECT CASE WHEN count(*) = 0 THEN 1 ELSE 0 END FROM outbox" 1 "$t0" 120 0)
    cpu_snap "$WORK/cpu.b"
    rec_cpu project.decider.cpu "request decided (backlog)" "$WORK/cpu.a" "$WORK/cpu.b" "$accepted"
    if [[ $r != timeout ]]; then
        rec project.decider "decider: requests decided/s on a backlog of $accepted" \
            "$(awk -v n="$accepted" -v s="${r% *}" 'BEGIN{printf "%.0f", n/s}')" ev/s "" "" "" \
            "$(printf '%.1f s from start (incl. group join), %.1f s from first decision; outbox drained at %.1f s' "${r% *}" "${r#* }" "${outbox_wait% *}")"
    fi
    worker_stop
    log "project: projecting $((2 * accepted)) events (--roles=projector)"
    t0=$EPOCHREALTIME
    worker_start --roles=projector
    cpu_snap "$WORK/cpu.a"
    # first step: the first job row of the backlog (its DepositRequested applied), i.e. the first batch committed;
    # the first terminal job comes later, once a partition's requests are behind (the outcomes follow them in the log)
    r=$(wait_count "SELECT count(*) FROM jobs WHERE tenant_id = '$TENANT' AND status IN ('succeeded', 'failed')" \
        $((job_base + accepted)) "$t0" 300 "$job_base" "SELECT count(*) FROM jobs WHERE tenant_id = '$TENANT'" "$jobs_all")
    cpu_snap "$WORK/cpu.b"
    rec_cpu project.projector.cpu "event projected (backlog)" "$WORK/cpu.a" "$WORK/cpu.b" $((2 * accepted))
    worker_stop
    worker_start # back to the stack's normal worker (all roles)
    if [[ $r != timeout ]]; then
        local ev=$((2 * accepted)) pg up_rate
        pg_ceiling
        pg=$PG_CEILING
        up_rate=$(jv "$pg" .upsert_rows_per_s)
        rec project.projector "projector: events/s catching up on $ev events" \
            "$(awk -v n="$ev" -v s="${r% *}" 'BEGIN{printf "%.0f", n/s}')" ev/s "$up_rate" \
            "batched upsert rows/s (500/stmt)" "value>=60000" \
            "$(printf '%.1f s incl. start and group join; %.0f ev/s from the first applied batch' "${r% *}" "$(awk -v n="$ev" -v s="${r#* }" 'BEGIN{printf "%.0f", n/s}')")"
        rec project.pg.copy "PostgreSQL COPY rows/s (same rows)" "$(jv "$pg" .copy_rows_per_s)" rows/s "" "" ""
        rec project.pg.upsert "PostgreSQL batched upsert rows/s" "$up_rate" rows/s "" "" "" "200k rows over 20k ids, 500 rows/statement+transaction"
    fi
    rss_stop project
}

# The ceiling of a replay: PostgreSQL's bulk load of the very rows it wrote.
# Copies every read-model table of shadow $1 (binary COPY out, piped into COPY
# in) into empty tables created LIKE them, indexes included, one table after
# the other as one connection would; prints "seconds rows".
copy_same_rows() {
    local src=$1 dst=${1}_copy t t0 rows=0 n
    q "DROP SCHEMA IF EXISTS $dst CASCADE; CREATE SCHEMA $dst" >/dev/null
    for t in accounts ledger_entries jobs transfers; do
        q "CREATE TABLE $dst.$t (LIKE $src.$t INCLUDING ALL)" >/dev/null
    done
    t0=$EPOCHREALTIME
    for t in accounts ledger_entries jobs transfers; do
        psql "$TALLY_PG_DSN" -qAtc "COPY $src.$t TO STDOUT (FORMAT binary)" |
            psql "$TALLY_PG_DSN" -qAtc "COPY $dst.$t FROM STDIN (FORMAT binary)" >/dev/null
    done
    local secs
    secs=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.3f", b-a}')
    for t in accounts ledger_entries jobs transfers; do
        n=$(q "SELECT count(*) FROM $dst.$t")
        rows=$((rows + n))
    done
    q "DROP SCHEMA $dst CASCADE" >/dev/null
    echo "$secs $rows"
}

# Sets PG_CEILING, once per run: ceiling_pg's batched upserts and COPY of accounts-shaped rows into scratch tables.
pg_ceiling() {
    if [[ -z $PG_CEILING ]]; then
        log "PostgreSQL ceiling (batched upserts, COPY)"
        PG_CEILING=$("$BB/ceiling_pg" --dsn="$TALLY_PG_DSN" --rows=200000 --batch=500 --distinct=20000)
    fi
}

# tallyctl replay of a synthetic history (gen_history: accounts opened, then
# deposits, each a request and an outcome) from a scratch topic into a
# point-in-time shadow schema (--into: no swap), timed from the start of the
# command to its exit. The live stack never sees that topic.
scenario_replay() {
    local topic=bench.replay.$RUN_ID schema=bench_replay_$RUN_ID g n=$REPLAY_EVENTS
    log "replay: producing $n synthetic events to $topic"
    g=$("$BB/gen_history" --brokers="$TALLY_KAFKA_BROKERS" --topic="$topic" --events="$n" --accounts=1000) ||
        die "gen_history failed: $g"
    echo "$g" >>"$WORK/replay.log"
    log "replay: produced $(jv "$g" .events) events in $(jv "$g" .seconds) s; tallyctl replay --into $schema"
    local t0=$EPOCHREALTIME t1 secs rc=0
    TALLY_KAFKA_TOPIC=$topic "$TALLY_BIN/tallyctl" replay --into "$schema" --quiet >>"$WORK/replay.log" 2>&1 || rc=$?
    t1=$EPOCHREALTIME
    ((rc == 0)) || { tail -n 20 "$WORK/replay.log" >&2; die "tallyctl replay failed ($rc)"; }
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')
    local entries jobs same
    entries=$(q "SELECT count(*) FROM $schema.ledger_entries")
    jobs=$(q "SELECT count(*) FROM $schema.jobs WHERE status = 'succeeded'")
    same=$(copy_same_rows "$schema")
    rec replay.rate "replay: events/s into a shadow schema ($(jv "$g" .events) events)" \
        "$(awk -v n="$(jv "$g" .events)" -v s="$secs" 'BEGIN{printf "%.0f", n/s}')" ev/s \
        "$(awk -v n="$(jv "$g" .events)" -v s="${same% *}" 'BEGIN{printf "%.0f", n/s}')" \
        "COPY of the same rows, as events/s" "value>=150000" \
        "$(printf '%.1f s, tallyctl start to exit; %s ledger entries, %s jobs succeeded in the shadow; COPY of its %s rows into empty tables of the same definition (indexes included): %.1f s' "$secs" "$entries" "$jobs" "${same#* }" "${same% *}")"
    q "DROP SCHEMA $schema CASCADE" >/dev/null
    replay_live_p99 "$topic" "${schema}_live" "" "" "a replay (default: busy rate $REPLAY_BUSY_RATE/s while it sees live traffic)"
    replay_live_p99 "$topic" "${schema}_flat" "--busy-rate 0" .flat "a replay at full speed (--busy-rate 0)"
}

# The live API while a replay runs: POST deposit p99 (8 connections, closed
# loop, 10 s) without a replay, then with one running (started 2 s before,
# stopped after), goal: within 2x. RATE: the replay's --max-rate (0: none).
# Live POST p99 (wrk, 8 connections, 20 s) without a replay, then during one
# started 2 s before. $3: tallyctl replay's rate options; $4: the figure's id
# suffix and label. The goal applies to the default replay, which slows to
# its busy rate while it sees live traffic; the flat-out one is for reference.
# 20 s windows: the p99 of 10 s of a saturating closed loop moved 73 -> 127 ms
# between two runs with nothing else running (20:44 UTC).
replay_live_p99() {
    local topic=$1 schema=$2 opts=$3 id=replay.live.p99$4 label=$5 base during pid goal=""
    [[ -z $4 ]] && goal="ratio<2"
    log "replay: live API p99 without a replay (POST deposits, 8 connections, 20s)"
    base=$(wrk_post "$TALLY_COMMAND_URL" 8 20)
    # shellcheck disable=SC2086 # $opts: tallyctl options, split on purpose
    TALLY_KAFKA_TOPIC=$topic "$TALLY_BIN/tallyctl" replay --into "$schema" $opts >>"$WORK/replay.log" 2>&1 &
    pid=$!
    CHILDREN+=("$pid")
    sleep 2
    log "replay: live API p99 during $label (POST deposits, 8 connections, 20s)"
    during=$(wrk_post "$TALLY_COMMAND_URL" 8 20)
    local still=no
    kill -0 "$pid" 2>/dev/null && still=yes
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    q "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null
    rec "$id" "POST deposit p99 during $label (8 conns)" "$(jv "$during" .p99_ms)" ms "$(jv "$base" .p99_ms)" \
        "p99 without a replay" "$goal" \
        "ratio $(awk -v a="$(jv "$during" .p99_ms)" -v b="$(jv "$base" .p99_ms)" 'BEGIN{printf "%.2f", (b > 0 ? a / b : 0)}'); rate $(jv "$during" .ok_rps)/s vs $(jv "$base" .ok_rps)/s; replay still running at the end: $still"
}

# Webhook delivery (bench/webhooks.sh: its own small stack whose worker runs
# every role but webhooks, and a webhooks worker of the bench's own, so the
# receiver and the clock are the bench's): deliveries/s to a fast loopback
# receiver, and the delivery latency of fast endpoints with and without one
# endpoint that never answers (goal: no effect).
scenario_webhooks() {
    local out j
    log "webhooks: bench/webhooks.sh (own stack, loopback receiver)"
    out=$(BENCH_BUILD_DIR=$BUILD "$BENCH/webhooks.sh" 2>>"$WORK/webhooks.log") ||
        { tail -n 20 "$WORK/webhooks.log" >&2; die "bench/webhooks.sh failed"; }
    echo "$out" >>"$WORK/webhooks.log"
    j=$(tail -n 1 <<<"$out")
    rec webhooks.rate "webhook deliveries/s, $(jv "$j" .endpoints) endpoints, fast receiver" "$(jv "$j" .deliveries_per_s)" \
        deliveries/s "" "" "" "$(jv "$j" .deliveries) deliveries"
    rec webhooks.p99 "webhook delivery p99, 4 endpoints at $(jv "$j" .rate) events/s" "$(jv "$j" .latency_p99_ms)" ms "" "" "" \
        "p50 $(jv "$j" .latency_p50_ms) ms"
    rec webhooks.stuck.p99 "same, beside 1 endpoint that never answers" "$(jv "$j" .stuck_latency_p99_ms)" ms \
        "$(jv "$j" .latency_p99_ms)" "p99 without it" "" "p50 $(jv "$j" .stuck_latency_p50_ms) ms; goal: no effect (ratio ~1)"
}

scenario_kafka_ceiling() {
    local k
    log "kafka ceiling: raw produce (acks=all, idempotent, linger 1 ms) and consume of 200000 events"
    k=$("$BB/ceiling_kafka" --brokers="$TALLY_KAFKA_BROKERS" --topic="bench.ceiling.$RUN_ID" --count=200000)
    rec kafka.produce "Kafka raw produce msgs/s ($(jv "$k" .event_bytes) B events)" "$(jv "$k" .produce_msgs_per_s)" msg/s "" "" "" \
        "the ceiling of any Kafka-bound path; the 202 rate is also bounded by PostgreSQL round trips"
    rec kafka.consume "Kafka raw consume msgs/s" "$(jv "$k" .consume_msgs_per_s)" msg/s "" "" ""
    if [[ -n $INGEST_MAX ]]; then
        rec kafka.ingest "best POST deposit 202/s vs raw Kafka produce" "$INGEST_MAX" req/s "$(jv "$k" .produce_msgs_per_s)" \
            "raw produce msgs/s" "" "one event per 202"
    fi
}

# ---- report ------------------------------------------------------------------

report() {
    local out=$BENCH/results/$STAMP.json
    mkdir -p "$BENCH/results"
    python3 - "$ROWS" "$out" "$STAMP" "$*" <<'PY'
import json, os, platform, sys
rows_file, out, stamp, scenarios = sys.argv[1:5]
figures = []
for line in open(rows_file):
    f = line.rstrip("\n").split("\t")
    fid, label, value, unit, ceiling, clabel, goal, note = (f + [""] * 8)[:8]
    def num(s):
        try: return float(s)
        except ValueError: return None
    v, c = num(value), num(ceiling)
    ratio = (v / c) if v is not None and c else None
    status = ""
    if goal:
        op = next(o for o in (">=", "<=", "<") if o in goal)
        kind, _, lim = goal.partition(op)
        x = ratio if kind == "ratio" else v
        if x is None: status = "n/a"
        else: status = "pass" if {">=": x >= float(lim), "<=": x <= float(lim), "<": x < float(lim)}[op] else "MISS"
    figures.append(dict(id=fid, label=label, value=v, unit=unit, ceiling=c, ceiling_label=clabel or None,
                        ratio=None if ratio is None else round(ratio, 3), goal=goal or None, status=status or None, note=note or None))
machine = dict(cpus=os.cpu_count(), kernel=platform.release())
try:
    machine["os"] = open("/etc/debian_version").read().strip() and "Debian " + open("/etc/debian_version").read().strip()
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"): machine["cpu"] = l.split(":", 1)[1].strip(); break
    for l in open("/proc/meminfo"):
        if l.startswith("MemTotal"): machine["mem_gb"] = round(int(l.split()[1]) / 1048576, 1); break
except OSError: pass
json.dump(dict(timestamp=stamp, scenarios=scenarios.split(), machine=machine, figures=figures), open(out, "w"), indent=1)
def fmt(x):
    if x is None: return ""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}"
hdr = ("figure", "value", "unit", "ceiling", "ratio", "goal", "")
tab = [hdr] + [(f["label"], fmt(f["value"]), f["unit"], fmt(f["ceiling"]), "" if f["ratio"] is None else f"{f['ratio']*100:.0f}%",
                f["goal"] or "", f["status"] or "") for f in figures]
w = [max(len(r[i]) for r in tab) for i in range(len(hdr))]
for i, r in enumerate(tab):
    print("  ".join(c.ljust(w[j]) if j in (0, 2, 5, 6) else c.rjust(w[j]) for j, c in enumerate(r)).rstrip())
    if i == 0: print("  ".join("-" * x for x in w))
notes = [f for f in figures if f["note"]]
if notes:
    print()
    for f in notes: print(f"  {f['id']}: {f['note']}")
print(f"\nmachine: {machine}\nwritten: {out}")
PY
}

main() {
    local scenarios=("$@") s
    ((${#scenarios[@]})) || scenarios=("${ALL_SCENARIOS[@]}")
    for s in "${scenarios[@]}"; do
        [[ " ${ALL_SCENARIOS[*]} kafka " == *" $s "* ]] || die "unknown scenario $s (have: ${ALL_SCENARIOS[*]})"
    done
    local t0=$SECONDS
    need_tools
    build
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    stack_up
    make_key
    open_accounts
    ceiling_start
    for s in "${scenarios[@]}"; do
        [[ $s == kafka ]] && continue
        "scenario_$s"
        check_alive "$s"
    done
    scenario_kafka_ceiling
    log "done in $((SECONDS - t0)) s"
    report "${scenarios[@]}"
}

main "$@"
