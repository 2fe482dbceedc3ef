# shellcheck shell=bash
# Shared functions of the no-Docker runner: deploy/local/up.sh and down.sh,
# and the test harness tests/stack.sh all source this file, so one stack is
# started and stopped one way.
#
# Layout under $TALLY_VAR (default <repo>/var):
#   pg/data pg/run          PostgreSQL 15 cluster and its unix socket
#   kafka/                  server.properties, log4j.properties, cluster.id, data/
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
    TALLY_KAFKA_PORT=${TALLY_KAFKA_PORT:-59092}
    TALLY_KAFKA_CONTROLLER_PORT=${TALLY_KAFKA_CONTROLLER_PORT:-59093}
    TALLY_COMMAND_PORT=${TALLY_COMMAND_PORT:-8081}
    TALLY_QUERY_PORT=${TALLY_QUERY_PORT:-8082}
    TALLY_GATEWAY_PORT=${TALLY_GATEWAY_PORT:-8080}
    # admin endpoints (/metrics, /healthz, /readyz), one per service
    TALLY_COMMAND_ADMIN_PORT=${TALLY_COMMAND_ADMIN_PORT:-9181}
    TALLY_QUERY_ADMIN_PORT=${TALLY_QUERY_ADMIN_PORT:-9182}
    TALLY_WORKER_ADMIN_PORT=${TALLY_WORKER_ADMIN_PORT:-9183}
    mkdir -p "$TALLY_VAR/log" "$TALLY_VAR/run"
}

