/*
 * The query API over HTTP (through the gateway unless said otherwise):
 * cursor pagination under concurrent inserts, cursor tampering and filter
 * binding, page ETags and 304, gzip, bad input, tenant walls on every
 * endpoint, conditional GETs answered from memory, and the Prefer: wait
 * long-poll (early, on time, 1,000 at once).
 *
 * Each run creates its own tenants and keys with tallyctl, so counts are
 * exact. The long-poll tests that need a job to stay queued insert an
 * accepted command record straight into PostgreSQL (no worker picks it up)
 * and later finish it the way the projector does: update `jobs`, then
 * NOTIFY tally_jobs with the job id.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tly_test_http.h"
#include "tly_test_util.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define MAX_IDS 4096

static char key_a[128], key_b[128], tenant_a[64], tenant_b[64];
static char account_a[64], job_a[64], cursor_a[256];

static double
now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
psql(const char *sql)
{
    char cmd[4096];
    snprintf(cmd, sizeof(cmd), "psql \"$TALLY_PG_DSN\" -Atq -v ON_ERROR_STOP=1 -c \"%s\" >/dev/null", sql);
    tly_test_sh(cmd, NULL, 0);
}

static const char *
jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* POST /v1/accounts; writes the account id and the job url. */
static void
post_account(const char *key, const char *currency, char *account, char *job_url)
{
    char body[96];
    snprintf(body, sizeof(body), "{\"currency\":\"%s\",\"label\":\"paging\"}", currency);
    tly_test_response_t r = tly_test_request("POST", "/v1/accounts", key, body, NULL);
    assert_int_equal(r.status, 202);
    json_t *job = json_object_get(r.json, "job");
    if (account != NULL)
        snprintf(account, 64, "%s", json_string_value(json_object_get(json_object_get(job, "resource"), "id")));
    if (job_url != NULL)
        snprintf(job_url, 128, "%s", jstr(job, "url"));
    tly_test_response_free(&r);
}

static void
expect_problem(const char *path, const char *key, const char *const *hdrs, long status, const char *code)
{
    char ct[128];
    tly_test_response_t r = tly_test_request("GET", path, key, NULL, hdrs);
    if (r.status != status)
        fail_msg("GET %s: %ld, expected %ld: %s", path, r.status, status, r.body);
    assert_true(tly_test_header(&r, "content-type", ct, sizeof(ct)));
    assert_string_equal(ct, "application/problem+json");
    assert_string_equal(jstr(r.json, "code"), code);
    tly_test_response_free(&r);
}

/* --- paging ---------------------------------------------------------------- */

static int
paging_count(void)
{
    const char *n = getenv("TALLY_QA_PAGING_N");
    return n != NULL ? atoi(n) : 1000;
}

static int
find_id(char (*ids)[40], int n, const char *id)
{
    for (int i = 0; i < n; ++i)
        if (strcmp(ids[i], id) == 0)
            return i;
    return -1;
}

