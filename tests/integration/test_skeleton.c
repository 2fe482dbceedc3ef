/*
 * The walking skeleton over HTTP through the gateway: open an account, deposit,
 * wait for the jobs, read the balance; and the answers around it (202 promise,
 * idempotency, ETags, the error statuses).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tly_test_http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *key;

static const char *
jstr(json_t *o, const char *path1, const char *path2)
{
    json_t *v = json_object_get(o, path1);
    if (path2 != NULL)
        v = json_object_get(v, path2);
    return json_string_value(v);
}

/* Opens an account and waits for it; writes its id. */
static void
open_account(const char *currency, char *id_out)
{
    char body[128];
    snprintf(body, sizeof(body), "{\"currency\":\"%s\",\"label\":\"test account\"}", currency);
    tly_test_response_t r = tly_test_request("POST", "/v1/accounts", key, body, NULL);
    assert_int_equal(r.status, 202);
    snprintf(id_out, 64, "%s", jstr(json_object_get(r.json, "job"), "resource", "id"));
    json_t *job = tly_test_wait_job(jstr(r.json, "job", "url"), key, 20000);
    assert_non_null(job);
    assert_string_equal(jstr(job, "status", NULL), "succeeded");
    json_decref(job);
    tly_test_response_free(&r);
}

static void
test_open_deposit_read(void **state)
{
    char location[128], job_url[128], account[64], path[160], idem[128], etag[64], etag2[64], replay[64];
    tly_test_response_t r = tly_test_request("POST", "/v1/accounts", key, "{\"currency\":\"EUR\",\"label\":\"savings\"}", NULL);
    assert_int_equal(r.status, 202);
    assert_true(tly_test_header(&r, "location", location, sizeof(location)));
    snprintf(job_url, sizeof(job_url), "%s", jstr(r.json, "job", "url"));
    assert_string_equal(location, job_url);
    assert_string_equal(jstr(r.json, "job", "status"), "queued");
    snprintf(account, sizeof(account), "%s", jstr(json_object_get(r.json, "job"), "resource", "id"));
    tly_test_response_free(&r);

    /* a 202 is a promise: the job exists at once */
    r = tly_test_request("GET", location, key, NULL, NULL);
    assert_int_equal(r.status, 200);
    tly_test_response_free(&r);

    json_t *job = tly_test_wait_job(job_url, key, 20000);
    assert_string_equal(jstr(job, "status", NULL), "succeeded");
    assert_string_equal(jstr(job, "resource", "id"), account);
    json_decref(job);

    snprintf(path, sizeof(path), "/v1/accounts/%s", account);
    r = tly_test_request("GET", path, key, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "balance")), 0);
    assert_string_equal(jstr(r.json, "status", NULL), "open");
    assert_true(tly_test_header(&r, "etag", etag, sizeof(etag)));
    tly_test_response_free(&r);

    /* deposit, then the same request again: same job, applied once */
    char dep_path[200];
    snprintf(dep_path, sizeof(dep_path), "/v1/accounts/%s/deposits", account);
    tly_test_idem_header(idem, sizeof(idem));
    const char *hdrs[] = {idem, NULL};
    r = tly_test_request("POST", dep_path, key, "{\"amount\":1500,\"currency\":\"EUR\"}", hdrs);
    assert_int_equal(r.status, 202);
    snprintf(job_url, sizeof(job_url), "%s", jstr(r.json, "job", "url"));
    tly_test_response_free(&r);
    r = tly_test_request("POST", dep_path, key, "{\"amount\":1500,\"currency\":\"EUR\"}", hdrs);
    assert_int_equal(r.status, 202);
    assert_string_equal(jstr(r.json, "job", "url"), job_url);
    assert_true(tly_test_header(&r, "idempotent-replayed", replay, sizeof(replay)));
    tly_test_response_free(&r);
    r = tly_test_request("POST", dep_path, key, "{\"amount\":1501,\"currency\":\"EUR\"}", hdrs);
    assert_int_equal(r.status, 422);
    assert_string_equal(jstr(r.json, "code", NULL), "idempotency_key_reused");
    tly_test_response_free(&r);

    job = tly_test_wait_job(job_url, key, 20000);
    assert_string_equal(jstr(job, "status", NULL), "succeeded");
    json_decref(job);

    r = tly_test_request("GET", path, key, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "balance")), 1500);
    assert_int_equal(json_integer_value(json_object_get(r.json, "version")), 2);
    assert_true(tly_test_header(&r, "etag", etag2, sizeof(etag2)));
    assert_string_not_equal(etag, etag2);
    tly_test_response_free(&r);

    char inm[100];
    snprintf(inm, sizeof(inm), "If-None-Match: %s", etag2);
    const char *cond[] = {inm, NULL};
    r = tly_test_request("GET", path, key, NULL, cond);
    assert_int_equal(r.status, 304);
    assert_int_equal(r.body_len, 0);
    tly_test_response_free(&r);
}

