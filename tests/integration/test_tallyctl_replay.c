/*
 * tallyctl replay, verify and dlq against the real stack:
 *
 *   test_replay_during_load: commands flow through the API while `tallyctl
 *     replay` rebuilds and swaps; afterwards `tallyctl verify` passes.
 *   test_replay_killed_resumes: a copy replay is SIGKILLed after a few
 *     batches and run again: it resumes and ends equal to an uninterrupted
 *     copy (the history holds duplicated events); a swap replay stopped after
 *     3 batches resumes and swaps, and verify passes.
 *   test_replay_yields_to_live_traffic: while another session keeps running
 *     statements, a copy replay runs at its --busy-rate (its summary says for
 *     how long, and it takes at least that long); once the session stops, it
 *     says the database is quiet and goes back to full speed.
 *   test_point_in_time: a known history (times in 2020) replayed with
 *     --until to two moments gives the balances of those moments.
 *   test_dead_letter_retry: a deposit the projector cannot apply (a CHECK
 *     constraint added for the test: the "bug") is parked; after the fix
 *     `tallyctl dlq retry` applies it and verify passes.
 *   test_mixed_versions: FundsDeposited v1 and v2 in one log replay to the
 *     rows the live projector built (skipped until the projection knows v2).
 *
 * Synthetic events are produced to tally.events directly (as the relay
 * would); the live projector applies them too, so the live tables stay a
 * projection of the log.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/ledger/projection.h"
#include "tly_test_http.h"
#include "tly_test_sql.h"
#include "tly_test_util.h"

#include "tally/clock.h"
#include "tally/envelope.h"
#include "tally/kafka.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *bin_dir;
static PGconn *db;
static rd_kafka_t *producer;
/* Partitions of the event topic, read from the broker at start. */
static int topic_partitions;

#define sql(q) PQclear(tly_test_sql(db, (q), 0, NULL)) /* statements run for their effect */
#define sql_text(q) tly_test_sql_text(db, (q), 0, NULL)
#define sql_i64(q) tly_test_sql_i64(db, (q), 0, NULL)

