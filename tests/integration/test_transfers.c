/*
 * The transfer saga against the real stack:
 *
 *   test_completed / test_rejected / test_compensated: each path over HTTP,
 *     with the entries it leaves on both accounts (completed: a debit on the
 *     source and a credit on the destination; rejected: nothing; compensated,
 *     forced by freezing the destination: a debit and its reversal on the
 *     source, nothing on the destination), the job's end and the transfer
 *     read model (status, timeline, ETag, 304).
 *   test_reads: GET /v1/transfers?account=&status= pages (no repeat, no skip),
 *     bad parameters, bad cursors, 404s and the tenant wall.
 *   test_storm: 2,000 transfers among 20 accounts, POST /v1/batch of 100 from
 *     4 senders, while a thread freezes and unfreezes accounts at random.
 *   test_storm_kill9: the same with the stack's worker SIGKILLed and
 *     restarted at random moments (at least 3 times) during the storm.
 *
 * After each storm (SQL on TALLY_PG_DSN): every job terminal and consistent
 * with its transfer; every transfer completed, rejected or compensated, with
 * exactly the entries its path implies; the total of the balances equals the
 * total deposited; no balance below zero; each balance equals the sum of its
 * entries and the decider's own balance; every saga finished; the outbox
 * drains; no dead letters. TALLY_STORM_TRANSFERS overrides 2,000.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tly_test_http.h"
#include "tly_test_sql.h"
#include "tly_test_util.h"

#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NACCOUNTS 20
#define DEPOSIT 50000
#define STORM_TRANSFERS 2000
#define BATCH 100
#define SENDERS 4
#define SETTLE_S 240

static char key_a[160], key_b[160], tenant_a[64], tenant_b[64];
static PGconn *db;
static const char *var_dir, *bin_dir;

/* --- helpers ------------------------------------------------------------------- */

#define sql(q, n, vals) tly_test_sql(db, (q), (n), (vals))
#define sql_i64(q, n, vals) tly_test_sql_i64(db, (q), (n), (vals))

/* Polls `q` (one bigint) until it equals `want` or `timeout_ms`; returns the last value. */
static int64_t
sql_wait(const char *q, int n, const char *const *vals, int64_t want, int timeout_ms)
{
    int64_t v = -1, deadline = tly_test_now_ms() + timeout_ms;
    do {
        v = sql_i64(q, n, vals);
        if (v == want)
            return v;
        tly_test_sleep_ms(50);
    } while (tly_test_now_ms() < deadline);
    return v;
}

static const char *
jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static json_t *
post(const char *key, const char *path, const char *body, bool idem)
{
    char idem_h[128];
    tly_test_idem_header(idem_h, sizeof(idem_h));
    const char *hdrs[] = {idem_h, NULL};
    tly_test_response_t r = tly_test_request("POST", path, key, body, idem ? hdrs : NULL);
    if (r.status != 202)
        fprintf(stderr, "POST %s: %ld %s\n", path, r.status, r.body);
    assert_int_equal(r.status, 202);
    json_t *job = json_incref(json_object_get(r.json, "job"));
    tly_test_response_free(&r);
    return job;
}

/* Posts and waits for the job; returns the terminal job (caller decrefs). */
static json_t *
run(const char *key, const char *path, const char *body, bool idem)
{
    json_t *job = post(key, path, body, idem);
    json_t *done = tly_test_wait_job(jstr(job, "url"), key, 30000);
    assert_non_null(done);
    json_decref(job);
    return done;
}

static void
open_account(const char *key, const char *currency, int64_t deposit, char *id)
{
    char body[128], path[128];
    snprintf(body, sizeof(body), "{\"currency\":\"%s\",\"label\":\"transfers\"}", currency);
    json_t *job = run(key, "/v1/accounts", body, false);
    assert_string_equal(jstr(job, "status"), "succeeded");
    snprintf(id, 64, "%s", jstr(json_object_get(job, "resource"), "id"));
    json_decref(job);
    if (deposit > 0) {
        snprintf(path, sizeof(path), "/v1/accounts/%s/deposits", id);
        snprintf(body, sizeof(body), "{\"amount\":%lld,\"currency\":\"%s\"}", (long long)deposit, currency);
        job = run(key, path, body, true);
        assert_string_equal(jstr(job, "status"), "succeeded");
        json_decref(job);
    }
}

static void
account_action(const char *key, const char *id, const char *action)
{
    char path[128];
    snprintf(path, sizeof(path), "/v1/accounts/%s/%s", id, action);
    json_t *job = run(key, path, "{}", false);
    assert_string_equal(jstr(job, "status"), "succeeded");
    json_decref(job);
}

