#!/usr/bin/env bash
# deploy/docker/healthcheck.sh against a fake /proc (TALLY_HEALTHCHECK_PROC)
# and a stub /readyz.
#   test_healthcheck.sh ROOT PYTHON
set -euo pipefail

root=$1 python=$2
hc=$root/deploy/docker/healthcheck.sh
command -v curl >/dev/null || { echo "skipped: curl not found"; exit 77; }
tmp=$(mktemp -d)
server_pid=''
cleanup() {
    if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# shellcheck source=tests/support/check.sh
. "$(dirname "${BASH_SOURCE[0]}")/../support/check.sh"

# fake_proc NAME ARGS...: a /proc with pid 1 running ARGS (NUL-separated).
fake_proc() {
    rm -rf "$tmp/proc" && mkdir -p "$tmp/proc/1" "$tmp/proc/7"
    shift
    printf '%s\0' "$@" >"$tmp/proc/1/cmdline"
    printf '%s\0' /bin/bash /usr/local/bin/tally-healthcheck >"$tmp/proc/7/cmdline"
}
export TALLY_HEALTHCHECK_PROC=$tmp/proc

port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$tmp/www" && : >"$tmp/www/readyz"
"$python" -m http.server --bind 127.0.0.1 --directory "$tmp/www" "$port" >/dev/null 2>&1 &
server_pid=$!
for _ in $(seq 50); do curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null && break; sleep 0.1; done
dead=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

hc() { env "$@" bash "$hc" >/dev/null 2>&1; }
fake_proc api /usr/local/bin/tally-query-api
check "query-api healthy when the admin port's /readyz answers (TALLY_ADMIN_PORT)" hc TALLY_ADMIN_PORT="$port"
check "query-api unhealthy when nothing answers" bash -c "! TALLY_ADMIN_PORT=$dead bash '$hc' 2>/dev/null"
fake_proc api /usr/local/bin/tally-command-api "--admin-port=$port"
check "command-api: --admin-port= wins over TALLY_ADMIN_PORT" hc TALLY_ADMIN_PORT="$dead"
fake_proc api /usr/local/bin/tally-command-api
check "command-api: default admin port 9181 when nothing is set" bash -c \
    "curl -fsS -o /dev/null --max-time 1 http://127.0.0.1:9181/readyz 2>/dev/null || ! env -u TALLY_ADMIN_PORT bash '$hc' 2>/dev/null"
fake_proc worker /usr/local/bin/tally-worker
check "worker healthy when its /readyz answers" hc TALLY_ADMIN_PORT="$port"
check "worker unhealthy when its /readyz does not answer" bash -c "! TALLY_ADMIN_PORT=$dead bash '$hc' 2>/dev/null"
fake_proc worker /usr/local/bin/tally-worker --admin-port=0
check "worker without an admin port: healthy while it runs" hc TALLY_ADMIN_PORT="$dead"
fake_proc migrate /bin/bash /usr/local/bin/tally-entrypoint migrate
check "one-shot modes are healthy" hc

check_summary healthcheck