# Exports the environment contract of the C binaries (same names everywhere).
tly_export_env() {
    export TALLY_PG_DSN="host=$TALLY_VAR/pg/run port=$TALLY_PG_PORT dbname=tally user=tally"
    export TALLY_KAFKA_BROKERS="127.0.0.1:$TALLY_KAFKA_PORT"
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

tly_pg_data() { printf '%s\n' "$TALLY_VAR/pg/data"; }
tly_pg_sock() { printf '%s\n' "$TALLY_VAR/pg/run"; }

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
    local sock
    sock=$(tly_pg_sock)
    [[ -x $TALLY_PG_BINDIR/initdb ]] ||
        tly_die "could not start postgresql: $TALLY_PG_BINDIR/initdb not found (apt-get install postgresql-15)"
    if ((EUID == 0)) && ! id postgres >/dev/null 2>&1; then
        tly_die "could not start postgresql: no postgres account (apt-get install postgresql-15)"
    fi
    # The server's socket path is limited to 107 bytes.
    ((${#sock} + 16 <= 107)) ||
        tly_die "could not start postgresql: socket directory $sock is too long, set a shorter TALLY_VAR"
    mkdir -p "$TALLY_VAR/pg"
    tly_pg_own_dir "$(tly_pg_data)"
    tly_pg_own_dir "$sock"
    tly_as_pg test -w "$(tly_pg_data)" ||
        tly_die "could not start postgresql: account $(tly_pg_owner) cannot reach $TALLY_VAR/pg (a parent directory is not searchable), set TALLY_VAR elsewhere"
    touch "$TALLY_VAR/log/postgres.log"
    ((EUID == 0)) && chown "$(tly_pg_owner):" "$TALLY_VAR/log/postgres.log"
    return 0
}

tly_pg_initdb() {
    local data
    data=$(tly_pg_data)
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

tly_pg_write_conf() {
    local conf
    conf=$(tly_pg_data)/tally.conf
    cat >"$conf" <<EOF
# Written by deploy/local/lib.sh at every start; edits are lost.
port = $TALLY_PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$(tly_pg_sock)'
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
EOF
    ((EUID == 0)) && chown postgres: "$conf"
    return 0
}

tly_pg_running() {
    tly_as_pg "$TALLY_PG_BINDIR/pg_ctl" -D "$(tly_pg_data)" status >/dev/null 2>&1
}

tly_pg_ready() {
    "$TALLY_PG_BINDIR/pg_isready" -q -h "$(tly_pg_sock)" -p "$TALLY_PG_PORT"
}

tly_pg_start() {
    local t0=$EPOCHREALTIME data log=$TALLY_VAR/log/postgres.log offset
    data=$(tly_pg_data)
    if [[ -f $data/postmaster.pid ]] && tly_pg_running; then
        TALLY_PG_PORT=$(sed -n 4p "$data/postmaster.pid")
        tly_log "postgresql already running on port $TALLY_PG_PORT"
        return 0
    fi
    tly_require_port_free postgresql "$TALLY_PG_PORT"
    tly_pg_prepare_dirs
    tly_pg_initdb
    tly_pg_write_conf
    offset=$(tly_log_offset "$log")
    tly_log "starting postgresql on 127.0.0.1:$TALLY_PG_PORT"
    if ! tly_as_pg "$TALLY_PG_BINDIR/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null ||
        ! tly_wait 30 tly_pg_ready; then
        tly_log_tail "$log" "$offset"
        tly_die "could not start postgresql: see $log"
    fi
    head -n 1 "$data/postmaster.pid" >"$TALLY_VAR/run/postgres.pid"
    tly_log "postgresql ready ($(tly_since "$t0"))"
}

# Role and database `tally` (owner of its database, no superuser).
tly_pg_create_db() {
    "$TALLY_PG_BINDIR/psql" -h "$(tly_pg_sock)" -p "$TALLY_PG_PORT" -U postgres \
        -d postgres -qAt -v ON_ERROR_STOP=1 >/dev/null <<'SQL' ||
SELECT 'CREATE ROLE tally LOGIN'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tally') \gexec
SELECT 'CREATE DATABASE tally OWNER tally'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tally') \gexec
SQL
        tly_die "could not create role and database tally"
}

tly_pg_stop() {
    local data
    data=$(tly_pg_data)
    if [[ -f $data/postmaster.pid ]] && tly_pg_running; then
        tly_log "stopping postgresql"
        tly_as_pg "$TALLY_PG_BINDIR/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null ||
            tly_die "could not stop postgresql: see $TALLY_VAR/log/postgres.log"
    fi
    rm -f "$TALLY_VAR/run/postgres.pid"
}

# --- kafka ------------------------------------------------------------------
# Apache Kafka 3.9 in KRaft mode, one node that is broker and controller.
# The jars come from deploy/kafka/fetch.sh (Maven Central, cached).

tly_kafka_libs() {
    command -v java >/dev/null ||
        tly_die "could not start kafka: java not found (apt-get install openjdk-17-jre-headless)"
    TALLY_KAFKA_LIBS=$("$TALLY_ROOT/deploy/kafka/fetch.sh" --print) ||
        tly_die "could not start kafka: broker jars unavailable"
}

# The JVM command line shared by the broker and its storage tool.
tly_kafka_java() {
    TALLY_KAFKA_JAVA=(java -Xmx512m -Xms256m -XX:+UseG1GC -Djava.awt.headless=true
        "-Dlog4j.configuration=file:$TALLY_VAR/kafka/log4j.properties"
        -cp "$TALLY_KAFKA_LIBS/*")
}

tly_kafka_write_conf() {
    local dir=$TALLY_VAR/kafka
    mkdir -p "$dir/data"
    cat >"$dir/server.properties" <<EOF
# Written by deploy/local/lib.sh at every start; edits are lost.
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$TALLY_KAFKA_PORT,CONTROLLER://127.0.0.1:$TALLY_KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$TALLY_KAFKA_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.voters=1@127.0.0.1:$TALLY_KAFKA_CONTROLLER_PORT
log.dirs=$dir/data
num.partitions=12
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
# The log is the truth: never expire events.
log.retention.ms=-1
EOF
    cat >"$dir/log4j.properties" <<'EOF'
# Everything to stdout, which the runner appends to var/log/kafka.log.
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.controller=WARN
EOF
}

# Formats the storage once, with a cluster id generated once.
tly_kafka_format() {
    local dir=$TALLY_VAR/kafka log=$TALLY_VAR/log/kafka-format.log
    [[ -f $dir/data/meta.properties ]] && return 0
    if [[ ! -s $dir/cluster.id ]]; then
        "${TALLY_KAFKA_JAVA[@]}" kafka.tools.StorageTool random-uuid >"$dir/cluster.id" 2>"$log" ||
            tly_die "could not generate a kafka cluster id: see $log"
    fi
    "${TALLY_KAFKA_JAVA[@]}" kafka.tools.StorageTool format -t "$(<"$dir/cluster.id")" \
        -c "$dir/server.properties" >>"$log" 2>&1 || {
        tail -n 20 "$log" >&2
        tly_die "could not format kafka storage: see $log"
    }
}

# Alive, accepting connections, and "started" logged since byte $1.
tly_kafka_started() {
    tly_alive kafka "$TALLY_VAR/kafka/server.properties" &&
        tly_port_open "$TALLY_KAFKA_PORT" &&
        tail -c +"$(($1 + 1))" "$TALLY_VAR/log/kafka.log" | grep -q 'Kafka Server started'
}

tly_kafka_start() {
    local t0=$EPOCHREALTIME log=$TALLY_VAR/log/kafka.log offset
    if tly_alive kafka "$TALLY_VAR/kafka/server.properties"; then
        tly_log "kafka already running on port $TALLY_KAFKA_PORT"
        return 0
    fi
    tly_kafka_libs
    tly_kafka_java
    tly_require_port_free kafka "$TALLY_KAFKA_PORT"
    tly_require_port_free kafka "$TALLY_KAFKA_CONTROLLER_PORT"
    tly_kafka_write_conf
    tly_kafka_format
    offset=$(tly_log_offset "$log")
    tly_log "starting kafka on 127.0.0.1:$TALLY_KAFKA_PORT"
    tly_spawn kafka "$log" "${TALLY_KAFKA_JAVA[@]}" kafka.Kafka "$TALLY_VAR/kafka/server.properties"
    printf '%s\n' "$TALLY_KAFKA_PORT" >"$TALLY_VAR/run/kafka.port"
    if ! tly_wait 60 tly_kafka_started "$offset"; then
        tly_log_tail "$log" "$offset"
        tly_stop kafka "$TALLY_VAR/kafka/server.properties"
        tly_die "could not start kafka within 60 s: see $log"
    fi
    tly_log "kafka ready ($(tly_since "$t0"))"
}

tly_kafka_stop() { tly_stop kafka "$TALLY_VAR/kafka/server.properties"; }

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
        tly_spawn "$name" "$log" env -u TALLY_HTTP_PORT TALLY_ADMIN_PORT="$admin" "$TALLY_BIN/$name"
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
        -e "s|\${TALLY_COMMAND_UPSTREAM}|127.0.0.1:$TALLY_COMMAND_PORT|g" \
        -e "s|\${TALLY_QUERY_UPSTREAM}|127.0.0.1:$TALLY_QUERY_PORT|g" \
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
    TALLY_KAFKA_PORT=$(tly_recorded_port kafka "$TALLY_VAR/kafka/server.properties" "$TALLY_KAFKA_PORT")
    TALLY_COMMAND_ADMIN_PORT=$(tly_recorded_port tally-command-api \
        "/tally-command-api" "$TALLY_COMMAND_ADMIN_PORT" admin-port)
    TALLY_QUERY_ADMIN_PORT=$(tly_recorded_port tally-query-api \
        "/tally-query-api" "$TALLY_QUERY_ADMIN_PORT" admin-port)
    TALLY_WORKER_ADMIN_PORT=$(tly_recorded_port tally-worker "/tally-worker" "$TALLY_WORKER_ADMIN_PORT" admin-port)
}

# Starts whatever is not running yet. $1: tenant name, $2: env file that
# may hold an API key to reuse. Sets TALLY_API_KEY.
tly_stack_up() {
    local t0=$EPOCHREALTIME
    tly_adopt_running_ports
    tly_pg_start
    tly_export_env
    tly_pg_create_db
    tly_kafka_start
    tly_export_env
    tly_create_topic
    tly_migrate
    tly_ensure_api_key "$1" "$2"
    tly_service_start tally-command-api "$TALLY_COMMAND_PORT" "$TALLY_COMMAND_ADMIN_PORT"
    tly_service_start tally-query-api "$TALLY_QUERY_PORT" "$TALLY_QUERY_ADMIN_PORT"
    tly_service_start tally-worker "" "$TALLY_WORKER_ADMIN_PORT"
    tly_gateway_start
    tly_export_env
    tly_log "stack ready ($(tly_since "$t0"))"
}

# Stops what tly_stack_up started, in reverse order.
tly_stack_down() {
    tly_gateway_reap_orphans
    tly_stop nginx "$TALLY_VAR/nginx/nginx.conf"
    tly_stop tally-worker "/tally-worker"
    tly_stop tally-query-api "/tally-query-api"
    tly_stop tally-command-api "/tally-command-api"
    tly_kafka_stop
    tly_pg_stop
}

# The ports of the stack, to $TALLY_VAR/ports (sourced by tly_restore_ports):
# a process that died is restarted on the port it had, not a default.
tly_write_ports() {
    local name
    for name in TALLY_PG_PORT TALLY_KAFKA_PORT TALLY_KAFKA_CONTROLLER_PORT TALLY_COMMAND_PORT \
        TALLY_QUERY_PORT TALLY_GATEWAY_PORT TALLY_COMMAND_ADMIN_PORT TALLY_QUERY_ADMIN_PORT \
        TALLY_WORKER_ADMIN_PORT; do
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
            TALLY_PG_DSN TALLY_KAFKA_BROKERS TALLY_KAFKA_TOPIC \
            TALLY_KAFKA_PARTITIONS TALLY_BIN TALLY_VAR TALLY_SECRET_KEYS; do
            value=${!name}
            if [[ $mode == shell ]]; then
                value="'${value//\'/\'\\\'\'}'"
            fi
            printf '%s=%s\n' "$name" "$value"
        done >"$file.tmp"
    )
    mv "$file.tmp" "$file"
}
