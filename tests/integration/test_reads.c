/*
 * Reads in time and reads of one's own writes (issue 25) against the stack,
 * through the gateway:
 *
 *   test_as_of: an account with a known history (opened, two deposits, a
 *     freeze, an unfreeze; the instants are the entries' and the jobs' own
 *     times): the account as of each instant (version, balance, status,
 *     ETag), 404 one microsecond before it was opened, the entries up to an
 *     instant, the future (what is known, Tally-As-Of-Complete: false), bad
 *     values (422), another tenant (404), Tally-Watermark on every read.
 *   test_token_race: POST a deposit then at once GET the account with the
 *     202's Tally-Consistency-Token, 30 times: each read shows the deposit
 *     (the projector is raced on every one); a job read with the token is
 *     terminal; the token read straight from the query API (no gateway)
 *     works the same; a tampered token and another tenant's are 400.
 *   test_expand: a job with ?expand=resource embeds the account once it
 *     succeeded; a transfer with ?expand=from_account,to_account embeds both
 *     accounts, and its ETag changes when one of them changes; a transfer of
 *     tenant A to an account of tenant B never embeds B's account (the id
 *     stays); B cannot read A's job or transfer expanded (404); bad expand
 *     values are 422.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/clock.h"
#include "tly_test_http.h"
#include "tly_test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char key_a[160], key_b[160], tenant_a[64], tenant_b[64];

static const char *
jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* POST; returns the 202's job (caller decrefs) and its consistency token into `token` (if not NULL). */
static json_t *
post(const char *key, const char *path, const char *body, char *token, size_t cap)
{
    char idem_h[128];
    tly_test_idem_header(idem_h, sizeof(idem_h));
    const char *hdrs[] = {idem_h, NULL};
    tly_test_response_t r = tly_test_request("POST", path, key, body, hdrs);
    if (r.status != 202)
        fprintf(stderr, "POST %s: %ld %s\n", path, r.status, r.body);
    assert_int_equal(r.status, 202);
    if (token != NULL)
        assert_true(tly_test_header(&r, "tally-consistency-token", token, cap));
    json_t *job = json_incref(json_object_get(r.json, "job"));
    tly_test_response_free(&r);
    return job;
}

/* POST and wait; the terminal job (caller decrefs). */
static json_t *
run(const char *key, const char *path, const char *body)
{
    json_t *job = post(key, path, body, NULL, 0);
    json_t *done = tly_test_wait_job(jstr(job, "url"), key, 30000);
    assert_non_null(done);
    assert_string_equal(jstr(done, "status"), "succeeded");
    json_decref(job);
    return done;
}

static void
open_account(const char *key, char *id)
{
    json_t *job = run(key, "/v1/accounts", "{\"currency\":\"EUR\",\"label\":\"reads\"}");
    snprintf(id, 64, "%s", jstr(json_object_get(job, "resource"), "id"));
    json_decref(job);
}

/* Runs `action` (deposits with `body`, or freeze/unfreeze) and returns the job's updated_at (the outcome's time). */
static void
act(const char *key, const char *id, const char *action, const char *body, char *at)
{
    char path[128];
    snprintf(path, sizeof(path), "/v1/accounts/%s/%s", id, action);
    json_t *job = run(key, path, body);
    snprintf(at, 40, "%s", jstr(job, "updated_at"));
    json_decref(job);
}

/* GET `path` with `key` answers `status`. */
static void
expect_status(const char *path, const char *key, long status)
{
    tly_test_response_t r = tly_test_request("GET", path, key, NULL, NULL);
    if (r.status != status)
        fprintf(stderr, "GET %s: %ld %s\n", path, r.status, r.body);
    assert_int_equal(r.status, status);
    tly_test_response_free(&r);
}

/* `t` moved by `delta_us` microseconds, RFC 3339. */
static void
shift(const char *t, int64_t delta_us, char *out)
{
    int64_t us;
    assert_true(tly_clock_parse_rfc3339(t, &us));
    tly_clock_format_rfc3339(us + delta_us, out, 40);
}