/* POST /v1/transfers and wait; `transfer` gets its id. Returns the terminal job. */
static json_t *
transfer(const char *key, const char *from, const char *to, int64_t amount, const char *currency, char *transfer_id)
{
    char body[256];
    snprintf(body, sizeof(body), "{\"from_account\":\"%s\",\"to_account\":\"%s\",\"amount\":%lld,\"currency\":\"%s\"}", from, to,
             (long long)amount, currency);
    json_t *job = post(key, "/v1/transfers", body, true);
    json_t *res = json_object_get(job, "resource");
    assert_string_equal(jstr(res, "type"), "transfer");
    snprintf(transfer_id, 64, "%s", jstr(res, "id"));
    char url[128];
    snprintf(url, sizeof(url), "/v1/transfers/%s", transfer_id);
    assert_string_equal(jstr(res, "url"), url);
    json_t *done = tly_test_wait_job(jstr(job, "url"), key, 30000);
    assert_non_null(done);
    json_decref(job);
    return done;
}

static int64_t
balance(const char *key, const char *id)
{
    char path[128];
    snprintf(path, sizeof(path), "/v1/accounts/%s", id);
    tly_test_response_t r = tly_test_request("GET", path, key, NULL, NULL);
    assert_int_equal(r.status, 200);
    int64_t b = json_integer_value(json_object_get(r.json, "balance"));
    tly_test_response_free(&r);
    return b;
}

/* Waits until the transfer's ledger entries on `account` of `kind` number `n` (projections of other partitions may lag). */
static void
expect_entries(const char *account, const char *transfer_id, const char *kind, int64_t n, int64_t sum)
{
    const char *vals[] = {account, transfer_id, kind};
    int64_t got =
        sql_wait("SELECT count(*) FROM ledger_entries WHERE account_id = $1 AND transfer_id = $2 AND kind = $3", 3, vals, n, 10000);
    assert_int_equal(got, n);
    assert_int_equal(
        sql_i64("SELECT COALESCE(sum(amount), 0) FROM ledger_entries WHERE account_id = $1 AND transfer_id = $2 AND kind = $3", 3,
                vals),
        sum);
}

static int64_t
entries_of(const char *account, const char *transfer_id)
{
    const char *vals[] = {account, transfer_id};
    return sql_i64("SELECT count(*) FROM ledger_entries WHERE account_id = $1 AND transfer_id = $2", 2, vals);
}

/* GET /v1/transfers/{id} once the read model shows `status`; returns the body (caller decrefs) and its ETag. */
static json_t *
read_transfer(const char *key, const char *id, const char *status, char *etag)
{
    char path[128];
    snprintf(path, sizeof(path), "/v1/transfers/%s", id);
    for (int i = 0; i < 200; ++i) {
        tly_test_response_t r = tly_test_request("GET", path, key, NULL, NULL);
        if (r.status == 200 && strcmp(jstr(r.json, "status"), status) == 0) {
            json_t *t = json_incref(r.json);
            assert_true(tly_test_header(&r, "etag", etag, 64));
            tly_test_response_free(&r);
            return t;
        }
        tly_test_response_free(&r);
        tly_test_sleep_ms(50);
    }
    fail_msg("transfer %s never reached %s", id, status);
    return NULL;
}

static bool
timeline_has(json_t *t, const char *step)
{
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(t, "timeline"), i, e)
    {
        if (strcmp(jstr(e, "step"), step) == 0)
            return true;
    }
    return false;
}

/* --- the three paths ------------------------------------------------------------ */

static char acc_a[64], acc_b[64], acc_usd[64];