static void
test_paging_with_inserts(void **state)
{
    static char ids[MAX_IDS][40], jobs[MAX_IDS][128];
    static int seen[MAX_IDS];
    int n = paging_count(), inserted = 0, pages = 0, total = 0;
    char path[512], next[512], link[600], want_link[600], last_created[40] = "";
    double t0 = now_s();
    for (int i = 0; i < n; ++i)
        post_account(key_a, i % 2 ? "EUR" : "USD", ids[i], jobs[i]);
    double t1 = now_s();
    for (int i = n - 1; i >= 0; --i) {
        json_t *job = tly_test_wait_job(jobs[i], key_a, 60000);
        assert_non_null(job);
        assert_string_equal(jstr(job, "status"), "succeeded");
        json_decref(job);
    }
    double t2 = now_s();
    print_message("opened %d accounts in %.1f s, all projected after %.1f s more\n", n, t1 - t0, t2 - t1);

    snprintf(path, sizeof(path), "/v1/accounts?limit=37");
    while (1) {
        tly_test_response_t r = tly_test_request("GET", path, key_a, NULL, NULL);
        assert_int_equal(r.status, 200);
        json_t *data = json_object_get(r.json, "data"), *item;
        size_t i;
        json_array_foreach(data, i, item)
        {
            const char *created = jstr(item, "created_at");
            assert_true(strcmp(created, last_created) >= 0); /* (created_at, id) order */
            snprintf(last_created, sizeof(last_created), "%s", created);
            int k = find_id(ids, n, jstr(item, "id"));
            if (k >= 0)
                ++seen[k];
            ++total;
        }
        ++pages;
        bool more = json_is_true(json_object_get(r.json, "has_more"));
        if (!more) {
            assert_true(json_is_null(json_object_get(r.json, "next_cursor")));
            assert_false(tly_test_header(&r, "link", link, sizeof(link)));
            tly_test_response_free(&r);
            break;
        }
        assert_true(json_array_size(data) == 37);
        snprintf(next, sizeof(next), "/v1/accounts?limit=37&cursor=%s", jstr(r.json, "next_cursor"));
        assert_true(tly_test_header(&r, "link", link, sizeof(link)));
        snprintf(want_link, sizeof(want_link), "<%s>; rel=\"next\"", next);
        assert_string_equal(link, want_link);
        snprintf(path, sizeof(path), "%s", next);
        tly_test_response_free(&r);
        /* inserts between page fetches: they may show up after the position, never twice */
        for (int j = 0; j < 3; ++j, ++inserted)
            post_account(key_a, "EUR", NULL, NULL);
    }
    for (int i = 0; i < n; ++i)
        if (seen[i] != 1)
            fail_msg("account %s seen %d times", ids[i], seen[i]);
    assert_true(total >= n && total <= n + inserted);
    print_message("paged %d accounts (%d inserted while paging, %d of them seen) in %d pages in %.1f s\n", n, inserted, total - n,
                  pages, now_s() - t2);
    snprintf(account_a, sizeof(account_a), "%.36s", ids[0]);
    snprintf(job_a, sizeof(job_a), "%.36s", jobs[0] + strlen("/v1/jobs/"));
}

/* --- cursors --------------------------------------------------------------- */

static void
first_cursor(const char *query, char *cursor)
{
    char path[256];
    snprintf(path, sizeof(path), "/v1/accounts?%s", query);
    tly_test_response_t r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_non_null(jstr(r.json, "next_cursor"));
    snprintf(cursor, 256, "%s", jstr(r.json, "next_cursor"));
    tly_test_response_free(&r);
}

static void
test_cursor_tampered_and_foreign(void **state)
{
    char cursor[256], bad[256], path[512];
    first_cursor("limit=2&currency=EUR", cursor);
    snprintf(cursor_a, sizeof(cursor_a), "%s", cursor);
    snprintf(path, sizeof(path), "/v1/accounts?limit=2&currency=EUR&cursor=%s", cursor);
    tly_test_response_t r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_int_equal(r.status, 200);
    tly_test_response_free(&r);
    /* flip one character in the position, then in the signature */
    size_t positions[] = {5, strlen(cursor) - 3};
    for (size_t i = 0; i < 2; ++i) {
        snprintf(bad, sizeof(bad), "%s", cursor);
        bad[positions[i]] = bad[positions[i]] == 'A' ? 'B' : 'A';
        snprintf(path, sizeof(path), "/v1/accounts?limit=2&currency=EUR&cursor=%s", bad);
        expect_problem(path, key_a, NULL, 400, "invalid_cursor");
    }
    expect_problem(
        "/v1/accounts?cursor=AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        key_a, NULL, 400, "invalid_cursor");
    expect_problem("/v1/accounts?cursor=not*base64", key_a, NULL, 400, "invalid_cursor");
}

static void
test_cursor_other_filters(void **state)
{
    char cursor[256], path[512];
    first_cursor("limit=2&currency=EUR", cursor);
    const char *others[] = {"currency=USD", "", "currency=EUR&status=open", "currency=EUR&created_after=2020-01-01T00:00:00Z"};
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); ++i) {
        snprintf(path, sizeof(path), "/v1/accounts?%s&limit=2&cursor=%s", others[i], cursor);
        expect_problem(path, key_a, NULL, 400, "invalid_cursor");
    }
    /* another limit is fine: the cursor binds filters, not page size */
    snprintf(path, sizeof(path), "/v1/accounts?currency=EUR&limit=5&cursor=%s", cursor);
    tly_test_response_t r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "data")), 5);
    tly_test_response_free(&r);
}

/* --- ETags, HEAD, gzip ----------------------------------------------------- */

