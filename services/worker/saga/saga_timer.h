/* The transfer sagas' deadlines: a thread beside the saga role. */
#ifndef TALLY_WORKER_SAGA_TIMER_H
#define TALLY_WORKER_SAGA_TIMER_H

#include "tally/ledger/saga.h"

#include <stdatomic.h>

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

#endif
