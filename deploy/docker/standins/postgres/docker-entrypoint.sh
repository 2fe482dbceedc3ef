#!/usr/bin/env bash
# The stand-in's entrypoint, after the official image's: for `postgres ...`
# (or `-c ...` arguments), a database cluster is made in PGDATA on first
# start with POSTGRES_USER (postgres) as superuser, POSTGRES_PASSWORD as its
# password (scram-sha-256 over TCP from anywhere, trust on the local socket
# inside the container) and the database POSTGRES_DB (POSTGRES_USER's name);
# then the server runs as the postgres user. Anything else is executed as given.
set -euo pipefail

log() { printf 'postgres-standin: %s\n' "$*" >&2; }

if [[ ${1:-} == -* ]]; then set -- postgres "$@"; fi
if [[ ${1:-} != postgres ]]; then exec "$@"; fi

if [[ $(id -u) == 0 ]]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
if [[ ! -s $PGDATA/PG_VERSION ]]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set (the password of the superuser)}"
    log "initialising the database cluster in $PGDATA"
    initdb -D "$PGDATA" --username="$user" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
    printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
    printf "listen_addresses = '*'\n" >>"$PGDATA/postgresql.auto.conf"
    if [[ $db != postgres ]]; then
        # A temporary server on the socket only, as the official image does.
        pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start >/dev/null
        psql -v ON_ERROR_STOP=1 -q -U "$user" -d postgres \
            -c "CREATE DATABASE \"$db\" OWNER \"$user\"" >/dev/null
        pg_ctl -D "$PGDATA" -w -m fast stop >/dev/null
    fi
    log "database $db ready"
fi
exec "$@"