static void
test_completed(void **state)
{
    char t[64], etag[64], inm[96];
    open_account(key_a, "EUR", 1000, acc_a);
    open_account(key_a, "EUR", 0, acc_b);
    json_t *job = transfer(key_a, acc_a, acc_b, 300, "EUR", t);
    assert_string_equal(jstr(job, "status"), "succeeded");
    assert_true(json_is_null(json_object_get(job, "error")));
    json_decref(job);
    expect_entries(acc_a, t, "transfer_debit", 1, -300);
    expect_entries(acc_b, t, "transfer_credit", 1, 300);
    assert_int_equal(entries_of(acc_a, t), 1);
    assert_int_equal(entries_of(acc_b, t), 1);
    assert_int_equal(balance(key_a, acc_a), 700);
    assert_int_equal(balance(key_a, acc_b), 300);

    json_t *tr = read_transfer(key_a, t, "completed", etag);
    assert_string_equal(jstr(tr, "from_account"), acc_a);
    assert_string_equal(jstr(tr, "to_account"), acc_b);
    assert_int_equal(json_integer_value(json_object_get(tr, "amount")), 300);
    assert_false(json_is_true(json_object_get(tr, "compensated")));
    assert_true(timeline_has(tr, "requested") && timeline_has(tr, "debited") && timeline_has(tr, "credited") &&
                timeline_has(tr, "completed"));
    char want[64];
    snprintf(want, sizeof(want), "\"transfer-v%lld\"", (long long)json_integer_value(json_object_get(tr, "version")));
    json_decref(tr);
    /* the version settles once every event (three partitions) is projected */
    for (int i = 0; i < 100 && strcmp(want, etag) != 0; ++i)
        tly_test_sleep_ms(50);
    snprintf(inm, sizeof(inm), "If-None-Match: %s", etag);
    const char *cond[] = {inm, NULL};
    char path[128];
    snprintf(path, sizeof(path), "/v1/transfers/%s", t);
    tly_test_response_t r = tly_test_request("GET", path, key_a, NULL, cond);
    if (r.status == 200) { /* a late event bumped the version: the new ETag must match */
        char etag2[64];
        assert_true(tly_test_header(&r, "etag", etag2, sizeof(etag2)));
        tly_test_response_free(&r);
        snprintf(inm, sizeof(inm), "If-None-Match: %s", etag2);
        r = tly_test_request("GET", path, key_a, NULL, cond);
    }
    assert_int_equal(r.status, 304);
    tly_test_response_free(&r);
}

static void
test_rejected(void **state)
{
    char t[64], etag[64], frozen[64];
    /* insufficient funds */
    json_t *job = transfer(key_a, acc_a, acc_b, 5000, "EUR", t);
    assert_string_equal(jstr(job, "status"), "failed");
    assert_string_equal(jstr(json_object_get(job, "error"), "code"), "insufficient_funds");
    json_decref(job);
    json_t *tr = read_transfer(key_a, t, "rejected", etag);
    assert_string_equal(jstr(json_object_get(tr, "error"), "code"), "insufficient_funds");
    assert_true(timeline_has(tr, "rejected"));
    json_decref(tr);
    tly_test_sleep_ms(300); /* nothing may arrive late either */
    assert_int_equal(entries_of(acc_a, t), 0);
    assert_int_equal(entries_of(acc_b, t), 0);

    /* another currency than the source's */
    job = transfer(key_a, acc_a, acc_b, 5, "USD", t);
    assert_string_equal(jstr(job, "status"), "failed");
    assert_string_equal(jstr(json_object_get(job, "error"), "code"), "currency_mismatch");
    json_decref(job);

    /* a frozen source */
    open_account(key_a, "EUR", 50, frozen);
    account_action(key_a, frozen, "freeze");
    job = transfer(key_a, frozen, acc_b, 5, "EUR", t);
    assert_string_equal(jstr(job, "status"), "failed");
    assert_string_equal(jstr(json_object_get(job, "error"), "code"), "account_frozen");
    json_decref(job);
    tly_test_sleep_ms(300);
    assert_int_equal(entries_of(frozen, t), 0);
    assert_int_equal(entries_of(acc_b, t), 0);

    /* an unknown source */
    job = transfer(key_a, "6b1f2e51-8c0d-4a3e-9f27-440b5da193c8", acc_b, 5, "EUR", t);
    assert_string_equal(jstr(job, "status"), "failed");
    assert_string_equal(jstr(json_object_get(job, "error"), "code"), "account_not_found");
    json_decref(job);
    assert_int_equal(balance(key_a, acc_a), 700);
    assert_int_equal(balance(key_a, acc_b), 300);
}

/* The credit fails: the debit is reversed. */
static void
compensated_with(const char *to, const char *code, bool to_exists)
{
    char t[64], etag[64];
    int64_t from_before = balance(key_a, acc_a), to_before = to_exists ? balance(key_a, to) : 0;
    json_t *job = transfer(key_a, acc_a, to, 100, "EUR", t);
    assert_string_equal(jstr(job, "status"), "failed");
    assert_string_equal(jstr(json_object_get(job, "error"), "code"), code);
    json_decref(job);
    expect_entries(acc_a, t, "transfer_debit", 1, -100);
    expect_entries(acc_a, t, "transfer_reversal", 1, 100);
    assert_int_equal(entries_of(acc_a, t), 2);
    tly_test_sleep_ms(300);
    assert_int_equal(entries_of(to, t), 0);
    assert_int_equal(balance(key_a, acc_a), from_before);
    if (to_exists)
        assert_int_equal(balance(key_a, to), to_before);
    json_t *tr = read_transfer(key_a, t, "failed", etag);
    assert_true(json_is_true(json_object_get(tr, "compensated")));
    assert_string_equal(jstr(json_object_get(tr, "error"), "code"), code);
    assert_true(timeline_has(tr, "debited") && timeline_has(tr, "credit_rejected") && timeline_has(tr, "debit_reversed") &&
                timeline_has(tr, "failed"));
    json_decref(tr);
}