/* GET /v1/accounts/{id}?as_of=t: status, and the body's version, balance and status when 200. */
static long
account_as_of(const char *key, const char *id, const char *t, int64_t *version, int64_t *bal, char *status, char *etag)
{
    char path[200];
    snprintf(path, sizeof(path), "/v1/accounts/%s?as_of=%s", id, t);
    tly_test_response_t r = tly_test_request("GET", path, key, NULL, NULL);
    long st = r.status;
    char wm[64];
    assert_true(tly_test_header(&r, "tally-watermark", wm, sizeof(wm)));
    if (st == 200) {
        *version = json_integer_value(json_object_get(r.json, "version"));
        *bal = json_integer_value(json_object_get(r.json, "balance"));
        snprintf(status, 16, "%s", jstr(r.json, "status"));
        assert_true(tly_test_header(&r, "etag", etag, 64));
    }
    tly_test_response_free(&r);
    return st;
}

static void
expect_as_of(const char *id, const char *t, int64_t version, int64_t bal, const char *status)
{
    int64_t v = -1, b = -1;
    char s[16] = "", etag[64] = "", want[64];
    assert_int_equal(account_as_of(key_a, id, t, &v, &b, s, etag), 200);
    assert_int_equal(v, version);
    assert_int_equal(b, bal);
    assert_string_equal(s, status);
    snprintf(want, sizeof(want), "\"account-v%lld\"", (long long)version);
    assert_string_equal(etag, want);
}

static void
test_as_of(void **state)
{
    char id[64], path[256], t_dep1[40], t_dep2[40], t_frozen[40], t_open[40], before[40], t[40], created[40];
    open_account(key_a, id);
    act(key_a, id, "deposits", "{\"amount\":100,\"currency\":\"EUR\"}", t_dep1);
    act(key_a, id, "deposits", "{\"amount\":50,\"currency\":\"EUR\"}", t_dep2);
    act(key_a, id, "freeze", "{}", t_frozen);
    act(key_a, id, "unfreeze", "{}", t_open);

    snprintf(path, sizeof(path), "/v1/accounts/%s", id);
    tly_test_response_t r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "version")), 5);
    snprintf(created, sizeof(created), "%s", jstr(r.json, "created_at"));
    char wm[64], etag_now[64];
    assert_true(tly_test_header(&r, "tally-watermark", wm, sizeof(wm)));
    assert_true(tly_test_header(&r, "etag", etag_now, sizeof(etag_now)));
    tly_test_response_free(&r);

    /* before it existed: 404 like an unknown id */
    int64_t v, b;
    char s[16], etag[64];
    shift(created, -1, before);
    assert_int_equal(account_as_of(key_a, id, before, &v, &b, s, etag), 404);
    expect_as_of(id, created, 1, 0, "open");
    shift(t_dep1, -1, t);
    expect_as_of(id, t, 1, 0, "open");
    expect_as_of(id, t_dep1, 2, 100, "open");
    expect_as_of(id, t_dep2, 3, 150, "open");
    expect_as_of(id, t_frozen, 4, 150, "frozen");
    shift(t_open, -1, t);
    expect_as_of(id, t, 4, 150, "frozen");
    expect_as_of(id, t_open, 5, 150, "open");

    /* the past is complete; the far future is what is known, and says so */
    snprintf(path, sizeof(path), "/v1/accounts/%s?as_of=%s", id, t_dep2);
    r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_true(tly_test_header(&r, "tally-as-of-complete", s, sizeof(s)));
    assert_string_equal(s, "true");
    tly_test_response_free(&r);
    snprintf(path, sizeof(path), "/v1/accounts/%s?as_of=2999-01-01T00:00:00Z", id);
    r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_true(tly_test_header(&r, "tally-as-of-complete", s, sizeof(s)));
    assert_string_equal(s, "false");
    assert_true(tly_test_header(&r, "etag", etag, sizeof(etag)));
    assert_string_equal(etag, etag_now);
    tly_test_response_free(&r);

    /* the entries up to an instant; none before the account */
    snprintf(path, sizeof(path), "/v1/accounts/%s/entries?as_of=%s", id, t_dep1);
    r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "data")), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(json_object_get(r.json, "data"), 0), "balance_after")), 100);
    tly_test_response_free(&r);
    snprintf(path, sizeof(path), "/v1/accounts/%s/entries?as_of=%s", id, before);
    expect_status(path, key_a, 404);

    /* bad values, repeated parameters, another tenant */
    snprintf(path, sizeof(path), "/v1/accounts/%s?as_of=yesterday", id);
    expect_status(path, key_a, 422);
    snprintf(path, sizeof(path), "/v1/accounts/%s?as_of=%s&as_of=%s", id, t_dep1, t_dep2);
    expect_status(path, key_a, 422);
    snprintf(path, sizeof(path), "/v1/accounts/%s?expand=resource", id);
    expect_status(path, key_a, 422);
    snprintf(path, sizeof(path), "/v1/accounts/%s?as_of=%s", id, t_dep2);
    expect_status(path, key_b, 404);
}

