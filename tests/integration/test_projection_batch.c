/*
 * The projector's set-based path against the real stack:
 *
 *   test_batch_equals_one_by_one: a history where each account, job and
 *     transfer appears many times (opened, deposits, withdrawals, freeze,
 *     unfreeze; a transfer's events shuffled; duplicate terminal outcomes;
 *     an AccountOpened after updates of its account) written as one batch
 *     gives the same rows, column for column, as the same events applied one
 *     at a time; also on top of rows that exist already; also in bulk mode
 *     (tallyctl replay's COPY of ledger entries and new jobs), where a job
 *     wrongly said new fails the flush on its key.
 *   test_batch_missing_account: a batch with a deposit of an account that was
 *     never opened fails as a whole, naming the account and the event type,
 *     and writes nothing (the caller's transaction is rolled back).
 *   test_poison_in_large_batch: through the live worker, 2,000 events with
 *     one deposit of an unknown account in the middle: every other event is
 *     applied, the poison is parked in dead_letters, the balances are right.
 *
 * The first two use scratch schemas (tables LIKE public's, a no-op
 * pg_notify) through the projection API directly; the third produces to
 * tally.events as the relay would (outcomes only: the decider and the saga
 * ignore them).
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

#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EVENTS 4096

static PGconn *db;
static rd_kafka_t *producer;
static const char *topic; /* tly_test_env returns a copy: once, not per event */

#define sql(q) tly_test_sql(db, (q), 0, NULL)
#define sql_text(q) tly_test_sql_text(db, (q), 0, NULL)
#define sql_i64(q) tly_test_sql_i64(db, (q), 0, NULL)

/* --- events ---------------------------------------------------------------- */

typedef struct st_history_t {
    tly_envelope_t ev[MAX_EVENTS];
    int n;
    tly_uuid_t tenant;
    int64_t clock_us;
} history_t;

static tly_envelope_t *
add(history_t *h, const char *type, const char *aggregate_type, const tly_uuid_t *aggregate, const tly_uuid_t *job, json_t *data)
{
    assert_true(h->n < MAX_EVENTS);
    tly_envelope_t *e = &h->ev[h->n++];
    memset(e, 0, sizeof(*e));
    e->id = tly_uuid_v4();
    snprintf(e->type, sizeof(e->type), "%s", type);
    e->version = strcmp(type, "FundsDeposited") == 0 ? 2 : 1;
    snprintf(e->aggregate_type, sizeof(e->aggregate_type), "%s", aggregate_type);
    e->aggregate_id = *aggregate;
    e->tenant_id = h->tenant;
    if (job != NULL)
        e->job_id = *job;
    e->correlation_id = e->id;
    e->occurred_at_us = h->clock_us;
    h->clock_us += 1000;
    e->data = data;
    return e;
}

static json_t *
money(int64_t amount, int64_t after)
{
    return json_pack("{s:I, s:s, s:I, s:n, s:s}", "amount", (json_int_t)amount, "currency", "EUR", "balance_after",
                     (json_int_t)after, "reference", "channel", "api");
}

/* An account with a job per request: request, outcome. */
static void
account_history(history_t *h, const tly_uuid_t *acc, int deposits)
{
    tly_uuid_t job = tly_uuid_v4();
    add(h, "AccountOpenRequested", "account", acc, &job, json_pack("{s:s, s:s}", "currency", "EUR", "label", "batch"));
    add(h, "AccountOpened", "account", acc, &job, json_pack("{s:s, s:s}", "currency", "EUR", "label", "batch"));
    int64_t balance = 0;
    for (int i = 0; i < deposits; ++i) {
        job = tly_uuid_v4();
        balance += 10 + i;
        add(h, "DepositRequested", "account", acc, &job,
            json_pack("{s:I, s:s}", "amount", (json_int_t)(10 + i), "currency", "EUR"));
        add(h, "FundsDeposited", "account", acc, &job, money(10 + i, balance));
        if (i % 3 == 2) {
            job = tly_uuid_v4();
            balance -= 5;
            add(h, "FundsWithdrawn", "account", acc, &job, money(5, balance));
            add(h, "WithdrawalRejected", "account", acc, &job, json_pack("{s:s, s:s}", "code", "late", "detail", "duplicate"));
        }
        if (i == 4) {
            job = tly_uuid_v4();
            add(h, "AccountFrozen", "account", acc, &job, json_object());
            add(h, "AccountUnfrozen", "account", acc, NULL, json_object());
        }
    }
}

