/* SQL helpers for the stack tests that read PostgreSQL directly (libpq, cmocka). */
#ifndef TLY_TEST_SQL_H
#define TLY_TEST_SQL_H

#include <libpq-fe.h>
#include <stdint.h>

/**
 * Runs `q` with `n` text parameters (NULL entries are SQL NULL; with none, `q`
 * may hold several statements); fails the test on any SQL error. Caller PQclears.
 */
PGresult *tly_test_sql(PGconn *db, const char *q, int n, const char *const *vals);

/** The first column of the first row as a string the caller frees ("" when there is no row or it is NULL). */
char *tly_test_sql_text(PGconn *db, const char *q, int n, const char *const *vals);

/** The first column of the first row as an integer (0 when there is no row or it is NULL). */
int64_t tly_test_sql_i64(PGconn *db, const char *q, int n, const char *const *vals);

#endif
