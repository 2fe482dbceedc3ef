# shellcheck shell=bash
# Shared functions of the no-Docker runner: deploy/local/up.sh and down.sh,
# and the test harness tests/stack.sh all source this file, so one stack is
# started and stopped one way.
#
# Layout under $TALLY_VAR (default <repo>/var):
#   pg/data pg/run          PostgreSQL 15 cluster and its unix socket
#   pg-2/                   its standby in the replicated mode; pg-primary: which node is primary
#   kafka/                  server.properties, log4j.properties, cluster.id, data/
#   kafka-1/ kafka-2/ ...   the same per node in the replicated mode (TALLY_KAFKA_NODES=3)
#   nginx/                  rendered nginx.conf, temp files
#   log/<name>.log          one log per process
#   run/<name>.pid .port    what we started, and on which port
#
# Every process is started detached (setsid) with its pid in run/, and is
# stopped only through that pid after checking its command line, so we never
# stop something we did not start, nor start a second copy.
#
# Call tly_init first. Messages go to stderr, lower case.

TALLY_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

tly_log() { printf '%s\n' "$*" >&2; }
tly_die() { printf '%s\n' "$*" >&2; exit 1; }

# Seconds since $1 (an $EPOCHREALTIME), one decimal.
tly_since() {
    local now=$EPOCHREALTIME
    awk -v a="$1" -v b="$now" 'BEGIN { printf "%.1fs", b - a }'
}

# Sets the paths and ports from the environment (TALLY_VAR, TALLY_BIN,
# TALLY_*_PORT) and their defaults.
tly_init() {
    TALLY_VAR=${TALLY_VAR:-$TALLY_ROOT/var}
    mkdir -p "$TALLY_VAR"
    TALLY_VAR=$(cd "$TALLY_VAR" && pwd)
    TALLY_BIN=${TALLY_BIN:-$TALLY_ROOT/build/bin}
    TALLY_PG_BINDIR=${TALLY_PG_BINDIR:-/usr/lib/postgresql/15/bin}
    TALLY_PG_PORT=${TALLY_PG_PORT:-55432}
    TALLY_PG_PORT_2=${TALLY_PG_PORT_2:-55433}
    # the mode a state directory was made in stays its mode (tly_write_ports)
    if [[ -z ${TALLY_KAFKA_NODES:-} && -f $TALLY_VAR/ports ]]; then
        TALLY_KAFKA_NODES=$(sed -n 's/^TALLY_KAFKA_NODES=//p' "$TALLY_VAR/ports")
    fi
    TALLY_KAFKA_NODES=${TALLY_KAFKA_NODES:-1}
    [[ $TALLY_KAFKA_NODES == 1 || $TALLY_KAFKA_NODES == 3 ]] ||
        tly_die "TALLY_KAFKA_NODES must be 1 or 3, not $TALLY_KAFKA_NODES"
    TALLY_KAFKA_PORT=${TALLY_KAFKA_PORT:-59092}
    TALLY_KAFKA_CONTROLLER_PORT=${TALLY_KAFKA_CONTROLLER_PORT:-59093}
    TALLY_KAFKA_PORT_2=${TALLY_KAFKA_PORT_2:-59094}
    TALLY_KAFKA_CONTROLLER_PORT_2=${TALLY_KAFKA_CONTROLLER_PORT_2:-59095}
    TALLY_KAFKA_PORT_3=${TALLY_KAFKA_PORT_3:-59096}
    TALLY_KAFKA_CONTROLLER_PORT_3=${TALLY_KAFKA_CONTROLLER_PORT_3:-59097}
    TALLY_COMMAND_PORT=${TALLY_COMMAND_PORT:-8081}
    TALLY_QUERY_PORT=${TALLY_QUERY_PORT:-8082}
    TALLY_GATEWAY_PORT=${TALLY_GATEWAY_PORT:-8080}
    # admin endpoints (/metrics, /healthz, /readyz), one per service
    TALLY_COMMAND_ADMIN_PORT=${TALLY_COMMAND_ADMIN_PORT:-9181}
    TALLY_QUERY_ADMIN_PORT=${TALLY_QUERY_ADMIN_PORT:-9182}
    TALLY_WORKER_ADMIN_PORT=${TALLY_WORKER_ADMIN_PORT:-9183}
    tly_limits_init
    mkdir -p "$TALLY_VAR/log" "$TALLY_VAR/run"
}

# Exports the environment contract of the C binaries (same names everywhere).
tly_export_env() {
    TALLY_PG_DSN=$(tly_pg_dsn)
    export TALLY_PG_DSN
    TALLY_KAFKA_BROKERS=$(tly_kafka_list brokers)
    export TALLY_KAFKA_BROKERS TALLY_KAFKA_NODES
    export TALLY_KAFKA_TOPIC=${TALLY_KAFKA_TOPIC:-tally.events}
    export TALLY_KAFKA_PARTITIONS=${TALLY_KAFKA_PARTITIONS:-12}
    export TALLY_LOG_LEVEL=${TALLY_LOG_LEVEL:-info}
    export TALLY_URL="http://127.0.0.1:$TALLY_GATEWAY_PORT"
    export TALLY_COMMAND_URL="http://127.0.0.1:$TALLY_COMMAND_PORT"
    export TALLY_QUERY_URL="http://127.0.0.1:$TALLY_QUERY_PORT"
    export TALLY_COMMAND_ADMIN_URL="http://127.0.0.1:$TALLY_COMMAND_ADMIN_PORT"
    export TALLY_QUERY_ADMIN_URL="http://127.0.0.1:$TALLY_QUERY_ADMIN_PORT"
    export TALLY_WORKER_ADMIN_URL="http://127.0.0.1:$TALLY_WORKER_ADMIN_PORT"
    export TALLY_BIN TALLY_VAR
    tly_limits_export_env
    tly_cursor_secret
    tly_consistency_secret
    tly_secret_keys
}

# The key that seals webhook signing secrets at rest (AES-256-GCM,
# TALLY_SECRET_KEYS=id:base64,...): made once per state directory. Rotation:
# docs/security.md.
tly_secret_keys() {
    local file=$TALLY_VAR/secret.keys
    if [[ ! -s $file ]]; then
        (umask 077 && printf 'k%s:%s\n' "$(date +%Y%m%d)" "$(head -c 32 /dev/urandom | base64 -w0)" >"$file")
    fi
    TALLY_SECRET_KEYS=$(<"$file")
    export TALLY_SECRET_KEYS
}