/* A compensated transfer between two accounts, its events in a shuffled order (three partitions in any interleaving). */
static void
transfer_history(history_t *h, const tly_uuid_t *from, const tly_uuid_t *to, unsigned seed)
{
    tly_uuid_t t = tly_uuid_v4(), job = tly_uuid_v4();
    char t_s[TLY_UUID_STR_LEN + 1], from_s[TLY_UUID_STR_LEN + 1], to_s[TLY_UUID_STR_LEN + 1];
    tly_uuid_format(&t, t_s);
    tly_uuid_format(from, from_s);
    tly_uuid_format(to, to_s);
    int first = h->n;
    add(h, "TransferRequested", "transfer", &t, &job,
        json_pack("{s:s, s:s, s:I, s:s, s:s}", "from_account", from_s, "to_account", to_s, "amount", (json_int_t)7, "currency",
                  "EUR", "reference", "rent \"quoted\" \\ {braces}, commas"));
    add(h, "AccountDebited", "account", from, &job,
        json_pack("{s:I, s:s, s:I, s:s}", "amount", (json_int_t)7, "currency", "EUR", "balance_after", (json_int_t)1000,
                  "transfer_id", t_s));
    add(h, "AccountCreditRejected", "account", to, &job,
        json_pack("{s:s, s:s, s:s}", "code", "account_frozen", "detail", "destination frozen", "transfer_id", t_s));
    add(h, "DebitReversed", "account", from, &job,
        json_pack("{s:I, s:s, s:I, s:s}", "amount", (json_int_t)7, "currency", "EUR", "balance_after", (json_int_t)1007,
                  "transfer_id", t_s));
    add(h, "TransferFailed", "transfer", &t, &job,
        json_pack("{s:s, s:s, s:b}", "code", "account_frozen", "detail", "compensated", "compensated", 1));
    /* shuffle the transfer's own events among themselves, keeping each account's in order is not needed for transfers/jobs,
       but accounts need their balance events in log order: only swap the transfer-aggregate events with each other */
    srand(seed);
    if (rand() % 2) {
        tly_envelope_t tmp = h->ev[first];
        h->ev[first] = h->ev[first + 4];
        h->ev[first + 4] = tmp;
    }
}

static void
history_clear(history_t *h)
{
    for (int i = 0; i < h->n; ++i)
        json_decref(h->ev[i].data);
    h->n = 0;
}

/* --- scratch schemas --------------------------------------------------------- */

static void
make_schema(const char *s)
{
    char q[2048];
    snprintf(q, sizeof(q),
             "DROP SCHEMA IF EXISTS %s CASCADE; CREATE SCHEMA %s; "
             "CREATE TABLE %s.accounts (LIKE public.accounts INCLUDING ALL); "
             "CREATE TABLE %s.ledger_entries (LIKE public.ledger_entries INCLUDING ALL); "
             "CREATE TABLE %s.jobs (LIKE public.jobs INCLUDING ALL); "
             "CREATE TABLE %s.transfers (LIKE public.transfers INCLUDING ALL); "
             "CREATE FUNCTION %s.pg_notify(text, text) RETURNS void LANGUAGE sql AS ''",
             s, s, s, s, s, s, s);
    PQclear(sql(q));
}

static void
use_schema(const char *s)
{
    char q[256];
    snprintf(q, sizeof(q), "SET search_path = %s, pg_catalog", s);
    PQclear(sql(q));
}