static void
expect_304(const char *path, const char *inm, const char *etag)
{
    char hdr[256], got[128];
    snprintf(hdr, sizeof(hdr), "If-None-Match: %s", inm);
    const char *hdrs[] = {hdr, NULL};
    tly_test_response_t r = tly_test_request("GET", path, key_a, NULL, hdrs);
    assert_int_equal(r.status, 304);
    assert_int_equal(r.body_len, 0);
    assert_true(tly_test_header(&r, "etag", got, sizeof(got)));
    assert_string_equal(got, etag);
    tly_test_response_free(&r);
}

static void
test_page_etag_and_head(void **state)
{
    char etag[128], etag2[128], inm[300], cc[64];
    const char *path = "/v1/accounts?limit=3&status=open";
    tly_test_response_t r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_true(tly_test_header(&r, "etag", etag, sizeof(etag)));
    assert_true(tly_test_header(&r, "cache-control", cc, sizeof(cc)));
    assert_string_equal(cc, "private, no-cache");
    tly_test_response_free(&r);
    expect_304(path, etag, etag);
    snprintf(inm, sizeof(inm), "\"nope\", W/%s", etag);
    expect_304(path, inm, etag);
    expect_304(path, "*", etag);
    r = tly_test_request("GET", path, key_a, NULL, (const char *[]){"If-None-Match: \"nope\"", NULL});
    assert_int_equal(r.status, 200);
    tly_test_response_free(&r);
    /* another page has another tag */
    r = tly_test_request("GET", "/v1/accounts?limit=4&status=open", key_a, NULL, NULL);
    assert_true(tly_test_header(&r, "etag", etag2, sizeof(etag2)));
    assert_string_not_equal(etag, etag2);
    tly_test_response_free(&r);
    /* HEAD: same status and tag, no body */
    r = tly_test_request("HEAD", path, key_a, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    assert_true(tly_test_header(&r, "etag", etag2, sizeof(etag2)));
    assert_string_equal(etag, etag2);
    tly_test_response_free(&r);
}

static void
test_gzip(void **state)
{
    char enc[64], etag[128], getag[128], vary[64];
    const char *path = "/v1/accounts?limit=20";
    tly_test_response_t plain = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_int_equal(plain.status, 200);
    assert_true(plain.body_len > 1024);
    assert_false(tly_test_header(&plain, "content-encoding", enc, sizeof(enc)));
    assert_true(tly_test_header(&plain, "etag", etag, sizeof(etag)));
    const char *hdrs[] = {"Accept-Encoding: gzip", NULL};
    tly_test_response_t gz = tly_test_request("GET", path, key_a, NULL, hdrs);
    assert_int_equal(gz.status, 200);
    assert_true(tly_test_header(&gz, "content-encoding", enc, sizeof(enc)));
    assert_string_equal(enc, "gzip");
    assert_true(tly_test_header(&gz, "vary", vary, sizeof(vary)));
    assert_true(tly_test_header(&gz, "etag", getag, sizeof(getag)));
    assert_int_equal(strncmp(getag, "W/", 2), 0);
    assert_string_equal(getag + 2, etag);
    assert_true(gz.body_len < plain.body_len);
    /* decompress and compare */
    size_t cap = plain.body_len + 16;
    char *out = malloc(cap);
    z_stream zs = {0};
    assert_int_equal(inflateInit2(&zs, 15 + 16), Z_OK);
    zs.next_in = (Bytef *)gz.body;
    zs.avail_in = (uInt)gz.body_len;
    zs.next_out = (Bytef *)out;
    zs.avail_out = (uInt)cap;
    assert_int_equal(inflate(&zs, Z_FINISH), Z_STREAM_END);
    assert_int_equal(zs.total_out, plain.body_len);
    assert_memory_equal(out, plain.body, plain.body_len);
    inflateEnd(&zs);
    free(out);
    tly_test_response_free(&gz);
    /* gzip;q=0 refuses it; small bodies are never compressed */
    gz = tly_test_request("GET", path, key_a, NULL, (const char *[]){"Accept-Encoding: gzip;q=0", NULL});
    assert_false(tly_test_header(&gz, "content-encoding", enc, sizeof(enc)));
    tly_test_response_free(&gz);
    gz = tly_test_request("GET", "/v1/accounts?limit=1", key_a, NULL, hdrs);
    assert_false(tly_test_header(&gz, "content-encoding", enc, sizeof(enc)));
    tly_test_response_free(&gz);
    /* a matching weak tag gives 304 with the gzip representation's tag */
    char inm[160];
    snprintf(inm, sizeof(inm), "If-None-Match: %s", getag);
    gz = tly_test_request("GET", path, key_a, NULL, (const char *[]){"Accept-Encoding: gzip", inm, NULL});
    assert_int_equal(gz.status, 304);
    tly_test_response_free(&gz);
    tly_test_response_free(&plain);
}

/* --- bad input ------------------------------------------------------------- */

static void
test_bad_input(void **state)
{
    char path[256];
    expect_problem("/v1/accounts?colour=red", key_a, NULL, 422, "validation_failed");
    expect_problem("/v1/accounts?limit=0", key_a, NULL, 422, "validation_failed");
    expect_problem("/v1/accounts?limit=101", key_a, NULL, 422, "validation_failed");
    expect_problem("/v1/accounts?limit=ten", key_a, NULL, 422, "validation_failed");
    expect_problem("/v1/accounts?limit=5&limit=6", key_a, NULL, 422, "validation_failed");
    expect_problem("/v1/accounts?created_after=yesterday", key_a, NULL, 422, "validation_failed");
    expect_problem("/v1/accounts?status=sleeping", key_a, NULL, 422, "validation_failed");
    expect_problem("/v1/accounts?currency=EURO", key_a, NULL, 422, "validation_failed");
    expect_problem("/v1/accounts?limit=%zz", key_a, NULL, 400, "malformed_query");
    expect_problem("/v1/accounts/not-a-uuid/entries", key_a, NULL, 422, "validation_failed");
    snprintf(path, sizeof(path), "/v1/accounts/%s/entries?status=open", account_a);
    expect_problem(path, key_a, NULL, 422, "validation_failed");
    snprintf(path, sizeof(path), "/v1/accounts/%s/entries?before=2026-13-01T00:00:00Z", account_a);
    expect_problem(path, key_a, NULL, 422, "validation_failed");
    snprintf(path, sizeof(path), "/v1/accounts/%s?limit=1", account_a);
    expect_problem(path, key_a, NULL, 422, "validation_failed");
    expect_problem("/v1/accounts?limit=1", NULL, NULL, 401, "unauthenticated");
    tly_test_response_t r = tly_test_request(
        "GET", "/v1/accounts?status=open&currency=EUR&created_after=2000-01-01T00:00:00%2B01:00", key_a, NULL, NULL);
    assert_int_equal(r.status, 200);
    tly_test_response_free(&r);
}

/* --- entries --------------------------------------------------------------- */

static void
test_entries(void **state)
{
    char path[600], idem[128], job_url[128], cursor[256];
    snprintf(path, sizeof(path), "/v1/accounts/%s/deposits", account_a);
    for (int i = 0; i < 3; ++i) {
        tly_test_idem_header(idem, sizeof(idem));
        const char *hdrs[] = {idem, NULL};
        tly_test_response_t r = tly_test_request("POST", path, key_a, "{\"amount\":100,\"currency\":\"USD\"}", hdrs);
        assert_int_equal(r.status, 202);
        snprintf(job_url, sizeof(job_url), "%s", jstr(json_object_get(r.json, "job"), "url"));
        tly_test_response_free(&r);
        json_t *job = tly_test_wait_job(job_url, key_a, 20000);
        assert_string_equal(jstr(job, "status"), "succeeded");
        json_decref(job);
    }
    snprintf(path, sizeof(path), "/v1/accounts/%s/entries?limit=2&kind=deposit", account_a);
    tly_test_response_t r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_int_equal(r.status, 200);
    json_t *data = json_object_get(r.json, "data");
    assert_int_equal(json_array_size(data), 2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(data, 1), "balance_after")), 200);
    assert_string_equal(jstr(json_array_get(data, 0), "kind"), "deposit");
    snprintf(cursor, sizeof(cursor), "%s", jstr(r.json, "next_cursor"));
    tly_test_response_free(&r);
    snprintf(path, sizeof(path), "/v1/accounts/%s/entries?limit=2&kind=deposit&cursor=%s", account_a, cursor);
    r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_int_equal(r.status, 200);
    data = json_object_get(r.json, "data");
    assert_int_equal(json_array_size(data), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(data, 0), "balance_after")), 300);
    assert_true(json_is_false(json_object_get(r.json, "has_more")));
    tly_test_response_free(&r);
    /* the cursor is bound to this account's filters */
    snprintf(path, sizeof(path), "/v1/accounts/%s/entries?limit=2&cursor=%s", account_a, cursor);
    expect_problem(path, key_a, NULL, 400, "invalid_cursor");
    snprintf(path, sizeof(path), "/v1/accounts/%s/entries?kind=withdrawal", account_a);
    r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "data")), 0);
    tly_test_response_free(&r);
    snprintf(path, sizeof(path), "/v1/accounts/%s/entries?before=2000-01-01T00:00:00Z", account_a);
    r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_int_equal(json_array_size(json_object_get(r.json, "data")), 0);
    tly_test_response_free(&r);
    expect_problem("/v1/accounts/6b1f2e51-8c0d-4a3e-9f27-440b5da193c8/entries", key_a, NULL, 404, "not_found");
}