static void
test_compensated(void **state)
{
    account_action(key_a, acc_b, "freeze"); /* forces the credit's rejection */
    compensated_with(acc_b, "account_frozen", true);
    account_action(key_a, acc_b, "unfreeze");
    open_account(key_a, "USD", 0, acc_usd);
    compensated_with(acc_usd, "currency_mismatch", true);
    compensated_with("6b1f2e51-8c0d-4a3e-9f27-440b5da193c8", "account_not_found", false);
}

/* --- reads -------------------------------------------------------------------------- */

static void
expect_status(const char *path, const char *key, long status, const char *code)
{
    tly_test_response_t r = tly_test_request("GET", path, key, NULL, NULL);
    if (r.status != status)
        fprintf(stderr, "GET %s: %ld %s\n", path, r.status, r.body);
    assert_int_equal(r.status, status);
    if (code != NULL)
        assert_string_equal(jstr(r.json, "code"), code);
    tly_test_response_free(&r);
}

static void
test_reads(void **state)
{
    char path[512], seen[64][64], t[64];
    int nseen = 0;
    /* acc_a took part in every transfer above (3 + 4 rejected/compensated...): walk them 2 by 2 */
    snprintf(path, sizeof(path), "/v1/transfers?account=%s&limit=2", acc_a);
    for (int pages = 0; pages < 20; ++pages) {
        tly_test_response_t r = tly_test_request("GET", path, key_a, NULL, NULL);
        assert_int_equal(r.status, 200);
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(r.json, "data"), i, e)
        {
            assert_true(strcmp(jstr(e, "from_account"), acc_a) == 0 || strcmp(jstr(e, "to_account"), acc_a) == 0);
            for (int k = 0; k < nseen; ++k)
                assert_string_not_equal(seen[k], jstr(e, "id"));
            assert_true(nseen < 64);
            snprintf(seen[nseen++], 64, "%s", jstr(e, "id"));
        }
        bool more = json_is_true(json_object_get(r.json, "has_more"));
        if (more) {
            char link[600];
            assert_true(tly_test_header(&r, "link", link, sizeof(link)));
            snprintf(path, sizeof(path), "/v1/transfers?account=%s&limit=2&cursor=%s", acc_a, jstr(r.json, "next_cursor"));
        }
        tly_test_response_free(&r);
        if (!more)
            break;
    }
    const char *vals[] = {acc_a, tenant_a};
    assert_int_equal(nseen, sql_i64("SELECT count(*) FROM transfers WHERE (from_account = $1 OR to_account = $1) AND "
                                    "tenant_id = $2",
                                    2, vals));
    assert_true(nseen >= 6);

    /* status filter */
    snprintf(path, sizeof(path), "/v1/transfers?account=%s&status=failed&limit=100", acc_a);
    tly_test_response_t r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_int_equal(r.status, 200);
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(r.json, "data"), i, e) assert_string_equal(jstr(e, "status"), "failed");
    assert_int_equal(json_array_size(json_object_get(r.json, "data")), 3);
    tly_test_response_free(&r);

    /* bad input */
    expect_status("/v1/transfers?status=lost", key_a, 422, "validation_failed");
    expect_status("/v1/transfers?account=nope", key_a, 422, "validation_failed");
    expect_status("/v1/transfers?limit=0", key_a, 422, "validation_failed");
    expect_status("/v1/transfers?limit=5&limit=6", key_a, 422, "validation_failed");
    expect_status("/v1/transfers?colour=red", key_a, 422, "validation_failed");
    expect_status("/v1/transfers?cursor=AAAA", key_a, 400, "invalid_cursor");
    expect_status("/v1/transfers/not-a-uuid", key_a, 422, "validation_failed");
    expect_status("/v1/transfers/6b1f2e51-8c0d-4a3e-9f27-440b5da193c8", key_a, 404, "not_found");
    /* a cursor of one filter set is not valid for another */
    snprintf(path, sizeof(path), "/v1/transfers?account=%s&limit=1", acc_a);
    r = tly_test_request("GET", path, key_a, NULL, NULL);
    snprintf(path, sizeof(path), "/v1/transfers?limit=1&cursor=%s", jstr(r.json, "next_cursor"));
    tly_test_response_free(&r);
    expect_status(path, key_a, 400, "invalid_cursor");

    /* the tenant wall: B sees none of A's transfers, and cannot move A's money */
    snprintf(t, sizeof(t), "%s", seen[0]);
    snprintf(path, sizeof(path), "/v1/transfers/%s", t);
    expect_status(path, key_b, 404, "not_found");
    snprintf(path, sizeof(path), "/v1/transfers?account=%s", acc_a);
    r = tly_test_request("GET", path, key_b, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "data")), 0);
    tly_test_response_free(&r);
    char mine[64];
    open_account(key_b, "EUR", 0, mine);
    int64_t before = balance(key_a, acc_a);
    json_t *job = transfer(key_b, acc_a, mine, 10, "EUR", t);
    assert_string_equal(jstr(job, "status"), "failed");
    assert_string_equal(jstr(json_object_get(job, "error"), "code"), "account_not_found");
    json_decref(job);
    assert_int_equal(balance(key_a, acc_a), before);
}

