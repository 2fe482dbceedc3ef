#!/usr/bin/env bash
# deploy/docker/gateway.sh with this machine's nginx: renders the template
# as the gateway container does, checks it with nginx -t, then runs it in
# front of two stub upstreams and checks the routing (GET and HEAD to the
# query API, everything else to the command API) and that the access log
# goes to stdout; then the same routing with
# TALLY_GATEWAY_RESOLVER (compose: names resolved per request). Exit 77
# (skipped) without nginx or envsubst.
#   test_gateway.sh ROOT PYTHON
set -euo pipefail

root=$1 python=$2
export PATH=$PATH:/usr/sbin:/sbin
for tool in nginx envsubst curl; do
    command -v "$tool" >/dev/null || { echo "skipped: $tool not found"; exit 77; }
done

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

read -r cport qport gport < <("$python" -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')

cat >"$tmp/stub.py" <<'PY'
import http.server, sys
name = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n: self.rfile.read(n)
        body = ("%s %s %s" % (name, self.command, self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD": self.wfile.write(body)
    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = answer
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
"$python" "$tmp/stub.py" "$cport" command & pids+=($!)
"$python" "$tmp/stub.py" "$qport" query & pids+=($!)

export TALLY_GATEWAY_LISTEN=127.0.0.1:$gport TALLY_COMMAND_UPSTREAM=127.0.0.1:$cport \
    TALLY_QUERY_UPSTREAM=127.0.0.1:$qport TALLY_NGINX_PREFIX=$tmp/nginx \
    TALLY_NGINX_TEMPLATE=$root/deploy/nginx/tally.conf.template

check "rendered config passes nginx -t" sh "$root/deploy/docker/gateway.sh" -q -t
conf=$tmp/nginx/nginx.conf
check "every template variable is rendered" bash -c "! grep -q '\${TALLY_' '$conf'"
# shellcheck disable=SC2016 # nginx's variables, literally
check "nginx's own variables are left alone" grep -qF 'map $request_method $tally_upstream' "$conf"
check "the upstreams are the given ones" grep -q "server 127.0.0.1:$cport;" "$conf"

routes() {
    local base=http://127.0.0.1:$gport mode=$1
    check "$mode: GET goes to the query API" test "$(curl -sS "$base/v1/accounts/x")" = "query GET /v1/accounts/x"
    check "$mode: HEAD goes to the query API" bash -c "curl -sSI '$base/v1/x' | grep -q '^HTTP/1.1 200'"
    check "$mode: POST goes to the command API" test "$(curl -sS -X POST -d '{}' "$base/v1/accounts")" = "command POST /v1/accounts"
    check "$mode: DELETE goes to the command API" test "$(curl -sS -X DELETE "$base/v1/x")" = "command DELETE /v1/x"
    check "$mode: the gateway answers its own /healthz" test "$(curl -sS "$base/healthz")" = '{"status":"ok"}'
    check "$mode: its own errors are problem+json" bash -c "curl -sS -X POST --data-binary @<(head -c 100000 /dev/zero) \
        -H 'Content-Type: application/json' '$base/v1/accounts' | grep -q '\"status\":413'"
}
up() {
    curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$gport/v1/up" 2>/dev/null &&
        curl -fsS -o /dev/null --max-time 1 -X POST "http://127.0.0.1:$gport/v1/up" 2>/dev/null
}
stop_gateway() {
    kill "${pids[-1]}" && wait "${pids[-1]}" 2>/dev/null || true
    unset 'pids[-1]'
}

sh "$root/deploy/docker/gateway.sh" >"$tmp/stdout" 2>"$tmp/stderr" & pids+=($!)
for _ in $(seq 300); do up && break; sleep 0.1; done # a loaded machine starts nginx slowly
routes "upstream blocks"
check "the access log goes to stdout" grep -q '"POST /v1/accounts HTTP/1.1" 200' "$tmp/stdout"
stop_gateway

# Resolver mode: the map names host:port; an address needs no lookup, so the
# routing is checked without a DNS server (the suite in tests/compose checks
# the names through Docker's).
export TALLY_GATEWAY_RESOLVER=127.0.0.1
check "resolver mode: rendered config passes nginx -t" sh "$root/deploy/docker/gateway.sh" -q -t
check "resolver mode: no upstream block is left" bash -c "! grep -q 'upstream tally_' '$conf'"
check "resolver mode: the resolver is set" grep -q 'resolver 127.0.0.1 valid=5s' "$tmp/nginx/conf.d/resolver.conf"
check "resolver mode: GET maps to the query API's address" grep -q "GET *127.0.0.1:$qport;" "$conf"
sh "$root/deploy/docker/gateway.sh" >"$tmp/stdout" 2>"$tmp/stderr" & pids+=($!)
for _ in $(seq 300); do up && break; sleep 0.1; done # a loaded machine starts nginx slowly
routes "resolver mode"
stop_gateway
unset TALLY_GATEWAY_RESOLVER
sh "$root/deploy/docker/gateway.sh" -q -t
check "without a resolver the snippet is gone" test ! -e "$tmp/nginx/conf.d/resolver.conf"

check_summary gateway
