/*
 * Event schema evolution: every reader turns an event into the version it
 * knows with tly_upcast before looking at its data, so old events in the log
 * stay readable forever and writers can move to a new version.
 *
 * Each step is one row of a table in upcast.c (type, from version, function
 * that rewrites the data into from + 1). Today:
 *   FundsDeposited v1 -> v2: adds "channel": "api" (every v1 deposit came
 *   through the HTTP API).
 */
#ifndef TALLY_LEDGER_UPCAST_H
#define TALLY_LEDGER_UPCAST_H

#include "tally/envelope.h"

#include <stdbool.h>
#include <stddef.h>

/** The newest schema version of `type`, as the catalogue says (1 for a type it does not know). */
int tly_event_latest_version(const char *type);

/** True when upcast.c has the step from version `from` of `type` to `from + 1` (test_catalogue.c checks every one). */
bool tly_upcast_has_step(const char *type, int from);

/**
 * Copies `in` into `out` upcast to `to_version` (or to the latest version
 * when `to_version` is 0). `in` is never modified: `out->data` is a new
 * reference (a fresh object when a step changed it), released with
 * tly_envelope_clear(out). An event already at or above the target is copied
 * as it is. Returns 0, or -1 with `err` set when a step is missing or the
 * data does not fit the step (out is then left empty).
 */
int tly_upcast(const tly_envelope_t *in, int to_version, tly_envelope_t *out, char *err, size_t errcap)
    __attribute__((warn_unused_result));

#endif
