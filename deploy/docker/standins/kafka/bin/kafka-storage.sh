#!/usr/bin/env bash
# The official script's interface: format -t ID -c FILE, random-uuid, info.
KAFKA_HEAP_OPTS=${KAFKA_TOOLS_HEAP_OPTS:--Xmx128m} exec "$(dirname "$0")/kafka-run-class.sh" kafka.tools.StorageTool "$@"
