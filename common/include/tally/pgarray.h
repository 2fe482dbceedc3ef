/*
 * A PostgreSQL array literal ("{...}") built element by element, for
 * set-based statements (`unnest($1::uuid[], ...)`) in the worker, tallyctl and
 * the command API: every element is quoted and escaped, so any text is safe.
 * Reused across batches: reset keeps the memory.
 */
#ifndef TALLY_PGARRAY_H
#define TALLY_PGARRAY_H

#include <stddef.h>
#include <stdint.h>

typedef struct st_tly_pg_array_t {
    char *buf;
    size_t len, cap;
    int n;
} tly_pg_array_t;

/** Empties `a` (keeps its memory). A zeroed struct is an empty array. */
void tly_pg_array_reset(tly_pg_array_t *a);
/** Appends `s` (NULL appends SQL NULL). */
void tly_pg_array_add(tly_pg_array_t *a, const char *s);
/** Appends a signed integer. */
void tly_pg_array_add_i64(tly_pg_array_t *a, int64_t v);
/** The literal, valid until the next change of `a`. */
const char *tly_pg_array_text(tly_pg_array_t *a);
void tly_pg_array_free(tly_pg_array_t *a);

#endif
