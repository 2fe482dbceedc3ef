#!/usr/bin/env bash
# Re-projects the whole tally.events of a kept bench stack with a given
# tally-worker, for quick A/B runs of the projector's catch-up without
# posting a new backlog (bench/run.sh project takes minutes to build one).
#
#   BENCH_KEEP_STACK=1 bench/run.sh project     # once: leaves bench/.stack up with a 200k-event backlog
#   bench/reproject.sh BIN_DIR [worker args...] # e.g. build-bench/bin, or another build's bin
#
# DESTRUCTIVE for that stack: stops its worker, truncates accounts,
# ledger_entries, transfers and jobs, deletes the projector's consumer_dedup
# rows and sets its positions to 0; then starts BIN_DIR/tally-worker
# --roles=projector (left running) and waits until every job that was
# terminal before is terminal again. Refuses any stack but bench/.stack.
# Prints events/s from start and from the first applied batch (first job
# row), and the CPU per event of the worker and of PostgreSQL (all its
# backends), from /proc/<pid>/stat. Env: TALLY_LOG_LEVEL (info), and
# anything the worker reads (e.g. TALLY_KAFKA_CONSUMER_CONFIG).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VAR=$ROOT/bench/.stack
[[ -f $VAR/local.env ]] || { echo "no kept stack in $VAR (BENCH_KEEP_STACK=1 bench/run.sh project)" >&2; exit 1; }
BIN=$(cd "$1" && pwd)
shift
set -a
. "$VAR/local.env"
set +a
[[ $TALLY_VAR == "$VAR" ]] || { echo "refusing: $VAR/local.env describes $TALLY_VAR" >&2; exit 1; }
q() { psql "$TALLY_PG_DSN" -qAtc "$1"; }
pidf=$VAR/run/tally-worker.pid
if [[ -f $pidf ]] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
    kill -TERM "$(cat "$pidf")"
    while kill -0 "$(cat "$pidf")" 2>/dev/null; do sleep 0.1; done
fi
want_file=$VAR/reproject.want # terminal jobs of the first run: the target of every later one
[[ -s $want_file ]] || q "SELECT count(*) FROM jobs WHERE status IN ('succeeded', 'failed')" >"$want_file"
want=$(cat "$want_file")
q "TRUNCATE accounts, ledger_entries, transfers, jobs; DELETE FROM consumer_dedup WHERE consumer = 'projector';
   UPDATE consumer_positions SET next_offset = 0 WHERE consumer = 'projector'" >/dev/null
q "VACUUM ANALYZE consumer_dedup" >/dev/null
q "CHECKPOINT" >/dev/null 2>&1 || true
pgpm=$(cat "$VAR/run/postgres.pid")
pgcpu() {
    local s=0 p
    for p in $(pgrep -P "$pgpm"); do s=$((s + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
    echo "$s"
}
pg0=$(pgcpu)
t0=$EPOCHREALTIME
TALLY_LOG_LEVEL=${TALLY_LOG_LEVEL:-info} setsid env -u TALLY_HTTP_PORT "$BIN/tally-worker" --roles=projector "$@" \
    >>"$VAR/log/tally-worker.log" 2>&1 </dev/null &
wp=$!
echo "$wp" >"$pidf"
first=""
while :; do
    [[ -z $first && $(q "SELECT count(*) FROM jobs") -gt 0 ]] && first=$EPOCHREALTIME
    (($(q "SELECT count(*) FROM jobs WHERE status IN ('succeeded', 'failed')") >= want)) && break
    kill -0 "$wp" 2>/dev/null || { echo "tally-worker exited (see $VAR/log/tally-worker.log)" >&2; exit 1; }
    sleep 0.25
done
t1=$EPOCHREALTIME
wcpu=$(awk '{print $14 + $15}' "/proc/$wp/stat")
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$wp/status") # peak RSS, kB
pg1=$(pgcpu)
ev=$(q "SELECT count(*) FROM consumer_dedup WHERE consumer = 'projector'")
awk -v a="$t0" -v f="$first" -v b="$t1" -v ev="$ev" -v w="$wcpu" -v p=$((pg1 - pg0)) -v h="$hwm" -v hz="$(getconf CLK_TCK)" 'BEGIN{
    printf "events %d: %.2f s from start (%.0f ev/s), %.2f s from the first applied batch (%.0f ev/s, first at %.2f s); ", ev, b-a, ev/(b-a), b-f, ev/(b-f), f-a
    printf "worker CPU %.2f s (%.1f us/event), PostgreSQL CPU %.2f s (%.1f us/event); ", w/hz, w/hz/ev*1e6, p/hz, p/hz/ev*1e6
    printf "worker peak RSS %.0f MB\n", h/1024 }'
