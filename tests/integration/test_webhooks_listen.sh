#!/usr/bin/env bash
# `tallyctl webhooks listen` against the test stack (which runs in the
# development mode of deploy/local/up.sh, TALLY_WEBHOOK_ALLOW_PRIVATE=true):
# it registers its endpoint, a new account's AccountOpened arrives signed,
# is printed with "signature ok" and forwarded (body and webhook-* headers)
# to a local receiver; a forged delivery is printed as INVALID; Ctrl-C
# deletes the endpoint.
#   test_webhooks_listen.sh STACK_ENV_FILE
set -euo pipefail

env_file=${1:?usage: test_webhooks_listen.sh STACK_ENV_FILE}
set -a
# shellcheck disable=SC1091 # the stack's, written at run time
. "${env_file%/*}/local.env"
set +a
tmp=$(mktemp -d)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

# shellcheck source=tests/support/check.sh
. "$(dirname "${BASH_SOURCE[0]}")/../support/check.sh"
# shellcheck source=deploy/local/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../deploy/local/lib.sh"

# The forward target: records each request (path, webhook-* headers, body) as one JSON line.
cat >"$tmp/receiver.py" <<'PY'
import http.server, json, sys
out = open(sys.argv[1], "a", buffering=1)
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        out.write(json.dumps({"path": self.path, "body": body,
                              **{k: self.headers.get(k) for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}}) + "\n")
        self.send_response(204)
        self.end_headers()
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
PY
python3 "$tmp/receiver.py" "$tmp/forwarded" >"$tmp/receiver.port" &
pids+=($!)
tly_wait 10 test -s "$tmp/receiver.port"
rport=$(<"$tmp/receiver.port")

"$TALLY_BIN/tallyctl" webhooks listen --forward-to "http://127.0.0.1:$rport/hook" --events AccountOpened \
    >"$tmp/out" 2>"$tmp/err" &
listener=$!
pids+=("$listener")
check "the endpoint is registered" tly_wait 15 grep -q 'registered for http://127.0.0.1:' "$tmp/err"
endpoint=$(sed -n 's/^tallyctl: endpoint \([0-9a-f-]*\) registered.*/\1/p' "$tmp/err")
lport=$(sed -n 's|.* registered for http://127.0.0.1:\([0-9]*\)/.*|\1|p' "$tmp/err")
echo "endpoint $endpoint on port $lport"

# A forged delivery straight to the listener: printed as INVALID, forwarded as it came.
curl -sS -o /dev/null --max-time 20 -X POST -H 'Content-Type: application/json' -H 'webhook-id: msg_forged' \
    -H "webhook-timestamp: $(date +%s)" -H 'webhook-signature: v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=' \
    -d '{"type":"Forged","data":{}}' "http://127.0.0.1:$lport/"
check "a forged signature is printed as INVALID" grep -q 'webhook-id msg_forged  type Forged  signature INVALID' "$tmp/out"

code=$(curl -sS -o "$tmp/account.json" -w '%{http_code}' --max-time 20 -X POST "$TALLY_URL/v1/accounts" \
    -H "Authorization: Bearer $TALLY_API_KEY" -H 'Content-Type: application/json' -d '{"currency":"EUR","label":"listen test"}')
check "an account is opened (202)" test "$code" = 202
account=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["job"]["resource"]["id"])' "$tmp/account.json")
check "its AccountOpened arrives signed within 60 s" \
    tly_wait 60 grep -q "type AccountOpened  signature ok  -> http://127.0.0.1:$rport/hook 204" "$tmp/out"
check "the printed body is the event's" grep -q "\"aggregate_id\":\"$account\"" "$tmp/out"
forwarded() {
    python3 - "$tmp/forwarded" "$account" <<'PY'
import json, sys
hits = [json.loads(l) for l in open(sys.argv[1])]
ok = [h for h in hits if h["path"] == "/hook" and sys.argv[2] in h["body"] and h["webhook-signature"].startswith("v1,")
      and h["webhook-id"] and h["webhook-timestamp"]]
sys.exit(0 if ok else 1)
PY
}
check "the delivery is forwarded with its webhook-* headers" forwarded

kill -INT "$listener"
rc=0
wait "$listener" || rc=$?
check "Ctrl-C: tallyctl exits 0" test "$rc" = 0
check "Ctrl-C: the endpoint is deleted" grep -q "endpoint $endpoint deleted" "$tmp/err"
code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "$TALLY_QUERY_URL/v1/webhook-endpoints/$endpoint" \
    -H "Authorization: Bearer $TALLY_API_KEY")
check "the query API no longer shows it (404)" test "$code" = 404
cat "$tmp/out" "$tmp/err"

check_summary "webhooks listen"
