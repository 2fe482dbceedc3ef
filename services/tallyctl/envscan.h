/*
 * A fast path for tly_envelope_parse (common/envelope.c) in `tallyctl
 * replay`, where parsing each envelope with jansson was most of the CPU.
 * See envscan.c for the shape it reads and why it never disagrees with
 * tly_envelope_parse.
 */
#ifndef TALLYCTL_ENVSCAN_H
#define TALLYCTL_ENVSCAN_H

#include "tally/envelope.h"

#include <stddef.h>

/**
 * Parses a wire envelope of the common shape into `env`. Returns 0 with the
 * result tly_envelope_parse would give (`env->data` a new reference, released
 * by tly_envelope_clear), or 1 with `env` cleared when the input is not of
 * that shape or might be refused: then call tly_envelope_parse, which accepts
 * it or says why not. Thread-safe.
 */
int tly_ctl_envscan(const char *buf, size_t len, tly_envelope_t *env) __attribute__((warn_unused_result));

#endif
