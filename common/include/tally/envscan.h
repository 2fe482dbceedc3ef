/*
 * A fast path for tly_envelope_parse (common/envelope.c), used where every
 * event of the log is parsed: `tallyctl replay` and the worker's consumers
 * (parsing each envelope with jansson was a large part of both one's CPU).
 * See envscan.c for the shape it reads and why it never disagrees with
 * tly_envelope_parse.
 */
#ifndef TALLY_ENVSCAN_H
#define TALLY_ENVSCAN_H

#include "tally/envelope.h"

#include <stddef.h>

/**
 * Parses a wire envelope of the common shape into `env`. Returns 0 with the
 * result tly_envelope_parse would give (`env->data` a new reference, released
 * by tly_envelope_clear), or 1 with `env` cleared when the input is not of
 * that shape or might be refused: then call tly_envelope_parse, which accepts
 * it or says why not. Thread-safe.
 */
int tly_envelope_scan(const char *buf, size_t len, tly_envelope_t *env) __attribute__((warn_unused_result));

#endif
