#!/bin/sh
# The stand-in's entrypoint, after the official image's: `redis-server`
# (or `-...` arguments) runs as the redis user in /data; without a config
# file of its own it leaves protected mode off, so other containers of the
# network may connect. Anything else is executed as given.
set -eu

case ${1:-} in -*) set -- redis-server "$@" ;; esac
if [ "${1:-}" = redis-server ]; then
    case ${2:-} in
    */*.conf) ;;
    *)
        shift
        set -- redis-server --protected-mode no "$@"
        ;;
    esac
    if [ "$(id -u)" = 0 ]; then
        chown -R redis:redis /data
        exec setpriv --reuid=redis --regid=redis --init-groups "$@"
    fi
fi
exec "$@"