/* Runs tallyctl with `args` (a shell-quoted string); output (stdout+stderr) into `out`. Returns the exit code. */
static int
ctl(const char *args, char *out, size_t cap)
{
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "'%s/tallyctl' %s 2>&1", bin_dir, args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    fprintf(stderr, "$ tallyctl %s -> %d\n%s", args, WIFEXITED(st) ? WEXITSTATUS(st) : -1, out);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* --- synthetic events ------------------------------------------------------ */

static void
produce(tly_envelope_t *env)
{
    for (;;) {
        rd_kafka_resp_err_t e = tly_kafka_produce_envelope(producer, tly_test_env("TALLY_KAFKA_TOPIC"), env, NULL, NULL);
        if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
            break;
        assert_int_equal(e, RD_KAFKA_RESP_ERR__QUEUE_FULL);
        rd_kafka_poll(producer, 10);
    }
    rd_kafka_poll(producer, 0);
}

static void
flush_producer(void)
{
    assert_int_equal(rd_kafka_flush(producer, 30000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

static void
make_event(tly_envelope_t *env, const char *type, int version, const tly_uuid_t *account, const tly_uuid_t *tenant, int64_t at_us,
           json_t *data)
{
    memset(env, 0, sizeof(*env));
    env->id = tly_uuid_v4();
    snprintf(env->type, sizeof(env->type), "%s", type);
    env->version = version;
    snprintf(env->aggregate_type, sizeof(env->aggregate_type), "account");
    env->aggregate_id = *account;
    env->tenant_id = *tenant;
    env->correlation_id = env->id;
    env->occurred_at_us = at_us;
    env->data = data;
}

static void
emit(const char *type, int version, const tly_uuid_t *account, const tly_uuid_t *tenant, int64_t at_us, json_t *data, bool twice)
{
    tly_envelope_t env;
    make_event(&env, type, version, account, tenant, at_us, data);
    produce(&env);
    if (twice)
        produce(&env); /* the relay republishing after a crash: same id at a second offset */
    json_decref(env.data);
}

static json_t *
money(int64_t amount, int64_t after)
{
    return json_pack("{s:I, s:s, s:I, s:n}", "amount", (json_int_t)amount, "currency", "EUR", "balance_after", (json_int_t)after,
                     "reference");
}

/* A synthetic history: n accounts, deposits and withdrawals with consistent balances; ~1 % duplicated. Returns events. */
static int
produce_history(int naccounts, int per_account, uint64_t seed)
{
    tly_uuid_t tenant = tly_uuid_v4();
    int count = 0;
    int64_t now = tly_clock_now_us();
    for (int a = 0; a < naccounts; ++a) {
        tly_uuid_t acc = tly_uuid_v4();
        emit("AccountOpened", 1, &acc, &tenant, now, json_pack("{s:s, s:s}", "currency", "EUR", "label", "synthetic"), false);
        ++count;
        int64_t balance = 0;
        for (int i = 0; i < per_account; ++i) {
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            int64_t amount = 1 + (int64_t)((seed >> 33) % 500);
            bool dup = ((seed >> 20) % 100) == 0;
            if ((seed >> 40) % 3 == 0 && balance >= amount) {
                balance -= amount;
                emit("FundsWithdrawn", 1, &acc, &tenant, now, money(amount, balance), dup);
            } else {
                balance += amount;
                emit("FundsDeposited", 1, &acc, &tenant, now, money(amount, balance), dup);
            }
            count += dup ? 2 : 1;
        }
    }
    flush_producer();
    return count;
}

/* Waits until the live projector has applied the whole log and the outbox is empty. */
static void
wait_settled(int timeout_s)
{
    char out[4096];
    for (int waited = 0; waited < timeout_s * 1000; waited += 500) {
        int64_t queued = sql_i64("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')");
        int64_t outbox = sql_i64("SELECT count(*) FROM outbox");
        int64_t applied = sql_i64("SELECT coalesce(sum(next_offset), 0) FROM consumer_positions WHERE consumer = 'projector'");
        /* the log's end: tallyctl events tail prints nothing we need; ask the broker through a tiny replay-free path */
        int64_t high = 0;
        rd_kafka_t *rk = producer;
        for (int p = 0; p < topic_partitions; ++p) {
            int64_t lo, hi;
            if (rd_kafka_query_watermark_offsets(rk, tly_test_env("TALLY_KAFKA_TOPIC"), p, &lo, &hi, 5000) ==
                RD_KAFKA_RESP_ERR_NO_ERROR)
                high += hi;
        }
        if (queued == 0 && outbox == 0 && applied == high)
            return;
        tly_test_sleep_ms(500);
    }
    (void)out;
    fail_msg("the live projector did not settle within %d s", timeout_s);
}

/* --- API load -------------------------------------------------------------- */

#define LOAD_ACCOUNTS 10

typedef struct st_load_t {
    char accounts[LOAD_ACCOUNTS][40];
    int batches;
    int ok;
} load_t;

static void
open_accounts(load_t *l)
{
    for (int i = 0; i < LOAD_ACCOUNTS; ++i) {
        tly_test_response_t r = tly_test_request("POST", "/v1/accounts", tly_test_env("TALLY_API_KEY"),
                                                 "{\"currency\":\"EUR\",\"label\":\"replay-load\"}",
                                                 (const char *const[]){"Content-Type: application/json", NULL});
        assert_int_equal(r.status, 202);
        const char *id = json_string_value(json_object_get(json_object_get(json_object_get(r.json, "job"), "resource"), "id"));
        assert_non_null(id);
        snprintf(l->accounts[i], sizeof(l->accounts[i]), "%s", id);
        tly_test_response_free(&r);
    }
}

static void *
load_main(void *arg)
{
    load_t *l = arg;
    unsigned seed = 7;
    for (int b = 0; b < l->batches; ++b) {
        json_t *reqs = json_array();
        for (int i = 0; i < 50; ++i) {
            char path[128], key[48];
            int a = rand_r(&seed) % LOAD_ACCOUNTS;
            bool dep = rand_r(&seed) % 3 != 0;
            snprintf(path, sizeof(path), "/v1/accounts/%s/%s", l->accounts[a], dep ? "deposits" : "withdrawals");
            tly_uuid_t k = tly_uuid_v4();
            tly_uuid_format(&k, key);
            json_array_append_new(reqs, json_pack("{s:s, s:{s:i, s:s}, s:s}", "path", path, "body", "amount",
                                                  1 + rand_r(&seed) % 300, "currency", "EUR", "idempotency_key", key));
        }
        json_t *body = json_pack("{s:o}", "requests", reqs);
        char *s = json_dumps(body, JSON_COMPACT);
        tly_test_response_t r = tly_test_request("POST", "/v1/batch", tly_test_env("TALLY_API_KEY"), s,
                                                 (const char *const[]){"Content-Type: application/json", NULL});
        if (r.status == 200)
            l->ok++;
        tly_test_response_free(&r);
        free(s);
        json_decref(body);
        tly_test_sleep_ms(100);
    }
    return NULL;
}

/* --- tests ----------------------------------------------------------------- */

static void
test_replay_during_load(void **state)
{
    char out[65536];
    load_t l = {.batches = 40};
    open_accounts(&l);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, load_main, &l), 0);
    tly_test_sleep_ms(1500);
    int rc = ctl("replay", out, sizeof(out));
    pthread_join(th, NULL);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "swapped into public"));
    assert_true(l.ok >= l.batches - 2);
    wait_settled(120);
    rc = ctl("verify --quiet", out, sizeof(out));
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "result: OK"));
    assert_int_equal(sql_i64("SELECT count(*) FROM pg_namespace WHERE nspname ~ '^tally_(shadow|backup)_'"), 0);
}