/* md5 of every row of `table` in schema `s`, ordered by id. */
static char *
table_md5(const char *s, const char *table)
{
    char q[512];
    snprintf(q, sizeof(q), "SELECT count(*) || ':' || coalesce(md5(string_agg(md5(t::text), ',' ORDER BY t.id)), '') FROM %s.%s t",
             s, table);
    return sql_text(q);
}

static void
assert_same_tables(const char *a, const char *b)
{
    const char *tables[] = {"accounts", "ledger_entries", "jobs", "transfers"};
    for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); ++i) {
        char *x = table_md5(a, tables[i]), *y = table_md5(b, tables[i]);
        if (strcmp(x, y) != 0) {
            char q[1024];
            snprintf(q, sizeof(q),
                     "SELECT 'only in %s: ' || t::text FROM (SELECT * FROM %s.%s EXCEPT SELECT * FROM %s.%s) t "
                     "UNION ALL SELECT 'only in %s: ' || t::text FROM (SELECT * FROM %s.%s EXCEPT SELECT * FROM %s.%s) t LIMIT 6",
                     a, a, tables[i], b, tables[i], b, b, tables[i], a, tables[i]);
            PGresult *res = sql(q);
            for (int r = 0; r < PQntuples(res); ++r)
                fprintf(stderr, "%s: %s\n", tables[i], PQgetvalue(res, r, 0));
            PQclear(res);
        }
        fprintf(stderr, "%s: %s vs %s\n", tables[i], x, y);
        assert_string_equal(x, y);
        free(x);
        free(y);
    }
}

static void
apply_one_by_one(const history_t *h, int from, int to)
{
    char err[512];
    PQclear(sql("BEGIN"));
    for (int i = from; i < to; ++i)
        if (tly_projection_apply(db, &h->ev[i], TLY_MODEL_ALL, err, sizeof(err)) != 0)
            fail_msg("event %d (%s): %s", i, h->ev[i].type, err);
    PQclear(sql("COMMIT"));
}

/* Bulk mode's question (tly_projection_batch_set_bulk), answered the same for every job. */
static bool
job_never_exists(void *ctx, const tly_uuid_t *id)
{
    return false;
}

static bool
job_always_exists(void *ctx, const tly_uuid_t *id)
{
    return true;
}

/*
 * The projector's apply_batch: add, flush first when asked, flush at the
 * end; with `bulk`, in tallyctl replay's bulk mode. Returns flushes done, or -1.
 */
static int
apply_batch(const history_t *h, int from, int to, tly_projection_exists_fn bulk, char *err, size_t errcap)
{
    tly_projection_batch_t *b = tly_projection_batch_create(TLY_MODEL_ALL);
    int flushes = 0, ret = -1;
    if (bulk != NULL)
        tly_projection_batch_set_bulk(b, bulk, NULL);
    for (int i = from; i < to; ++i) {
        int r = tly_projection_batch_add(b, &h->ev[i], err, errcap);
        if (r == 1) {
            flushes++;
            if (tly_projection_batch_flush(b, db, err, errcap) != 0)
                goto out;
            r = tly_projection_batch_add(b, &h->ev[i], err, errcap);
        }
        if (r != 0)
            goto out;
    }
    flushes++;
    ret = tly_projection_batch_flush(b, db, err, errcap) == 0 ? flushes : -1;
out:
    tly_projection_batch_destroy(b);
    return ret;
}

/* apply_batch in a transaction of its own that must succeed. Returns the flushes done. */
static int
commit_batch(const history_t *h, int from, int to, tly_projection_exists_fn bulk)
{
    char err[512];
    PQclear(sql("BEGIN"));
    int flushes = apply_batch(h, from, to, bulk, err, sizeof(err));
    if (flushes < 0)
        fail_msg("batch%s: %s", bulk != NULL ? " (bulk)" : "", err);
    PQclear(sql("COMMIT"));
    return flushes;
}

