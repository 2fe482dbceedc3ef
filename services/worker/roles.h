/*
 * The worker's consumer roles as tly_consumer_handler_t plug-ins:
 *   decider   - request events -> decider -> decider_accounts + outbox
 *   saga      - TransferRequested and the transfer steps' outcomes -> saga.c
 *               -> transfer_sagas + outbox
 *   projector - every event -> read models (projection.c)
 * The outbox relay (relay.h) runs beside the decider and the saga; the saga's
 * deadline timer (tly_saga_timer_run) beside the saga.
 */
#ifndef TALLY_WORKER_ROLES_H
#define TALLY_WORKER_ROLES_H

#include "consumer.h"
#include "decider.h"
#include "saga.h"

#define TLY_DECIDER_CACHE_MAX 512

typedef struct st_tly_decider_cached_t {
    tly_uuid_t id;
    tly_account_state_t state;
} tly_decider_cached_t;

/* Per-batch state of the decider role; lives as long as the consumer. */
typedef struct st_tly_decider_role_t {
    const char *topic; /* where outcomes go (outbox.topic) */
    bool wrote_outbox; /* NOTIFY the relay at commit */
    int ncached;
    tly_decider_cached_t cache[TLY_DECIDER_CACHE_MAX]; /* states loaded FOR UPDATE in this transaction */
} tly_decider_role_t;

/** Fills `h` for the decider role; `role` must outlive the consumer. */
void tly_decider_role_init(tly_consumer_handler_t *h, tly_decider_role_t *role, const char *topic);
/* The saga role; lives as long as the consumer. */
typedef struct st_tly_saga_role_t {
    const char *topic;
    tly_saga_config_t cfg;
    bool wrote_outbox;
} tly_saga_role_t;

/** Fills `h` for the saga role; `role` must outlive the consumer. */
void tly_saga_role_init(tly_consumer_handler_t *h, tly_saga_role_t *role, const char *topic, const tly_saga_config_t *cfg);

typedef struct st_tly_saga_timer_config_t {
    const char *pg_dsn;
    const char *topic;
    tly_saga_config_t saga;
    atomic_bool *stop;
} tly_saga_timer_config_t;

/**
 * Re-sends the pending step of every saga whose deadline passed (same event
 * id: the decider applies a step once), in transactions that lock the rows
 * (FOR UPDATE SKIP LOCKED: several workers share the work), and logs how
 * many sagas are stuck. Runs until `*cfg->stop`; retries every failure.
 */
int tly_saga_timer_run(const tly_saga_timer_config_t *cfg);

/** Loads the saga of `transfer` FOR UPDATE (exists == false when there is none). */
int tly_saga_load(PGconn *conn, const tly_uuid_t *transfer, tly_saga_state_t *out, char *err, size_t errcap)
    __attribute__((warn_unused_result));
/** Inserts or updates the saga row. */
int tly_saga_store(PGconn *conn, const tly_saga_state_t *s, char *err, size_t errcap) __attribute__((warn_unused_result));
/**
 * Inserts `ev` into the outbox (key = its aggregate id) with a child span of
 * `parent_tp` (or a new trace when it is ""). A row with the same event id
 * already there is left alone.
 */
int tly_outbox_insert(PGconn *conn, const char *topic, const char *parent_tp, const tly_envelope_t *ev, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/** Fills `h` for the projector role. */
void tly_projector_role_init(tly_consumer_handler_t *h);

#endif