/* --- tenant walls ------------------------------------------------------------ */

static void
test_cross_tenant(void **state)
{
    char path[512];
    const char *wait[] = {"Prefer: wait=2", NULL};
    snprintf(path, sizeof(path), "/v1/accounts/%s", account_a);
    expect_problem(path, key_b, NULL, 404, "not_found");
    snprintf(path, sizeof(path), "/v1/accounts/%s/entries", account_a);
    expect_problem(path, key_b, NULL, 404, "not_found");
    snprintf(path, sizeof(path), "/v1/jobs/%s", job_a);
    expect_problem(path, key_b, NULL, 404, "not_found");
    double t0 = now_s();
    expect_problem(path, key_b, wait, 404, "not_found"); /* no waiting on another tenant's job */
    assert_true(now_s() - t0 < 1.0);
    /* the list shows none of A's accounts, and A's cursor is foreign to B */
    tly_test_response_t r = tly_test_request("GET", "/v1/accounts?limit=100", key_b, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "data")), 0);
    tly_test_response_free(&r);
    snprintf(path, sizeof(path), "/v1/accounts?limit=2&currency=EUR&cursor=%s", cursor_a);
    expect_problem(path, key_b, NULL, 400, "invalid_cursor");
    /* and A still sees its own */
    snprintf(path, sizeof(path), "/v1/accounts/%s", account_a);
    r = tly_test_request("GET", path, key_a, NULL, NULL);
    assert_int_equal(r.status, 200);
    tly_test_response_free(&r);
}