# The key that signs the query API's pagination cursors: made once per state
# directory, so cursors survive restarts of the query API.
tly_cursor_secret() {
    local file=$TALLY_VAR/cursor.secret
    if [[ ! -s $file ]]; then
        (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$file")
    fi
    TALLY_CURSOR_SECRET=$(<"$file")
    export TALLY_CURSOR_SECRET
}

# The key that signs consistency tokens (Tally-Consistency-Token), shared by
# the command and query APIs: made once per state directory like the cursor
# secret, so tokens survive restarts and cross instances.
tly_consistency_secret() {
    local file=$TALLY_VAR/consistency.secret
    if [[ ! -s $file ]]; then
        (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$file")
    fi
    TALLY_CONSISTENCY_SECRET=$(<"$file")
    export TALLY_CONSISTENCY_SECRET
}

# --- ports ------------------------------------------------------------------

# True when nothing listens on 127.0.0.1:$1. A bind test (with SO_REUSEADDR,
# as servers use, so TIME_WAIT leftovers do not count) when python3 exists,
# else a connect probe.
tly_port_free() {
    if command -v python3 >/dev/null; then
        python3 -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)' "$1"
    else
        ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# True when 127.0.0.1:$1 accepts a TCP connection.
tly_port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

tly_require_port_free() {
    tly_port_free "$2" || tly_die "could not start $1: port $2 is already in use"
}

# Prints $1 distinct free ports on one line.
tly_free_ports() {
    if command -v python3 >/dev/null; then
        # Hold all sockets open until every port is chosen: distinct ports.
        python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
        return
    fi
    local ports=() port
    while ((${#ports[@]} < $1)); do
        port=$((20000 + RANDOM % 12000))
        [[ " ${ports[*]} " == *" $port "* ]] && continue
        tly_port_free "$port" && ports+=("$port")
    done
    printf '%s\n' "${ports[*]}"
}

# --- processes --------------------------------------------------------------

# Retries "$@" every 0.2 s for up to $1 seconds.
tly_wait() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# Prints the pid recorded for $1 if that process is alive and its command
# line contains $2 (guards against a recycled pid).
tly_pid_of() {
    local file=$TALLY_VAR/run/$1.pid pid
    [[ -f $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2" || return 1
    printf '%s\n' "$pid"
}

tly_alive() { tly_pid_of "$1" "$2" >/dev/null; }
tly_dead() { ! tly_alive "$1" "$2"; }

# Starts "${@:3}" detached in its own session, output appended to log $2,
# pid recorded under name $1. setsid execs in place here (a background job
# of a script is no process-group leader), so $! is the process itself.
tly_spawn() {
    local name=$1 log=$2
    shift 2
    setsid "$@" >>"$log" 2>&1 </dev/null &
    printf '%s\n' "$!" >"$TALLY_VAR/run/$name.pid"
}

# Stops process $1 (command line must contain $2): TERM, up to 10 s, KILL.
tly_stop() {
    local name=$1 pattern=$2 pid
    if pid=$(tly_pid_of "$name" "$pattern"); then
        tly_log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        if ! tly_wait 10 tly_dead "$name" "$pattern"; then
            tly_log "$name did not stop within 10 s, killing it"
            kill -KILL "$pid" 2>/dev/null || true
            tly_wait 5 tly_dead "$name" "$pattern" || true
        fi
    fi
    rm -f "$TALLY_VAR/run/$name.pid" "$TALLY_VAR/run/$name.port" "$TALLY_VAR/run/$name.admin-port"
}

# Size of a file in bytes (0 if missing): where a new start's log begins.
tly_log_offset() { stat -c %s "$1" 2>/dev/null || echo 0; }

# Prints the tail of log $1 written since byte offset $2.
tly_log_tail() {
    tly_log "--- last lines of $1 ---"
    tail -c +"$(($2 + 1))" "$1" 2>/dev/null | tail -n "${3:-30}" >&2 || true
    tly_log "---"
}

# Port that process $1 (command line contains $2) was started on if it is
# still running, else $3. $4: which port (default "port"; "admin-port").
tly_recorded_port() {
    local file=$TALLY_VAR/run/$1.${4:-port}
    if [[ -f $file ]] && tly_alive "$1" "$2"; then cat "$file"; else printf '%s\n' "$3"; fi
}

# --- postgresql -------------------------------------------------------------
# Our own cluster in $TALLY_VAR/pg, listening on 127.0.0.1 and a private
# unix socket directory only. initdb and pg_ctl refuse to run as root, so as
# root they run as the unprivileged `postgres` account (Debian's package
# creates it); as any other user, as that user.
# Authentication is `trust` for local and loopback connections: acceptable
# for a single-user development and test cluster that nobody else can reach,
# never for a shared host or production.

tly_pg_owner() { if ((EUID == 0)); then echo postgres; else id -un; fi; }

tly_as_pg() {
    if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi
}

# Node $1 (default 1): its data and socket directories, port, process name
# and log. Node 1 is $TALLY_VAR/pg; the replicated mode adds node 2, its
# standby, in $TALLY_VAR/pg-2 on TALLY_PG_PORT_2. Which node is the primary
# is recorded in $TALLY_VAR/pg-primary (1 until a promotion).
tly_pg_dir() { if ((${1:-1} == 1)); then echo "$TALLY_VAR/pg"; else echo "$TALLY_VAR/pg-$1"; fi; }
tly_pg_data() { printf '%s/data\n' "$(tly_pg_dir "${1:-1}")"; }
tly_pg_sock() { printf '%s/run\n' "$(tly_pg_dir "${1:-1}")"; }
tly_pg_port() { if ((${1:-1} == 1)); then echo "$TALLY_PG_PORT"; else echo "$TALLY_PG_PORT_2"; fi; }
tly_pg_name() { if ((${1:-1} == 1)); then echo postgres; else echo "postgres-$1"; fi; }
tly_pg_log() { printf '%s/log/%s.log\n' "$TALLY_VAR" "$(tly_pg_name "${1:-1}")"; }

tly_replicated() { ((TALLY_KAFKA_NODES == 3)); }
tly_pg_nodes() { if tly_replicated; then echo 2; else echo 1; fi; }
tly_pg_primary() {
    local file=$TALLY_VAR/pg-primary
    if [[ -s $file ]]; then cat "$file"; else echo 1; fi
}
tly_pg_standby() { echo $((3 - $(tly_pg_primary))); }

# Creates $1 owned by the postgres account, or checks that it is.
tly_pg_own_dir() {
    local dir=$1 owner want
    want=$(tly_pg_owner)
    if [[ ! -d $dir ]]; then
        mkdir -m 0700 "$dir"
        ((EUID == 0)) && chown "$want:" "$dir"
    fi
    owner=$(stat -c %U "$dir")
    [[ $owner == "$want" ]] ||
        tly_die "could not start postgresql: $dir is owned by $owner, not $want (remove it or chown -R $want)"
}

tly_pg_prepare_dirs() {
    local n=${1:-1} sock log
    sock=$(tly_pg_sock "$n")
    log=$(tly_pg_log "$n")
    [[ -x $TALLY_PG_BINDIR/initdb ]] ||
        tly_die "could not start postgresql: $TALLY_PG_BINDIR/initdb not found (apt-get install postgresql-15)"
    if ((EUID == 0)) && ! id postgres >/dev/null 2>&1; then
        tly_die "could not start postgresql: no postgres account (apt-get install postgresql-15)"
    fi
    # The server's socket path is limited to 107 bytes.
    ((${#sock} + 16 <= 107)) ||
        tly_die "could not start postgresql: socket directory $sock is too long, set a shorter TALLY_VAR"
    mkdir -p "$(tly_pg_dir "$n")"
    tly_pg_own_dir "$(tly_pg_data "$n")"
    tly_pg_own_dir "$sock"
    tly_as_pg test -w "$(tly_pg_data "$n")" ||
        tly_die "could not start postgresql: account $(tly_pg_owner) cannot reach $(tly_pg_dir "$n") (a parent directory is not searchable), set TALLY_VAR elsewhere"
    touch "$log"
    ((EUID == 0)) && chown "$(tly_pg_owner):" "$log"
    return 0
}

tly_pg_initdb() {
    local data
    data=$(tly_pg_data 1)
    [[ -f $data/PG_VERSION ]] && return 0
    tly_log "initializing postgresql in $data"
    tly_as_pg "$TALLY_PG_BINDIR/initdb" -D "$data" -U postgres --auth=trust \
        --encoding=UTF8 --no-locale >"$TALLY_VAR/log/initdb.log" 2>&1 || {
        tail -n 20 "$TALLY_VAR/log/initdb.log" >&2
        tly_die "could not initialize postgresql: see $TALLY_VAR/log/initdb.log"
    }
    # Port, addresses and socket directory are rewritten at every start.
    printf "\ninclude = 'tally.conf'\n" >>"$data/postgresql.conf"
}

# The replicated mode's settings for node $1: a primary streams its WAL to
# the other node and a commit waits until that standby has flushed it
# (synchronous_standby_names), so a commit a client saw survives the
# primary; as a standby (standby.signal), it follows the other node.
# wal_keep_size keeps 1 GB of WAL for a standby that was away.
tly_pg_replication_conf() {
    local other=$((3 - $1))
    tly_replicated || return 0
    cat <<EOF
# Replicated mode (docs/failover.md)
wal_level = replica
max_wal_senders = 5
wal_keep_size = 1GB
hot_standby = on
synchronous_standby_names = 'tally_standby'
primary_conninfo = 'host=$(tly_pg_sock "$other") port=$(tly_pg_port "$other") user=postgres application_name=tally_standby'
EOF
}

tly_pg_write_conf() {
    local n=${1:-1} conf
    conf=$(tly_pg_data "$n")/tally.conf
    cat >"$conf" <<EOF
# Written by deploy/local/lib.sh at every start; edits are lost.
port = $(tly_pg_port "$n")
listen_addresses = '127.0.0.1'
unix_socket_directories = '$(tly_pg_sock "$n")'
max_connections = 200
# PostgreSQL's defaults (128 MB of buffers, a checkpoint per 1 GB of WAL)
# are sized for a small shared host. A replay writes about 1 GB of WAL per
# million events: with the defaults every replay forced checkpoints that
# flushed all dirty buffers while live commits waited on the same disk.
shared_buffers = 512MB
max_wal_size = 8GB
min_wal_size = 1GB
checkpoint_timeout = 15min
wal_compression = lz4
$(tly_pg_replication_conf "$n")
EOF
    ((EUID == 0)) && chown postgres: "$conf"
    return 0
}

# The postmaster of node $1 runs: the pid in its postmaster.pid is alive and
# has its data directory on its command line. Not `pg_ctl status`: a killed
# postmaster that nothing reaped (a zombie) still counts as running there.
tly_pg_running() {
    local data pid state
    data=$(tly_pg_data "${1:-1}")
    [[ -r $data/postmaster.pid ]] || return 1
    pid=$(head -n 1 "$data/postmaster.pid")
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/stat ]] || return 1
    state=$(sed 's/.*) \(.\).*/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$data"
}

tly_pg_ready() {
    "$TALLY_PG_BINDIR/pg_isready" -q -h "$(tly_pg_sock "${1:-1}")" -p "$(tly_pg_port "${1:-1}")"
}

# psql as the superuser on node $1: the rest of the arguments.
tly_pg_psql() {
    local n=$1
    shift
    "$TALLY_PG_BINDIR/psql" -h "$(tly_pg_sock "$n")" -p "$(tly_pg_port "$n")" -U postgres -d postgres -qAtX "$@"
}

# Processes still attached to the System V segment that node $1's lock
# file names (PostgreSQL's own interlock: a backend that outlived its
# postmaster stays attached until it exits).
tly_pg_attached() {
    local shmid
    shmid=$(sed -n 7p "$(tly_pg_data "$1")/postmaster.pid" 2>/dev/null | awk '{print $2}')
    [[ -n $shmid ]] || return 1
    ipcs -m 2>/dev/null | awk -v id="$shmid" '$2 == id && $6 > 0 { found = 1 } END { exit !found }'
}

# A postmaster killed with SIGKILL and not yet reaped (a zombie, where
# nothing reaps orphans) still looks alive to the server's lock-file check,
# so its lock file is removed, but only once no backend of it is attached.
tly_pg_clear_stale_lock() {
    local data
    data=$(tly_pg_data "$1")
    [[ -f $data/postmaster.pid ]] && ! tly_pg_running "$1" || return 0
    tly_wait 30 eval '! tly_pg_attached '"$1" || tly_die "could not start $(tly_pg_name "$1"): backends of its killed postmaster are still running"
    rm -f "$data/postmaster.pid"
}

# Starts node $1 from its data directory, which exists.
tly_pg_start_node() {
    local n=$1 t0=$EPOCHREALTIME data log offset name
    data=$(tly_pg_data "$n")
    log=$(tly_pg_log "$n")
    name=$(tly_pg_name "$n")
    tly_require_port_free "$name" "$(tly_pg_port "$n")"
    tly_pg_clear_stale_lock "$n"
    tly_pg_write_conf "$n"
    offset=$(tly_log_offset "$log")
    tly_log "starting $name on 127.0.0.1:$(tly_pg_port "$n")"
    if ! tly_as_pg "$TALLY_PG_BINDIR/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null ||
        ! tly_wait 30 tly_pg_ready "$n"; then
        tly_log_tail "$log" "$offset"
        tly_die "could not start $name: see $log"
    fi
    head -n 1 "$data/postmaster.pid" >"$TALLY_VAR/run/$name.pid"
    tly_pg_port "$n" >"$TALLY_VAR/run/$name.port"
    tly_log "$name ready ($(tly_since "$t0"))"
}

# Node $1 is running: records its port (it may differ from the environment).
tly_pg_adopt() {
    local n=$1 port
    port=$(sed -n 4p "$(tly_pg_data "$n")/postmaster.pid")
    if ((n == 1)); then TALLY_PG_PORT=$port; else TALLY_PG_PORT_2=$port; fi
    tly_log "$(tly_pg_name "$n") already running on port $port"
}

# A standby for node $1 from a base backup of the primary. A data directory
# without standby.signal on a node that is not the primary is an old
# primary that a promotion left behind: its WAL may have gone further than
# the new primary's, so it is made again from the new one.
tly_pg_make_standby() {
    local n=$1 primary data log=$TALLY_VAR/log/pg-basebackup.log
    primary=$(tly_pg_primary)
    data=$(tly_pg_data "$n")
    [[ -f $data/PG_VERSION && -f $data/standby.signal ]] && return 0
    tly_log "making $(tly_pg_name "$n") a standby of $(tly_pg_name "$primary")"
    tly_as_pg find "$data" -mindepth 1 -delete
    tly_as_pg "$TALLY_PG_BINDIR/pg_basebackup" -h "$(tly_pg_sock "$primary")" -p "$(tly_pg_port "$primary")" \
        -U postgres -D "$data" -X stream -c fast >>"$log" 2>&1 || {
        tail -n 20 "$log" >&2
        tly_die "could not make a standby: see $log"
    }
    tly_as_pg touch "$data/standby.signal"
}

# The standby streams from the primary ($1: and the primary counts it as
# synchronous).
tly_pg_streaming() {
    local sync=
    [[ ${1:-} == sync ]] && sync="AND sync_state = 'sync'"
    [[ $(tly_pg_psql "$(tly_pg_primary)" -c \
        "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'tally_standby' AND state = 'streaming' $sync") == 1 ]]
}

# Once the standby streams, the primary's override from a promotion
# (committing alone) is dropped: commits wait for the standby again.
tly_pg_resume_sync() {
    local primary
    primary=$(tly_pg_primary)
    [[ -n $(tly_pg_psql "$primary" -c "SELECT 1 FROM pg_file_settings WHERE name = 'synchronous_standby_names' AND sourcefile LIKE '%postgresql.auto.conf'") ]] ||
        return 0
    tly_log "standby streaming again: commits wait for it again"
    tly_pg_psql "$primary" -c "ALTER SYSTEM RESET synchronous_standby_names" -c "SELECT pg_reload_conf()" >/dev/null
}

tly_pg_start() {
    local primary standby
    primary=$(tly_pg_primary)
    tly_pg_prepare_dirs "$primary"
    if [[ -f $(tly_pg_data "$primary")/postmaster.pid ]] && tly_pg_running "$primary"; then
        tly_pg_adopt "$primary"
    else
        ((primary == 1)) && tly_pg_initdb
        tly_pg_start_node "$primary"
    fi
    tly_replicated || return 0
    standby=$(tly_pg_standby)
    tly_pg_prepare_dirs "$standby"
    if [[ -f $(tly_pg_data "$standby")/postmaster.pid ]] && tly_pg_running "$standby"; then
        tly_pg_adopt "$standby"
    else
        tly_pg_make_standby "$standby"
        tly_pg_start_node "$standby"
    fi
    tly_wait 60 tly_pg_streaming || tly_die "could not start postgresql: the standby does not stream (see $(tly_pg_log "$standby"))"
    tly_pg_resume_sync
    tly_wait 30 tly_pg_streaming sync ||
        tly_die "could not start postgresql: the primary does not count the standby as synchronous"
}

# The DSN of every service: the primary; in the replicated mode both nodes,
# libpq taking whichever accepts writes (target_session_attrs=read-write),
# so a service finds the new primary after a promotion by itself.
tly_pg_dsn() {
    if tly_replicated; then
        printf 'host=%s,%s port=%s,%s dbname=tally user=tally target_session_attrs=read-write\n' \
            "$(tly_pg_sock 1)" "$(tly_pg_sock 2)" "$TALLY_PG_PORT" "$TALLY_PG_PORT_2"
    else
        printf 'host=%s port=%s dbname=tally user=tally\n' "$(tly_pg_sock 1)" "$TALLY_PG_PORT"
    fi
}

# Role and database `tally` (owner of its database, no superuser).
tly_pg_create_db() {
    tly_pg_psql "$(tly_pg_primary)" -v ON_ERROR_STOP=1 >/dev/null <<'SQL' ||
SELECT 'CREATE ROLE tally LOGIN'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tally') \gexec
SELECT 'CREATE DATABASE tally OWNER tally'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tally') \gexec
SQL
        tly_die "could not create role and database tally"
}

tly_pg_stop_node() {
    local n=$1 data name
    data=$(tly_pg_data "$n")
    name=$(tly_pg_name "$n")
    if [[ -f $data/postmaster.pid ]] && tly_pg_running "$n"; then
        tly_log "stopping $name"
        tly_as_pg "$TALLY_PG_BINDIR/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null ||
            tly_die "could not stop $name: see $(tly_pg_log "$n")"
    fi
    rm -f "$TALLY_VAR/run/$name.pid" "$TALLY_VAR/run/$name.port"
}

# The primary first: a fast shutdown sends its last WAL to the standby.
tly_pg_stop() {
    local primary
    primary=$(tly_pg_primary)
    tly_pg_stop_node "$primary"
    tly_replicated || return 0
    tly_pg_stop_node $((3 - primary))
}

# Promotes the standby to primary. The primary must be dead (a second
# primary would take writes that the first never sees); with --kill it is
# killed first. The new primary runs alone (synchronous_standby_names
# cleared with ALTER SYSTEM) until a standby streams again, which the next
# tly_pg_start (up.sh, tests/stack.sh heal) makes from it.
tly_pg_promote() {
    local old new pid
    tly_replicated || tly_die "could not promote: not the replicated mode (TALLY_KAFKA_NODES=3)"
    old=$(tly_pg_primary)
    new=$((3 - old))
    if [[ ${1:-} == --kill ]] && pid=$(tly_pid_of "$(tly_pg_name "$old")" "$(tly_pg_data "$old")"); then
        tly_log "killing $(tly_pg_name "$old") (pid $pid)"
        kill -KILL "$pid"
        tly_wait 10 tly_dead "$(tly_pg_name "$old")" "$(tly_pg_data "$old")" || true
    fi
    tly_pg_running "$old" && tly_die "could not promote: $(tly_pg_name "$old") is still running (stop it, or --kill)"
    tly_pg_running "$new" || tly_die "could not promote: $(tly_pg_name "$new") is not running"
    tly_log "promoting $(tly_pg_name "$new")"
    tly_as_pg "$TALLY_PG_BINDIR/pg_ctl" -D "$(tly_pg_data "$new")" -w -t 30 promote >/dev/null ||
        tly_die "could not promote $(tly_pg_name "$new"): see $(tly_pg_log "$new")"
    tly_pg_psql "$new" -c "ALTER SYSTEM SET synchronous_standby_names = ''" -c "SELECT pg_reload_conf()" >/dev/null ||
        tly_die "could not let $(tly_pg_name "$new") commit alone"
    printf '%s\n' "$new" >"$TALLY_VAR/pg-primary"
    tly_log "$(tly_pg_name "$new") is the primary"
}

# --- kafka ------------------------------------------------------------------
# Apache Kafka 3.9 in KRaft mode. TALLY_KAFKA_NODES=1 (default): one node
# that is broker and controller, in $TALLY_VAR/kafka, process `kafka`.
# TALLY_KAFKA_NODES=3, the replicated mode: three such nodes (a 3-voter
# quorum) in $TALLY_VAR/kafka-<n>, processes kafka-1..3, node n on
# TALLY_KAFKA_PORT[_n] and TALLY_KAFKA_CONTROLLER_PORT[_n]; every topic
# replicated 3 times, acks=all needing 2 in sync (docs/failover.md).
# The jars come from deploy/kafka/fetch.sh (Maven Central, cached).

tly_kafka_libs() {
    command -v java >/dev/null ||
        tly_die "could not start kafka: java not found (apt-get install openjdk-17-jre-headless)"
    TALLY_KAFKA_LIBS=$("$TALLY_ROOT/deploy/kafka/fetch.sh" --print) ||
        tly_die "could not start kafka: broker jars unavailable"
}

# Node $1's process name, directory, ports, configuration file.
tly_kafka_name() { if ((TALLY_KAFKA_NODES == 1)); then echo kafka; else echo "kafka-$1"; fi; }
tly_kafka_dir() { printf '%s/%s\n' "$TALLY_VAR" "$(tly_kafka_name "$1")"; }
tly_kafka_port() {
    local v=TALLY_KAFKA${2:-}_PORT
    (($1 > 1)) && v+=_$1
    printf '%s\n' "${!v}"
}
tly_kafka_cport() { tly_kafka_port "$1" _CONTROLLER; }
tly_kafka_conf() { printf '%s/server.properties\n' "$(tly_kafka_dir "$1")"; }
tly_kafka_alive() { tly_alive "$(tly_kafka_name "$1")" "$(tly_kafka_conf "$1")"; }

# The JVM command line of node $1, shared by the broker and its storage
# tool. The replicated mode's three JVMs get smaller heaps (TALLY_KAFKA_HEAP).
tly_kafka_java() {
    local heap=${TALLY_KAFKA_HEAP:-}
    if [[ -z $heap ]]; then
        if ((TALLY_KAFKA_NODES == 1)); then heap=512m; else heap=384m; fi
    fi
    TALLY_KAFKA_JAVA=(java "-Xmx$heap" -Xms128m -XX:+UseG1GC -Djava.awt.headless=true
        "-Dlog4j.configuration=file:$(tly_kafka_dir "$1")/log4j.properties"
        -cp "$TALLY_KAFKA_LIBS/*")
}

# Every node, comma-separated: voters ("1@127.0.0.1:<controller port>,...")
# or brokers (the bootstrap list, "127.0.0.1:<port>,...").
tly_kafka_list() {
    local n list=()
    for ((n = 1; n <= TALLY_KAFKA_NODES; ++n)); do
        if [[ $1 == voters ]]; then
            list+=("$n@127.0.0.1:$(tly_kafka_cport "$n")")
        else
            list+=("127.0.0.1:$(tly_kafka_port "$n")")
        fi
    done
    local IFS=,
    printf '%s\n' "${list[*]}"
}

# The settings that differ between one node and three: the replication of
# every topic (the event log and the internal ones) and how fast a dead
# node is noticed.
tly_kafka_replication_conf() {
    if ((TALLY_KAFKA_NODES == 1)); then
        printf '%s\n' offsets.topic.replication.factor=1 transaction.state.log.replication.factor=1 \
            transaction.state.log.min.isr=1
        return 0
    fi
    cat <<'EOF'
# Replicated mode: three copies of everything, a write (acks=all) needs two
# in sync, and a replica that was not in sync never becomes leader.
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
unclean.leader.election.enable=false
# A node that stops heartbeating is fenced (dropped from every ISR, its
# partitions led elsewhere) after 2 s instead of 9: the write pause of a
# killed broker. Heartbeats every 500 ms. The quorum's own timeouts stay at
# their defaults (fetch 2 s, election 1 s): at 1 s / 0.5 s, three JVMs
# starved of CPU (load 40 on 2 cores) re-elected a controller 25 times in a
# 3-minute run, and every election stalled the writes (docs/failover.md).
broker.session.timeout.ms=2000
broker.heartbeat.interval.ms=500
EOF
}

tly_kafka_write_conf() {
    local n=$1 dir
    dir=$(tly_kafka_dir "$n")
    mkdir -p "$dir/data"
    cat >"$dir/server.properties" <<EOF
# Written by deploy/local/lib.sh at every start; edits are lost.
process.roles=broker,controller
node.id=$n
listeners=PLAINTEXT://127.0.0.1:$(tly_kafka_port "$n"),CONTROLLER://127.0.0.1:$(tly_kafka_cport "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(tly_kafka_port "$n")
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.voters=$(tly_kafka_list voters)
log.dirs=$dir/data
num.partitions=12
$(tly_kafka_replication_conf)
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
# The log is the truth: never expire events.
log.retention.ms=-1
EOF
    cat >"$dir/log4j.properties" <<EOF
# Everything to stdout, which the runner appends to var/log/$(tly_kafka_name "$n").log.
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.controller=WARN
EOF
}

# Formats node $1's storage once, with a cluster id generated once (kept in
# node 1's directory).
tly_kafka_format() {
    local n=$1 dir id log=$TALLY_VAR/log/kafka-format.log
    dir=$(tly_kafka_dir "$n")
    id=$(tly_kafka_dir 1)/cluster.id
    [[ -f $dir/data/meta.properties ]] && return 0
    if [[ ! -s $id ]]; then
        mkdir -p "$(dirname "$id")"
        "${TALLY_KAFKA_JAVA[@]}" kafka.tools.StorageTool random-uuid >"$id" 2>"$log" ||
            tly_die "could not generate a kafka cluster id: see $log"
    fi
    "${TALLY_KAFKA_JAVA[@]}" kafka.tools.StorageTool format -t "$(<"$id")" \
        -c "$dir/server.properties" >>"$log" 2>&1 || {
        tail -n 20 "$log" >&2
        tly_die "could not format kafka storage: see $log"
    }
}

# Node $1 alive, accepting connections, and "started" logged since byte $2.
tly_kafka_started() {
    tly_kafka_alive "$1" &&
        tly_port_open "$(tly_kafka_port "$1")" &&
        tail -c +"$(($2 + 1))" "$TALLY_VAR/log/$(tly_kafka_name "$1").log" | grep -q 'Kafka Server started'
}

# Spawns node $1 unless it runs; then records in tly_kafka_offsets[$1] where
# its start's log begins.
tly_kafka_spawn() {
    local n=$1 name log
    name=$(tly_kafka_name "$n")
    log=$TALLY_VAR/log/$name.log
    if tly_kafka_alive "$n"; then
        tly_log "$name already running on port $(tly_kafka_port "$n")"
        return 0
    fi
    tly_kafka_java "$n"
    tly_require_port_free "$name" "$(tly_kafka_port "$n")"
    tly_require_port_free "$name" "$(tly_kafka_cport "$n")"
    tly_kafka_write_conf "$n"
    tly_kafka_format "$n"
    tly_kafka_offsets[n]=$(tly_log_offset "$log")
    tly_log "starting $name on 127.0.0.1:$(tly_kafka_port "$n")"
    tly_spawn "$name" "$log" "${TALLY_KAFKA_JAVA[@]}" kafka.Kafka "$(tly_kafka_conf "$n")"
    tly_kafka_port "$n" >"$TALLY_VAR/run/$name.port"
}

# Starts every node that is not running, all at once (a quorum of three
# needs two to elect a controller), then waits until each one started (up
# to 180 s: a node killed with many partitions recovers its logs first, and
# took over 90 s on a loaded machine).
tly_kafka_start() {
    local t0=$EPOCHREALTIME n name
    local -a tly_kafka_offsets=()
    tly_kafka_libs
    for ((n = 1; n <= TALLY_KAFKA_NODES; ++n)); do
        tly_kafka_spawn "$n"
    done
    for n in "${!tly_kafka_offsets[@]}"; do
        name=$(tly_kafka_name "$n")
        if ! tly_wait 180 tly_kafka_started "$n" "${tly_kafka_offsets[n]}"; then
            tly_log_tail "$TALLY_VAR/log/$name.log" "${tly_kafka_offsets[n]}"
            tly_kafka_stop
            tly_die "could not start $name within 180 s: see $TALLY_VAR/log/$name.log"
        fi
    done
    ((${#tly_kafka_offsets[@]} == 0)) || tly_log "kafka ready ($(tly_since "$t0"))"
}

# Stops every node: TERM to all at once (one by one, the last two would wait
# for a quorum that is gone), then tly_stop's wait and KILL for each.
tly_kafka_stop() {
    local n pid
    for ((n = 1; n <= TALLY_KAFKA_NODES; ++n)); do
        if pid=$(tly_pid_of "$(tly_kafka_name "$n")" "$(tly_kafka_conf "$n")"); then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for ((n = 1; n <= TALLY_KAFKA_NODES; ++n)); do
        tly_stop "$(tly_kafka_name "$n")" "$(tly_kafka_conf "$n")"
    done
}

# --- redis ------------------------------------------------------------------
# Redis 7 (Debian's redis-server) holds the shared rate-limit state
# (docs/ratelimits.md). In memory only: no RDB, no AOF. Losing it costs at
# most one lease per key and instance (the documented overshoot bound),
# while persisting it would make every lease a disk write.

tly_redis_pattern() { printf 'redis-server 127.0.0.1:%s\n' "$TALLY_REDIS_PORT"; }

tly_redis_write_conf() {
    local dir=$TALLY_VAR/redis
    mkdir -p "$dir"
    cat >"$dir/redis.conf" <<EOF
# Written by deploy/local/lib.sh at every start; edits are lost.
port $TALLY_REDIS_PORT
bind 127.0.0.1
protected-mode yes
dir $dir
daemonize no
save ""
appendonly no
maxmemory 256mb
maxmemory-policy volatile-ttl
EOF
}

tly_redis_ready() {
    tly_alive redis "$(tly_redis_pattern)" &&
        [[ $(redis-cli -h 127.0.0.1 -p "$TALLY_REDIS_PORT" ping 2>/dev/null) == PONG ]]
}

tly_redis_start() {
    local t0=$EPOCHREALTIME log=$TALLY_VAR/log/redis.log offset
    if tly_alive redis "$(tly_redis_pattern)"; then
        tly_log "redis already running on port $TALLY_REDIS_PORT"
        return 0
    fi
    command -v redis-server >/dev/null ||
        tly_die "could not start redis: redis-server not found (apt-get install redis-server)"
    tly_require_port_free redis "$TALLY_REDIS_PORT"
    tly_redis_write_conf
    offset=$(tly_log_offset "$log")
    tly_log "starting redis on 127.0.0.1:$TALLY_REDIS_PORT"
    tly_spawn redis "$log" redis-server "$TALLY_VAR/redis/redis.conf"
    printf '%s\n' "$TALLY_REDIS_PORT" >"$TALLY_VAR/run/redis.port"
    if ! tly_wait 15 tly_redis_ready; then
        tly_log_tail "$log" "$offset"
        tly_stop redis "$(tly_redis_pattern)"
        tly_die "could not start redis: see $log"
    fi
    tly_log "redis ready ($(tly_since "$t0"))"
}

# The port it was started on (run/redis.port): `down` does not know the
# stack's ports, and the pattern must name the running process.
tly_redis_stop() {
    local port
    port=$(cat "$TALLY_VAR/run/redis.port" 2>/dev/null) || port=$TALLY_REDIS_PORT
    tly_stop redis "redis-server 127.0.0.1:$port"
}

# --- api instances ------------------------------------------------------------
# TALLY_API_INSTANCES=N runs N command APIs and N query APIs behind the
# gateway. Instance 1 is tally-command-api / tally-query-api on
# TALLY_COMMAND_PORT / TALLY_QUERY_PORT; instance i > 1 is
# tally-command-api-<i> on TALLY_COMMAND_PORT_<i> (default: the first port
# plus 100 * (i - 1); the admin ports likewise). Every instance is told N:
# while Redis is unreachable its local share of a limit is 1/N.

tly_limits_init() {
    TALLY_REDIS_PORT=${TALLY_REDIS_PORT:-56379}
    TALLY_API_INSTANCES=${TALLY_API_INSTANCES:-1}
    [[ $TALLY_API_INSTANCES =~ ^[1-9][0-9]*$ ]] && ((TALLY_API_INSTANCES <= 16)) ||
        tly_die "could not use TALLY_API_INSTANCES=$TALLY_API_INSTANCES: must be 1 to 16"
    local i var name base
    for ((i = 2; i <= TALLY_API_INSTANCES; i++)); do
        for var in COMMAND_PORT QUERY_PORT COMMAND_ADMIN_PORT QUERY_ADMIN_PORT; do
            name=TALLY_${var}_$i base=TALLY_$var
            printf -v "$name" '%s' "${!name:-$((${!base} + 100 * (i - 1)))}"
        done
    done
}

# Instance $2 (1-based) of kind $1 (command, query): sets inst_name,
# inst_port and inst_admin.
tly_api_instance() {
    local upper port admin
    upper=$(tr '[:lower:]' '[:upper:]' <<<"$1")
    inst_name=tally-$1-api port=TALLY_${upper}_PORT admin=TALLY_${upper}_ADMIN_PORT
    if (($2 > 1)); then
        inst_name+=-$2 port+=_$2 admin+=_$2
    fi
    inst_port=${!port} inst_admin=${!admin}
}

# "127.0.0.1:p1; server 127.0.0.1:p2 ..." for the gateway's upstream block.
tly_api_upstreams() {
    local i list="" inst_name inst_port inst_admin
    for ((i = 1; i <= TALLY_API_INSTANCES; i++)); do
        tly_api_instance "$1" "$i"
        list+=${list:+; server }127.0.0.1:$inst_port
    done
    printf '%s\n' "$list"
}

tly_limits_export_env() {
    export TALLY_REDIS_URL="redis://127.0.0.1:$TALLY_REDIS_PORT"
    export TALLY_API_INSTANCES
    local kind i upper urls admins inst_name inst_port inst_admin
    for kind in command query; do
        urls="" admins=""
        for ((i = 1; i <= TALLY_API_INSTANCES; i++)); do
            tly_api_instance "$kind" "$i"
            urls+=${urls:+ }http://127.0.0.1:$inst_port
            admins+=${admins:+ }http://127.0.0.1:$inst_admin
        done
        upper=$(tr '[:lower:]' '[:upper:]' <<<"$kind")
        export "TALLY_${upper}_URLS=$urls" "TALLY_${upper}_ADMIN_URLS=$admins"
    done
}

# Alive and /healthz answering on its admin port $3 (never on the API port).
tly_api_instance_ready() {
    tly_alive "$1" "/$2" && curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$3/healthz" 2>/dev/null
}

# Starts binary $2 under run name $1 on port $3, admin endpoint on $4.
tly_api_instance_start() {
    local name=$1 bin=$2 port=$3 admin=$4 t0=$EPOCHREALTIME log=$TALLY_VAR/log/$1.log offset
    tly_require_bin "$bin"
    if tly_alive "$name" "/$bin"; then
        tly_log "$name already running"
        return 0
    fi
    tly_require_port_free "$name" "$port"
    tly_require_port_free "$name admin endpoint" "$admin"
    offset=$(tly_log_offset "$log")
    tly_log "starting $name on 127.0.0.1:$port, admin endpoint on 127.0.0.1:$admin"
    printf '%s\n' "$admin" >"$TALLY_VAR/run/$name.admin-port"
    TALLY_HTTP_PORT=$port TALLY_ADMIN_PORT=$admin tly_spawn "$name" "$log" "$TALLY_BIN/$bin"
    printf '%s\n' "$port" >"$TALLY_VAR/run/$name.port"
    if ! tly_wait 30 tly_api_instance_ready "$name" "$bin" "$admin"; then
        tly_log_tail "$log" "$offset"
        tly_stop "$name" "/$bin"
        tly_die "could not start $name: see $log"
    fi
    tly_log "$name ready ($(tly_since "$t0"))"
}

tly_api_instances_start() {
    local i kind inst_name inst_port inst_admin
    for ((i = 2; i <= TALLY_API_INSTANCES; i++)); do
        for kind in command query; do
            tly_api_instance "$kind" "$i"
            tly_api_instance_start "$inst_name" "tally-$kind-api" "$inst_port" "$inst_admin"
        done
    done
}

# Redis's port and the extra instances' ports, to $TALLY_VAR/limits-ports
# (beside tly_write_ports' file): a healed stack restarts them where they were.
tly_limits_write_ports() {
    local i var name
    {
        printf 'TALLY_REDIS_PORT=%s\nTALLY_API_INSTANCES=%s\n' "$TALLY_REDIS_PORT" "$TALLY_API_INSTANCES"
        for ((i = 2; i <= TALLY_API_INSTANCES; i++)); do
            for var in COMMAND_PORT QUERY_PORT COMMAND_ADMIN_PORT QUERY_ADMIN_PORT; do
                name=TALLY_${var}_$i
                printf '%s=%s\n' "$name" "${!name}"
            done
        done
    } >"$TALLY_VAR/limits-ports.tmp"
    mv "$TALLY_VAR/limits-ports.tmp" "$TALLY_VAR/limits-ports"
}

tly_limits_restore_ports() {
    [[ -f $TALLY_VAR/limits-ports ]] || return 0
    # shellcheck source=/dev/null
    . "$TALLY_VAR/limits-ports"
}

# Stops every extra instance that has a pid file, whatever N is now.
tly_api_instances_stop() {
    local file name
    for file in "$TALLY_VAR"/run/tally-command-api-*.pid "$TALLY_VAR"/run/tally-query-api-*.pid; do
        [[ -f $file ]] || continue
        name=$(basename "$file" .pid)
        tly_stop "$name" "/${name%-*}"
    done
}

# --- tally binaries ---------------------------------------------------------

tly_require_bin() {
    [[ -x $TALLY_BIN/$1 ]] || tly_die "could not run $1: $TALLY_BIN/$1 not found (build first)"
}

# tallyctl with its output in log/tallyctl.log; stdout kept for callers.
tly_ctl() {
    tly_require_bin tallyctl
    "$TALLY_BIN/tallyctl" "$@" 2>>"$TALLY_VAR/log/tallyctl.log"
}

tly_ctl_quiet() { tly_ctl "$@" >>"$TALLY_VAR/log/tallyctl.log"; }

# Creates the topic; it is also the real readiness probe of the broker, so
# retry until the broker answers.
tly_create_topic() {
    local log=$TALLY_VAR/log/tallyctl.log offset
    offset=$(tly_log_offset "$log")
    tly_require_bin tallyctl
    tly_log "creating topic $TALLY_KAFKA_TOPIC"
    if ! tly_wait 60 timeout 30 "$TALLY_BIN/tallyctl" topics create >>"$log" 2>&1; then
        tly_log_tail "$log" "$offset" 10
        tly_die "could not create topic $TALLY_KAFKA_TOPIC: see $log"
    fi
}

tly_migrate() {
    local log=$TALLY_VAR/log/tallyctl.log offset
    offset=$(tly_log_offset "$log")
    tly_log "migrating the database"
    tly_ctl_quiet migrate || {
        tly_log_tail "$log" "$offset" 20
        tly_die "could not migrate the database: see $log"
    }
}

# Reads KEY's value from env file $1 (either format tly_write_env writes).
tly_env_get() {
    [[ -f $1 ]] || return 0
    sed -n "s/^$2=//p" "$1" | tail -n 1 | sed "s/^'\(.*\)'\$/\1/"
}

# Makes sure tenant $1 exists and sets TALLY_API_KEY: the key found in env
# file $2 if tallyctl accepts it, else a new admin key.
tly_ensure_api_key() {
    local name=$1 file=$2 tenant key rc=0
    if ! tenant=$(tly_ctl tenants create --name "$name") || [[ -z $tenant ]]; then
        tly_die "could not create tenant $name: see $TALLY_VAR/log/tallyctl.log"
    fi
    key=$(tly_env_get "$file" TALLY_API_KEY)
    if [[ -n $key ]]; then
        tly_ctl_quiet keys verify "$key" || rc=$?
        case $rc in
        0) export TALLY_API_KEY=$key && return 0 ;;
        1) tly_log "api key in $file is no longer valid, creating a new one" ;;
        *) tly_die "could not verify the api key: see $TALLY_VAR/log/tallyctl.log" ;;
        esac
    fi
    key=$(tly_ctl keys create --tenant "$tenant" --scopes read,write,admin --label "$name-admin") ||
        tly_die "could not create an api key: see $TALLY_VAR/log/tallyctl.log"
    [[ $key == tly_live_* ]] || tly_die "could not create an api key: tallyctl printed '$key'"
    export TALLY_API_KEY=$key
}

# Alive and /healthz answering on admin port $2 (health is never on the API
# port); with no admin port ($2 = 0), API port $3 accepting connections.
tly_api_ready() {
    tly_alive "$1" "/$1" || return 1
    if [[ $2 == 0 ]]; then
        tly_port_open "$3"
    else
        curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$2/healthz" 2>/dev/null
    fi
}

# Starts service $1 with its admin endpoint on port $3 (tally-command-api,
# tally-query-api: port $2 and /healthz; tally-worker: $2 empty, alive after
# 1 s and its admin /healthz answering).
tly_service_start() {
    local name=$1 port=${2:-} admin=${3:-0} t0=$EPOCHREALTIME log=$TALLY_VAR/log/$1.log offset ok=true
    tly_require_bin "$name"
    if tly_alive "$name" "/$name"; then
        tly_log "$name already running"
        return 0
    fi
    [[ -z $port ]] || tly_require_port_free "$name" "$port"
    [[ $admin == 0 ]] || tly_require_port_free "$name admin endpoint" "$admin"
    offset=$(tly_log_offset "$log")
    tly_log "starting $name${port:+ on 127.0.0.1:$port}, admin endpoint on 127.0.0.1:$admin"
    printf '%s\n' "$admin" >"$TALLY_VAR/run/$name.admin-port"
    if [[ -n $port ]]; then
        TALLY_HTTP_PORT=$port TALLY_ADMIN_PORT=$admin tly_spawn "$name" "$log" "$TALLY_BIN/$name"
        printf '%s\n' "$port" >"$TALLY_VAR/run/$name.port"
        tly_wait 30 tly_api_ready "$name" "$admin" "$port" || ok=false
    else
        # the stack's one worker is a static member of its groups: restarted, it takes its partitions back at once
        tly_spawn "$name" "$log" env -u TALLY_HTTP_PORT TALLY_ADMIN_PORT="$admin" \
            TALLY_WORKER_INSTANCE="${TALLY_WORKER_INSTANCE:-local}" "$TALLY_BIN/$name"
        sleep 1
        tly_alive "$name" "/$name" || ok=false
        if $ok && [[ $admin != 0 ]]; then
            tly_wait 10 tly_api_ready "$name" "$admin" 0 || ok=false
        fi
    fi
    if ! $ok; then
        tly_log_tail "$log" "$offset"
        tly_stop "$name" "/$name"
        tly_die "could not start $name: see $log"
    fi
    tly_log "$name ready ($(tly_since "$t0"))"
}

# --- gateway ----------------------------------------------------------------

# nginx with our config, prefix and error log; /usr/sbin is not in every PATH.
tly_nginx_cmd() {
    local nginx
    nginx=$(command -v nginx || echo /usr/sbin/nginx)
    [[ -x $nginx ]] || tly_die "could not start the gateway: nginx not found (apt-get install nginx-light)"
    TALLY_NGINX=("$nginx" -c "$TALLY_VAR/nginx/nginx.conf" -p "$TALLY_VAR/nginx/"
        -e "$TALLY_VAR/log/nginx-error.log")
}

tly_gateway_render() {
    local dir=$TALLY_VAR/nginx
    mkdir -p "$dir/tmp"
    sed -e "s|\${TALLY_GATEWAY_LISTEN}|127.0.0.1:$TALLY_GATEWAY_PORT|g" \
        -e "s|\${TALLY_COMMAND_UPSTREAM}|$(tly_api_upstreams command)|g" \
        -e "s|\${TALLY_QUERY_UPSTREAM}|$(tly_api_upstreams query)|g" \
        -e "s|\${TALLY_NGINX_LOG_DIR}|$TALLY_VAR/log|g" \
        -e "s|\${TALLY_NGINX_PID}|$dir/nginx.pid|g" \
        "$TALLY_ROOT/deploy/nginx/tally.conf.template" >"$dir/nginx.conf"
}

tly_gateway_ready() {
    tly_alive nginx "$TALLY_VAR/nginx/nginx.conf" &&
        curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$TALLY_GATEWAY_PORT/healthz" 2>/dev/null
}

# Pids of nginx processes left in the session of the master recorded in
# run/nginx.pid after that master died (SIGKILL): its workers live on and
# keep the port. tly_spawn made the master a session leader, so its workers
# carry its pid as their session id; the executable must be nginx too, so a
# recycled pid names nothing else.
tly_gateway_orphans() {
    local file=$TALLY_VAR/run/nginx.pid master stat pid rest
    [[ -f $file ]] || return 0
    master=$(<"$file")
    [[ $master =~ ^[0-9]+$ ]] || return 0
    tly_alive nginx "$TALLY_VAR/nginx/nginx.conf" && return 0 # a live master's workers are its own
    for stat in /proc/[0-9]*/stat; do
        pid=${stat#/proc/}
        pid=${pid%/stat}
        [[ $pid == "$master" ]] && continue
        { read -r rest <"$stat"; } 2>/dev/null || continue
        rest=${rest##*) } # fields after the command name: state ppid pgrp session ...
        read -r _ _ _ sid _ <<<"$rest"
        [[ $sid == "$master" && $(readlink "/proc/$pid/exe" 2>/dev/null) == */nginx ]] && printf '%s\n' "$pid"
    done
    return 0
}

# Stops the workers a killed master left behind: TERM, up to 5 s, KILL.
tly_gateway_reap_orphans() {
    local pids
    pids=$(tly_gateway_orphans)
    [[ -n $pids ]] || return 0
    tly_log "stopping nginx workers left by a dead master: $(echo $pids)"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    if ! tly_wait 5 test -z "$(tly_gateway_orphans)"; then
        # shellcheck disable=SC2046
        kill -KILL $(tly_gateway_orphans) 2>/dev/null || true
        tly_wait 5 test -z "$(tly_gateway_orphans)" || true
    fi
}

tly_gateway_start() {
    local t0=$EPOCHREALTIME log=$TALLY_VAR/log/nginx-error.log offset
    if tly_alive nginx "$TALLY_VAR/nginx/nginx.conf"; then
        tly_log "gateway already running on port $TALLY_GATEWAY_PORT"
        return 0
    fi
    tly_gateway_reap_orphans
    tly_require_port_free gateway "$TALLY_GATEWAY_PORT"
    tly_gateway_render
    offset=$(tly_log_offset "$log")
    tly_nginx_cmd
    "${TALLY_NGINX[@]}" -q -t 2>>"$log" || {
        tly_log_tail "$log" "$offset"
        tly_die "could not start the gateway: invalid $TALLY_VAR/nginx/nginx.conf"
    }
    tly_log "starting gateway on 127.0.0.1:$TALLY_GATEWAY_PORT"
    tly_spawn nginx "$log" "${TALLY_NGINX[@]}"
    printf '%s\n' "$TALLY_GATEWAY_PORT" >"$TALLY_VAR/run/nginx.port"
    if ! tly_wait 15 tly_gateway_ready; then
        tly_log_tail "$log" "$offset"
        tly_stop nginx "$TALLY_VAR/nginx/nginx.conf"
        tly_die "could not start the gateway: see $log"
    fi
    tly_log "gateway ready ($(tly_since "$t0"))"
}

# --- whole stack ------------------------------------------------------------

# Ports of services that are already running win over the environment, so a
# second `up` describes the stack that really runs.
tly_adopt_running_ports() {
    TALLY_COMMAND_PORT=$(tly_recorded_port tally-command-api \
        "/tally-command-api" "$TALLY_COMMAND_PORT")
    TALLY_QUERY_PORT=$(tly_recorded_port tally-query-api \
        "/tally-query-api" "$TALLY_QUERY_PORT")
    TALLY_GATEWAY_PORT=$(tly_recorded_port nginx "$TALLY_VAR/nginx/nginx.conf" "$TALLY_GATEWAY_PORT")
    local n v
    for ((n = 1; n <= TALLY_KAFKA_NODES; ++n)); do
        v=TALLY_KAFKA_PORT
        ((n > 1)) && v+=_$n
        printf -v "$v" '%s' "$(tly_recorded_port "$(tly_kafka_name "$n")" "$(tly_kafka_conf "$n")" "${!v}")"
    done
    TALLY_COMMAND_ADMIN_PORT=$(tly_recorded_port tally-command-api \
        "/tally-command-api" "$TALLY_COMMAND_ADMIN_PORT" admin-port)
    TALLY_QUERY_ADMIN_PORT=$(tly_recorded_port tally-query-api \
        "/tally-query-api" "$TALLY_QUERY_ADMIN_PORT" admin-port)
    TALLY_WORKER_ADMIN_PORT=$(tly_recorded_port tally-worker "/tally-worker" "$TALLY_WORKER_ADMIN_PORT" admin-port)
    TALLY_REDIS_PORT=$(tly_recorded_port redis "$(tly_redis_pattern)" "$TALLY_REDIS_PORT")
}

# Starts whatever is not running yet. $1: tenant name, $2: env file that
# may hold an API key to reuse. Sets TALLY_API_KEY. $1 empty: a restart of
# what died in a stack that was up (tests/stack.sh heal): the database, the
# topic and the key are there already, so only processes are started (each
# tallyctl run cost a restarted worker 1-2 s on a loaded machine).
tly_stack_up() {
    local t0=$EPOCHREALTIME
    tly_adopt_running_ports
    tly_pg_start
    tly_export_env
    tly_kafka_start
    tly_redis_start
    tly_export_env
    if [[ -n $1 ]]; then
        tly_pg_create_db
        tly_create_topic
        tly_migrate
        tly_ensure_api_key "$1" "$2"
    fi
    tly_service_start tally-command-api "$TALLY_COMMAND_PORT" "$TALLY_COMMAND_ADMIN_PORT"
    tly_service_start tally-query-api "$TALLY_QUERY_PORT" "$TALLY_QUERY_ADMIN_PORT"
    tly_api_instances_start
    tly_service_start tally-worker "" "$TALLY_WORKER_ADMIN_PORT"
    tly_gateway_start
    tly_export_env
    tly_write_ports
    tly_log "stack ready ($(tly_since "$t0"))"
}

# Stops what tly_stack_up started, in reverse order.
tly_stack_down() {
    tly_gateway_reap_orphans
    tly_stop nginx "$TALLY_VAR/nginx/nginx.conf"
    tly_stop tally-worker "/tally-worker"
    tly_api_instances_stop
    tly_stop tally-query-api "/tally-query-api"
    tly_stop tally-command-api "/tally-command-api"
    tly_kafka_stop
    tly_redis_stop
    tly_pg_stop
}

# The ports of the stack, to $TALLY_VAR/ports (sourced by tly_restore_ports):
# a process that died is restarted on the port it had, not a default.
tly_write_ports() {
    local name
    for name in TALLY_PG_PORT TALLY_PG_PORT_2 TALLY_KAFKA_NODES TALLY_KAFKA_PORT TALLY_KAFKA_CONTROLLER_PORT \
        TALLY_KAFKA_PORT_2 TALLY_KAFKA_CONTROLLER_PORT_2 TALLY_KAFKA_PORT_3 TALLY_KAFKA_CONTROLLER_PORT_3 \
        TALLY_COMMAND_PORT TALLY_QUERY_PORT TALLY_GATEWAY_PORT TALLY_COMMAND_ADMIN_PORT \
        TALLY_QUERY_ADMIN_PORT TALLY_WORKER_ADMIN_PORT; do
        printf '%s=%s\n' "$name" "${!name}"
    done >"$TALLY_VAR/ports.tmp"
    mv "$TALLY_VAR/ports.tmp" "$TALLY_VAR/ports"
}

tly_restore_ports() {
    [[ -f $TALLY_VAR/ports ]] || return 0
    # shellcheck source=/dev/null
    . "$TALLY_VAR/ports"
}

# Writes the stack's variables to $1. $2 = shell: single-quoted values, to
# source; raw: KEY=VALUE up to the end of the line, for programs. The file
# holds the API key, so it is private.
tly_write_env() {
    local file=$1 mode=$2 name value
    (
        umask 077
        for name in TALLY_URL TALLY_API_KEY TALLY_COMMAND_URL TALLY_QUERY_URL \
            TALLY_COMMAND_ADMIN_URL TALLY_QUERY_ADMIN_URL TALLY_WORKER_ADMIN_URL \
            TALLY_PG_DSN TALLY_KAFKA_BROKERS TALLY_KAFKA_NODES TALLY_KAFKA_TOPIC \
            TALLY_KAFKA_PARTITIONS TALLY_BIN TALLY_VAR TALLY_SECRET_KEYS TALLY_REDIS_URL TALLY_API_INSTANCES \
            TALLY_COMMAND_URLS TALLY_QUERY_URLS TALLY_COMMAND_ADMIN_URLS TALLY_QUERY_ADMIN_URLS; do
            value=${!name}
            if [[ $mode == shell ]]; then
                value="'${value//\'/\'\\\'\'}'"
            fi
            printf '%s=%s\n' "$name" "$value"
        done >"$file.tmp"
    )
    mv "$file.tmp" "$file"
}
