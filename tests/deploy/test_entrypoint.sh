#!/usr/bin/env bash
# deploy/docker/entrypoint.sh against stand-ins: stub binaries on PATH, a
# stub HTTP server for the e2e mode's readiness probe, stub test programs.
#   test_entrypoint.sh ROOT PYTHON
set -euo pipefail

root=$1 python=$2
entry=$root/deploy/docker/entrypoint.sh
tmp=$(mktemp -d)
server_pid=''
cleanup() {
    if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

fails=0 checks=0
check() { # description, then a command that must succeed
    local what=$1
    shift
    checks=$((checks + 1))
    if "$@"; then printf 'ok   %s\n' "$what"; else printf 'FAIL %s\n' "$what"; fails=$((fails + 1)); fi
}

mkdir -p "$tmp/bin" "$tmp/tests"
calls=$tmp/calls
# tallyctl: `migrate` fails once (database not up yet), then works.
cat >"$tmp/bin/tallyctl" <<STUB
#!/usr/bin/env bash
printf 'tallyctl %s\n' "\$*" >>"$calls"
case "\$1 \${2:-}" in
"migrate ") if [[ ! -e $tmp/migrated-once ]]; then touch $tmp/migrated-once; exit 1; fi ;;
"keys create") printf 'tly_live_aaaaaaaaaaaaaaaa_secret\n' ;;
"tenants create") printf '11111111-1111-4111-8111-111111111111\n' ;;
esac
STUB
for b in tally-command-api tally-query-api tally-worker; do
    printf '#!/bin/sh\nprintf "%s %%s pid=%%s\\n" "$*" "$$" >>"%s"\n' "$b" "$calls" >"$tmp/bin/$b"
done
chmod +x "$tmp/bin"/*
export PATH=$tmp/bin:$PATH TALLY_WAIT_SECONDS=10

run() { bash "$entry" "$@" >"$tmp/out" 2>&1; }

# Service modes exec the binary with the remaining arguments.
: >"$calls"
bash -c 'printf "%s\n" "$$" >'"$tmp"'/shell.pid; exec bash '"$entry"' command-api --port=9001' >/dev/null 2>&1
check "command-api execs tally-command-api with its flags (same pid)" \
    grep -qx "tally-command-api --port=9001 pid=$(<"$tmp/shell.pid")" "$calls"
: >"$calls"
run query-api && run worker --roles=projector && run tallyctl keys list --tenant acme
check "query-api, worker and tallyctl run their binaries" \
    diff <(sed 's/ pid=.*//' "$calls") <(printf '%s\n' 'tally-query-api ' 'tally-worker --roles=projector' 'tallyctl keys list --tenant acme')

# migrate: retries until tallyctl migrate succeeds, then creates the topic.
: >"$calls"
check "migrate succeeds" run migrate
check "migrate retried, then created the topic" \
    diff "$calls" <(printf '%s\n' 'tallyctl migrate' 'tallyctl migrate' 'tallyctl topics create')

check "help prints the modes" bash -c "bash '$entry' help | grep -q '^  migrate'"
check "anything else is executed" bash -c "bash '$entry' echo hello | grep -qx hello"

# e2e: a stub gateway that does not know the key at first (401), then does.
port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$tmp/server.py" <<'PY'
import http.server, sys
seen = {"n": 0}
class H(http.server.BaseHTTPRequestHandler):
    def reply(self, code):
        self.send_response(code); self.send_header("Content-Length", "0"); self.end_headers()
    def do_GET(self):
        seen["n"] += 1
        ok = self.headers.get("Authorization") == "Bearer tly_live_aaaaaaaaaaaaaaaa_secret"
        self.reply(404 if ok and seen["n"] > 1 else 401)
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.reply(415)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
"$python" "$tmp/server.py" "$port" &
server_pid=$!
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

cat >"$tmp/tests/test_good" <<'T'
#!/bin/sh
[ "$TALLY_API_KEY" = tly_live_aaaaaaaaaaaaaaaa_secret ] && [ -n "$TALLY_URL" ]
T
printf '#!/bin/sh\nexit 1\n' >"$tmp/tests/test_bad"
chmod +x "$tmp/tests"/*
export TALLY_URL=http://127.0.0.1:$port TALLY_E2E_TESTS_DIR=$tmp/tests
: >"$calls"
check "e2e fails when a test program fails" bash -c "! TALLY_API_KEY= bash '$entry' e2e >'$tmp/out' 2>&1"
check "e2e prints the count" grep -qx 'e2e: 1 passed, 1 failed' "$tmp/out"
check "e2e names the failed program" grep -q 'failed: test_bad' "$tmp/out"
check "e2e created a tenant and an admin key" \
    diff "$calls" <(printf '%s\n' 'tallyctl tenants create --name e2e' \
        'tallyctl keys create --tenant e2e --scopes read,write,admin --label e2e-admin')
check "e2e never prints the key" bash -c "! grep -q secret '$tmp/out'"
rm "$tmp/tests/test_bad"
: >"$calls"
check "e2e with a given key passes" env TALLY_API_KEY=tly_live_aaaaaaaaaaaaaaaa_secret bash "$entry" e2e >"$tmp/out" 2>&1
check "e2e with a given key creates none" test ! -s "$calls"
check "e2e without TALLY_URL refuses" bash -c "! env -u TALLY_URL bash '$entry' e2e 2>/dev/null"

printf 'entrypoint: %d passed, %d failed\n' "$((checks - fails))" "$fails"
((fails == 0))