/* --- conditional GETs answered from memory ----------------------------------- */

static long
reads_from_memory(const char *status)
{
    char out[64] = "", cmd[512];
    snprintf(cmd, sizeof(cmd),
             "curl -fsS \"$TALLY_QUERY_ADMIN_URL/metrics\" | awk '$1 == \"tally_reads_from_memory_total{status=\\\"%s\\\"}\" "
             "{ print $2 }'",
             status);
    tly_test_sh(cmd, out, sizeof(out));
    return strtol(out, NULL, 10);
}

static long
memory_304s(void)
{
    return reads_from_memory("304");
}

/* GET with If-None-Match: the status, and the ETag answered into `etag` (may be NULL). */
static long
get_inm(const char *path, const char *key, const char *inm, char *etag)
{
    char h[128];
    snprintf(h, sizeof(h), "If-None-Match: %s", inm);
    const char *hdrs[] = {h, NULL};
    tly_test_response_t r = tly_test_request("GET", path, key, NULL, inm != NULL ? hdrs : NULL);
    if (etag != NULL)
        assert_true(tly_test_header(&r, "etag", etag, 64));
    long status = r.status;
    tly_test_response_free(&r);
    return status;
}

/*
 * A still-current ETag is answered 304 from memory (no database read), a
 * changed account never is, another tenant gets its 404, and without the
 * triggers that keep the memory current (a replay swap that lost them) every
 * answer comes from the database again.
 */