/* --- the storm ------------------------------------------------------------------------ */

typedef struct {
    int from, to;
    int64_t amount;
    char job[40], transfer[40];
} xfer_t;

typedef struct {
    char tag[64];
    char accounts[NACCOUNTS][64];
    xfer_t *x;
    int n;
    atomic_int next_batch;
    atomic_int done_senders;
    atomic_int retries;
    atomic_int freezes, unfreezes;
    atomic_bool stop_freezer;
} storm_t;

static void *
sender(void *arg)
{
    storm_t *s = arg;
    int nbatches = (s->n + BATCH - 1) / BATCH;
    for (int b; (b = atomic_fetch_add(&s->next_batch, 1)) < nbatches;) {
        int lo = b * BATCH, hi = lo + BATCH < s->n ? lo + BATCH : s->n;
        bool pending[BATCH];
        for (int i = 0; i < hi - lo; ++i)
            pending[i] = true;
        for (int attempt = 0; attempt < 50; ++attempt) {
            json_t *reqs = json_array();
            int idx[BATCH], k = 0;
            for (int i = lo; i < hi; ++i) {
                if (!pending[i - lo])
                    continue;
                char idem[96];
                xfer_t *x = &s->x[i];
                snprintf(idem, sizeof(idem), "%s-%d", s->tag, i);
                json_array_append_new(reqs, json_pack("{s:s, s:{s:s, s:s, s:I, s:s}, s:s}", "path", "/v1/transfers", "body",
                                                      "from_account", s->accounts[x->from], "to_account", s->accounts[x->to],
                                                      "amount", (json_int_t)x->amount, "currency", "EUR", "idempotency_key", idem));
                idx[k++] = i;
            }
            if (k == 0)
                break;
            json_t *body = json_pack("{s:o}", "requests", reqs);
            char *text = json_dumps(body, JSON_COMPACT);
            json_decref(body);
            tly_test_response_t r = tly_test_request("POST", "/v1/batch", key_a, text, NULL);
            free(text);
            if (r.status == 200) {
                json_t *results = json_object_get(r.json, "results");
                for (int j = 0; j < k; ++j) {
                    json_t *res = json_array_get(results, (size_t)j);
                    if (json_integer_value(json_object_get(res, "status")) != 202)
                        continue;
                    json_t *job = json_object_get(res, "job");
                    xfer_t *x = &s->x[idx[j]];
                    snprintf(x->job, sizeof(x->job), "%s", jstr(job, "id"));
                    snprintf(x->transfer, sizeof(x->transfer), "%s", jstr(json_object_get(job, "resource"), "id"));
                    pending[idx[j] - lo] = false;
                }
            }
            tly_test_response_free(&r);
            bool left = false;
            for (int i = 0; i < hi - lo; ++i)
                left |= pending[i];
            if (!left)
                break;
            atomic_fetch_add(&s->retries, 1);
            tly_test_sleep_ms(200); /* 503 (broker or database busy) or the connection broke: same keys again */
        }
    }
    atomic_fetch_add(&s->done_senders, 1);
    return NULL;
}

