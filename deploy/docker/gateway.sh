#!/bin/sh
# Gateway container: renders deploy/nginx/tally.conf.template (a complete
# nginx.conf) with envsubst restricted to its five variables, so nginx's own
# $variables stay untouched, and runs nginx in the foreground (the template
# says `daemon off;`). Extra arguments go to nginx (e.g. -t).
#
#   TALLY_GATEWAY_LISTEN    what nginx listens on (8080)
#   TALLY_COMMAND_UPSTREAM  host:port of the command API (command-api:8081)
#   TALLY_QUERY_UPSTREAM    host:port of the query API (query-api:8082)
#   TALLY_NGINX_PREFIX      rendered config, pid file and temp files (/tmp/tally-nginx)
#   TALLY_NGINX_TEMPLATE    the template (/etc/tally/nginx.conf.template)
#
# The logs go to the container's stdout (access) and stderr (errors).
set -eu

: "${TALLY_GATEWAY_LISTEN:=8080}"
: "${TALLY_COMMAND_UPSTREAM:=command-api:8081}"
: "${TALLY_QUERY_UPSTREAM:=query-api:8082}"
: "${TALLY_NGINX_PREFIX:=/tmp/tally-nginx}"
: "${TALLY_NGINX_TEMPLATE:=/etc/tally/nginx.conf.template}"
TALLY_NGINX_LOG_DIR=$TALLY_NGINX_PREFIX/log
TALLY_NGINX_PID=$TALLY_NGINX_PREFIX/nginx.pid
export TALLY_GATEWAY_LISTEN TALLY_COMMAND_UPSTREAM TALLY_QUERY_UPSTREAM \
    TALLY_NGINX_LOG_DIR TALLY_NGINX_PID

# Temp paths in the template are relative to the prefix (tmp/body, ...);
# nginx creates the last component, not tmp/ itself.
mkdir -p "$TALLY_NGINX_PREFIX/tmp" "$TALLY_NGINX_LOG_DIR"
ln -sf /dev/stdout "$TALLY_NGINX_LOG_DIR/nginx-access.log"
ln -sf /dev/stderr "$TALLY_NGINX_LOG_DIR/nginx-error.log"
# Single quotes on purpose: envsubst gets the variable names, not values.
# shellcheck disable=SC2016
envsubst '${TALLY_GATEWAY_LISTEN} ${TALLY_COMMAND_UPSTREAM} ${TALLY_QUERY_UPSTREAM} ${TALLY_NGINX_LOG_DIR} ${TALLY_NGINX_PID}' \
    <"$TALLY_NGINX_TEMPLATE" >"$TALLY_NGINX_PREFIX/nginx.conf"
exec nginx -c "$TALLY_NGINX_PREFIX/nginx.conf" -p "$TALLY_NGINX_PREFIX/" -e /dev/stderr "$@"