static void
test_conditional_get_from_memory(void **state)
{
    char account[64], job[128], path[128], e1[64], e2[64], etag[64];
    post_account(key_a, "EUR", account, job);
    json_decref(tly_test_wait_job(job, key_a, 10000));
    snprintf(path, sizeof(path), "/v1/accounts/%s", account);
    assert_int_equal(get_inm(path, key_a, NULL, e1), 200);
    long before = memory_304s();
    for (int i = 0; i < 8; ++i) {
        assert_int_equal(get_inm(path, key_a, e1, etag), 304);
        assert_string_equal(etag, e1);
    }
    long hits = memory_304s() - before;
    print_message("%ld of 8 conditional GETs answered from memory\n", hits);
    assert_true(hits >= 1); /* two threads: each reads once, then answers from memory */
    expect_problem(path, key_b, (const char *const[]){"If-None-Match: \"account-v1\"", NULL}, 404, "not_found");

    /* a deposit changes the account: the old tag turns 200 as soon as the projector committed, and stays 200 */
    char dpath[160];
    snprintf(dpath, sizeof(dpath), "/v1/accounts/%s/deposits", account);
    char idem[128];
    tly_test_idem_header(idem, sizeof(idem));
    const char *idem_hdrs[] = {idem, NULL};
    tly_test_response_t r = tly_test_request("POST", dpath, key_a, "{\"amount\":5,\"currency\":\"EUR\"}", idem_hdrs);
    assert_int_equal(r.status, 202);
    json_decref(tly_test_wait_job(jstr(json_object_get(r.json, "job"), "url"), key_a, 10000));
    tly_test_response_free(&r);
    int64_t deadline = tly_test_now_ms() + 2000;
    while (get_inm(path, key_a, e1, e2) == 304) {
        assert_true(tly_test_now_ms() < deadline);
        tly_test_sleep_ms(5);
    }
    assert_string_not_equal(e1, e2);
    for (int i = 0; i < 8; ++i)
        assert_int_equal(get_inm(path, key_a, e1, NULL), 200);
    for (int i = 0; i < 4; ++i)
        assert_int_equal(get_inm(path, key_a, e2, NULL), 304);
    long before200 = reads_from_memory("200");
    for (int i = 0; i < 8; ++i) { /* plain reads: the new body, from memory or not, never the old one */
        tly_test_response_t g = tly_test_request("GET", path, key_a, NULL, NULL);
        assert_int_equal(g.status, 200);
        assert_int_equal(json_integer_value(json_object_get(g.json, "balance")), 5);
        assert_true(tly_test_header(&g, "etag", etag, sizeof(etag)));
        assert_string_equal(etag, e2);
        tly_test_response_free(&g);
    }
    assert_true(reads_from_memory("200") > before200);

    /* without the trigger the memory is not trusted: 304s still right, all from the database */
    psql("DROP TRIGGER accounts_notify_versions ON accounts; NOTIFY tally_versions, '*'");
    tly_test_sleep_ms(300);
    before = memory_304s();
    for (int i = 0; i < 6; ++i)
        assert_int_equal(get_inm(path, key_a, e2, NULL), 304);
    assert_int_equal(memory_304s(), before);
    psql("CREATE TRIGGER accounts_notify_versions AFTER UPDATE ON accounts REFERENCING NEW TABLE AS changed "
         "FOR EACH STATEMENT EXECUTE FUNCTION tally_notify_versions('a'); NOTIFY tally_versions, '*'");
    tly_test_sleep_ms(300);
    for (int i = 0; i < 8; ++i)
        assert_int_equal(get_inm(path, key_a, e2, NULL), 304);
    assert_true(memory_304s() > before);
}

/* --- long-poll --------------------------------------------------------------- */

/* An accepted command record with no event behind it: its job stays queued. */
static void
make_queued_jobs(const char *tenant, int n, const char *tag)
{
    char sql[1024];
    snprintf(sql, sizeof(sql),
             "INSERT INTO command_requests (job_id, event_id, tenant_id, idempotency_key, request_hash, state, locked_until, "
             "resource_type, resource_id) SELECT gen_random_uuid(), gen_random_uuid(), '%s', '%s-' || g, '\\\\x00', "
             "'accepted', now(), 'account', gen_random_uuid() FROM generate_series(1, %d) g",
             tenant, tag, n);
    psql(sql);
}

/* Finishes them as the projector would: the jobs row, then NOTIFY tally_jobs. */
static void
finish_jobs(const char *tenant, const char *tag)
{
    char sql[1024];
    snprintf(sql, sizeof(sql),
             "BEGIN; INSERT INTO jobs (id, tenant_id, status, resource_type, resource_id, created_at, updated_at) "
             "SELECT job_id, tenant_id, 'succeeded', resource_type, resource_id, created_at, now() FROM command_requests "
             "WHERE tenant_id = '%s' AND idempotency_key LIKE '%s-%%'; SELECT count(pg_notify('tally_jobs', job_id::text)) "
             "FROM command_requests WHERE tenant_id = '%s' AND idempotency_key LIKE '%s-%%'; COMMIT",
             tenant, tag, tenant, tag);
    psql(sql);
}

