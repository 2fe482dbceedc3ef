#!/usr/bin/env bash
# The official script's interface: --bootstrap-server HOST:PORT.
KAFKA_HEAP_OPTS=${KAFKA_TOOLS_HEAP_OPTS:--Xmx128m} exec "$(dirname "$0")/kafka-run-class.sh" kafka.admin.BrokerApiVersionsCommand "$@"