/* GET `base` + path with the token; returns the response (caller frees). */
static tly_test_response_t
get_with_token(const char *base, const char *path, const char *key, const char *token)
{
    char h[160], url[512];
    snprintf(h, sizeof(h), "Tally-Consistency-Token: %s", token);
    const char *hdrs[] = {h, NULL};
    if (base == NULL)
        return tly_test_request("GET", path, key, NULL, hdrs);
    /* tly_test_request takes TALLY_URL from the environment first */
    snprintf(url, sizeof(url), "%s", tly_test_env("TALLY_URL"));
    setenv("TALLY_URL", base, 1);
    tly_test_response_t r = tly_test_request("GET", path, key, NULL, hdrs);
    setenv("TALLY_URL", url, 1);
    return r;
}

static void
test_token_race(void **state)
{
    char id[64], path[128], token[128], how[32];
    open_account(key_a, id);
    snprintf(path, sizeof(path), "/v1/accounts/%s/deposits", id);
    int64_t want = 0;
    for (int i = 0; i < 30; ++i) {
        json_t *job = post(key_a, path, "{\"amount\":7,\"currency\":\"EUR\"}", token, sizeof(token));
        want += 7;
        char acc[128];
        snprintf(acc, sizeof(acc), "/v1/accounts/%s", id);
        /* every other read straight from the query API: the token does not depend on the way in */
        tly_test_response_t r = get_with_token(i % 2 == 0 ? NULL : tly_test_env("TALLY_QUERY_URL"), acc, key_a, token);
        assert_int_equal(r.status, 200);
        assert_true(tly_test_header(&r, "tally-consistency", how, sizeof(how)));
        assert_string_equal(how, "reached");
        assert_int_equal(json_integer_value(json_object_get(r.json, "balance")), want);
        tly_test_response_free(&r);
        r = get_with_token(NULL, jstr(job, "url"), key_a, token);
        assert_int_equal(r.status, 200);
        assert_string_equal(jstr(r.json, "status"), "succeeded");
        tly_test_response_free(&r);
        json_decref(job);
    }

    /* tampered: one character changed; another tenant's; garbage */
    char bad[128];
    snprintf(bad, sizeof(bad), "%s", token);
    bad[10] = bad[10] == 'A' ? 'B' : 'A';
    char acc[128];
    snprintf(acc, sizeof(acc), "/v1/accounts/%s", id);
    const char *cases[] = {bad, "not-a-token", NULL};
    for (int i = 0; cases[i] != NULL; ++i) {
        tly_test_response_t r = get_with_token(NULL, acc, key_a, cases[i]);
        assert_int_equal(r.status, 400);
        assert_string_equal(jstr(r.json, "code"), "invalid_consistency_token");
        tly_test_response_free(&r);
    }
    tly_test_response_t r = get_with_token(NULL, acc, key_b, token);
    assert_int_equal(r.status, 400);
    assert_string_equal(jstr(r.json, "code"), "invalid_consistency_token");
    tly_test_response_free(&r);
}

