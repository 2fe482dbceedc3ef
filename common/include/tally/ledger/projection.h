/*
 * Read-model projections: one fold function per event type per read model
 * (accounts, ledger_entries, jobs, transfers). Events are folded into a batch
 * (rows per key, merged in C) and the batch is written with one set-based
 * statement per table, inside the caller's transaction. They know nothing
 * of Kafka, positions or dedup, so the live projector and `tallyctl replay`
 * run exactly the same code; tly_projection_apply is a batch of one event.
 */
#ifndef TALLY_LEDGER_PROJECTION_H
#define TALLY_LEDGER_PROJECTION_H

/* The live projector's name in consumer_positions (the query API waits on its positions for consistency tokens). */
#define TLY_PROJECTOR_CONSUMER "projector"

#include "tally/envelope.h"

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

typedef enum en_tly_read_model_t {
    TLY_MODEL_ACCOUNTS = 1 << 0,
    TLY_MODEL_LEDGER = 1 << 1,
    TLY_MODEL_JOBS = 1 << 2,
    TLY_MODEL_TRANSFERS = 1 << 3,
    TLY_MODEL_ALL = TLY_MODEL_ACCOUNTS | TLY_MODEL_LEDGER | TLY_MODEL_JOBS | TLY_MODEL_TRANSFERS,
} tly_read_model_t;

/** True when the projections have a row for `type` (whatever its version). */
bool tly_projection_knows(const char *type);
/** Highest schema version of `type` the projections can apply (0 when unknown). */
int tly_projection_max_version(const char *type);

/**
 * Applies `env` to the read models selected by `models` (a mask of
 * tly_read_model_t). Unknown types change nothing and return 0. Returns 0, or
 * -1 with "could not ..." in `err`; the caller's transaction is then aborted.
 */
int tly_projection_apply(PGconn *conn, const tly_envelope_t *env, unsigned models, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/*
 * A batch of events to project. Not thread-safe; reuse it across batches
 * (reset keeps its memory).
 */
typedef struct st_tly_projection_batch_t tly_projection_batch_t;

/** An empty batch for `models` (a mask of tly_read_model_t). Aborts when out of memory. */
tly_projection_batch_t *tly_projection_batch_create(unsigned models);
void tly_projection_batch_destroy(tly_projection_batch_t *b);
/** Forgets every event added since the last flush (after a rollback). */
void tly_projection_batch_reset(tly_projection_batch_t *b);
/** Events added since the last flush. */
int tly_projection_batch_count(const tly_projection_batch_t *b);

/**
 * Folds `env` (any version the projection knows: it is upcast here) into the
 * batch; the events of one key must be added in log order. Returns 0; 1 when
 * the event cannot be folded after what the batch holds (an AccountOpened
 * after updates of the same account): flush, then add it again; -1 with
 * "could not apply ..." in `err` when the event itself is invalid (nothing
 * of it was added: its own failure, like a failing tly_projection_apply).
 * Unknown types add nothing and return 0.
 */
int tly_projection_batch_add(tly_projection_batch_t *b, const tly_envelope_t *env, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/**
 * Writes what was added: at most one statement per table (accounts two:
 * inserts, then updates). Empties the batch either way. Returns 0, or -1
 * with "could not ..." in `err` (the caller's transaction is then aborted;
 * which event caused it is not known: apply the events one by one to find
 * it).
 */
int tly_projection_batch_flush(tly_projection_batch_t *b, PGconn *conn, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/** Bulk loading: whether a job row may already be in the table (see tly_projection_batch_set_bulk). */
typedef bool (*tly_projection_exists_fn)(void *ctx, const tly_uuid_t *job_id);

/**
 * Switches `b` to bulk loading, for a rebuild into tables that hold nothing
 * but what this batch's earlier flushes wrote (`tallyctl replay`'s shadow,
 * whose ids are deduplicated by the caller): ledger entries (insert-only)
 * and the jobs for which `job_exists` answers false are then written with
 * `COPY (FORMAT binary)` instead of `INSERT ... ON CONFLICT`; everything
 * else as before. The rows written are the same; COPY sends no pg_notify.
 * `job_exists` may answer true for a job that is not there (it is upserted
 * as usual); a row wrongly taken for new makes the COPY fail on the primary
 * key, so the flush fails and the caller redoes the events one by one, as
 * for any failed flush. The live projector never calls this.
 */
void tly_projection_batch_set_bulk(tly_projection_batch_t *b, tly_projection_exists_fn job_exists, void *ctx);

/**
 * Ends the job of `env` (an event parked in dead_letters) as failed with code
 * "dead_lettered" and `detail`. No-op when the event has no job.
 */
int tly_projection_job_dead_lettered(PGconn *conn, const tly_envelope_t *env, const char *detail, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/**
 * Applies again `env`, an event the projector parked (`tallyctl dlq retry`):
 * first undoes the park (the job that tly_projection_job_dead_lettered failed
 * goes back to queued, TLY_JOB_REOPEN_SQL; a request's job was never parked
 * by its own event), then applies it to every model as the live projector
 * would. `env` is at the projections' version (tly_upcast). Runs in the
 * caller's transaction. 0, or -1 with `err`.
 */
int tly_projection_retry_parked(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
    __attribute__((warn_unused_result));

#endif
