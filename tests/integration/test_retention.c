/*
 * The worker's retention role against the stack's PostgreSQL: a worker of
 * our own (--roles=retention, a pass every 200 ms, one day of retention)
 * deletes the consumer_dedup rows applied before that day and the
 * command_requests rows whose idempotency window ended before it, but keeps
 * a record whose job is not projected yet (GET /v1/jobs still needs it), and
 * keeps everything younger.
 *
 * The rows are two days old: older than our worker's one day, younger than
 * the stack worker's default of seven, so only our worker can delete them.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tly_test_http.h"
#include "tly_test_sql.h"
#include "tly_test_util.h"

#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static PGconn *db;
static char consumer[64], tenant[40];

/* Runs `q` with ($1 consumer, $2 tenant). */
static void
exec2(const char *q)
{
    const char *vals[] = {consumer, tenant};
    PQclear(tly_test_sql(db, q, 2, vals));
}

static int64_t
count(const char *q)
{
    const char *vals[] = {consumer, tenant};
    return tly_test_sql_i64(db, q, 2, vals);
}

#define DEDUP_LEFT "SELECT count(*) FROM consumer_dedup WHERE consumer = $1 AND $2 <> ''"
#define DEDUP_OLD_LEFT                                                                                                             \
    "SELECT count(*) FROM consumer_dedup WHERE consumer = $1 AND $2 <> '' AND applied_at < now() - interval '1 day'"
#define REQUESTS_LEFT(cond) "SELECT count(*) FROM command_requests WHERE $1 <> '' AND tenant_id = $2::uuid AND " cond

static void
seed(void)
{
    exec2("INSERT INTO tenants (id, name) VALUES ($2::uuid, 'retention-' || $1)");
    /* 300 dedup rows two days old, 5 an hour old */
    exec2("INSERT INTO consumer_dedup (consumer, event_id, applied_at) SELECT $1, gen_random_uuid(), "
          "now() - interval '2 days' FROM generate_series(1, 300) WHERE $2 <> ''");
    exec2("INSERT INTO consumer_dedup (consumer, event_id, applied_at) SELECT $1, gen_random_uuid(), "
          "now() - interval '1 hour' FROM generate_series(1, 5) WHERE $2 <> ''");
    /* command records: label in idempotency_key says what must happen to each */
    exec2("WITH r(label, state, age, projected) AS (VALUES ('projected-old', 'accepted', interval '3 days', true), "
          "('failed-old', 'failed', interval '3 days', false), ('unprojected-old', 'accepted', interval '3 days', false), "
          "('projected-young', 'accepted', interval '1 hour', true)), "
          "ins AS (INSERT INTO command_requests (job_id, event_id, tenant_id, idempotency_key, request_hash, state, "
          "locked_until, resource_type, resource_id, created_at, expires_at) "
          "SELECT gen_random_uuid(), gen_random_uuid(), $2::uuid, $1 || '-' || label, '\\x00', state, now(), 'account', "
          "gen_random_uuid(), now() - age, now() - age + interval '24 hours' FROM r RETURNING job_id, tenant_id, "
          "resource_id, idempotency_key, created_at) "
          "INSERT INTO jobs (id, tenant_id, status, resource_type, resource_id, created_at, updated_at) "
          "SELECT job_id, tenant_id, 'succeeded', 'account', resource_id, created_at, created_at FROM ins "
          "WHERE idempotency_key LIKE '%-projected-%'");
}

static pid_t
start_retention_worker(void)
{
    char path[1024], log[1024];
    snprintf(path, sizeof(path), "%s/tally-worker", tly_test_env("TALLY_BIN"));
    tly_test_log_path("retention-worker.log", log, sizeof(log));
    const char *extra[] = {"TALLY_WORKER_ROLES=retention",    "TALLY_ADMIN_PORT=0",
                           "TALLY_RETENTION_INTERVAL_MS=200", "TALLY_DEDUP_RETENTION_S=86400",
                           "TALLY_COMMAND_RETENTION_S=86400", NULL};
    size_t n = 0, k = 0;
    while (environ[n] != NULL)
        ++n;
    char **env = calloc(n + sizeof(extra) / sizeof(extra[0]) + 1, sizeof(*env));
    assert_non_null(env);
    for (size_t i = 0; i < n; ++i)
        env[k++] = environ[i];
    for (size_t i = 0; extra[i] != NULL; ++i)
        env[k++] = (char *)extra[i];
    char *argv[] = {path, NULL};
    pid_t pid = tly_test_spawn(argv, env, log, true);
    free(env);
    return pid;
}

static void
test_retention_deletes_only_what_is_past_its_use(void **state)
{
    (void)state;
    assert_int_equal(count(DEDUP_LEFT), 305);
    assert_int_equal(count(REQUESTS_LEFT("true")), 4);
    pid_t pid = start_retention_worker();
    int64_t deadline = tly_test_now_ms() + 20000;
    while (tly_test_now_ms() < deadline && (count(DEDUP_OLD_LEFT) > 0 || count(REQUESTS_LEFT("true")) > 2))
        tly_test_sleep_ms(100);
    /* what is past its use is gone */
    assert_int_equal(count(DEDUP_OLD_LEFT), 0);
    assert_int_equal(count(REQUESTS_LEFT("idempotency_key LIKE '%-projected-old'")), 0);
    assert_int_equal(count(REQUESTS_LEFT("idempotency_key LIKE '%-failed-old'")), 0);
    /* what is younger, or still the only record of its job, stays (and stays after more passes) */
    tly_test_sleep_ms(1000);
    assert_int_equal(count(DEDUP_LEFT), 5);
    assert_int_equal(count(REQUESTS_LEFT("idempotency_key LIKE '%-unprojected-old'")), 1);
    assert_int_equal(count(REQUESTS_LEFT("idempotency_key LIKE '%-projected-young'")), 1);
    /* SIGTERM: the role stops and the worker exits 0 */
    kill(pid, SIGTERM);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

static int
setup(void **state)
{
    (void)state;
    static const char *const pass[] = {"TALLY_PG_DSN", "TALLY_KAFKA_BROKERS", "TALLY_KAFKA_TOPIC"};
    for (size_t i = 0; i < sizeof(pass) / sizeof(pass[0]); ++i)
        setenv(pass[i], tly_test_env(pass[i]), 1);
    db = PQconnectdb(tly_test_env("TALLY_PG_DSN"));
    assert_int_equal(PQstatus(db), CONNECTION_OK);
    snprintf(consumer, sizeof(consumer), "retention-test-%d", (int)getpid());
    char *id = tly_test_sql_text(db, "SELECT gen_random_uuid()::text", 0, NULL);
    snprintf(tenant, sizeof(tenant), "%s", id);
    free(id);
    seed();
    return 0;
}

static int
teardown(void **state)
{
    (void)state;
    exec2("DELETE FROM consumer_dedup WHERE consumer = $1 AND $2 <> ''");
    exec2("DELETE FROM jobs WHERE tenant_id = $2::uuid AND $1 <> ''");
    exec2("DELETE FROM command_requests WHERE tenant_id = $2::uuid AND $1 <> ''");
    exec2("DELETE FROM tenants WHERE id = $2::uuid AND $1 <> ''");
    PQfinish(db);
    return 0;
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retention_deletes_only_what_is_past_its_use),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