/* Freezes and unfreezes random accounts until told to stop; whatever the answer (already frozen...). */
static void *
freezer(void *arg)
{
    storm_t *s = arg;
    uint64_t seed = (uint64_t)tly_test_now_ms() | 1;
    while (!atomic_load(&s->stop_freezer)) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        int a = (int)(seed % NACCOUNTS);
        bool freeze = (seed >> 20) % 2 == 0;
        char path[128];
        snprintf(path, sizeof(path), "/v1/accounts/%s/%s", s->accounts[a], freeze ? "freeze" : "unfreeze");
        tly_test_response_t r = tly_test_request("POST", path, key_a, "{}", NULL);
        if (r.status == 202)
            atomic_fetch_add(freeze ? &s->freezes : &s->unfreezes, 1);
        tly_test_response_free(&r);
        tly_test_sleep_ms(5 + (int)((seed >> 30) % 40));
    }
    return NULL;
}

/* --- the stack's worker (for the kill -9 storm) ----------------------------------------- */

static char **worker_argv, **worker_envp;

/* Captures the stack worker's command line and environment (to restart it the same way). */
static void
capture_worker(void)
{
    char path[128];
    pid_t pid = tly_test_read_pid("tally-worker");
    assert_true(pid > 0 && kill(pid, 0) == 0);
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    worker_argv = tly_test_read_nul_vector(path);
    snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
    worker_envp = tly_test_read_nul_vector(path);
    assert_non_null(worker_argv);
    assert_non_null(strstr(worker_argv[0], "tally-worker"));
}

/* SIGKILL, reap or wait until gone. */
static void
kill9_worker(pid_t pid)
{
    kill(pid, SIGKILL);
    for (int i = 0; i < 500; ++i) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid || kill(pid, 0) != 0)
            return;
        tly_test_sleep_ms(10);
    }
    fail_msg("worker %d did not die", (int)pid);
}

/* Starts the worker as the stack did (setsid, its log, pid file), so that stack.sh down stops it. */
static pid_t
start_worker(void)
{
    char log[1024];
    snprintf(log, sizeof(log), "%s/log/tally-worker.log", var_dir);
    pid_t pid = tly_test_spawn(worker_argv, worker_envp != NULL ? worker_envp : (char *[]){NULL}, log, false);
    tly_test_write_pid("tally-worker", pid);
    return pid;
}

