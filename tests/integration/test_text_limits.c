/*
 * Text limits end to end: a label or a reference is limited in Unicode
 * characters (the event schemas' maxLength), by the command API and the
 * decider alike. At the limit in multi-byte characters the job succeeds; one
 * character over is 422 at the API, never a 202 whose job fails later.
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

/* `n` copies of the UTF-8 sequence `ch`, malloc'd. */
static char *
repeat(const char *ch, int n)
{
    size_t len = strlen(ch);
    char *s = malloc(len * (size_t)n + 1);
    for (int i = 0; i < n; ++i)
        memcpy(s + len * (size_t)i, ch, len);
    s[len * (size_t)n] = '\0';
    return s;
}

/* POSTs `body` (a json_t, stolen) to `path` with an Idempotency-Key; the response's status. */
static tly_test_response_t
post(const char *path, json_t *body)
{
    char idem_h[96];
    tly_test_idem_header(idem_h, sizeof(idem_h));
    const char *hdrs[] = {idem_h, NULL};
    char *text = json_dumps(body, JSON_COMPACT);
    tly_test_response_t r = tly_test_request("POST", path, key, text, hdrs);
    free(text);
    json_decref(body);
    return r;
}

/* Waits for the job of a 202 and asserts it succeeded; returns the resource id (malloc'd) or NULL. */
static char *
expect_succeeded(tly_test_response_t *r)
{
    assert_int_equal(r->status, 202);
    json_t *job = json_object_get(r->json, "job");
    json_t *done = tly_test_wait_job(json_string_value(json_object_get(job, "url")), key, 20000);
    assert_non_null(done);
    assert_string_equal(json_string_value(json_object_get(done, "status")), "succeeded");
    json_decref(done);
    json_t *res = json_object_get(job, "resource");
    char *id = res != NULL ? strdup(json_string_value(json_object_get(res, "id"))) : NULL;
    tly_test_response_free(r);
    return id;
}

static void
expect_422(tly_test_response_t *r, const char *field)
{
    assert_int_equal(r->status, 422);
    json_t *err = json_array_get(json_object_get(r->json, "errors"), 0);
    assert_string_equal(json_string_value(json_object_get(err, "field")), field);
    tly_test_response_free(r);
}

static void
test_label_in_characters(void **state)
{
    char *label = repeat("\xc3\xa9", 150); /* é: 300 bytes, 150 characters */
    tly_test_response_t r = post("/v1/accounts", json_pack("{s:s, s:s}", "currency", "EUR", "label", label));
    char *account = expect_succeeded(&r);
    assert_non_null(account);
    char path[96];
    snprintf(path, sizeof(path), "/v1/accounts/%s", account);
    r = tly_test_request("GET", path, key, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(json_string_value(json_object_get(r.json, "label")), label);
    tly_test_response_free(&r);
    free(label);
    free(account);

    label = repeat("\xc3\xa9", 201);
    r = post("/v1/accounts", json_pack("{s:s, s:s}", "currency", "EUR", "label", label));
    expect_422(&r, "label");
    free(label);
}

static void
test_reference_in_characters(void **state)
{
    tly_test_response_t r = post("/v1/accounts", json_pack("{s:s, s:s}", "currency", "EUR", "label", "refs"));
    char *account = expect_succeeded(&r);
    char path[128];
    snprintf(path, sizeof(path), "/v1/accounts/%s/deposits", account);

    char *reference = repeat("\xe2\x82\xac", 200); /* €: 600 bytes, 200 characters */
    r = post(path, json_pack("{s:i, s:s, s:s}", "amount", 100, "currency", "EUR", "reference", reference));
    free(expect_succeeded(&r));
    free(reference);

    reference = repeat("\xe2\x82\xac", 201);
    r = post(path, json_pack("{s:i, s:s, s:s}", "amount", 100, "currency", "EUR", "reference", reference));
    expect_422(&r, "reference");
    snprintf(path, sizeof(path), "/v1/accounts/%s/withdrawals", account);
    r = post(path, json_pack("{s:i, s:s, s:s}", "amount", 1, "currency", "EUR", "reference", reference));
    expect_422(&r, "reference");
    free(reference);
    free(account);
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
        cmocka_unit_test(test_label_in_characters),
        cmocka_unit_test(test_reference_in_characters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
