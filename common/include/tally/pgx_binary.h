/*
 * Batch parameters in PostgreSQL's binary formats: rows for COPY (FORMAT
 * binary) and binary arrays for unnest($1::uuid[], ...), built in memory and
 * sent with tally/pgx.h. Pure buffers: only tly_pgx_copy_send does I/O.
 */
#ifndef TALLY_PGX_BINARY_H
#define TALLY_PGX_BINARY_H

#include "tally/pgx.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Data for `COPY ... FROM STDIN (FORMAT binary)`, built row by row: begin,
 * then per row tly_pgx_copy_row and one call per column (the statement's
 * column order and types: uuid, text, bigint, timestamptz), then send.
 * Reused across statements: begin keeps the memory.
 */
typedef struct st_tly_pgx_copy_t {
    char *buf;
    size_t len, cap;
} tly_pgx_copy_t;

void tly_pgx_copy_begin(tly_pgx_copy_t *c);
/** Starts a row of `nfields` columns. */
void tly_pgx_copy_row(tly_pgx_copy_t *c, int nfields);
/** A uuid column: its 16 bytes, or SQL NULL when `b` is NULL. */
void tly_pgx_copy_uuid(tly_pgx_copy_t *c, const uint8_t *b);
/** A text column (NULL is SQL NULL). */
void tly_pgx_copy_text(tly_pgx_copy_t *c, const char *s);
void tly_pgx_copy_i64(tly_pgx_copy_t *c, int64_t v);
/** A timestamptz column from microseconds since the Unix epoch. */
void tly_pgx_copy_time(tly_pgx_copy_t *c, int64_t unix_us);
/** Ends the data and runs `sql` with it (tly_pgx_copy). */
int tly_pgx_copy_send(tly_pgx_copy_t *c, PGconn *conn, const char *what, const char *sql, char *err, size_t errcap)
    __attribute__((warn_unused_result));
void tly_pgx_copy_free(tly_pgx_copy_t *c);

/*
 * The same kind of parameter in PostgreSQL's binary array format (what
 * array_send writes: a header, then each element as its length and its
 * binary value), for the statements that carry a whole batch: the server
 * then reads uuids, integers and times as bytes instead of parsing an array
 * literal and every element's text (array_in, uuid_in and timestamptz_in
 * were a sixth of PostgreSQL's CPU in the projector's catch-up). Every
 * element of one array has the type given to reset, which must be the
 * statement's (`$1::uuid[]`: TLY_PGX_UUID). Reused: reset keeps the memory.
 */
#define TLY_PGX_BOOL 16u
#define TLY_PGX_INT8 20u
#define TLY_PGX_TEXT 25u
#define TLY_PGX_TIMESTAMPTZ 1184u
#define TLY_PGX_UUID 2950u

typedef struct st_tly_pgx_barray_t {
    tly_pgx_copy_t data;
    int n;
    bool hasnull;
    uint32_t oid;
} tly_pgx_barray_t;

/** Empties `a` for elements of type `oid` (keeps its memory). */
void tly_pgx_barray_reset(tly_pgx_barray_t *a, uint32_t oid);
/** A uuid from its 16 bytes; NULL appends SQL NULL. */
void tly_pgx_barray_uuid(tly_pgx_barray_t *a, const uint8_t *b);
/** A text element (NULL is SQL NULL). */
void tly_pgx_barray_text(tly_pgx_barray_t *a, const char *s);
void tly_pgx_barray_i64(tly_pgx_barray_t *a, int64_t v);
/** A timestamptz from microseconds since the Unix epoch. */
void tly_pgx_barray_time(tly_pgx_barray_t *a, int64_t unix_us);
/** Writes the header; returns the bytes (valid until the next change of `a`) and their length in `*len`. */
const char *tly_pgx_barray_bytes(tly_pgx_barray_t *a, int *len);
void tly_pgx_barray_free(tly_pgx_barray_t *a);

#endif