static void
test_expand(void **state)
{
    char a1[64], a2[64], b1[64], path[256], etag1[64], etag2[64];
    json_t *job = run(key_a, "/v1/accounts", "{\"currency\":\"EUR\",\"label\":\"reads\"}");
    snprintf(a1, sizeof(a1), "%s", jstr(json_object_get(job, "resource"), "id"));
    char job_id[64];
    snprintf(job_id, sizeof(job_id), "%s", jstr(job, "id"));

    /* a succeeded job embeds its account */
    snprintf(path, sizeof(path), "/v1/jobs/%s?expand=resource", job_id);
    tly_test_response_t r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_int_equal(r.status, 200);
    json_t *obj = json_object_get(json_object_get(r.json, "resource"), "object");
    assert_string_equal(jstr(obj, "id"), a1);
    assert_string_equal(jstr(obj, "currency"), "EUR");
    assert_true(tly_test_header(&r, "etag", etag1, sizeof(etag1)));
    tly_test_response_free(&r);
    /* another tenant: 404, expanded or not; bad values: 422 */
    expect_status(path, key_b, 404);
    snprintf(path, sizeof(path), "/v1/jobs/%s?expand=from_account", job_id);
    expect_status(path, key_a, 422);
    json_decref(job);

    open_account(key_a, a2);
    open_account(key_b, b1);
    snprintf(path, sizeof(path), "/v1/accounts/%s/deposits", a1);
    job = run(key_a, path, "{\"amount\":500,\"currency\":\"EUR\"}");
    json_decref(job);
    /* the job's ETag names the embedded account: it changed with the deposit */
    snprintf(path, sizeof(path), "/v1/jobs/%s?expand=resource", job_id);
    r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_true(tly_test_header(&r, "etag", etag2, sizeof(etag2)));
    assert_string_not_equal(etag1, etag2);
    tly_test_response_free(&r);

    char body[256];
    snprintf(body, sizeof(body), "{\"from_account\":\"%s\",\"to_account\":\"%s\",\"amount\":100,\"currency\":\"EUR\"}", a1, a2);
    job = run(key_a, "/v1/transfers", body);
    char tid[64];
    snprintf(tid, sizeof(tid), "%s", jstr(json_object_get(job, "resource"), "id"));
    snprintf(path, sizeof(path), "/v1/jobs/%s?expand=resource", jstr(job, "id"));
    r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_string_equal(jstr(json_object_get(json_object_get(r.json, "resource"), "object"), "id"), tid);
    tly_test_response_free(&r);
    json_decref(job);

    snprintf(path, sizeof(path), "/v1/transfers/%s?expand=from_account,to_account", tid);
    r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(json_object_get(r.json, "from_account"), "id"), a1);
    assert_string_equal(jstr(json_object_get(r.json, "to_account"), "id"), a2);
    assert_true(tly_test_header(&r, "etag", etag1, sizeof(etag1)));
    tly_test_response_free(&r);
    snprintf(path, sizeof(path), "/v1/transfers/%s?expand=to_account", tid);
    r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_string_equal(jstr(r.json, "from_account"), a1); /* not expanded: the id */
    assert_string_equal(jstr(json_object_get(r.json, "to_account"), "id"), a2);
    tly_test_response_free(&r);
    /* a change of an embedded account changes the ETag */
    char tmp[40];
    act(key_a, a2, "freeze", "{}", tmp);
    snprintf(path, sizeof(path), "/v1/transfers/%s?expand=from_account,to_account", tid);
    r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_true(tly_test_header(&r, "etag", etag2, sizeof(etag2)));
    assert_string_not_equal(etag1, etag2);
    assert_string_equal(jstr(json_object_get(r.json, "to_account"), "status"), "frozen");
    tly_test_response_free(&r);
    expect_status(path, key_b, 404);

    /* a transfer of A to B's account: B's account is never embedded for A */
    snprintf(body, sizeof(body), "{\"from_account\":\"%s\",\"to_account\":\"%s\",\"amount\":1,\"currency\":\"EUR\"}", a1, b1);
    job = post(key_a, "/v1/transfers", body, NULL, 0);
    snprintf(tid, sizeof(tid), "%s", jstr(json_object_get(job, "resource"), "id"));
    json_t *done = tly_test_wait_job(jstr(job, "url"), key_a, 30000);
    assert_non_null(done);
    json_decref(done);
    json_decref(job);
    snprintf(path, sizeof(path), "/v1/transfers/%s?expand=from_account,to_account", tid);
    r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "to_account"), b1);
    assert_string_equal(jstr(json_object_get(r.json, "from_account"), "id"), a1);
    tly_test_response_free(&r);
    snprintf(path, sizeof(path), "/v1/transfers/%s?expand=everything", tid);
    expect_status(path, key_a, 422);
}

int
main(void)
{
    const char *bin = tly_test_env("TALLY_BIN"), *dsn = tly_test_env("TALLY_PG_DSN");
    if (bin == NULL || dsn == NULL) {
        fprintf(stderr, "TALLY_BIN and TALLY_PG_DSN are needed (run against tests/stack.sh)\n");
        return 1;
    }
    setenv("TALLY_BIN", bin, 1); /* tly_test_make_tenant runs tallyctl through the shell */
    setenv("TALLY_PG_DSN", dsn, 1);
    tly_test_make_tenant("reads-a", 1000000, tenant_a, sizeof(tenant_a), key_a, sizeof(key_a));
    tly_test_make_tenant("reads-b", 1000000, tenant_b, sizeof(tenant_b), key_b, sizeof(key_b));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_as_of),
        cmocka_unit_test(test_token_race),
        cmocka_unit_test(test_expand),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