static void
test_withdrawal_rejected(void **state)
{
    char account[64], path[200], idem[128];
    open_account("USD", account);
    snprintf(path, sizeof(path), "/v1/accounts/%s/withdrawals", account);
    tly_test_idem_header(idem, sizeof(idem));
    const char *hdrs[] = {idem, NULL};
    tly_test_response_t r = tly_test_request("POST", path, key, "{\"amount\":5000,\"currency\":\"USD\"}", hdrs);
    assert_int_equal(r.status, 202);
    json_t *job = tly_test_wait_job(jstr(r.json, "job", "url"), key, 20000);
    assert_string_equal(jstr(job, "status", NULL), "failed");
    assert_string_equal(jstr(job, "error", "code"), "insufficient_funds");
    json_decref(job);
    tly_test_response_free(&r);
}

static void
expect_problem(const char *method, const char *path, const char *k, const char *body, const char *const *hdrs, long status,
               const char *code)
{
    char ct[128];
    tly_test_response_t r = tly_test_request(method, path, k, body, hdrs);
    assert_int_equal(r.status, status);
    assert_true(tly_test_header(&r, "content-type", ct, sizeof(ct)));
    assert_string_equal(ct, "application/problem+json");
    assert_string_equal(jstr(r.json, "code", NULL), code);
    assert_int_equal(json_integer_value(json_object_get(r.json, "status")), status);
    tly_test_response_free(&r);
}

static void
test_error_statuses(void **state)
{
    char idem[128], rl[128];
    tly_test_idem_header(idem, sizeof(idem));
    const char *with_idem[] = {idem, NULL};
    const char *text[] = {"Content-Type: text/plain", NULL};
    expect_problem("POST", "/v1/accounts", NULL, "{}", NULL, 401, "unauthenticated");
    expect_problem("POST", "/v1/accounts", "tly_live_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "{}", NULL, 401,
                   "invalid_api_key");
    expect_problem("POST", "/v1/accounts", key, "{\"currency\":", NULL, 400, "malformed_json");
    expect_problem("POST", "/v1/accounts", key, "{\"currency\":\"EUR\",\"currency\":\"USD\",\"label\":\"x\"}", NULL, 400,
                   "duplicate_key");
    expect_problem("POST", "/v1/accounts", key, "{\"currency\":\"EURO\"}", NULL, 422, "validation_failed");
    expect_problem("POST", "/v1/accounts/6b1f2e51-8c0d-4a3e-9f27-440b5da193c8/deposits", key, "{\"amount\":1,\"currency\":\"EUR\"}",
                   NULL, 400, "idempotency_key_required");
    expect_problem("POST", "/v1/accounts/not-a-uuid/deposits", key, "{\"amount\":1,\"currency\":\"EUR\"}", with_idem, 422,
                   "validation_failed");
    expect_problem("GET", "/v1/accounts/6b1f2e51-8c0d-4a3e-9f27-440b5da193c8", key, NULL, NULL, 404, "not_found");
    expect_problem("GET", "/v1/jobs/6b1f2e51-8c0d-4a3e-9f27-440b5da193c8", key, NULL, NULL, 404, "not_found");

    /* 415: send text/plain explicitly (the client adds JSON only with a body it owns) */
    tly_test_response_t r = tly_test_request("POST", "/v1/accounts", key, NULL, text);
    assert_int_equal(r.status, 415);
    assert_true(tly_test_header(&r, "ratelimit-policy", rl, sizeof(rl)));
    assert_true(tly_test_header(&r, "ratelimit", rl, sizeof(rl)));
    tly_test_response_free(&r);
}

int
main(void)
{
    key = tly_test_env("TALLY_API_KEY");
    if (key == NULL) {
        fprintf(stderr, "TALLY_API_KEY is not set\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_deposit_read),
        cmocka_unit_test(test_withdrawal_rejected),
        cmocka_unit_test(test_error_statuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