static void
test_replay_killed_resumes(void **state)
{
    char out[65536];
    int n = produce_history(200, 100, 42);
    fprintf(stderr, "produced %d synthetic events\n", n);
    sql("DROP SCHEMA IF EXISTS killtest CASCADE");
    sql("DROP SCHEMA IF EXISTS killref CASCADE");
    /* a copy replay, SIGKILLed after a few batches */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char path[1024];
        snprintf(path, sizeof(path), "%s/tallyctl", bin_dir);
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 2);
        execl(path, "tallyctl", "replay", "--into", "killtest", "--batch", "500", (char *)NULL);
        _exit(127);
    }
    int64_t done = 0;
    for (int waited = 0; waited < 60000; waited += 20) {
        PGresult *res = PQexec(db, "SELECT coalesce(sum(next_offset), 0) FROM killtest._replay_positions");
        if (PQresultStatus(res) == PGRES_TUPLES_OK)
            done = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        PQclear(res);
        if (done >= 1500)
            break;
        tly_test_sleep_ms(20);
    }
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    assert_true(WIFSIGNALED(st));
    int64_t at_kill = sql_i64("SELECT sum(next_offset) FROM killtest._replay_positions");
    int64_t total = sql_i64("SELECT sum(end_offset) FROM killtest._replay_positions");
    fprintf(stderr, "killed at %" PRId64 " of %" PRId64 " offsets\n", at_kill, total);
    assert_true(at_kill > 0 && at_kill < total);
    assert_int_equal(ctl("replay --into killtest", out, sizeof(out)), 0);
    assert_non_null(strstr(out, "resuming killtest"));
    /* the same copy without a kill, to the same ends */
    char until[8192] = "", *ends = sql_text("SELECT string_agg(partition || ':' || end_offset, ',' ORDER BY partition) "
                                            "FROM killtest._replay_positions");
    snprintf(until, sizeof(until), "replay --into killref --quiet --until %s", ends);
    free(ends);
    assert_int_equal(ctl(until, out, sizeof(out)), 0);
    const char *rate = strstr(out, "events/s");
    if (rate != NULL)
        fprintf(stderr, "uninterrupted copy: %s\n", out);
    const char *tables[] = {"accounts", "ledger_entries", "jobs"};
    for (int i = 0; i < 3; ++i) {
        char q[1024];
        snprintf(q, sizeof(q),
                 "SELECT (SELECT md5(string_agg(md5(x::text), '' ORDER BY id)) FROM killtest.%s x) = "
                 "(SELECT md5(string_agg(md5(x::text), '' ORDER BY id)) FROM killref.%s x)",
                 tables[i], tables[i]);
        char *same = sql_text(q);
        assert_string_equal(same, "t");
        free(same);
    }
    /* the same event ids applied (16 bytes each, one row per batch) */
    assert_int_equal(sql_i64("SELECT sum(length(ids)) / 16 FROM killtest._replay_applied"),
                     sql_i64("SELECT sum(length(ids)) / 16 FROM killref._replay_applied"));
    sql("DROP SCHEMA killtest CASCADE");
    sql("DROP SCHEMA killref CASCADE");
    /* a swap replay stopped after 3 batches (as if killed), then resumed and swapped */
    setenv("TALLY_REPLAY_MAX_BATCHES", "3", 1);
    assert_int_equal(ctl("replay --quiet --batch 1000", out, sizeof(out)), 1);
    unsetenv("TALLY_REPLAY_MAX_BATCHES");
    assert_non_null(strstr(out, "run again to resume"));
    wait_settled(180);
    assert_int_equal(ctl("replay", out, sizeof(out)), 0);
    assert_non_null(strstr(out, "resuming tally_shadow_"));
    assert_non_null(strstr(out, "swapped into public"));
    assert_int_equal(ctl("verify --quiet", out, sizeof(out)), 0);
}

