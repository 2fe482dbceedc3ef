#!/bin/sh
# Gateway container: renders deploy/nginx/tally.conf.template (a complete
# nginx.conf) with envsubst restricted to its five variables, so nginx's own
# $variables stay untouched, adds the container's snippet (conf.d/, which
# the template includes) and runs nginx in the foreground (the template says
# `daemon off;`). Extra arguments go to nginx (e.g. -t).
#
#   TALLY_GATEWAY_LISTEN    what nginx listens on (8080)
#   TALLY_COMMAND_UPSTREAM  host:port of the command API (command-api:8081)
#   TALLY_QUERY_UPSTREAM    host:port of the query API (query-api:8082)
#   TALLY_GATEWAY_RESOLVER  a DNS server (compose: Docker's, 127.0.0.11): the
#                           upstreams' names are resolved per request through
#                           it (valid 5 s), so replicas added by --scale and
#                           recreated containers are found; every address of
#                           a name takes requests in turn. Unset: the names
#                           are resolved once at start (upstream blocks)
#   TALLY_NGINX_PREFIX      rendered config, pid file and temp files (/tmp/tally-nginx)
#   TALLY_NGINX_TEMPLATE    the template (/etc/tally/nginx.conf.template)
#
# The logs go to the container's stdout (access) and stderr (errors).
set -eu

: "${TALLY_GATEWAY_LISTEN:=8080}"
: "${TALLY_COMMAND_UPSTREAM:=command-api:8081}"
: "${TALLY_QUERY_UPSTREAM:=query-api:8082}"
: "${TALLY_GATEWAY_RESOLVER:=}"
: "${TALLY_NGINX_PREFIX:=/tmp/tally-nginx}"
: "${TALLY_NGINX_TEMPLATE:=/etc/tally/nginx.conf.template}"
TALLY_NGINX_LOG_DIR=$TALLY_NGINX_PREFIX/log
TALLY_NGINX_PID=$TALLY_NGINX_PREFIX/nginx.pid
export TALLY_GATEWAY_LISTEN TALLY_COMMAND_UPSTREAM TALLY_QUERY_UPSTREAM \
    TALLY_NGINX_LOG_DIR TALLY_NGINX_PID

die() {
    echo "tally-gateway: $*" >&2
    exit 1
}

conf=$TALLY_NGINX_PREFIX/nginx.conf
snippets=$TALLY_NGINX_PREFIX/conf.d
# Temp paths in the template are relative to the prefix (tmp/body, ...);
# nginx creates the last component, not tmp/ itself.
mkdir -p "$TALLY_NGINX_PREFIX/tmp" "$TALLY_NGINX_LOG_DIR" "$snippets"
rm -f "$snippets"/*.conf
ln -sf /dev/stdout "$TALLY_NGINX_LOG_DIR/nginx-access.log"
ln -sf /dev/stderr "$TALLY_NGINX_LOG_DIR/nginx-error.log"
# Single quotes on purpose: envsubst gets the variable names, not values.
# shellcheck disable=SC2016
envsubst '${TALLY_GATEWAY_LISTEN} ${TALLY_COMMAND_UPSTREAM} ${TALLY_QUERY_UPSTREAM} ${TALLY_NGINX_LOG_DIR} ${TALLY_NGINX_PID}' \
    <"$TALLY_NGINX_TEMPLATE" >"$conf"
if [ -n "$TALLY_GATEWAY_RESOLVER" ]; then
    grep -q '^ *include conf\.d/\*\.conf;' "$conf" ||
        die "could not set the resolver: $TALLY_NGINX_TEMPLATE includes no conf.d/*.conf"
    printf 'resolver %s valid=5s ipv6=off;\nresolver_timeout 2s;\n' "$TALLY_GATEWAY_RESOLVER" >"$snippets/resolver.conf"
    # The method map names host:port instead of an upstream block: a
    # proxy_pass with a variable resolves a name that is no upstream block
    # through the resolver, per request. The blocks go, so nginx also starts
    # while an API is down.
    sed -i \
        -e '/^ *upstream tally_\(command\|query\) *{/,/^ *}/d' \
        -e "s/^\\( *\\(GET\\|HEAD\\|default\\) \\{1,\\}\\)tally_query;/\\1$TALLY_QUERY_UPSTREAM;/" \
        -e "s/^\\( *\\(GET\\|HEAD\\|default\\) \\{1,\\}\\)tally_command;/\\1$TALLY_COMMAND_UPSTREAM;/" \
        "$conf"
    if grep -q 'tally_command\|tally_query' "$conf"; then
        die "could not route through the resolver: $TALLY_NGINX_TEMPLATE names its upstreams in an unexpected way"
    fi
fi
exec nginx -c "$conf" -p "$TALLY_NGINX_PREFIX/" -e /dev/stderr "$@"
