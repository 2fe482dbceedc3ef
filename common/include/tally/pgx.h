/*
 * The pipelined PostgreSQL layer of the worker's consumers and of the
 * ledger's projections (which tallyctl runs too), beyond tally/pg.h:
 * parameterised statements with text parameters, row counts, the deferred
 * BEGIN and statements sent ahead in one round trip, and telling a transient
 * server failure (retry forever) from an error that belongs to the event
 * (counts toward dead-lettering). Binary batch parameters are in
 * tally/pgx_binary.h.
 */
#ifndef TALLY_PGX_H
#define TALLY_PGX_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tally/pgarray.h"

/**
 * Runs `sql` with `n` text parameters (NULL entries are SQL NULL). Returns the
 * result (caller PQclears) or NULL with "could not <what>: <server message>"
 * in `err`; the failed result's SQLSTATE is kept for tly_pgx_last_transient.
 */
PGresult *tly_pgx_query(PGconn *conn, const char *what, const char *sql, int n, const char *const *vals, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/** As tly_pgx_query without rows; `*affected` (optional) gets the row count. Returns 0 or -1. */
int tly_pgx_exec(PGconn *conn, const char *what, const char *sql, int n, const char *const *vals, long *affected, char *err,
                 size_t errcap) __attribute__((warn_unused_result));

/**
 * Opens a transaction on `conn` whose BEGIN goes out with its first statement
 * (one round trip for both; an error of the BEGIN is that statement's).
 * End it with tly_pgx_end, which sends nothing when no statement ran.
 * tly_pgx_begin(NULL) forgets a BEGIN not sent yet (per thread).
 */
void tly_pgx_begin(PGconn *conn);
/** COMMIT (`commit`) or ROLLBACK of a transaction opened by tly_pgx_begin. Returns 0 or -1 with `err`. */
int tly_pgx_end(PGconn *conn, bool commit, char *err, size_t errcap) __attribute__((warn_unused_result));

/**
 * Deferred statements on `conn` (NULL: none), per thread: while on,
 * tly_pgx_send does not wait for its statement. Everything sent goes out in
 * one pipeline (with a BEGIN of tly_pgx_begin that is still waiting) and is
 * read by the next tly_pgx_query on the connection (which then reports the
 * first failure of a deferred statement instead of running), tly_pgx_sync or
 * tly_pgx_end. Only for work whose failure fails the whole transaction, so
 * that a late error is still its own.
 */
void tly_pgx_defer(PGconn *conn);
/**
 * A statement whose result is only success or failure: deferred while
 * tly_pgx_defer is on for `conn` (returns 0 at once unless the connection
 * fails), else run at once. Parameters as tly_pgx_query_params (`lens` and
 * `formats` NULL: text).
 */
int tly_pgx_send(PGconn *conn, const char *what, const char *sql, int n, const char *const *vals, const int *lens,
                 const int *formats, char *err, size_t errcap) __attribute__((warn_unused_result));
/** Reads every deferred statement of `conn`: 0, or -1 with the first failure ("could not <its what>: ...") in `err`. */
int tly_pgx_sync(PGconn *conn, char *err, size_t errcap) __attribute__((warn_unused_result));

/**
 * True when the last failure on this thread was not caused by the statement's
 * data: the connection broke, or the SQLSTATE class is 08 (connection), 40
 * (serialization, deadlock), 53 (resources), 57 (operator intervention) or
 * 58 (system). Such failures are retried forever and never dead-letter.
 */
bool tly_pgx_last_transient(PGconn *conn);
/** Forgets the last failure (call before a unit of work). */
void tly_pgx_reset_last(void);
/** True when the last failure on this thread was a deferred statement's (tly_pgx_send), reported by a later call. */
bool tly_pgx_last_deferred(void);

/**
 * Connects `*conn` to `dsn` when it is NULL or broken (then runs `setup`, e.g.
 * a LISTEN, when not NULL), logging "postgresql unavailable" or "connected"
 * with `who` only when the state changes (`*up` keeps it). Returns 1 when it
 * connected now, 0 when the connection was fine, -1 when PostgreSQL is
 * unavailable.
 */
int tly_pgx_ensure(PGconn **conn, bool *up, const char *dsn, const char *setup, const char *who);

/**
 * Runs `sql`, a `COPY ... FROM STDIN`, sending `len` bytes of `data` (in the
 * format the statement names). Returns 0, or -1 with "could not <what>:
 * <server message>" in `err` (the SQLSTATE kept as by tly_pgx_query).
 */
int tly_pgx_copy(PGconn *conn, const char *what, const char *sql, const char *data, size_t len, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/**
 * As tly_pgx_query with each parameter's length and format (PQexecParams's
 * `paramLengths` and `paramFormats`: 1 for binary, e.g. a tly_pgx_barray_t).
 */
PGresult *tly_pgx_query_params(PGconn *conn, const char *what, const char *sql, int n, const char *const *vals, const int *lens,
                               const int *formats, char *err, size_t errcap) __attribute__((warn_unused_result));

#endif
