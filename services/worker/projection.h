/*
 * Read-model projections: one apply function per event type per read model
 * (accounts, ledger_entries, jobs, transfers). They run inside the caller's transaction
 * and know nothing of Kafka, positions or dedup, so the live projector and
 * `tallyctl replay` run exactly the same code.
 */
#ifndef TALLY_WORKER_PROJECTION_H
#define TALLY_WORKER_PROJECTION_H

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

/**
 * Ends the job of `env` (an event parked in dead_letters) as failed with code
 * "dead_lettered" and `detail`. No-op when the event has no job.
 */
int tly_projection_job_dead_lettered(PGconn *conn, const tly_envelope_t *env, const char *detail, char *err, size_t errcap)
    __attribute__((warn_unused_result));

#endif
