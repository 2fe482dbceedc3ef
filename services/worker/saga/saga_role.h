/*
 * The saga role as a tly_consumer_handler_t plug-in: TransferRequested and the
 * transfer steps' outcomes -> the ledger's saga state machine
 * (tally/ledger/saga.h) -> transfer_sagas and the outbox, in the fenced
 * consumer's batch transaction. Its deadlines are saga_timer.h's.
 */
#ifndef TALLY_WORKER_SAGA_ROLE_H
#define TALLY_WORKER_SAGA_ROLE_H

#include "runtime/consumer.h"
#include "tally/ledger/saga.h"

/* The saga role; lives as long as the consumer. */
typedef struct st_tly_saga_role_t {
    const char *topic;
    tly_saga_config_t cfg;
} tly_saga_role_t;

/** Fills `h` for the saga role; `role` must outlive the consumer. */
void tly_saga_role_init(tly_consumer_handler_t *h, tly_saga_role_t *role, const char *topic, const tly_saga_config_t *cfg);

#endif
