/* One blocking PostgreSQL connection per tallyctl run. */
#include "db.h"

#include "tally/pg.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* libpq prints every NOTICE by default ("relation ... already exists,
   skipping"); an operator wants only what may need attention. */
static void
on_notice(void *arg, const PGresult *res)
{
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (sev != NULL && strcmp(sev, "WARNING") == 0 && msg != NULL)
        fprintf(stderr, "tallyctl: postgresql warning: %s\n", msg);
}

PGconn *
tly_ctl_db_connect(const char *dsn, char *err, size_t errcap)
{
    PGconn *conn = tly_pg_connect(dsn, err, errcap);
    if (conn == NULL)
        return NULL;
    PQsetNoticeReceiver(conn, on_notice, NULL);
    /* visible in pg_stat_activity, e.g. next to a waiting advisory lock */
    if (tly_pg_exec(conn, "SET application_name = 'tallyctl'", err, errcap) != 0) {
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

PGconn *
tly_ctl_db_open(const tly_ctl_settings_t *settings)
{
    char err[1024];
    PGconn *conn = tly_ctl_db_connect(settings->pg_dsn, err, sizeof(err));
    if (conn == NULL)
        tly_ctl_error("%s", err);
    return conn;
}

PGresult *
tly_ctl_db_query(PGconn *conn, const char *what, const char *sql, int n, const char *const *params, char *err, size_t errcap)
{
    PGresult *res = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
    if (!tly_pg_ok(conn, res, what, err, errcap)) {
        PQclear(res);
        return NULL;
    }
    return res;
}

static const char *
cell(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? "-" : PQgetvalue(res, row, col);
}

void
tly_ctl_db_print_table(const PGresult *res, FILE *out)
{
    int ncols = PQnfields(res), nrows = PQntuples(res);
    int *width = calloc((size_t)ncols + 1, sizeof(*width));
    if (width == NULL)
        abort();
    for (int c = 0; c < ncols; ++c) {
        width[c] = (int)strlen(PQfname(res, c));
        for (int r = 0; r < nrows; ++r)
            if ((int)strlen(cell(res, r, c)) > width[c])
                width[c] = (int)strlen(cell(res, r, c));
    }
    for (int r = -1; r < nrows; ++r) {
        for (int c = 0; c < ncols; ++c) {
            const char *v = r < 0 ? PQfname(res, c) : cell(res, r, c);
            if (c + 1 < ncols)
                fprintf(out, "%-*s  ", width[c], v);
            else
                fprintf(out, "%s\n", v);
        }
    }
    free(width);
}
