/*
 * Non-blocking PostgreSQL for h2o event loops.
 *
 * A pool belongs to one loop (one thread). Each connection's socket is watched
 * by the loop (a dup of libpq's fd, registered with H2O_SOCKET_FLAG_DONT_READ
 * so that libpq itself reads it), so answers come back into the loop and no
 * thread ever waits on the database. Statements are prepared once per
 * connection, from the table given at creation. Queries queue in the pool and
 * go to the first idle connection; a broken connection fails its query and is
 * re-opened in the background.
 */
#ifndef TALLY_PGASYNC_H
#define TALLY_PGASYNC_H

#define H2O_USE_LIBUV 0
#include <h2o.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct st_tly_pgpool_t tly_pgpool_t;

typedef struct st_tly_pg_statement_t {
    const char *name;
    const char *sql;
    int nparams;
} tly_pg_statement_t;

/**
 * Called once per query in the loop thread. `res` is the result (borrowed:
 * freed after the callback returns) or NULL when the query could not run
 * (database unreachable, connection lost, queue full, timeout); `err` then says
 * why. A result with a SQL error is passed as is (check PQresultStatus).
 */
typedef void (*tly_pg_cb)(void *data, PGresult *res, const char *err);

/**
 * Creates a pool of `nconns` connections on `loop`. `statements` is borrowed
 * for the pool's life. Connections are opened in the background.
 */
tly_pgpool_t *tly_pgpool_create(h2o_loop_t *loop, const char *dsn, size_t nconns, const tly_pg_statement_t *statements,
                                size_t nstatements);
/** Closes every connection; pending callbacks are called with an error. */
void tly_pgpool_destroy(tly_pgpool_t *pool);

/**
 * Runs prepared statement `stmt` (an index into the pool's statement table)
 * with text parameters. `values` are copied, so they may be freed on return.
 */
void tly_pgpool_exec(tly_pgpool_t *pool, size_t stmt, const char *const *values, tly_pg_cb cb, void *data);

/**
 * Calls `cb(data, ms)` with the time each query spent from tly_pgpool_exec to
 * its answer (load shedding watches it); NULL stops.
 */
void tly_pgpool_observe(tly_pgpool_t *pool, void (*cb)(void *data, double ms), void *data);

/** True when at least one connection is open. */
bool tly_pgpool_ready(tly_pgpool_t *pool);

#endif