static void
test_batch_equals_one_by_one(void **state)
{
    static history_t h;
    char err[512];
    h.tenant = tly_uuid_v4();
    h.clock_us = tly_clock_now_us() - 3600 * 1000000LL;
    tly_uuid_t acc[6];
    for (int i = 0; i < 6; ++i) {
        acc[i] = tly_uuid_v4();
        account_history(&h, &acc[i], 12);
    }
    for (int i = 0; i < 5; ++i)
        transfer_history(&h, &acc[i], &acc[i + 1], (unsigned)i);
    int half = h.n / 2;
    /* AccountOpened again for an account opened earlier in the batch (does nothing), and one after its account's updates */
    tly_uuid_t late = tly_uuid_v4(), late_job = tly_uuid_v4();
    add(&h, "AccountOpened", "account", &acc[2], &late_job, json_pack("{s:s, s:s}", "currency", "EUR", "label", "again"));
    add(&h, "AccountOpened", "account", &late, &late_job, json_pack("{s:s, s:s}", "currency", "EUR", "label", "late"));
    add(&h, "FundsDeposited", "account", &late, &late_job, money(3, 3));
    add(&h, "AccountOpened", "account", &late, &late_job, json_pack("{s:s, s:s}", "currency", "USD", "label", "twice"));
    add(&h, "AccountFrozen", "account", &late, NULL, json_object());
    fprintf(stderr, "history of %d events\n", h.n);

    /* everything in one batch vs one event at a time */
    make_schema("pb_one");
    make_schema("pb_batch");
    use_schema("pb_one");
    apply_one_by_one(&h, 0, h.n);
    use_schema("pb_batch");
    int flushes = commit_batch(&h, 0, h.n, NULL);
    fprintf(stderr, "one batch: %d flushes\n", flushes);
    assert_int_equal(flushes, 1); /* the second AccountOpened of `late` follows its own insert in the batch: no flush */
    assert_same_tables("pb_one", "pb_batch");

    /* on top of existing rows: the first half applied alone, the rest as a batch */
    make_schema("pb_half");
    use_schema("pb_half");
    apply_one_by_one(&h, 0, half);
    commit_batch(&h, half, h.n, NULL);
    assert_same_tables("pb_one", "pb_half");

    /* bulk mode (tallyctl replay): ledger entries and the jobs said new by binary COPY, the same rows */
    make_schema("pb_bulk");
    use_schema("pb_bulk");
    commit_batch(&h, 0, h.n, job_never_exists);
    assert_same_tables("pb_one", "pb_bulk");
    /* rows wrongly taken for new (the second half again) fail the COPY on their key: the caller goes one by one */
    PQclear(sql("BEGIN"));
    assert_int_equal(apply_batch(&h, half, h.n, job_never_exists, err, sizeof(err)), -1);
    fprintf(stderr, "bulk error: %s\n", err);
    assert_non_null(strstr(err, "duplicate key"));
    PQclear(sql("ROLLBACK"));
    /* on top of existing rows, every job said to exist (upserted): the same rows */
    make_schema("pb_bulk_half");
    use_schema("pb_bulk_half");
    apply_one_by_one(&h, 0, half);
    commit_batch(&h, half, h.n, job_always_exists);
    assert_same_tables("pb_one", "pb_bulk_half");

    /* an AccountOpened after updates of its account in the same batch asks for a flush first */
    history_t *h2 = calloc(1, sizeof(*h2));
    h2->tenant = h.tenant;
    h2->clock_us = h.clock_us;
    tly_uuid_t a2 = tly_uuid_v4();
    add(h2, "AccountOpened", "account", &a2, NULL, json_pack("{s:s, s:s}", "currency", "EUR", "label", "x"));
    make_schema("pb_flush_one");
    make_schema("pb_flush_batch");
    use_schema("pb_flush_one");
    apply_one_by_one(h2, 0, 1);
    use_schema("pb_flush_batch");
    apply_one_by_one(h2, 0, 1);
    history_clear(h2);
    add(h2, "FundsDeposited", "account", &a2, NULL, money(5, 5));
    add(h2, "AccountOpened", "account", &a2, NULL, json_pack("{s:s, s:s}", "currency", "EUR", "label", "y"));
    add(h2, "FundsDeposited", "account", &a2, NULL, money(5, 10));
    use_schema("pb_flush_one");
    apply_one_by_one(h2, 0, h2->n);
    use_schema("pb_flush_batch");
    PQclear(sql("BEGIN"));
    assert_int_equal(apply_batch(h2, 0, h2->n, NULL, err, sizeof(err)), 2);
    PQclear(sql("COMMIT"));
    assert_same_tables("pb_flush_one", "pb_flush_batch");
    assert_int_equal(sql_i64("SELECT version FROM pb_flush_batch.accounts"), 3);
    assert_int_equal(sql_i64("SELECT balance FROM pb_flush_batch.accounts"), 10);
    history_clear(h2);
    free(h2);
    history_clear(&h);
    PQclear(sql(
        "RESET search_path; DROP SCHEMA pb_one, pb_batch, pb_half, pb_bulk, pb_bulk_half, pb_flush_one, pb_flush_batch CASCADE"));
}

