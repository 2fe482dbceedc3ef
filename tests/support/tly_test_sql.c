/* SQL helpers for the stack tests (see tly_test_sql.h). */
#include "tly_test_sql.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

PGresult *
tly_test_sql(PGconn *db, const char *q, int n, const char *const *vals)
{
    /* without parameters: the simple protocol, which also takes several statements */
    PGresult *res = n == 0 ? PQexec(db, q) : PQexecParams(db, q, n, NULL, vals, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        fprintf(stderr, "SQL failed: %s\n  %s\n", PQerrorMessage(db), q);
        PQclear(res);
        fail_msg("SQL failed");
    }
    return res;
}

char *
tly_test_sql_text(PGconn *db, const char *q, int n, const char *const *vals)
{
    PGresult *res = tly_test_sql(db, q, n, vals);
    char *s = strdup(PQntuples(res) > 0 && !PQgetisnull(res, 0, 0) ? PQgetvalue(res, 0, 0) : "");
    PQclear(res);
    if (s == NULL)
        abort();
    return s;
}

int64_t
tly_test_sql_i64(PGconn *db, const char *q, int n, const char *const *vals)
{
    char *s = tly_test_sql_text(db, q, n, vals);
    int64_t v = strtoll(s, NULL, 10);
    free(s);
    return v;
}
