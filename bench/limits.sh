#!/usr/bin/env bash
# The rate limiter's cost, limiter on and off in the same run.
#
#   bench/limits.sh DIR [SECONDS] [ROUNDS]     DIR: a stack that is up (tests/stack.sh up DIR)
#
# Starts a command API and a query API with TALLY_RATE_LIMITS=true and the
# same two with false, on free ports, against the stack's PostgreSQL, Kafka
# and Redis; then, ROUNDS times (default 2), SECONDS each (default 5),
# alternating which goes first: wrk GETs of one account (read path) and wrk
# POSTs of deposits (ingest path) at 32 connections, on and off. The key has
# a contract of 50,000/s (burst 50,000) and its tenant a budget of the same,
# so nothing is refused but every request goes through both buckets and
# their leases (lease 5,000). Prints per run rps, p50 and p99, the on/off
# ratios, Redis calls per request and Redis CPU per request (from
# /proc/<redis pid>/stat over the "on" runs).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=$(cd "${1:?usage: bench/limits.sh DIR [SECONDS] [ROUNDS]}" && pwd)
secs=${2:-5}
rounds=${3:-2}
pids=()
work=$(mktemp -d)

log() { printf 'limits-bench: %s\n' "$*" >&2; }
finish() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap finish EXIT

command -v wrk >/dev/null || { log "wrk is missing (apt-get install wrk)"; exit 1; }
set -a
# shellcheck disable=SC1091
. "$dir/local.env"
set +a
ctl() { "$TALLY_BIN/tallyctl" "$@" 2>>"$work/tallyctl.log"; }
free_ports() {
    python3 -c 'import socket
s=[socket.socket() for _ in range(int(__import__("sys").argv[1]))]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))' "$1"
}

tenant=$(ctl tenants create --name "limits-bench-$(date +%s)")
key=$(ctl keys create --tenant "$tenant" --scopes read,write --rate 50000 --burst 50000)
ctl limits set --tenant "$tenant" --rate 50000 --burst 50000

# start NAME BIN PORT ADMIN ON
start() {
    TALLY_HTTP_PORT=$3 TALLY_ADMIN_PORT=$4 TALLY_RATE_LIMITS=$5 TALLY_API_INSTANCES=1 \
        "$TALLY_BIN/$2" >>"$TALLY_VAR/log/limits-bench-$1.log" 2>&1 &
    pids+=($!)
}
read -r cp_on ca_on cp_off ca_off qp_on qa_on qp_off qa_off < <(free_ports 8)
start cmd-on tally-command-api "$cp_on" "$ca_on" true
start cmd-off tally-command-api "$cp_off" "$ca_off" false
start qry-on tally-query-api "$qp_on" "$qa_on" true
start qry-off tally-query-api "$qp_off" "$qa_off" false

auth=(-H "Authorization: Bearer $key")
for port in "$cp_on" "$cp_off" "$qp_on" "$qp_off"; do
    for _ in $(seq 100); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "${auth[@]}" "http://127.0.0.1:$port/v1/accounts?limit=1" \
            -X "$([[ $port == "$qp_on" || $port == "$qp_off" ]] && echo GET || echo POST)" || true)
        [[ $code == 200 || $code == 415 ]] && break
        sleep 0.1
    done
done

log "opening 20 accounts"
: >"$work/accounts"
for _ in $(seq 20); do
    curl -s "${auth[@]}" -H 'Content-Type: application/json' -d '{"currency":"EUR","label":"bench"}' \
        "http://127.0.0.1:$cp_on/v1/accounts" | jq -r .job.resource.id >>"$work/accounts"
done
account=$(head -n 1 "$work/accounts")
for _ in $(seq 100); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "${auth[@]}" "http://127.0.0.1:$qp_on/v1/accounts/$account") == 200 ]] && break
    sleep 0.2
done

