/*
 * The asynchronous PostgreSQL pool against the real server: statements queued
 * together commit together (group commit), and one failing statement in a
 * group never takes the others down or lets a rolled-back one look
 * committed: each caller gets exactly its own statement's outcome.
 */
#include "tally/pgasync.h"
#include "tly_test_http.h"

#include <libpq-fe.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define N 40

static char table[64], insert_sql[256];
static const tly_pg_statement_t statements[] = {{"t_insert", insert_sql, 2}};

typedef struct st_outcome_t {
    int calls;
    ExecStatusType status;
    char txid[32];
    char key[16];
} outcome_t;

static outcome_t outcomes[N];
static int finished;

static void
on_done(void *data, PGresult *res, const char *err)
{
    outcome_t *o = data;
    o->calls++;
    o->status = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
        snprintf(o->txid, sizeof(o->txid), "%s", PQgetvalue(res, 0, 0));
    finished++;
}

static PGconn *
admin(void)
{
    PGconn *c = PQconnectdb(tly_test_env("TALLY_PG_DSN"));
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    return c;
}

static void
sql(PGconn *c, const char *q)
{
    PGresult *r = PQexec(c, q);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", q, PQerrorMessage(c));
    PQclear(r);
}

static long
count_rows(PGconn *c, const char *where)
{
    char q[256];
    snprintf(q, sizeof(q), "SELECT count(*) FROM %s WHERE %s", table, where);
    PGresult *r = PQexec(c, q);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    long n = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return n;
}

static void
run_until(h2o_evloop_t *loop, int want)
{
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (finished < want) {
        h2o_evloop_run(loop, 20);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec > 20)
            fail_msg("only %d of %d statements finished in 20 s", finished, want);
    }
}

/* Queues N inserts at once on a one-connection pool; `bad` (or -1) gets a value that cannot be cast. */
static void
run_group(int bad, int dup_of)
{
    h2o_evloop_t *loop = h2o_evloop_create();
    tly_pgpool_t *pool = tly_pgpool_create(loop, tly_test_env("TALLY_PG_DSN"), 1, statements, 1);
    for (int i = 0; i < 200 && !tly_pgpool_ready(pool); ++i)
        h2o_evloop_run(loop, 20);
    assert_true(tly_pgpool_ready(pool));
    /* let the connection finish preparing and become idle */
    for (int i = 0; i < 10; ++i)
        h2o_evloop_run(loop, 5);
    memset(outcomes, 0, sizeof(outcomes));
    finished = 0;
    for (int i = 0; i < N; ++i) {
        snprintf(outcomes[i].key, sizeof(outcomes[i].key), "k%d", i == dup_of + 1 && dup_of >= 0 ? dup_of : i);
        const char *vals[] = {outcomes[i].key, i == bad ? "not a number" : "1"};
        tly_pgpool_exec(pool, 0, vals, on_done, &outcomes[i]);
    }
    run_until(loop, N);
    tly_pgpool_destroy(pool);
    h2o_evloop_destroy(loop);
}

static int
setup(void **state)
{
    snprintf(table, sizeof(table), "pgasync_test_%d", (int)getpid());
    snprintf(insert_sql, sizeof(insert_sql), "INSERT INTO %s (k, v) VALUES ($1, $2::int) RETURNING txid_current()::text", table);
    PGconn *c = admin();
    char q[256];
    snprintf(q, sizeof(q), "CREATE TABLE %s (k text PRIMARY KEY, v int NOT NULL)", table);
    sql(c, q);
    PQfinish(c);
    return 0;
}

static int
teardown(void **state)
{
    PGconn *c = admin();
    char q[128];
    snprintf(q, sizeof(q), "DROP TABLE IF EXISTS %s", table);
    sql(c, q);
    PQfinish(c);
    return 0;
}

static void
truncate_table(void)
{
    PGconn *c = admin();
    char q[128];
    snprintf(q, sizeof(q), "TRUNCATE %s", table);
    sql(c, q);
    PQfinish(c);
}

/* Statements queued while the connection is busy go out together and commit in one transaction. */
static void
test_queued_statements_share_a_commit(void **state)
{
    truncate_table();
    run_group(-1, -1);
    int shared = 0;
    for (int i = 0; i < N; ++i) {
        assert_int_equal(outcomes[i].calls, 1);
        assert_int_equal(outcomes[i].status, PGRES_TUPLES_OK);
        for (int j = 0; j < i; ++j)
            if (strcmp(outcomes[i].txid, outcomes[j].txid) == 0) {
                shared++;
                break;
            }
    }
    /* the first statement goes alone (the connection was idle); the others were queued behind it */
    assert_true(shared >= N / 2);
    PGconn *c = admin();
    assert_int_equal(count_rows(c, "true"), N);
    PQfinish(c);
}

/* A statement that fails inside a group: it alone fails, every other one commits exactly once. */
static void
test_one_failure_fails_alone(void **state)
{
    truncate_table();
    run_group(17, -1);
    for (int i = 0; i < N; ++i) {
        assert_int_equal(outcomes[i].calls, 1);
        assert_int_equal(outcomes[i].status, i == 17 ? PGRES_FATAL_ERROR : PGRES_TUPLES_OK);
    }
    PGconn *c = admin();
    assert_int_equal(count_rows(c, "true"), N - 1);
    assert_int_equal(count_rows(c, "k = 'k17'"), 0);
    PQfinish(c);
}

/* A unique violation between two statements of the same group: the second fails, the first commits. */
static void
test_conflict_inside_a_group(void **state)
{
    truncate_table();
    run_group(-1, 20); /* statement 21 inserts k20 again */
    for (int i = 0; i < N; ++i) {
        assert_int_equal(outcomes[i].calls, 1);
        assert_int_equal(outcomes[i].status, i == 21 ? PGRES_FATAL_ERROR : PGRES_TUPLES_OK);
    }
    PGconn *c = admin();
    assert_int_equal(count_rows(c, "true"), N - 1);
    assert_int_equal(count_rows(c, "k = 'k20'"), 1);
    PQfinish(c);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_queued_statements_share_a_commit),
        cmocka_unit_test(test_one_failure_fails_alone),
        cmocka_unit_test(test_conflict_inside_a_group),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
