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
#include "tally/ledger/decider.h"
#include "tally/ledger/saga.h"

#include "tally/pgx.h"

/* Outbox rows gathered for one multi-row INSERT (tly_outbox_rows_flush): one array per column. A zeroed struct is empty. */
enum { TLY_OUTBOX_ID, TLY_OUTBOX_TOPIC, TLY_OUTBOX_KEY, TLY_OUTBOX_PAYLOAD, TLY_OUTBOX_HEADERS, TLY_OUTBOX_NCOLS };
typedef struct st_tly_outbox_rows_t {
    tly_pg_array_t col[TLY_OUTBOX_NCOLS];
} tly_outbox_rows_t;

/** Adds `ev` (key = its aggregate id) with a child span of `parent_tp` (or a new trace when it is "" or NULL). */
void tly_outbox_rows_add(tly_outbox_rows_t *rows, const char *topic, const char *parent_tp, const tly_envelope_t *ev);
/** Inserts the rows in the order added (a row whose event id is already there is left alone), then empties `rows`. */
int tly_outbox_rows_flush(tly_outbox_rows_t *rows, PGconn *conn, char *err, size_t errcap) __attribute__((warn_unused_result));
void tly_outbox_rows_reset(tly_outbox_rows_t *rows);
void tly_outbox_rows_free(tly_outbox_rows_t *rows);

/* One account of the decider's batch. */
typedef struct st_tly_decider_slot_t {
    bool used, dirty; /* dirty: changed by the batch, to be stored */
    tly_account_state_t state;
} tly_decider_slot_t;

/* Per-batch state of the decider role; lives as long as the consumer (tly_decider_role_free). */
typedef struct st_tly_decider_role_t {
    const char *topic; /* where outcomes go (outbox.topic) */
    tly_outbox_rows_t outbox;
    tly_decider_slot_t *slots; /* the batch's accounts by id (open addressing, cap a power of two) */
    size_t cap;
    int *used; /* indexes of the used slots */
    int nused;
    size_t used_cap;
    tly_pg_array_t arr[6]; /* statement parameters, reused */
} tly_decider_role_t;

/** Fills `h` for the decider role; `role` must outlive the consumer. */
void tly_decider_role_init(tly_consumer_handler_t *h, tly_decider_role_t *role, const char *topic);
void tly_decider_role_free(tly_decider_role_t *role);
/* The saga role; lives as long as the consumer. */
typedef struct st_tly_saga_role_t {
    const char *topic;
    tly_saga_config_t cfg;
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
