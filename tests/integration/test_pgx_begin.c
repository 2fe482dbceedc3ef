/*
 * The worker's deferred BEGIN (services/worker/pgx.c, tly_pgx_begin), against
 * the real server: the BEGIN goes out with the transaction's first statement,
 * so everything after it is inside the transaction (rolled back, nothing
 * stays; committed, another session sees it); an error of that statement
 * leaves the transaction aborted until the rollback; a transaction that ran
 * nothing sends nothing; a forgotten BEGIN is never sent; COPY (which cannot
 * share the pipeline) sends the BEGIN first and runs inside the transaction.
 * And the deferred statements (tly_pgx_defer, tly_pgx_send): they run in
 * order, inside the transaction, read by the next query, sync or end; the
 * first failure is reported under its own name and nothing after it runs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/pgx.h"
#include "tly_test_http.h"
#include "tly_test_sql.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static PGconn *conn, *other;
static char table[64];

/* `agg` ("count(*)", "sum(x)") over the test table, as session `c` sees it. */
static long long
aggregate(PGconn *c, const char *agg)
{
    char q[128];
    snprintf(q, sizeof(q), "SELECT coalesce(%s, 0) FROM %s", agg, table);
    PGresult *res = tly_test_sql(c, q, 0, NULL);
    long long n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return n;
}

static long long
count_rows(PGconn *c)
{
    return aggregate(c, "count(*)");
}

static long long
sum_in(PGconn *c)
{
    return aggregate(c, "sum(x)");
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

/* ---- deferred statements ---------------------------------------------------- */

static int
send_insert(const char *what, const char *v, char *err, size_t errcap)
{
    char q[128];
    snprintf(q, sizeof(q), "INSERT INTO %s (x) VALUES ($1::bigint)", table);
    const char *vals[] = {v};
    return tly_pgx_send(conn, what, q, 1, vals, NULL, NULL, err, errcap);
}

/* Sends, then a query on the same connection sees them all (one round trip), then commit. */
static void
test_deferred_read_by_query_and_committed(void **state)
{
    char err[256], q[128];
    long long before = sum_in(other);
    tly_pgx_begin(conn);
    tly_pgx_defer(conn);
    assert_int_equal(send_insert("insert 1", "1000", err, sizeof(err)), 0);
    assert_int_equal(send_insert("insert 2", "2000", err, sizeof(err)), 0);
    /* not waited for: the other session cannot see them, and this one has not read their results */
    assert_int_equal(PQpipelineStatus(conn), PQ_PIPELINE_ON);
    snprintf(q, sizeof(q), "SELECT coalesce(sum(x), 0) FROM %s", table);
    PGresult *res = tly_pgx_query(conn, "sum", q, 0, NULL, err, sizeof(err));
    assert_non_null(res);
    assert_int_equal(strtoll(PQgetvalue(res, 0, 0), NULL, 10), before + 3000);
    PQclear(res);
    assert_int_equal(PQpipelineStatus(conn), PQ_PIPELINE_OFF);
    assert_int_equal(sum_in(other), before);
    tly_pgx_defer(NULL);
    assert_int_equal(tly_pgx_end(conn, true, err, sizeof(err)), 0);
    assert_int_equal(sum_in(other), before + 3000);
}

/* A failing deferred statement: the query after it is not run and reports it by name; rollback leaves nothing. */
static void
test_deferred_failure_is_reported_by_name(void **state)
{
    char err[256], q[128];
    long long before = sum_in(other);
    tly_pgx_begin(conn);
    tly_pgx_defer(conn);
    assert_int_equal(send_insert("insert good", "5", err, sizeof(err)), 0);
    assert_int_equal(send_insert("insert bad", "not a number", err, sizeof(err)), 0);
    assert_int_equal(send_insert("insert after", "7", err, sizeof(err)), 0);
    snprintf(q, sizeof(q), "UPDATE %s SET x = x + 1 RETURNING x", table);
    PGresult *res = tly_pgx_query(conn, "bump", q, 0, NULL, err, sizeof(err));
    assert_null(res);
    assert_non_null(strstr(err, "could not insert bad:"));
    assert_false(tly_pgx_last_transient(conn)); /* the statement's data: 22P02 */
    assert_true(tly_pgx_last_deferred());       /* the consumer blames the batch, not the query that read it */
    tly_pgx_defer(NULL);
    assert_int_equal(tly_pgx_end(conn, false, err, sizeof(err)), 0);
    assert_int_equal(PQtransactionStatus(conn), PQTRANS_IDLE);
    assert_int_equal(sum_in(other), before);
    assert_int_equal(sum_in(conn), before); /* the connection goes on */
}

/* tly_pgx_sync reads them (an error there too); tly_pgx_end(commit) reads what is left and commits it. */
static void
test_deferred_sync_and_end(void **state)
{
    char err[256];
    long long before = sum_in(other);
    tly_pgx_begin(conn);
    tly_pgx_defer(conn);
    assert_int_equal(send_insert("insert a", "10", err, sizeof(err)), 0);
    assert_int_equal(tly_pgx_sync(conn, err, sizeof(err)), 0);
    assert_int_equal(tly_pgx_sync(conn, err, sizeof(err)), 0); /* nothing pending: nothing sent */
    for (int i = 0; i < 40; ++i)                               /* more than one pipeline holds: read on the way */
        assert_int_equal(send_insert("insert many", "1", err, sizeof(err)), 0);
    tly_pgx_defer(NULL);
    assert_int_equal(tly_pgx_end(conn, true, err, sizeof(err)), 0);
    assert_int_equal(sum_in(other), before + 50);

    tly_pgx_begin(conn);
    tly_pgx_defer(conn);
    assert_int_equal(send_insert("insert broken", "x", err, sizeof(err)), 0);
    assert_int_equal(tly_pgx_sync(conn, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "could not insert broken:"));
    tly_pgx_defer(NULL);
    assert_int_equal(tly_pgx_end(conn, false, err, sizeof(err)), 0);

    /* a failure read by the commit: -1, and nothing stays */
    tly_pgx_begin(conn);
    tly_pgx_defer(conn);
    assert_int_equal(send_insert("insert ok", "100", err, sizeof(err)), 0);
    assert_int_equal(send_insert("insert late", "y", err, sizeof(err)), 0);
    assert_int_equal(tly_pgx_end(conn, true, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "could not insert late:"));
    assert_int_equal(PQtransactionStatus(conn), PQTRANS_IDLE);
    assert_int_equal(sum_in(other), before + 50);
}

/* Without tly_pgx_defer a send runs at once: its error is returned by the send itself. */
static void
test_send_without_defer_runs_at_once(void **state)
{
    char err[256];
    long long before = sum_in(other);
    tly_pgx_begin(conn);
    assert_int_equal(send_insert("insert now", "3", err, sizeof(err)), 0);
    assert_int_equal(PQpipelineStatus(conn), PQ_PIPELINE_OFF);
    assert_int_equal(send_insert("insert wrong", "z", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "could not insert wrong:"));
    assert_false(tly_pgx_last_deferred());
    assert_int_equal(tly_pgx_end(conn, false, err, sizeof(err)), 0);
    assert_int_equal(sum_in(other), before);
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
        cmocka_unit_test(test_deferred_read_by_query_and_committed),
        cmocka_unit_test(test_deferred_failure_is_reported_by_name),
        cmocka_unit_test(test_deferred_sync_and_end),
        cmocka_unit_test(test_send_without_defer_runs_at_once),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
