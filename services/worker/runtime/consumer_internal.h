/*
 * Internal to the fenced consumer (consumer.h): its state and the functions its files share
 * (tly_consumer__*). consumer.c: the loop, gathering a batch; positions.c: claiming partitions,
 * rebalances, the fenced positions; transaction.c: the batch transaction (dedup, apply, park).
 */
#ifndef TALLY_WORKER_CONSUMER_INTERNAL_H
#define TALLY_WORKER_CONSUMER_INTERNAL_H

#include "consumer.h"
#include "retry.h"
#include "admin.h"
#include "tally/pgx.h"
#include "tally/pgx_binary.h"
#include "tally/clock.h"
#include "tally/envscan.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/metrics.h"
#include "tally/pg.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RECLAIM_AFTER_US (15 * 1000000LL) /* > session.timeout.ms (10 s) */
#define FIRST_POLL_MS 100
#define UNSAVED_MAX_US 1000000LL /* positions moved past ignored events are written within this */
typedef struct st_partition_t {
    bool assigned;
    bool stopped;       /* paused: version too new, or fenced */
    bool fenced;        /* stopped because the epoch moved */
    bool stop_pending;  /* TOO_NEW seen in the running transaction */
    bool fence_pending; /* the position update of the running transaction matched no row */
    bool touched;
    bool unsaved; /* next_offset moved past ignored events only, not yet written (see skip_ignored) */
    int64_t epoch;
    int64_t next_offset; /* committed position, or past it by ignored events when unsaved */
    int64_t staged_next; /* position within the running transaction */
    int64_t reclaim_at_us;
    int64_t too_new_offset;
    int too_new_version;
    char too_new_type[TLY_EVENT_TYPE_MAX];
} partition_t;

typedef struct st_consumer_t {
    const tly_consumer_config_t *cfg;
    const tly_consumer_handler_t *h;
    rd_kafka_t *rk;
    PGconn *conn;
    bool pg_up;
    bool rebalanced; /* set by the rebalance callback: drop what was gathered */
    bool refetch;    /* messages were polled and dropped unhandled (PostgreSQL down): re-seek before the next batch */
    partition_t *parts;
    int nparts;
    char event_error[1024]; /* last error of the event being retried */
    /* the set-based path's scratch, batch_max entries each */
    tly_consumer_msg_t **cand, **sorted, **fresh;
    unsigned char *is_fresh; /* by index in the gathered batch */
    tly_pg_array_t arr[3];
    tly_pgx_barray_t ids;     /* the dedup statement's event ids */
    int64_t unsaved_since_us; /* monotonic; 0 when no partition is unsaved */
} consumer_t;

typedef enum en_tx_result_t {
    TX_OK,
    TX_TRANSIENT,   /* retry the same range after a backoff */
    TX_EVENT_ERROR, /* the event at *fail_at failed */
    TX_FENCED,
    TX_BATCH_FAILED, /* the set-based path failed, not transiently: apply the range one event at a time */
} tx_result_t;

/* consumer.c */
partition_t *tly_consumer__part_of(consumer_t *c, int32_t partition);
void tly_consumer__grow_parts(consumer_t *c, int32_t partition);
bool tly_consumer__ensure_pg(consumer_t *c);
void tly_consumer__rollback(consumer_t *c);

/* positions.c */
void tly_consumer__on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t rerr, rd_kafka_topic_partition_list_t *list, void *opaque);
void tly_consumer__reclaim_fenced(consumer_t *c);
void tly_consumer__pause_partition(consumer_t *c, int32_t partition);

/* consumer.c */
void tly_consumer__msgs_clear(tly_consumer_msg_t *msgs, int n);
int tly_consumer__gather(consumer_t *c, tly_consumer_msg_t *msgs);

/* transaction.c */
void tly_consumer__log_applied(consumer_t *c, const tly_consumer_msg_t *m);
int tly_consumer__handle(consumer_t *c, tly_consumer_msg_t *m, partition_t *p, bool park, char *err, size_t errcap);

/* positions.c */
tx_result_t tly_consumer__update_positions(consumer_t *c, char *err, size_t errcap);
void tly_consumer__on_fenced(consumer_t *c);
void tly_consumer__after_commit(consumer_t *c);

/* transaction.c */
tx_result_t tly_consumer__run_tx(consumer_t *c, tly_consumer_msg_t *msgs, int start, int end, int park, int *fail_at, char *err,
                                 size_t errcap);
tx_result_t tly_consumer__run_tx_batch(consumer_t *c, tly_consumer_msg_t *msgs, int start, int end, char *err, size_t errcap);
bool tly_consumer__skip_ignored(consumer_t *c, tly_consumer_msg_t *msgs, int n);
void tly_consumer__flush_unsaved(consumer_t *c, bool now);

#endif
