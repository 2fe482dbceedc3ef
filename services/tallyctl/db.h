/*
 * PostgreSQL as tallyctl uses it: one blocking connection per run, queries
 * with parameters only, and results printed as aligned tables.
 */
#ifndef TALLYCTL_DB_H
#define TALLYCTL_DB_H

#include "cli.h"

#include <libpq-fe.h>
#include <stdio.h>

/**
 * Connects with `dsn`, names the session "tallyctl" and reports server
 * warnings (not notices) on stderr. Returns NULL with `err` set.
 */
PGconn *tly_ctl_db_connect(const char *dsn, char *err, size_t errcap) __attribute__((warn_unused_result));

/** tly_ctl_db_connect to the settings' database; a failure is reported (tly_ctl_error) and NULL returned. */
PGconn *tly_ctl_db_open(const tly_ctl_settings_t *settings) __attribute__((warn_unused_result));

/**
 * Runs `sql` with `n` text parameters (NULL elements are SQL NULL). Returns
 * the result (caller clears) when it succeeded, else NULL with
 * "<what>: <server message>" in `err`.
 */
PGresult *tly_ctl_db_query(PGconn *conn, const char *what, const char *sql, int n, const char *const *params, char *err,
                           size_t errcap) __attribute__((warn_unused_result));

/** Prints a result as a table with a header row; SQL NULL prints as "-". */
void tly_ctl_db_print_table(const PGresult *res, FILE *out);

#endif
