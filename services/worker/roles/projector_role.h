/* The projector role as a tly_consumer_handler_t plug-in: every event -> the ledger's read models (tally/ledger/projection.h). */
#ifndef TALLY_WORKER_PROJECTOR_ROLE_H
#define TALLY_WORKER_PROJECTOR_ROLE_H

#include "runtime/consumer.h"

/** Fills `h` for the projector role. */
void tly_projector_role_init(tly_consumer_handler_t *h);

#endif
