/*
 * The worker's admin endpoint (TALLY_ADMIN_PORT, default 9183): /metrics,
 * /healthz, and /readyz = PostgreSQL reachable, the Kafka broker answering,
 * and every role's consumer holding an assignment from its group.
 *
 * The consumer loops report what the endpoint shows through the functions
 * below; each is cheap, never blocks and may be called from any thread.
 */
#ifndef TALLY_WORKER_ADMIN_H
#define TALLY_WORKER_ADMIN_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct st_tly_worker_admin_t tly_worker_admin_t;

/**
 * Starts the endpoint on host:port (port 0: no endpoint, returns a handle that
 * does nothing). `consumers` is the comma-separated list of consumer names
 * that must hold an assignment to be ready: the roles ("decider,projector",
 * the worker's roles setting). Probes PostgreSQL (`pg_dsn`) and Kafka
 * (`brokers`) once a second on threads of their own. NULL with `err` when the
 * port cannot be bound.
 */
tly_worker_admin_t *tly_worker_admin_start(const char *host, int port, const char *pg_dsn, const char *brokers,
                                           const char *consumers, char *err, size_t errcap) __attribute__((warn_unused_result));
void tly_worker_admin_stop(tly_worker_admin_t *admin);

/** The rebalance callback of `consumer` took (`assigned`) or gave up (false) its partitions. */
void tly_worker_admin_assigned(const char *consumer, bool assigned);

/**
 * Records tally_consumer_lag{consumer,partition} = the partition's last known
 * high watermark (librdkafka's cache; no broker round trip) - `next_offset`.
 * Does nothing until a fetch has told librdkafka the watermark.
 */
void tly_worker_admin_lag(rd_kafka_t *rk, const char *consumer, const char *topic, int32_t partition, int64_t next_offset);

#endif
