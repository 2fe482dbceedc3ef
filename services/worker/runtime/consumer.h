/*
 * The fenced consumer loop shared by the worker's roles.
 *
 * Positions live in PostgreSQL (consumer_positions), never in Kafka's
 * committed offsets. On assignment the consumer bumps each partition's epoch
 * and starts from the stored next_offset; every batch is one transaction that
 * applies the events (skipping ids already in consumer_dedup) and moves the
 * positions only WHERE epoch = the epoch it claimed. A worker that lost a
 * partition in a rebalance therefore cannot commit over its new owner.
 *
 * A role plugs in through tly_consumer_handler_t; the handler does the
 * role's writes inside the batch transaction and never commits.
 */
#ifndef TALLY_WORKER_CONSUMER_H
#define TALLY_WORKER_CONSUMER_H

#include "tally/envelope.h"

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum en_tly_verdict_t {
    TLY_VERDICT_APPLY,   /* dedup, then handler->apply */
    TLY_VERDICT_IGNORE,  /* not this role's business: advance the position */
    TLY_VERDICT_TOO_NEW, /* a schema version this worker does not know: pause the partition */
} tly_verdict_t;

/**
 * The usual classification: an event of a type the role does not `handle` is
 * ignored; one whose version is above `max_version` (what this binary reads)
 * is too new; anything else is applied.
 */
tly_verdict_t tly_consumer_verdict(bool handles, const tly_envelope_t *env, int max_version);

/** One Kafka record as the handler sees it; everything is borrowed for the call. */
typedef struct st_tly_consumer_msg_t {
    rd_kafka_message_t *rkm;
    bool parsed;
    tly_envelope_t env;                        /* valid when parsed */
    char traceparent[TLY_TRACEPARENT_LEN + 1]; /* "" when absent or invalid */
    char parse_error[160];
} tly_consumer_msg_t;

typedef struct st_tly_consumer_handler_t {
    const char *name; /* consumer name in consumer_positions and consumer_dedup */
    void *ctx;
    tly_verdict_t (*classify)(void *ctx, const tly_envelope_t *env);
    /** A batch transaction starts (reset per-batch caches). Optional. */
    void (*begin)(void *ctx);
    /** Applies one new event inside the transaction. 0 or -1 with `err`. */
    int (*apply)(void *ctx, PGconn *conn, const tly_consumer_msg_t *msg, char *err, size_t errcap);
    /** The event is being parked in dead_letters: make its job end. Optional. */
    int (*park)(void *ctx, PGconn *conn, const tly_consumer_msg_t *msg, const char *why, char *err, size_t errcap);
    /** Last statements before COMMIT (e.g. NOTIFY). Optional. */
    int (*end)(void *ctx, PGconn *conn, char *err, size_t errcap);
    /**
     * Optional set-based path. Applies the batch's `n` new events (dedup
     * done, in log order) inside the transaction, with as few statements as
     * it can. 0, or -1 with `err`: the consumer rolls the transaction back
     * and applies the same events one at a time with `apply` (which stays
     * required), which finds the event that fails and isolates it as usual.
     */
    int (*apply_batch)(void *ctx, PGconn *conn, const tly_consumer_msg_t *const *msgs, int n, char *err, size_t errcap);
    /**
     * Optional. Called outside any transaction before a batch whose events
     * all classify as APPLY or IGNORE: sets `*nothing` when, as the database
     * says now, none of them would write anything. Such a batch needs no
     * transaction and is treated as a batch of ignored events (its
     * positions move in memory and are written with the next transaction,
     * or within a second). 0, or -1 with `err`: the batch then runs in its
     * transaction as usual.
     */
    int (*nothing_to_do)(void *ctx, PGconn *conn, const tly_consumer_msg_t *msgs, int n, bool *nothing, char *err, size_t errcap);
    /**
     * The handler's effects are idempotent by themselves (a unique key on
     * what it writes, inserted with ON CONFLICT DO NOTHING): applying an
     * event twice changes nothing, so the consumer keeps no consumer_dedup
     * rows for it. The fenced positions still hold.
     */
    bool idempotent;
} tly_consumer_handler_t;

typedef struct st_tly_consumer_config_t {
    const char *brokers;
    const char *topic;
    const char *pg_dsn;
    const char *group;   /* Kafka group id, e.g. "tally-decider" */
    int batch_max;       /* messages per transaction */
    int batch_wait_ms;   /* how long to gather a batch once one message is in */
    int max_event_tries; /* failures of one event alone before it is parked */
    int prefetch_kbytes; /* Kafka prefetch queue (0: TLY_KAFKA_PREFETCH_KB); deeper for consumers that catch up */
    int gather_ms;       /* 0: fetches answered as soon as an event arrives; > 0: the broker gathers for this long */
    atomic_bool *stop;   /* set by the signal thread; the batch in hand is finished first */
    /*
     * Optional. `joined`: set once this consumer has claimed its first
     * assignment. `join_after` (with `join_after_max_ms`): wait until that
     * flag of another consumer of the same group is set (or the time is up)
     * before joining, so that a process's consumers of one group join one
     * after another (see "Start-up" in README.md).
     */
    atomic_bool *joined;
    atomic_bool *join_after;
    int join_after_max_ms;
} tly_consumer_config_t;

/**
 * Runs until `*cfg->stop`. Retries PostgreSQL and Kafka failures with capped
 * exponential backoff and never exits because of them. Returns 0 after a
 * clean close (group left), -1 when the consumer could not be created.
 */
int tly_consumer_run(const tly_consumer_config_t *cfg, const tly_consumer_handler_t *handler);

/**
 * Makes `list` (offsets filled in) the consumer's assignment with every
 * partition of it fetching (rd_kafka_assign). librdkafka keeps a partition
 * paused by the application (rd_kafka_pause_partitions: the consumer pauses
 * a fenced partition, or one at a version too new) across an unassign and a
 * new assignment of it, so each partition is resumed first: a partition given
 * back to the consumer that paused it is fetched from the claimed offset, not
 * left paused while the consumer counts it live (issue 22). NULL unassigns.
 */
rd_kafka_resp_err_t tly_consumer_assign(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *list);

/**
 * Copies `buf` into a NUL-terminated string PostgreSQL's text accepts: the
 * bytes themselves when they are valid UTF-8 without NUL, else "\x" and hex.
 * Caller frees.
 */
char *tly_text_or_hex(const char *buf, size_t len);

#endif