redis_cpu() { awk '{print $14 + $15}' "/proc/$(<"$TALLY_VAR/run/redis.pid")/stat"; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" 'index($0, m) == 1 {s += $NF} END {print s + 0}'; }

# run PATH MODE -> one BENCHJSON line
run() {
    local port url
    if [[ $1 == read ]]; then
        port=$([[ $2 == on ]] && echo "$qp_on" || echo "$qp_off")
        BENCH_PATH=/v1/accounts/$account BENCH_KEY=$key BENCH_EXPECT=200 \
            wrk -t2 -c32 -d"$secs"s --timeout 10s -s "$root/bench/lua/get.lua" "http://127.0.0.1:$port" | sed -n 's/^BENCHJSON //p'
    else
        port=$([[ $2 == on ]] && echo "$cp_on" || echo "$cp_off")
        BENCH_ACCOUNTS=$work/accounts BENCH_KEY=$key BENCH_RUN="lb-$RANDOM$RANDOM" \
            wrk -t2 -c32 -d"$secs"s --timeout 10s -s "$root/bench/lua/post.lua" "http://127.0.0.1:$port" | sed -n 's/^BENCHJSON //p'
    fi
}

calls0=$(($(metric "$ca_on" tally_rate_limit_redis_calls_total) + $(metric "$qa_on" tally_rate_limit_redis_calls_total)))
reqs0=$(($(metric "$ca_on" tally_http_requests_total) + $(metric "$qa_on" tally_http_requests_total)))
cpu_on=0
printf '%-6s %-4s %5s %10s %9s %9s %6s\n' path mode round rps p50_ms p99_ms non-2xx
for ((r = 1; r <= rounds; r++)); do
    for path in read ingest; do
        order=(on off)
        ((r % 2 == 0)) && order=(off on)
        for mode in "${order[@]}"; do
            c0=$(redis_cpu)
            j=$(run "$path" "$mode")
            [[ $mode == on ]] && cpu_on=$((cpu_on + $(redis_cpu) - c0))
            printf '%-6s %-4s %5d %10.0f %9.3f %9.3f %6d\n' "$path" "$mode" "$r" "$(jq .ok_rps <<<"$j")" \
                "$(jq .p50_ms <<<"$j")" "$(jq .p99_ms <<<"$j")" "$(jq .bad_status <<<"$j")"
            printf '%s %s %s\n' "$path" "$mode" "$j" >>"$work/results"
        done
    done
done
calls=$(($(metric "$ca_on" tally_rate_limit_redis_calls_total) + $(metric "$qa_on" tally_rate_limit_redis_calls_total) - calls0))
reqs=$(($(metric "$ca_on" tally_http_requests_total) + $(metric "$qa_on" tally_http_requests_total) - reqs0))
tick=$(getconf CLK_TCK)
python3 - "$work/results" "$calls" "$reqs" "$cpu_on" "$tick" <<'PY'
import json, sys, statistics
rows = [l.split(" ", 2) for l in open(sys.argv[1])]
calls, reqs, cpu, tick = (int(x) for x in sys.argv[2:6])
for path in ("read", "ingest"):
    on = [json.loads(j) for p, m, j in rows if p == path and m == "on"]
    off = [json.loads(j) for p, m, j in rows if p == path and m == "off"]
    rps = statistics.mean(x["ok_rps"] for x in on) / statistics.mean(x["ok_rps"] for x in off)
    p99_on = statistics.mean(x["p99_ms"] for x in on)
    p99_off = statistics.mean(x["p99_ms"] for x in off)
    print(f"{path}: throughput on/off {rps:.3f}; p99 on {p99_on:.3f} ms, off {p99_off:.3f} ms, added {p99_on - p99_off:+.3f} ms")
print(f"redis calls per request (limiter on): {calls / max(reqs, 1):.4f} ({calls} calls, {reqs} requests)")
print(f"redis CPU per request: {cpu / tick / max(reqs, 1) * 1e6:.2f} us ({cpu / tick:.2f} s of CPU over the 'on' runs)")
PY
