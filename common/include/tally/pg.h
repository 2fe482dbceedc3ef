/*
 * Blocking PostgreSQL helpers for the worker and tallyctl (the HTTP services
 * use tally/pgasync.h, which never blocks the event loop).
 */
#ifndef TALLY_PG_H
#define TALLY_PG_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

/** Connects; returns NULL with `err` set ("could not connect to postgresql: ..."). */
PGconn *tly_pg_connect(const char *dsn, char *err, size_t errcap) __attribute__((warn_unused_result));

/**
 * PQconnectStart for `dsn` (a URI or key=value list). Every Tally connection
 * (this and tly_pg_connect) has the program's name ("tally-command-api", ...)
 * as libpq's fallback_application_name, so pg_stat_activity and the bench's
 * CPU split can tell the sessions apart; PGAPPNAME or the DSN's own
 * application_name still win. Caller frees with PQfinish.
 */
PGconn *tly_pg_connect_start(const char *dsn) __attribute__((warn_unused_result));

/**
 * Runs a statement without result rows (BEGIN, COMMIT, DDL). Returns 0, or -1
 * with the server's message in `err`.
 */
int tly_pg_exec(PGconn *conn, const char *sql, char *err, size_t errcap) __attribute__((warn_unused_result));

/** True when `res` is a success (COMMAND_OK or TUPLES_OK); otherwise fills `err`. */
bool tly_pg_ok(PGconn *conn, PGresult *res, const char *what, char *err, size_t errcap);

/** True when the connection is broken and must be re-opened. */
bool tly_pg_broken(PGconn *conn);

#endif