static void
storm(int kills_min)
{
    storm_t *s = calloc(1, sizeof(*s));
    int n = STORM_TRANSFERS;
    const char *env_n = getenv("TALLY_STORM_TRANSFERS");
    if (env_n != NULL && atoi(env_n) > 0)
        n = atoi(env_n);
    uint64_t seed = (uint64_t)time(NULL) * 2654435761u + (uint64_t)getpid();
    printf("storm: %d transfers, %d accounts, seed %llu, kills >= %d\n", n, NACCOUNTS, (unsigned long long)seed, kills_min);
    snprintf(s->tag, sizeof(s->tag), "storm-%d-%lld", (int)getpid(), (long long)tly_test_now_ms());
    for (int i = 0; i < NACCOUNTS; ++i)
        open_account(key_a, "EUR", DEPOSIT, s->accounts[i]);
    s->n = n;
    s->x = calloc((size_t)n, sizeof(*s->x));
    for (int i = 0; i < n; ++i) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        s->x[i].from = (int)(seed % NACCOUNTS);
        s->x[i].to = (int)((s->x[i].from + 1 + (seed >> 16) % (NACCOUNTS - 1)) % NACCOUNTS);
        s->x[i].amount = 1 + (int64_t)((seed >> 32) % 1000);
    }
    if (kills_min > 0)
        capture_worker();

    int64_t t0 = tly_test_now_ms();
    pthread_t senders[SENDERS], fz;
    for (int i = 0; i < SENDERS; ++i)
        assert_int_equal(pthread_create(&senders[i], NULL, sender, s), 0);
    assert_int_equal(pthread_create(&fz, NULL, freezer, s), 0);
    int kills = 0;
    if (kills_min > 0) { /* the main thread kills and restarts the stack's worker until the senders are done */
        uint64_t ks = seed | 1;
        while (atomic_load(&s->done_senders) < SENDERS || kills < kills_min) {
            ks ^= ks << 13;
            ks ^= ks >> 7;
            ks ^= ks << 17;
            tly_test_sleep_ms(300 + (int)(ks % 2500));
            kill9_worker(tly_test_read_pid("tally-worker"));
            kills++;
            tly_test_sleep_ms((int)((ks >> 20) % 1500));
            start_worker();
        }
    }
    for (int i = 0; i < SENDERS; ++i)
        pthread_join(senders[i], NULL);
    int64_t t_sent = tly_test_now_ms();
    tly_test_sleep_ms(500);
    atomic_store(&s->stop_freezer, true);
    pthread_join(fz, NULL);
    for (int i = 0; i < n; ++i)
        assert_true(s->x[i].job[0] != '\0'); /* every transfer got its 202 */

    /* every job terminal */
    size_t cap = (size_t)n * 40 + 16, len = 0;
    char *ids = malloc(cap);
    ids[len++] = '{';
    for (int i = 0; i < n; ++i)
        len += (size_t)snprintf(ids + len, cap - len, "%s%s", i > 0 ? "," : "", s->x[i].job);
    ids[len++] = '}';
    ids[len] = '\0';
    const char *iv[] = {ids};
    int64_t done = sql_wait("SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[]) AND status IN ('succeeded', 'failed')", 1, iv, n,
                            SETTLE_S * 1000);
    int64_t t_done = tly_test_now_ms();

    /* the storm's transfers, by id */
    len = 0;
    ids[len++] = '{';
    for (int i = 0; i < n; ++i)
        len += (size_t)snprintf(ids + len, cap - len, "%s%s", i > 0 ? "," : "", s->x[i].transfer);
    ids[len++] = '}';
    ids[len] = '\0';
    /* let the read models of the last events settle (other partitions may lag the job) */
    int64_t settled = sql_wait("SELECT count(*) FROM transfers t WHERE id = ANY($1::uuid[]) AND status IN ('completed', "
                               "'rejected', 'failed') AND (SELECT count(*) FROM ledger_entries e WHERE e.transfer_id = t.id) = "
                               "CASE t.status WHEN 'completed' THEN 2 WHEN 'rejected' THEN 0 ELSE 2 END",
                               1, iv, n, 30000);
    int64_t completed = sql_i64("SELECT count(*) FROM transfers WHERE id = ANY($1::uuid[]) AND status = 'completed'", 1, iv);
    int64_t rejected = sql_i64("SELECT count(*) FROM transfers WHERE id = ANY($1::uuid[]) AND status = 'rejected'", 1, iv);
    int64_t compensated =
        sql_i64("SELECT count(*) FROM transfers WHERE id = ANY($1::uuid[]) AND status = 'failed' AND compensated", 1, iv);
    printf("storm: %d sent in %.1f s (%d batch retries), all jobs terminal after %.1f s (%.0f transfers/s end to end); "
           "completed %lld, rejected %lld, compensated %lld; freezes %d, unfreezes %d; worker kills %d\n",
           n, (double)(t_sent - t0) / 1000.0, atomic_load(&s->retries), (double)(t_done - t0) / 1000.0,
           (double)n * 1000.0 / (double)(t_done - t0 > 0 ? t_done - t0 : 1), (long long)completed, (long long)rejected,
           (long long)compensated, atomic_load(&s->freezes), atomic_load(&s->unfreezes), kills);
    assert_int_equal(done, n);
    assert_int_equal(settled, n);
    assert_int_equal(completed + rejected + compensated, n);

    /* each transfer's entries are exactly those of its path, with the right signs and accounts */
    int64_t bad = sql_i64(
        "SELECT count(*) FROM transfers t WHERE t.id = ANY($1::uuid[]) AND NOT ("
        "(t.status = 'completed' AND (SELECT count(*) FROM ledger_entries e WHERE e.transfer_id = t.id) = 2 "
        " AND EXISTS (SELECT 1 FROM ledger_entries e WHERE e.transfer_id = t.id AND e.kind = 'transfer_debit' "
        "             AND e.account_id = t.from_account AND e.amount = -t.amount) "
        " AND EXISTS (SELECT 1 FROM ledger_entries e WHERE e.transfer_id = t.id AND e.kind = 'transfer_credit' "
        "             AND e.account_id = t.to_account AND e.amount = t.amount)) "
        "OR (t.status = 'rejected' AND NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.transfer_id = t.id)) "
        "OR (t.status = 'failed' AND t.compensated AND (SELECT count(*) FROM ledger_entries e WHERE e.transfer_id = t.id) = 2 "
        " AND EXISTS (SELECT 1 FROM ledger_entries e WHERE e.transfer_id = t.id AND e.kind = 'transfer_debit' "
        "             AND e.account_id = t.from_account AND e.amount = -t.amount) "
        " AND EXISTS (SELECT 1 FROM ledger_entries e WHERE e.transfer_id = t.id AND e.kind = 'transfer_reversal' "
        "             AND e.account_id = t.from_account AND e.amount = t.amount)))",
        1, iv);
    assert_int_equal(bad, 0);
    /* jobs agree with transfers */
    assert_int_equal(sql_i64("SELECT count(*) FROM transfers t JOIN jobs j ON j.id = t.job_id WHERE t.id = ANY($1::uuid[]) AND "
                             "(j.status = 'succeeded') <> (t.status = 'completed')",
                             1, iv),
                     0);
    /* every saga finished, nothing left to re-send */
    assert_int_equal(sql_i64("SELECT count(*) FROM transfer_sagas WHERE transfer_id = ANY($1::uuid[]) AND (deadline_at IS NOT "
                             "NULL OR state NOT IN ('completed', 'rejected', 'failed'))",
                             1, iv),
                     0);

    /* money: conserved, never negative, and every view of a balance agrees */
    len = 0;
    ids[len++] = '{';
    for (int i = 0; i < NACCOUNTS; ++i)
        len += (size_t)snprintf(ids + len, cap - len, "%s%s", i > 0 ? "," : "", s->accounts[i]);
    ids[len++] = '}';
    ids[len] = '\0';
    int64_t total = sql_wait("SELECT COALESCE(sum(balance), 0) FROM accounts WHERE id = ANY($1::uuid[])", 1, iv,
                             (int64_t)NACCOUNTS * DEPOSIT, 10000);
    printf("storm: total of balances %lld (deposited %lld)\n", (long long)total, (long long)NACCOUNTS * DEPOSIT);
    assert_int_equal(total, (int64_t)NACCOUNTS * DEPOSIT);
    assert_int_equal(sql_i64("SELECT COALESCE(sum(balance), 0) FROM decider_accounts WHERE id = ANY($1::uuid[])", 1, iv),
                     (int64_t)NACCOUNTS * DEPOSIT);
    assert_int_equal(sql_i64("SELECT count(*) FROM accounts WHERE id = ANY($1::uuid[]) AND balance < 0", 1, iv), 0);
    /* a job is terminal once its transfer's last event is projected; the accounts' own events are on other
       partitions, whose projector may still be catching up after a kill: wait for them too */
    assert_int_equal(sql_wait("SELECT count(*) FROM accounts a JOIN decider_accounts d ON d.id = a.id WHERE a.id = ANY($1::uuid[]) "
                              "AND (a.balance <> d.balance OR a.version <> d.version OR a.balance <> (SELECT sum(amount) FROM "
                              "ledger_entries e WHERE e.account_id = a.id))",
                              1, iv, 0, 30000),
                     0);
    /* the outbox drains, nothing was parked */
    assert_int_equal(sql_wait("SELECT count(*) FROM outbox", 0, NULL, 0, 30000), 0);
    assert_int_equal(sql_i64("SELECT count(*) FROM dead_letters WHERE created_at > now() - interval '1 hour'", 0, NULL), 0);
    free(ids);
    free(s->x);
    free(s);
}

