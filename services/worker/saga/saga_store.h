/* The transfer sagas' rows (transfer_sagas): one per transfer, loaded and stored in the caller's transaction. */
#ifndef TALLY_WORKER_SAGA_STORE_H
#define TALLY_WORKER_SAGA_STORE_H

#include "tally/ledger/saga.h"

#include <libpq-fe.h>
#include <stddef.h>

/** Loads the saga of `transfer` FOR UPDATE (exists == false when there is none). */
int tly_saga_load(PGconn *conn, const tly_uuid_t *transfer, tly_saga_state_t *out, char *err, size_t errcap)
    __attribute__((warn_unused_result));
/** Inserts or updates the saga row. */
int tly_saga_store(PGconn *conn, const tly_saga_state_t *s, char *err, size_t errcap) __attribute__((warn_unused_result));

#endif
