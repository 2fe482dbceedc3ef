/* Parameterised libpq statements and classification of their failures. */
#include "pgx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* SQLSTATE of the last failed statement on this thread; "" when none. */
static __thread char last_sqlstate[6];

static void
fail(PGconn *conn, PGresult *res, const char *what, char *err, size_t errcap)
{
    const char *msg = res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(conn);
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        --n;
    snprintf(err, errcap, "could not %s: %.*s", what, (int)n, msg);
    snprintf(last_sqlstate, sizeof(last_sqlstate), "%s", state != NULL ? state : "08000");
}

PGresult *
tly_pgx_query(PGconn *conn, const char *what, const char *sql, int n, const char *const *vals, char *err, size_t errcap)
{
    PGresult *res = PQexecParams(conn, sql, n, NULL, vals, NULL, NULL, 0);
    ExecStatusType st = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return res;
    fail(conn, res, what, err, errcap);
    PQclear(res);
    return NULL;
}

int
tly_pgx_exec(PGconn *conn, const char *what, const char *sql, int n, const char *const *vals, long *affected, char *err,
             size_t errcap)
{
    PGresult *res = tly_pgx_query(conn, what, sql, n, vals, err, errcap);
    if (res == NULL)
        return -1;
    if (affected != NULL)
        *affected = strtol(PQcmdTuples(res), NULL, 10);
    PQclear(res);
    return 0;
}

bool
tly_pgx_last_transient(PGconn *conn)
{
    static const char *transient_classes[] = {"08", "40", "53", "57", "58"};
    if (conn == NULL || PQstatus(conn) != CONNECTION_OK)
        return true;
    for (size_t i = 0; i < sizeof(transient_classes) / sizeof(transient_classes[0]); ++i)
        if (strncmp(last_sqlstate, transient_classes[i], 2) == 0)
            return true;
    return false;
}

void
tly_pgx_reset_last(void)
{
    last_sqlstate[0] = '\0';
}
