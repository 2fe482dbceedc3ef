/*
 * Outbox relay: publishes the decider's outbox rows to Kafka in seq order,
 * then deletes them. Runs in its own thread with its own PostgreSQL
 * connection and idempotent producer.
 */
#ifndef TALLY_WORKER_RELAY_H
#define TALLY_WORKER_RELAY_H

#include <stdatomic.h>

typedef struct st_tly_relay_config_t {
    const char *brokers;
    const char *pg_dsn;
    atomic_bool *stop;
} tly_relay_config_t;

/** Runs until `*cfg->stop`; retries every failure with backoff. Returns 0, or -1 when the producer cannot be created. */
int tly_relay_run(const tly_relay_config_t *cfg);

#endif