static void
queued_job_ids(const char *tenant, const char *tag, char (*ids)[40], int n)
{
    char cmd[1024], line[64];
    snprintf(cmd, sizeof(cmd),
             "psql \"$TALLY_PG_DSN\" -Atq -c \"SELECT job_id FROM command_requests WHERE tenant_id = '%s' AND "
             "idempotency_key LIKE '%s-%%' ORDER BY job_id\"",
             tenant, tag);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    int i = 0;
    while (i < n && fgets(line, sizeof(line), p) != NULL)
        snprintf(ids[i++], 40, "%.36s", line);
    assert_int_equal(pclose(p), 0);
    assert_int_equal(i, n);
}

static void
test_long_poll_real_job_returns_early(void **state)
{
    char path[256], idem[128], job_url[128], applied[32];
    snprintf(path, sizeof(path), "/v1/accounts/%s/deposits", account_a);
    tly_test_idem_header(idem, sizeof(idem));
    tly_test_response_t r =
        tly_test_request("POST", path, key_a, "{\"amount\":5,\"currency\":\"USD\"}", (const char *[]){idem, NULL});
    assert_int_equal(r.status, 202);
    snprintf(job_url, sizeof(job_url), "%s", jstr(json_object_get(r.json, "job"), "url"));
    tly_test_response_free(&r);
    double t0 = now_s();
    r = tly_test_request("GET", job_url, key_a, NULL, (const char *[]){"Prefer: wait=10", NULL});
    double took = now_s() - t0;
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "status"), "succeeded");
    assert_true(tly_test_header(&r, "preference-applied", applied, sizeof(applied)));
    assert_string_equal(applied, "wait=10");
    tly_test_response_free(&r);
    print_message("deposit job with Prefer: wait=10 answered succeeded after %.3f s\n", took);
    assert_true(took < 10.0);
}

static void
test_long_poll_notify_and_timeout(void **state)
{
    char ids[2][40], path[128], applied[32];
    make_queued_jobs(tenant_a, 2, "lp");
    queued_job_ids(tenant_a, "lp", ids, 2);
    /* on time: nothing finishes the job; wait=2 answers queued after 2 s */
    snprintf(path, sizeof(path), "/v1/jobs/%s", ids[0]);
    double t0 = now_s();
    tly_test_response_t r = tly_test_request("GET", path, key_a, NULL, (const char *[]){"Prefer: wait=2", NULL});
    double took = now_s() - t0;
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "status"), "queued");
    assert_true(tly_test_header(&r, "preference-applied", applied, sizeof(applied)));
    assert_string_equal(applied, "wait=2");
    tly_test_response_free(&r);
    print_message("queued job, wait=2: answered after %.3f s\n", took);
    assert_true(took >= 1.9 && took < 3.0);
    /* wait=0 answers at once */
    r = tly_test_request("GET", path, key_a, NULL, (const char *[]){"Prefer: wait=0", NULL});
    assert_string_equal(jstr(r.json, "status"), "queued");
    tly_test_response_free(&r);
    /* early: a child finishes both jobs after 1 s; wait=60 (applied as 30) answers then */
    pid_t child = fork();
    if (child == 0) {
        usleep(1000 * 1000);
        finish_jobs(tenant_a, "lp");
        _exit(0);
    }
    snprintf(path, sizeof(path), "/v1/jobs/%s", ids[1]);
    t0 = now_s();
    r = tly_test_request("GET", path, key_a, NULL, (const char *[]){"Prefer: wait=60", NULL});
    took = now_s() - t0;
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "status"), "succeeded");
    assert_true(tly_test_header(&r, "preference-applied", applied, sizeof(applied)));
    assert_string_equal(applied, "wait=30");
    tly_test_response_free(&r);
    print_message("queued job finished + NOTIFY after 1 s: answered after %.3f s\n", took);
    assert_true(took >= 0.9 && took < 3.0);
    int status;
    waitpid(child, &status, 0);
}

typedef struct {
    char body[2048];
    size_t len;
} sink_t;

static size_t
on_body(char *p, size_t size, size_t n, void *data)
{
    sink_t *s = data;
    size_t len = size * n, room = sizeof(s->body) - 1 - s->len;
    memcpy(s->body + s->len, p, len < room ? len : room);
    s->len += len < room ? len : room;
    s->body[s->len] = '\0';
    return len;
}

