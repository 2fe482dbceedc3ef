/*
 * The worker's deferred BEGIN (services/worker/pgx.c, tly_pgx_begin), against
 * the real server: the BEGIN goes out with the transaction's first statement,
 * so everything after it is inside the transaction (rolled back, nothing
 * stays; committed, another session sees it); an error of that statement
 * leaves the transaction aborted until the rollback; a transaction that ran
 * nothing sends nothing; a forgotten BEGIN is never sent; COPY (which cannot
 * share the pipeline) sends the BEGIN first and runs inside the transaction.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "pgx.h"
#include "tly_test_http.h"
#include "tly_test_sql.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static PGconn *conn, *other;
static char table[64];

static long long
count_rows(PGconn *c)
{
    char q[128];
    snprintf(q, sizeof(q), "SELECT count(*) FROM %s", table);
    PGresult *res = tly_test_sql(c, q, 0, NULL);
    long long n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return n;
}

static void
insert(long v)
{
    char q[128], err[256], val[32];
    snprintf(q, sizeof(q), "INSERT INTO %s (x) VALUES ($1)", table);
    snprintf(val, sizeof(val), "%ld", v);
    const char *vals[] = {val};
    assert_int_equal(tly_pgx_exec(conn, "insert", q, 1, vals, NULL, err, sizeof(err)), 0);
}

static int
setup(void **state)
{
    char q[128];
    conn = PQconnectdb(tly_test_env("TALLY_PG_DSN"));
    other = PQconnectdb(tly_test_env("TALLY_PG_DSN"));
    assert_int_equal(PQstatus(conn), CONNECTION_OK);
    assert_int_equal(PQstatus(other), CONNECTION_OK);
    snprintf(table, sizeof(table), "test_pgx_begin_%d", (int)getpid());
    snprintf(q, sizeof(q), "CREATE TABLE %s (x bigint)", table);
    PQclear(tly_test_sql(conn, q, 0, NULL));
    return 0;
}

static int
teardown(void **state)
{
    char q[128];
    snprintf(q, sizeof(q), "DROP TABLE IF EXISTS %s", table);
    PQclear(tly_test_sql(other, q, 0, NULL));
    PQfinish(conn);
    PQfinish(other);
    return 0;
}

static void
test_rollback_undoes_the_first_statement(void **state)
{
    char err[256];
    long long before = count_rows(other);
    tly_pgx_begin(conn);
    assert_int_equal(PQtransactionStatus(conn), PQTRANS_IDLE); /* nothing sent yet */
    insert(1);
    assert_int_equal(PQtransactionStatus(conn), PQTRANS_INTRANS);
    insert(2);
    assert_int_equal(count_rows(other), before); /* not committed */
    assert_int_equal(tly_pgx_end(conn, false, err, sizeof(err)), 0);
    assert_int_equal(PQtransactionStatus(conn), PQTRANS_IDLE);
    assert_int_equal(count_rows(other), before);
}

static void
test_commit_is_seen_by_another_session(void **state)
{
    char err[256];
    long long before = count_rows(other);
    tly_pgx_begin(conn);
    insert(3);
    insert(4);
    assert_int_equal(count_rows(other), before);
    assert_int_equal(tly_pgx_end(conn, true, err, sizeof(err)), 0);
    assert_int_equal(count_rows(other), before + 2);
}

static void
test_failing_first_statement(void **state)
{
    char err[256] = "";
    tly_pgx_begin(conn);
    PGresult *res = tly_pgx_query(conn, "divide", "SELECT 1 / $1::int", 1, (const char *const[]){"0"}, err, sizeof(err));
    assert_null(res);
    assert_non_null(strstr(err, "division by zero"));
    assert_false(tly_pgx_last_transient(conn));                   /* the statement's own error, not the connection's */
    assert_int_equal(PQtransactionStatus(conn), PQTRANS_INERROR); /* the BEGIN ran: the transaction is aborted */
    assert_int_equal(tly_pgx_end(conn, false, err, sizeof(err)), 0);
    assert_int_equal(PQtransactionStatus(conn), PQTRANS_IDLE);
}

static void
test_nothing_run_sends_nothing(void **state)
{
    char err[256];
    long long before = count_rows(other);
    tly_pgx_begin(conn);
    assert_int_equal(tly_pgx_end(conn, true, err, sizeof(err)), 0);
    /* the next statement is not inside a transaction someone forgot */
    insert(5);
    assert_int_equal(PQtransactionStatus(conn), PQTRANS_IDLE);
    assert_int_equal(count_rows(other), before + 1);
    tly_pgx_begin(conn);
    tly_pgx_begin(NULL); /* forgotten */
    insert(6);
    assert_int_equal(PQtransactionStatus(conn), PQTRANS_IDLE);
    assert_int_equal(count_rows(other), before + 2);
}

static void
test_copy_runs_inside(void **state)
{
    char err[256], q[128];
    long long before = count_rows(other);
    snprintf(q, sizeof(q), "COPY %s (x) FROM STDIN", table);
    tly_pgx_begin(conn);
    assert_int_equal(tly_pgx_copy(conn, "copy", q, "7\n8\n9\n", 6, err, sizeof(err)), 0);
    assert_int_equal(PQtransactionStatus(conn), PQTRANS_INTRANS);
    insert(10);
    assert_int_equal(count_rows(other), before);
    assert_int_equal(tly_pgx_end(conn, false, err, sizeof(err)), 0);
    assert_int_equal(count_rows(other), before);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rollback_undoes_the_first_statement),
        cmocka_unit_test(test_commit_is_seen_by_another_session),
        cmocka_unit_test(test_failing_first_statement),
        cmocka_unit_test(test_nothing_run_sends_nothing),
        cmocka_unit_test(test_copy_runs_inside),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