static void
test_storm(void **state)
{
    storm(0);
}

static void
test_storm_kill9(void **state)
{
    storm(3);
}

int
main(void)
{
    var_dir = tly_test_env("TALLY_VAR");
    bin_dir = tly_test_env("TALLY_BIN");
    const char *dsn = tly_test_env("TALLY_PG_DSN");
    if (dsn == NULL || bin_dir == NULL || var_dir == NULL) {
        fprintf(stderr, "TALLY_PG_DSN, TALLY_BIN and TALLY_VAR are needed (run against tests/stack.sh)\n");
        return 1;
    }
    setenv("TALLY_PG_DSN", dsn, 1);
    setenv("TALLY_BIN", bin_dir, 1);
    setvbuf(stdout, NULL, _IOLBF, 0);
    db = PQconnectdb(dsn);
    if (PQstatus(db) != CONNECTION_OK) {
        fprintf(stderr, "could not connect to %s: %s\n", dsn, PQerrorMessage(db));
        return 1;
    }
    tly_test_make_tenant("transfers-a", 1000000, tenant_a, sizeof(tenant_a), key_a, sizeof(key_a));
    tly_test_make_tenant("transfers-b", 1000000, tenant_b, sizeof(tenant_b), key_b, sizeof(key_b));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_completed), cmocka_unit_test(test_rejected), cmocka_unit_test(test_compensated),
        cmocka_unit_test(test_reads),     cmocka_unit_test(test_storm),    cmocka_unit_test(test_storm_kill9),
    };
    int ret = cmocka_run_group_tests(tests, NULL, NULL);
    PQfinish(db);
    return ret;
}