static void
test_thousand_waiters(void **state)
{
    enum { N = 1000 };
    static char ids[N][40];
    static sink_t sinks[N];
    static CURL *easy[N];
    char url[1200], auth[200];
    const char *base = tly_test_env("TALLY_QUERY_URL");
    assert_non_null(base);
    make_queued_jobs(tenant_a, N, "many");
    queued_job_ids(tenant_a, "many", ids, N);
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", key_a);
    struct curl_slist *hdrs = curl_slist_append(NULL, auth);
    hdrs = curl_slist_append(hdrs, "Prefer: wait=20");
    CURLM *multi = curl_multi_init();
    for (int i = 0; i < N; ++i) {
        easy[i] = curl_easy_init();
        snprintf(url, sizeof(url), "%.900s/v1/jobs/%.36s", base, ids[i]);
        curl_easy_setopt(easy[i], CURLOPT_URL, url);
        curl_easy_setopt(easy[i], CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(easy[i], CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(easy[i], CURLOPT_WRITEDATA, &sinks[i]);
        curl_easy_setopt(easy[i], CURLOPT_TIMEOUT, 40L);
        curl_multi_add_handle(multi, easy[i]);
    }
    int running = N;
    double t0 = now_s();
    /* let every request reach the server and start waiting */
    while (now_s() - t0 < 2.0) {
        curl_multi_perform(multi, &running);
        curl_multi_poll(multi, NULL, 0, 50, NULL);
    }
    assert_int_equal(running, N); /* nobody answered yet: all are held */
    /* meanwhile the server still answers other requests promptly */
    double t1 = now_s();
    tly_test_response_t r = tly_test_request("GET", "/v1/accounts?limit=5", key_a, NULL, NULL);
    assert_int_equal(r.status, 200);
    tly_test_response_free(&r);
    double other = now_s() - t1;
    double t2 = now_s();
    finish_jobs(tenant_a, "many");
    while (running > 0 && now_s() - t2 < 25.0) {
        curl_multi_perform(multi, &running);
        curl_multi_poll(multi, NULL, 0, 50, NULL);
    }
    double took = now_s() - t2;
    int ok = 0;
    for (int i = 0; i < N; ++i) {
        long status = 0;
        curl_easy_getinfo(easy[i], CURLINFO_RESPONSE_CODE, &status);
        if (status == 200 && strstr(sinks[i].body, "\"succeeded\"") != NULL)
            ++ok;
        curl_multi_remove_handle(multi, easy[i]);
        curl_easy_cleanup(easy[i]);
    }
    curl_multi_cleanup(multi);
    curl_slist_free_all(hdrs);
    print_message("%d waiters held; another request meanwhile took %.3f s; all answered %.3f s after the NOTIFY, "
                  "%d succeeded\n",
                  N, other, took, ok);
    assert_int_equal(ok, N);
    assert_true(took < 5.0);
}

static int
setup(void **state)
{
    if (tly_test_env("TALLY_PG_DSN") == NULL || tly_test_env("TALLY_BIN") == NULL)
        return -1;
    setenv("TALLY_PG_DSN", tly_test_env("TALLY_PG_DSN"), 1);
    setenv("TALLY_BIN", tly_test_env("TALLY_BIN"), 1);
    setenv("TALLY_QUERY_ADMIN_URL", tly_test_env("TALLY_QUERY_ADMIN_URL"), 1);
    curl_global_init(CURL_GLOBAL_ALL);
    tly_test_make_tenant("qa-a", 5000, tenant_a, sizeof(tenant_a), key_a, sizeof(key_a));
    tly_test_make_tenant("qa-b", 5000, tenant_b, sizeof(tenant_b), key_b, sizeof(key_b));
    return 0;
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paging_with_inserts),
        cmocka_unit_test(test_cursor_tampered_and_foreign),
        cmocka_unit_test(test_cursor_other_filters),
        cmocka_unit_test(test_page_etag_and_head),
        cmocka_unit_test(test_gzip),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_entries),
        cmocka_unit_test(test_cross_tenant),
        cmocka_unit_test(test_conditional_get_from_memory),
        cmocka_unit_test(test_long_poll_real_job_returns_early),
        cmocka_unit_test(test_long_poll_notify_and_timeout),
        cmocka_unit_test(test_thousand_waiters),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
