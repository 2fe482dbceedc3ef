/*
 * Command API behaviour beyond the skeleton: batches (valid items accepted
 * beside invalid ones), API keys over HTTP (created, scoped, revoked), the
 * in-flight Idempotency-Key (409) and scope checks.
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
#include <unistd.h>

static const char *key;

static void
test_batch_mixed(void **state)
{
    const char *body = "{\"requests\":["
                       "{\"path\":\"/v1/accounts\",\"body\":{\"currency\":\"EUR\",\"label\":\"batch a\"}},"
                       "{\"path\":\"/v1/accounts\",\"body\":{\"currency\":\"EURO\"}},"
                       "{\"path\":\"/v1/accounts/6b1f2e51-8c0d-4a3e-9f27-440b5da193c8/deposits\","
                       "\"body\":{\"amount\":5,\"currency\":\"EUR\"}},"
                       "{\"path\":\"/v1/nowhere\",\"body\":{}}]}";
    tly_test_response_t r = tly_test_request("POST", "/v1/batch", key, body, NULL);
    assert_int_equal(r.status, 200);
    json_t *results = json_object_get(r.json, "results");
    assert_int_equal(json_array_size(results), 4);
    long expect[] = {202, 422, 400, 404};
    for (size_t i = 0; i < 4; ++i)
        assert_int_equal(json_integer_value(json_object_get(json_array_get(results, i), "status")), expect[i]);
    json_t *job = json_object_get(json_array_get(results, 0), "job");
    json_t *done = tly_test_wait_job(json_string_value(json_object_get(job, "url")), key, 20000);
    assert_string_equal(json_string_value(json_object_get(done, "status")), "succeeded");
    json_decref(done);
    tly_test_response_free(&r);

    r = tly_test_request("POST", "/v1/batch", key, "{\"requests\":[]}", NULL);
    assert_int_equal(r.status, 422);
    tly_test_response_free(&r);
}

static void
test_api_keys(void **state)
{
    char path[80];
    tly_test_response_t r = tly_test_request("POST", "/v1/api-keys", key, "{\"scopes\":[\"read\"],\"label\":\"reader\"}", NULL);
    assert_int_equal(r.status, 201);
    char *reader = strdup(json_string_value(json_object_get(r.json, "key")));
    snprintf(path, sizeof(path), "/v1/api-keys/%s", json_string_value(json_object_get(r.json, "id")));
    tly_test_response_free(&r);

    /* a read key cannot write (403); other instances learn new keys within 1 s */
    usleep(1500 * 1000);
    r = tly_test_request("POST", "/v1/accounts", reader, "{\"currency\":\"EUR\",\"label\":\"x\"}", NULL);
    assert_int_equal(r.status, 403);
    tly_test_response_free(&r);
    r = tly_test_request("GET", "/v1/jobs/6b1f2e51-8c0d-4a3e-9f27-440b5da193c8", reader, NULL, NULL);
    assert_int_equal(r.status, 404);
    tly_test_response_free(&r);
    /* creating keys needs admin */
    r = tly_test_request("POST", "/v1/api-keys", reader, "{\"scopes\":[\"read\"]}", NULL);
    assert_int_equal(r.status, 403);
    tly_test_response_free(&r);
    r = tly_test_request("POST", "/v1/api-keys", key, "{\"scopes\":[\"root\"]}", NULL);
    assert_int_equal(r.status, 422);
    tly_test_response_free(&r);

    r = tly_test_request("DELETE", path, key, NULL, NULL);
    assert_int_equal(r.status, 204);
    tly_test_response_free(&r);
    r = tly_test_request("DELETE", "/v1/api-keys/aaaaaaaaaaaaaaaa", key, NULL, NULL);
    assert_int_equal(r.status, 404);
    tly_test_response_free(&r);
    /* revocation reaches every instance within the refresh period */
    usleep(1500 * 1000);
    r = tly_test_request("GET", "/v1/jobs/6b1f2e51-8c0d-4a3e-9f27-440b5da193c8", reader, NULL, NULL);
    assert_int_equal(r.status, 401);
    tly_test_response_free(&r);
    free(reader);
}

static void
test_rate_limit_headers(void **state)
{
    char policy[80], limit[80];
    tly_test_response_t r = tly_test_request("GET", "/v1/jobs/6b1f2e51-8c0d-4a3e-9f27-440b5da193c8", key, NULL, NULL);
    assert_true(tly_test_header(&r, "ratelimit-policy", policy, sizeof(policy)));
    assert_true(tly_test_header(&r, "ratelimit", limit, sizeof(limit)));
    assert_non_null(strstr(policy, "\"burst\";q="));
    assert_non_null(strstr(limit, "\"burst\";r="));
    tly_test_response_free(&r);
}

static void
test_free_tier_is_limited(void **state)
{
    /* a free-tier key (10/s, burst 20): the 21st immediate request is 429 */
    tly_test_response_t r = tly_test_request("POST", "/v1/api-keys", key, "{\"scopes\":[\"read\"],\"tier\":\"free\"}", NULL);
    assert_int_equal(r.status, 201);
    char *free_key = strdup(json_string_value(json_object_get(r.json, "key")));
    tly_test_response_free(&r);
    usleep(1500 * 1000);
    int limited = 0;
    char retry[16];
    for (int i = 0; i < 30 && limited == 0; ++i) {
        r = tly_test_request("GET", "/v1/jobs/6b1f2e51-8c0d-4a3e-9f27-440b5da193c8", free_key, NULL, NULL);
        if (r.status == 429) {
            limited = i + 1;
            assert_true(tly_test_header(&r, "retry-after", retry, sizeof(retry)));
            assert_string_equal(json_string_value(json_object_get(r.json, "code")), "rate_limited");
        }
        tly_test_response_free(&r);
    }
    assert_in_range(limited, 20, 23); /* burst 20, plus what refilled meanwhile */
    free(free_key);
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
        cmocka_unit_test(test_batch_mixed),
        cmocka_unit_test(test_api_keys),
        cmocka_unit_test(test_rate_limit_headers),
        cmocka_unit_test(test_free_tier_is_limited),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
