/*
 * Internal to projection.c and projection_sql.c: the pending rows of a
 * projection batch. projection.c folds events into them (one fold function
 * per event type per read model); projection_sql.c writes them with one
 * set-based statement per table. Not for other modules: use projection.h.
 *
 * Every read-model write is a merge that is associative (see the rules in
 * projection.c), so folding a batch's events per key in C and merging the
 * folded row into the table once gives the row that applying the events one
 * by one would give. That is what lets the live projector (large batches),
 * `tallyctl replay` and a single event (tly_projection_apply) share this one
 * code path.
 */
#ifndef TALLY_LEDGER_PROJECTION_BATCH_H
#define TALLY_LEDGER_PROJECTION_BATCH_H

#include "tally/pgx.h"
#include "tally/pgx_binary.h"
#include "tally/ledger/projection.h"

#include <stdint.h>

/* Strings of a batch are offsets into one buffer (+1; 0 is NULL), so growing it never invalidates a row. */
typedef size_t tly_projection__str_t;

typedef struct st_tly_projection__strs_t {
    char *buf;
    size_t len, cap;
} tly_projection__strs_t;

/* uuid -> row index, open addressing; a generation number empties it in O(1). */
typedef struct st_tly_projection__map_t {
    tly_uuid_t *keys;
    int32_t *vals;
    uint32_t *gen;
    uint32_t cur;
    size_t cap, used;
} tly_projection__map_t;

/* accounts: an insert (AccountOpened) and/or an update folding every later event of the batch */
typedef struct st_tly_projection__account_t {
    tly_uuid_t id;
    bool opened; /* insert ... on conflict do nothing */
    tly_uuid_t tenant;
    tly_projection__str_t currency, label;
    int64_t opened_at;
    int64_t nupdates; /* events after the insert: each one counts in version */
    bool has_balance, found;
    int64_t balance;
    const char *status;                   /* NULL: unchanged */
    tly_projection__str_t status_changes; /* the batch's status events, `{"at":..,"status":..},...` (0: none) */
    int64_t updated_at;
    const char *first_type; /* type of the first update (static), for the error when the row is missing */
} tly_projection__account_t;

typedef struct st_tly_projection__ledger_t {
    tly_uuid_t id, tenant, account, job, transfer;
    bool has_job, has_transfer;
    const char *kind;
    int64_t amount, balance_after, at;
    tly_projection__str_t currency;
} tly_projection__ledger_t;

typedef struct st_tly_projection__job_t {
    tly_uuid_t id, tenant, resource;
    const char *status, *rtype;
    int rank;
    tly_projection__str_t code, detail;
    int64_t created_at, updated_at;
    bool copy; /* bulk loading: not in the table yet, written by COPY */
} tly_projection__job_t;

typedef struct st_tly_projection__step_t {
    const char *step;
    int64_t at;
    int next; /* next step of the same transfer, -1 at the end */
} tly_projection__step_t;

typedef struct st_tly_projection__transfer_t {
    tly_uuid_t id, tenant, job;
    bool has_job, has_amount, compensated, has_requested;
    tly_projection__str_t from, to, currency, reference, code, detail;
    int64_t amount, events, created_at, updated_at;
    const char *status; /* highest of the events' statuses, NULL when none set one */
    int first_step, last_step;
} tly_projection__transfer_t;

#define TLY_PROJ_NARRAYS 16

struct st_tly_projection_batch_t {
    unsigned models;
    int nevents;
    tly_projection__strs_t strs;
    tly_projection__map_t account_map, job_map, transfer_map;
    tly_projection__account_t *accounts;
    tly_projection__ledger_t *ledger;
    tly_projection__job_t *jobs;
    tly_projection__transfer_t *transfers;
    tly_projection__step_t *steps;
    int naccounts, nledger, njobs, ntransfers, nsteps;
    int cap_accounts, cap_ledger, cap_jobs, cap_transfers, cap_steps;
    tly_pg_array_t arr[TLY_PROJ_NARRAYS];    /* statement parameters, reused */
    tly_pgx_barray_t barr[TLY_PROJ_NARRAYS]; /* the same in binary (jobs, ledger entries) */
    tly_projection_exists_fn job_exists;     /* bulk loading when set (tly_projection_batch_set_bulk) */
    void *exists_ctx;
    tly_pgx_copy_t copy; /* bulk loading: the COPY data, reused */
};

const char *tly_projection__str(const tly_projection_batch_t *b, tly_projection__str_t s);
/** The index of `id` in `m`, or -1. */
int tly_projection__map_find(const tly_projection__map_t *m, const tly_uuid_t *id);

/* projection_sql.c: one statement per table; 0, or -1 with "could not ..." in err. */
int tly_projection__write_accounts(tly_projection_batch_t *b, PGconn *conn, char *err, size_t errcap);
int tly_projection__write_ledger(tly_projection_batch_t *b, PGconn *conn, char *err, size_t errcap);
int tly_projection__write_jobs(tly_projection_batch_t *b, PGconn *conn, char *err, size_t errcap);
int tly_projection__write_transfers(tly_projection_batch_t *b, PGconn *conn, char *err, size_t errcap);
/* Bulk loading: every ledger entry, and the jobs marked copy, with COPY (FORMAT binary). */
int tly_projection__copy_ledger(tly_projection_batch_t *b, PGconn *conn, char *err, size_t errcap);
int tly_projection__copy_jobs(tly_projection_batch_t *b, PGconn *conn, char *err, size_t errcap);

/* Grows array `arr` of `n` used, `cap` allocated entries by doubling when it is full; aborts when out of memory. */
#define TLY_PROJECTION__GROW(arr, n, cap)                                                                                          \
    do {                                                                                                                           \
        if ((n) == (cap)) {                                                                                                        \
            (cap) = (cap) == 0 ? 256 : (cap)*2;                                                                                    \
            void *p_ = realloc((arr), sizeof(*(arr)) * (size_t)(cap));                                                             \
            if (p_ == NULL)                                                                                                        \
                abort();                                                                                                           \
            (arr) = p_;                                                                                                            \
        }                                                                                                                          \
    } while (0)

/** Copies `s` into the batch's strings (NULL stays NULL). */
tly_projection__str_t tly_projection__str_put(tly_projection_batch_t *b, const char *s);
/** Maps `id` to row `val` (the id must not be there yet). */
void tly_projection__map_put(tly_projection__map_t *m, const tly_uuid_t *id, int32_t val);

#endif
