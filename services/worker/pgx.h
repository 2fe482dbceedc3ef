/*
 * Small libpq helpers the worker needs beyond tally/pg.h: parameterised
 * statements with text parameters, row counts, and telling a transient
 * server failure (retry forever) from an error that belongs to the event
 * (counts toward dead-lettering). Candidates for common/pg.c.
 */
#ifndef TALLY_WORKER_PGX_H
#define TALLY_WORKER_PGX_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

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
 * True when the last failure on this thread was not caused by the statement's
 * data: the connection broke, or the SQLSTATE class is 08 (connection), 40
 * (serialization, deadlock), 53 (resources), 57 (operator intervention) or
 * 58 (system). Such failures are retried forever and never dead-letter.
 */
bool tly_pgx_last_transient(PGconn *conn);
/** Forgets the last failure (call before a unit of work). */
void tly_pgx_reset_last(void);

#endif
