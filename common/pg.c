/* Blocking libpq helpers with PostgreSQL-style error messages. */
#include "tally/pg.h"
#include "tally/log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static void
copy_message(const char *what, const char *msg, char *err, size_t errcap)
{
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        --n;
    snprintf(err, errcap, "%s: %.*s", what, (int)n, msg);
}

/* The DSN (a URI or key=value list) with the program's name as libpq's fallback_application_name. */
static void
connect_params(const char *dsn, const char *keys[3], const char *vals[3])
{
    keys[0] = "dbname";
    vals[0] = dsn;
    keys[1] = "fallback_application_name";
    vals[1] = program_invocation_short_name;
    keys[2] = vals[2] = NULL;
}

PGconn *
tly_pg_connect_start(const char *dsn)
{
    const char *keys[3], *vals[3];
    connect_params(dsn, keys, vals);
    return PQconnectStartParams(keys, vals, 1);
}

PGconn *
tly_pg_connect(const char *dsn, char *err, size_t errcap)
{
    const char *keys[3], *vals[3];
    connect_params(dsn, keys, vals);
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    if (conn != NULL)
        PQsetNoticeProcessor(conn, tly_log_pq_notice, NULL);
    if (PQstatus(conn) != CONNECTION_OK) {
        copy_message("could not connect to postgresql", PQerrorMessage(conn), err, errcap);
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

bool
tly_pg_ok(PGconn *conn, PGresult *res, const char *what, char *err, size_t errcap)
{
    ExecStatusType st = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return true;
    copy_message(what, res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(conn), err, errcap);
    return false;
}

int
tly_pg_exec(PGconn *conn, const char *sql, char *err, size_t errcap)
{
    PGresult *res = PQexec(conn, sql);
    bool ok = tly_pg_ok(conn, res, "could not execute statement", err, errcap);
    PQclear(res);
    return ok ? 0 : -1;
}

bool
tly_pg_broken(PGconn *conn)
{
    return conn == NULL || PQstatus(conn) != CONNECTION_OK;
}