/* A session that keeps running statements, as the live services do, until told to stop. */
typedef struct st_busy_t {
    volatile bool stop;
    int statements;
} busy_t;

static void *
busy_main(void *arg)
{
    busy_t *b = arg;
    PGconn *c = PQconnectdb(tly_test_env("TALLY_PG_DSN"));
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    while (!b->stop) {
        PQclear(PQexec(c, "SELECT pg_sleep(0.05)"));
        b->statements++;
    }
    PQfinish(c);
    return NULL;
}

/* Runs tallyctl with TALLY_KAFKA_TOPIC set to `topic` for that run only. */
static int
ctl_topic(const char *topic, const char *args, char *out, size_t cap)
{
    char live[256];
    snprintf(live, sizeof(live), "%s", tly_test_env("TALLY_KAFKA_TOPIC"));
    setenv("TALLY_KAFKA_TOPIC", topic, 1);
    int rc = ctl(args, out, cap);
    setenv("TALLY_KAFKA_TOPIC", live, 1);
    return rc;
}

static void
test_replay_yields_to_live_traffic(void **state)
{
    char out[65536], err[256], topic[64], live[256];
    const int rate = 1000;
    /* a history of its own, so the time at the busy rate does not depend on what earlier tests wrote */
    snprintf(topic, sizeof(topic), "tally.test.yield.%d", (int)getpid());
    assert_int_equal(tly_kafka_create_topic(tly_test_env("TALLY_KAFKA_BROKERS"), topic, 3, 10000, err, sizeof(err)), 0);
    snprintf(live, sizeof(live), "%s", tly_test_env("TALLY_KAFKA_TOPIC"));
    setenv("TALLY_KAFKA_TOPIC", topic, 1);
    int64_t events = produce_history(20, 150, 99);
    setenv("TALLY_KAFKA_TOPIC", live, 1);
    assert_true(events >= 3000);
    sql("DROP SCHEMA IF EXISTS yield_copy CASCADE");

    busy_t b = {0};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, busy_main, &b), 0);
    tly_test_sleep_ms(300);
    int64_t t0 = tly_clock_mono_us();
    char args[128];
    snprintf(args, sizeof(args), "replay --into yield_copy --busy-rate %d", rate);
    int rc = ctl_topic(topic, args, out, sizeof(out));
    double secs = (double)(tly_clock_mono_us() - t0) / 1e6;
    b.stop = true;
    pthread_join(th, NULL);
    assert_int_equal(rc, 0);
    assert_true(b.statements > 10);
    assert_non_null(strstr(out, "live traffic: slowing to the busy rate"));
    char want[64];
    snprintf(want, sizeof(want), "%" PRId64 " events read (", events);
    assert_non_null(strstr(out, want));
    const char *y = strstr(out, "while live traffic was seen: ");
    assert_non_null(y);
    double yielded = strtod(y + strlen("while live traffic was seen: "), NULL);
    assert_true(yielded > 0.8 * (double)events / rate);
    /* at the busy rate throughout: it takes about events/rate, not the fraction of a second it takes when quiet */
    assert_true(secs >= 0.8 * (double)events / rate);
    sql("DROP SCHEMA yield_copy CASCADE");

    /* the same replay with nobody else working: full speed, never slowed */
    wait_settled(60);
    t0 = tly_clock_mono_us();
    rc = ctl_topic(topic, args, out, sizeof(out));
    secs = (double)(tly_clock_mono_us() - t0) / 1e6;
    assert_int_equal(rc, 0);
    assert_null(strstr(out, "slowing to the busy rate"));
    assert_non_null(strstr(out, "while live traffic was seen: 0.0 s"));
    assert_true(secs < 0.8 * (double)events / rate);
    sql("DROP SCHEMA yield_copy CASCADE");
    /* --max-rate fixes the rate: no watch, no busy-rate line */
    rc = ctl_topic(topic, "replay --into yield_copy --max-rate 1000000", out, sizeof(out));
    assert_int_equal(rc, 0);
    assert_null(strstr(out, "while live traffic was seen"));
    sql("DROP SCHEMA yield_copy CASCADE");
}

