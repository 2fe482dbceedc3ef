/*
 * The worker's consumer roles as tly_consumer_handler_t plug-ins:
 *   decider   - request events -> decider -> decider_accounts + outbox
 *   projector - every event -> read models (projection.c)
 * The outbox relay (relay.h) runs beside the decider.
 */
#ifndef TALLY_WORKER_ROLES_H
#define TALLY_WORKER_ROLES_H

#include "consumer.h"
#include "decider.h"

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
/** Fills `h` for the projector role. */
void tly_projector_role_init(tly_consumer_handler_t *h);

#endif
