/* Kafka set-up the bench's programs share (gen_history, ceiling_kafka). */
#ifndef TALLY_BENCH_KAFKA_H
#define TALLY_BENCH_KAFKA_H

#include <librdkafka/rdkafka.h>

/** Sets `k`=`v` on `c`; on failure prints "<prog>: ..." and exits 2. */
void bench_kafka_set(const char *prog, rd_kafka_conf_t *c, const char *k, const char *v);

/** Creates `topic` (replication 1; an existing one is fine), then waits a second for leader election. */
void bench_kafka_create_topic(const char *prog, const char *brokers, const char *topic, int partitions);

#endif
