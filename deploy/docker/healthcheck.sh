#!/usr/bin/env bash
# HEALTHCHECK of the Tally image. Finds the Tally service running in this
# container and asks its /healthz (alive):
#   tally-command-api, tally-query-api  GET http://127.0.0.1:<port>/healthz
#       port: --port=N on its command line, else TALLY_HTTP_PORT, else the
#       binary's default (8081, 8082)
#   tally-worker                        no HTTP port yet: healthy while it runs
#   nothing of these (migrate, e2e, tallyctl, a shell): healthy
# TALLY_HEALTHCHECK_PROC replaces /proc (tests/deploy uses a fake one).
set -uo pipefail

proc=${TALLY_HEALTHCHECK_PROC:-/proc}

service='' cmdline='' default_port=''
for f in "$proc"/[0-9]*/cmdline; do
    # NUL-separated arguments, one per line.
    cmdline=$(tr '\0' '\n' <"$f" 2>/dev/null) || continue
    case ${cmdline%%$'\n'*} in
    */tally-command-api | tally-command-api) service=command-api default_port=8081 && break ;;
    */tally-query-api | tally-query-api) service=query-api default_port=8082 && break ;;
    */tally-worker | tally-worker) service=worker && break ;;
    esac
done

case $service in
command-api | query-api)
    port=$(sed -n 's/^--port=//p' <<<"$cmdline" | tail -n 1)
    port=${port:-${TALLY_HTTP_PORT:-$default_port}}
    exec curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/healthz"
    ;;
*) exit 0 ;;
esac