static void
test_point_in_time(void **state)
{
    char out[65536];
    tly_uuid_t tenant = tly_uuid_v4(), acc = tly_uuid_v4();
    char acc_s[TLY_UUID_STR_LEN + 1], q[512];
    tly_uuid_format(&acc, acc_s);
    int64_t t0;
    assert_true(tly_clock_parse_rfc3339("2020-01-01T00:00:00Z", &t0));
    const int64_t hour = 3600LL * 1000000;
    emit("AccountOpened", 1, &acc, &tenant, t0, json_pack("{s:s, s:s}", "currency", "EUR", "label", "pit"), false);
    emit("FundsDeposited", 1, &acc, &tenant, t0 + hour, money(100, 100), false);
    emit("FundsDeposited", 1, &acc, &tenant, t0 + 2 * hour, money(50, 150), true);
    emit("FundsWithdrawn", 1, &acc, &tenant, t0 + 3 * hour, money(30, 120), false);
    flush_producer();
    sql("DROP SCHEMA IF EXISTS pit_a CASCADE");
    sql("DROP SCHEMA IF EXISTS pit_b CASCADE");
    assert_int_equal(ctl("replay --quiet --until 2020-01-01T02:30:00Z --into pit_a", out, sizeof(out)), 0);
    assert_int_equal(
        ctl("replay --quiet --until 2020-01-01T04:00:00Z --into pit_b --projection accounts,ledger_entries", out, sizeof(out)), 0);
    snprintf(q, sizeof(q), "SELECT balance || '/' || version FROM pit_a.accounts WHERE id = '%s'", acc_s);
    char *v = sql_text(q);
    assert_string_equal(v, "150/3");
    free(v);
    snprintf(q, sizeof(q), "SELECT count(*) || '/' || sum(amount) FROM pit_a.ledger_entries WHERE account_id = '%s'", acc_s);
    v = sql_text(q);
    assert_string_equal(v, "2/150");
    free(v);
    snprintf(q, sizeof(q), "SELECT balance || '/' || version FROM pit_b.accounts WHERE id = '%s'", acc_s);
    v = sql_text(q);
    assert_string_equal(v, "120/4");
    free(v);
    /* nothing after 2020 in the copies: every other event is newer */
    assert_int_equal(sql_i64("SELECT count(*) FROM pit_a.accounts WHERE updated_at > '2020-01-01T02:30:00Z'"), 0);
    assert_int_equal(sql_i64("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                             "WHERE n.nspname = 'pit_b' AND c.relname = 'jobs'"),
                     0);
    /* a finished copy is not rebuilt by accident */
    assert_int_equal(
        ctl("replay --quiet --until 2020-01-01T04:00:00Z --into pit_b --projection accounts,ledger_entries", out, sizeof(out)), 1);
    assert_non_null(strstr(out, "finished replay"));
    sql("DROP SCHEMA pit_a CASCADE");
    sql("DROP SCHEMA pit_b CASCADE");
}

static void
test_dead_letter_retry(void **state)
{
    char out[65536], q[512];
    load_t l;
    open_accounts(&l);
    int64_t before = sql_i64("SELECT count(*) FROM dead_letters WHERE consumer = 'projector'");
    /* the "bug": the projection cannot insert a ledger entry of 777 */
    sql("ALTER TABLE ledger_entries ADD CONSTRAINT test_no_777 CHECK (amount <> 777) NOT VALID");
    char path[128], key[80];
    snprintf(path, sizeof(path), "/v1/accounts/%s/deposits", l.accounts[0]);
    tly_uuid_t k = tly_uuid_v4();
    char ks[40];
    tly_uuid_format(&k, ks);
    snprintf(key, sizeof(key), "Idempotency-Key: %s", ks);
    tly_test_response_t r = tly_test_request("POST", path, tly_test_env("TALLY_API_KEY"), "{\"amount\":777,\"currency\":\"EUR\"}",
                                             (const char *const[]){"Content-Type: application/json", key, NULL});
    assert_int_equal(r.status, 202);
    char job[40];
    snprintf(job, sizeof(job), "%s", json_string_value(json_object_get(json_object_get(r.json, "job"), "id")));
    tly_test_response_free(&r);
    int64_t dl = 0;
    for (int waited = 0; waited < 30000 && dl == 0; waited += 200) {
        tly_test_sleep_ms(200);
        dl = sql_i64("SELECT coalesce(max(id), 0) FROM dead_letters WHERE consumer = 'projector' AND payload LIKE "
                     "'%FundsDeposited%777%'");
    }
    assert_true(dl > 0);
    assert_true(sql_i64("SELECT count(*) FROM dead_letters WHERE consumer = 'projector'") > before);
    snprintf(q, sizeof(q), "SELECT status || '/' || error_code FROM jobs WHERE id = '%s'", job);
    char *v = sql_text(q);
    assert_string_equal(v, "failed/dead_lettered");
    free(v);
    char args[128];
    snprintf(args, sizeof(args), "dlq show %" PRId64, dl);
    assert_int_equal(ctl(args, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "\"type\": \"FundsDeposited\""));
    assert_int_equal(ctl("dlq list --consumer projector", out, sizeof(out)), 0);
    /* still broken: retry fails and keeps the dead letter */
    snprintf(args, sizeof(args), "dlq retry %" PRId64, dl);
    assert_int_equal(ctl(args, out, sizeof(out)), 1);
    assert_non_null(strstr(out, "still fails"));
    /* the fix, then the retry */
    sql("ALTER TABLE ledger_entries DROP CONSTRAINT test_no_777");
    assert_int_equal(ctl(args, out, sizeof(out)), 0);
    snprintf(q, sizeof(q), "SELECT count(*) FROM dead_letters WHERE id = %" PRId64, dl);
    assert_int_equal(sql_i64(q), 0);
    snprintf(q, sizeof(q), "SELECT status || '/' || version FROM jobs WHERE id = '%s'", job);
    v = sql_text(q);
    assert_string_equal(v, "succeeded/3"); /* version = rank of the status */
    free(v);
    snprintf(q, sizeof(q), "SELECT balance FROM accounts WHERE id = '%s'", l.accounts[0]);
    assert_int_equal(sql_i64(q), 777);
    wait_settled(60);
    assert_int_equal(ctl("verify --quiet", out, sizeof(out)), 0);
    /* a decider dead letter: retry refuses and says why */
    snprintf(q, sizeof(q),
             "INSERT INTO dead_letters (consumer, topic, partition, \"offset\", payload, error, attempts) "
             "VALUES ('decider', 'tally.events', 0, -%" PRId64 ", '{}', 'test', 5) RETURNING id",
             (int64_t)time(NULL));
    int64_t ddl = sql_i64(q);
    snprintf(args, sizeof(args), "dlq retry %" PRId64, ddl);
    assert_int_equal(ctl(args, out, sizeof(out)), 1);
    assert_non_null(strstr(out, "two"));
    snprintf(args, sizeof(args), "dlq discard %" PRId64, ddl);
    assert_int_equal(ctl(args, out, sizeof(out)), 0);
}

static void
test_mixed_versions(void **state)
{
    char out[65536], q[1024];
    if (tly_projection_max_version("FundsDeposited") < 2) {
        /* the live projector would pause the partition at a v2 event; the worker hook (README) is not in yet */
        fprintf(stderr, "skipped: the projection does not know FundsDeposited v2 yet\n");
        skip();
    }
    tly_uuid_t tenant = tly_uuid_v4(), acc = tly_uuid_v4();
    char acc_s[TLY_UUID_STR_LEN + 1];
    tly_uuid_format(&acc, acc_s);
    int64_t now = tly_clock_now_us();
    emit("AccountOpened", 1, &acc, &tenant, now, json_pack("{s:s, s:s}", "currency", "EUR", "label", "mixed"), false);
    emit("FundsDeposited", 1, &acc, &tenant, now + 1, money(100, 100), false);
    json_t *v2 = money(60, 160);
    json_object_set_new(v2, "channel", json_string("branch"));
    emit("FundsDeposited", 2, &acc, &tenant, now + 2, v2, false);
    emit("FundsWithdrawn", 1, &acc, &tenant, now + 3, money(10, 150), false);
    flush_producer();
    wait_settled(60);
    sql("DROP SCHEMA IF EXISTS mixed CASCADE");
    assert_int_equal(ctl("replay --quiet --into mixed", out, sizeof(out)), 0);
    snprintf(q, sizeof(q),
             "SELECT (SELECT x::text FROM accounts x WHERE id = '%s') = (SELECT x::text FROM mixed.accounts x WHERE id = '%s') "
             "AND (SELECT string_agg(x::text, '|' ORDER BY id) FROM ledger_entries x WHERE account_id = '%s') = "
             "(SELECT string_agg(x::text, '|' ORDER BY id) FROM mixed.ledger_entries x WHERE account_id = '%s')",
             acc_s, acc_s, acc_s, acc_s);
    char *same = sql_text(q);
    assert_string_equal(same, "t");
    free(same);
    snprintf(q, sizeof(q), "SELECT balance FROM mixed.accounts WHERE id = '%s'", acc_s);
    assert_int_equal(sql_i64(q), 150);
    sql("DROP SCHEMA mixed CASCADE");
}

int
main(void)
{
    char err[512];
    bin_dir = tly_test_env_required("TALLY_BIN");
    const char *names[] = {"TALLY_PG_DSN", "TALLY_KAFKA_BROKERS", "TALLY_KAFKA_TOPIC"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); ++i)
        setenv(names[i], tly_test_env_required(names[i]), 1);
    db = PQconnectdb(tly_test_env("TALLY_PG_DSN"));
    if (PQstatus(db) != CONNECTION_OK) {
        fprintf(stderr, "could not connect: %s\n", PQerrorMessage(db));
        return 1;
    }
    PQclear(PQexec(db, "SET client_min_messages = warning"));
    producer = tly_kafka_producer_create(tly_test_env("TALLY_KAFKA_BROKERS"), 30000, NULL, NULL, err, sizeof(err));
    if (producer == NULL) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    /* The topic's own partition count: the stack may create it with any. */
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_t *t = rd_kafka_topic_new(producer, tly_test_env("TALLY_KAFKA_TOPIC"), NULL);
    if (rd_kafka_metadata(producer, 0, t, &md, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR || md->topic_cnt != 1 ||
        md->topics[0].err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        fprintf(stderr, "could not read the partitions of topic %s\n", tly_test_env("TALLY_KAFKA_TOPIC"));
        return 1;
    }
    topic_partitions = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(t);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replay_during_load),    cmocka_unit_test(test_replay_yields_to_live_traffic),
        cmocka_unit_test(test_point_in_time),         cmocka_unit_test(test_dead_letter_retry),
        cmocka_unit_test(test_replay_killed_resumes), cmocka_unit_test(test_mixed_versions),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    rd_kafka_destroy(producer);
    PQfinish(db);
    return rc;
}
