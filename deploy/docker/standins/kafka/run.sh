#!/usr/bin/env bash
# The stand-in's /etc/kafka/docker/run, after the official image's: every
# KAFKA_* variable but the JVM ones becomes a server.properties line (the
# name without KAFKA_, lower case, `_` -> `.`, `__` -> `_`, `___` -> `-`),
# the storage is formatted with CLUSTER_ID on first start, then the broker
# runs in the foreground (exec: it gets the container's SIGTERM).
set -euo pipefail

config=/opt/kafka/config/server.properties
: "${CLUSTER_ID:?CLUSTER_ID must be set (the KRaft cluster id, e.g. from kafka-storage.sh random-uuid)}"

# Not broker settings: options of the JVM and of the start scripts.
jvm_vars=' KAFKA_HEAP_OPTS KAFKA_OPTS KAFKA_JVM_PERFORMANCE_OPTS KAFKA_LOG4J_OPTS KAFKA_JMX_OPTS KAFKA_GC_LOG_OPTS KAFKA_TOOLS_HEAP_OPTS KAFKA_LOG4J_CONFIG '

: >"$config"
while IFS='=' read -r name _; do
    [[ $name == KAFKA_* && $jvm_vars != *" $name "* ]] || continue
    key=${name#KAFKA_}
    key=${key,,}
    key=${key//___/-}
    key=${key//__/@}
    key=${key//_/.}
    key=${key//@/_}
    printf '%s=%s\n' "$key" "${!name}" >>"$config"
done < <(env)

log_dirs=$(sed -n 's/^log\.dirs=//p' "$config")
if [[ -z $log_dirs ]]; then
    log_dirs=/var/lib/kafka/data
    printf 'log.dirs=%s\n' "$log_dirs" >>"$config"
fi

# Everything to stdout, at INFO for the broker, WARN for the chatty parts.
cat >/opt/kafka/config/log4j.properties <<'LOG4J'
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.controller=WARN
log4j.logger.state.change.logger=WARN
LOG4J
cat >/opt/kafka/config/tools-log4j.properties <<'LOG4J'
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
LOG4J

first_dir=${log_dirs%%,*}
if [[ ! -f $first_dir/meta.properties ]]; then
    KAFKA_LOG4J_CONFIG=/opt/kafka/config/tools-log4j.properties \
        /opt/kafka/bin/kafka-storage.sh format --ignore-formatted -t "$CLUSTER_ID" -c "$config"
fi

# shellcheck disable=SC2086 # the option strings are lists of words
exec java ${KAFKA_HEAP_OPTS:--Xmx1g -Xms1g} ${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20} \
    ${KAFKA_OPTS:-} -Djava.awt.headless=true -Dlog4j.configuration=file:/opt/kafka/config/log4j.properties \
    -cp '/opt/kafka/libs/*' kafka.Kafka "$config"
