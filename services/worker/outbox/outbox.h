/*
 * The transactional outbox: events a role writes in its batch transaction
 * (outbox rows, next to its state), which the relay (relay.h) then publishes
 * in order and deletes. Nothing here talks to Kafka, so an event reaches the
 * log only if the transaction that decided it committed.
 */
#ifndef TALLY_WORKER_OUTBOX_H
#define TALLY_WORKER_OUTBOX_H

#include "tally/envelope.h"
#include "tally/pgarray.h"

#include <libpq-fe.h>
#include <stddef.h>

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

/**
 * Inserts `ev` into the outbox (key = its aggregate id) with a child span of
 * `parent_tp` (or a new trace when it is ""). A row with the same event id
 * already there is left alone.
 */
int tly_outbox_insert(PGconn *conn, const char *topic, const char *parent_tp, const tly_envelope_t *ev, char *err, size_t errcap)
    __attribute__((warn_unused_result));

#endif
