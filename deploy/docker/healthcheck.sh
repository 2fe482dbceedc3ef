#!/usr/bin/env bash
# HEALTHCHECK of the Tally image. Finds the Tally service running in this
# container and asks its admin port's /readyz (serving: its dependencies
# answer), so `docker compose up --wait` returns once the stack serves:
#   tally-command-api, tally-query-api, tally-worker
#       GET http://127.0.0.1:<admin port>/readyz
#       port: --admin-port=N on its command line, else TALLY_ADMIN_PORT,
#       else the binary's default (9181, 9182, 9183); 0 (no admin port):
#       healthy while it runs
#   nothing of these (migrate, e2e, tallyctl, a shell): healthy
# TALLY_HEALTHCHECK_PROC replaces /proc (tests/deploy uses a fake one).
set -uo pipefail

proc=${TALLY_HEALTHCHECK_PROC:-/proc}

service='' cmdline='' default_port=''
for f in "$proc"/[0-9]*/cmdline; do
    # NUL-separated arguments, one per line.
    cmdline=$(tr '\0' '\n' <"$f" 2>/dev/null) || continue
    case ${cmdline%%$'\n'*} in
    */tally-command-api | tally-command-api) service=command-api default_port=9181 && break ;;
    */tally-query-api | tally-query-api) service=query-api default_port=9182 && break ;;
    */tally-worker | tally-worker) service=worker default_port=9183 && break ;;
    esac
done

[[ -n $service ]] || exit 0
port=$(sed -n 's/^--admin-port=//p' <<<"$cmdline" | tail -n 1)
port=${port:-${TALLY_ADMIN_PORT:-$default_port}}
[[ $port != 0 ]] || exit 0
exec curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/readyz"