static void
test_batch_missing_account(void **state)
{
    static history_t h;
    char err[512], id[TLY_UUID_STR_LEN + 1], want[128];
    h.tenant = tly_uuid_v4();
    h.clock_us = tly_clock_now_us();
    tly_uuid_t good = tly_uuid_v4(), ghost = tly_uuid_v4();
    account_history(&h, &good, 3);
    add(&h, "FundsWithdrawn", "account", &ghost, NULL, money(1, 0));
    account_history(&h, &ghost, 0); /* opened after its update: the update fails as it would alone */
    make_schema("pb_missing");
    use_schema("pb_missing");
    PQclear(sql("BEGIN"));
    assert_int_equal(apply_batch(&h, 0, h.n, NULL, err, sizeof(err)), -1);
    fprintf(stderr, "batch error: %s\n", err);
    tly_uuid_format(&ghost, id);
    snprintf(want, sizeof(want), "could not apply FundsWithdrawn: account %s is not in the read model", id);
    assert_string_equal(err, want);
    PQclear(PQexec(db, "ROLLBACK"));
    assert_int_equal(sql_i64("SELECT count(*) FROM pb_missing.accounts"), 0);
    /* invalid data is refused at add, before anything of the event is folded */
    tly_projection_batch_t *b = tly_projection_batch_create(TLY_MODEL_ALL);
    add(&h, "FundsDeposited", "account", &good, NULL,
        json_pack("{s:s, s:s, s:I}", "amount", "ten", "currency", "EUR", "balance_after",
                  (json_int_t)1)); /* accounts would take it */
    assert_int_equal(tly_projection_batch_add(b, &h.ev[h.n - 1], err, sizeof(err)), -1);
    assert_string_equal(err, "could not apply FundsDeposited: data.amount is not an integer");
    assert_int_equal(tly_projection_batch_count(b), 0);
    tly_projection_batch_destroy(b);
    history_clear(&h);
    PQclear(sql("RESET search_path; DROP SCHEMA pb_missing CASCADE"));
}

static void
produce(const tly_envelope_t *env)
{
    for (;;) {
        rd_kafka_resp_err_t e = tly_kafka_produce_envelope(producer, topic, env, NULL, NULL);
        if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
            break;
        assert_int_equal(e, RD_KAFKA_RESP_ERR__QUEUE_FULL);
        rd_kafka_poll(producer, 10);
    }
    rd_kafka_poll(producer, 0);
}

