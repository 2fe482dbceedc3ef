#!/usr/bin/env bash
# kafka-run-class.sh CLASS ARGS...: a Kafka class on the broker's class path,
# as the official image's script of the same name does (KAFKA_HEAP_OPTS,
# KAFKA_OPTS; the tools get a small heap by default).
set -euo pipefail
# shellcheck disable=SC2086 # the option strings are lists of words
exec java ${KAFKA_HEAP_OPTS:--Xmx256m} ${KAFKA_OPTS:-} -Djava.awt.headless=true \
    -Dlog4j.configuration="file:${KAFKA_LOG4J_CONFIG:-/opt/kafka/config/tools-log4j.properties}" \
    -cp '/opt/kafka/libs/*' "$@"
