/*
 * The decider role as a tly_consumer_handler_t plug-in: request events ->
 * the ledger's decider (tally/ledger/decider.h) -> decider_accounts and the
 * outbox, in the fenced consumer's batch transaction, so the new state, the
 * outcome events and the consumer position commit together.
 */
#ifndef TALLY_WORKER_DECIDER_ROLE_H
#define TALLY_WORKER_DECIDER_ROLE_H

#include "outbox/outbox.h"
#include "runtime/consumer.h"
#include "tally/ledger/decider.h"

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

#endif