static void
test_poison_in_large_batch(void **state)
{
    static history_t h;
    char q[1024], tenant_s[TLY_UUID_STR_LEN + 1], poison_s[TLY_UUID_STR_LEN + 1];
    PQclear(sql("RESET search_path"));
    h.tenant = tly_uuid_v4();
    h.clock_us = tly_clock_now_us();
    tly_uuid_format(&h.tenant, tenant_s);
    tly_uuid_t acc[40], ghost = tly_uuid_v4();
    int64_t balance[40] = {0};
    for (int i = 0; i < 40; ++i) {
        acc[i] = tly_uuid_v4();
        add(&h, "AccountOpened", "account", &acc[i], NULL, json_pack("{s:s, s:s}", "currency", "EUR", "label", "poison test"));
    }
    const tly_envelope_t *poison = NULL;
    for (int i = 0; h.n < 2000; ++i) {
        if (i == 900) {
            poison = add(&h, "FundsDeposited", "account", &ghost, NULL, money(1, 1));
            continue;
        }
        balance[i % 40] += 2;
        add(&h, "FundsDeposited", "account", &acc[i % 40], NULL, money(2, balance[i % 40]));
    }
    tly_uuid_format(&poison->id, poison_s);
    int64_t t0 = tly_test_now_ms();
    for (int i = 0; i < h.n; ++i)
        produce(&h.ev[i]);
    assert_int_equal(rd_kafka_flush(producer, 30000), RD_KAFKA_RESP_ERR_NO_ERROR);
    /* every deposit but the poison lands in the ledger; the poison in dead_letters */
    int64_t want = h.n - 40 - 1, got = 0, parked = 0;
    while (tly_test_now_ms() - t0 < 120000) {
        snprintf(q, sizeof(q), "SELECT count(*) FROM ledger_entries WHERE tenant_id = '%s'", tenant_s);
        got = sql_i64(q);
        snprintf(q, sizeof(q), "SELECT count(*) FROM dead_letters WHERE consumer = 'projector' AND event_id = '%s'", poison_s);
        parked = sql_i64(q);
        if (got == want && parked == 1)
            break;
        tly_test_sleep_ms(200);
    }
    fprintf(stderr, "ledger entries %" PRId64 "/%" PRId64 ", poison parked %" PRId64 ", after %" PRId64 " ms\n", got, want, parked,
            tly_test_now_ms() - t0);
    assert_int_equal(got, want);
    assert_int_equal(parked, 1);
    snprintf(q, sizeof(q), "SELECT error FROM dead_letters WHERE consumer = 'projector' AND event_id = '%s'", poison_s);
    char *why = sql_text(q);
    assert_non_null(strstr(why, "is not in the read model"));
    free(why);
    for (int i = 0; i < 40; ++i) {
        char id[TLY_UUID_STR_LEN + 1];
        tly_uuid_format(&acc[i], id);
        snprintf(q, sizeof(q), "SELECT balance || '/' || version FROM accounts WHERE id = '%s'", id);
        char *row = sql_text(q), expect[64];
        snprintf(expect, sizeof(expect), "%" PRId64 "/%" PRId64, balance[i], 1 + balance[i] / 2);
        assert_string_equal(row, expect);
        free(row);
    }
    history_clear(&h);
}

int
main(void)
{
    char err[512];
    const char *dsn = tly_test_env_required("TALLY_PG_DSN"), *brokers = tly_test_env_required("TALLY_KAFKA_BROKERS");
    topic = tly_test_env_required("TALLY_KAFKA_TOPIC");
    db = PQconnectdb(dsn);
    if (PQstatus(db) != CONNECTION_OK) {
        fprintf(stderr, "could not connect: %s\n", PQerrorMessage(db));
        return 1;
    }
    PQclear(PQexec(db, "SET client_min_messages = warning"));
    producer = tly_kafka_producer_create(brokers, 30000, NULL, NULL, err, sizeof(err));
    if (producer == NULL) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_equals_one_by_one),
        cmocka_unit_test(test_batch_missing_account),
        cmocka_unit_test(test_poison_in_large_batch),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    rd_kafka_destroy(producer);
    PQfinish(db);
    return rc;
}
