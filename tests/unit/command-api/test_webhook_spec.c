/* Stateless validation of webhook endpoint requests (services/command-api/webhook_spec.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "webhook_spec.h"

#include <dirent.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef TLY_SCHEMAS_DIR
#define TLY_SCHEMAS_DIR "schemas/events"
#endif

static json_t *body_v;

static json_t *
parse(const char *text)
{
    json_error_t jerr;
    json_decref(body_v);
    body_v = json_loads(text, 0, &jerr);
    assert_non_null(body_v);
    return body_v;
}

/* The messages given for `field`, joined by " | ", or "" (static buffer). */
static const char *
messages_for(json_t *errors, const char *field)
{
    static char out[1024];
    size_t i, len = 0;
    json_t *e;
    out[0] = '\0';
    json_array_foreach(errors, i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "field")), field) == 0)
            len += (size_t)snprintf(out + len, sizeof(out) - len, "%s%s", len ? " | " : "",
                                    json_string_value(json_object_get(e, "message")));
    }
    return out;
}

static bool
create(const char *text, bool allow_private, tly_webhook_fields_t *f, json_t **errors)
{
    *errors = json_array();
    return tly_webhook_validate_create(parse(text), allow_private, f, *errors);
}

static bool
patch(const char *text, tly_webhook_fields_t *f, json_t **errors)
{
    *errors = json_array();
    return tly_webhook_validate_patch(parse(text), false, f, *errors);
}

static void
test_create_valid_dedups_types(void **state)
{
    tly_webhook_fields_t f;
    json_t *errors;
    char pg[512];
    assert_true(create("{\"url\":\"https://hooks.example.com/tally?x=1\",\"event_types\":[\"FundsDeposited\","
                       "\"TransferCompleted\",\"FundsDeposited\"],\"description\":\"ops\"}",
                       false, &f, &errors));
    assert_int_equal(json_array_size(errors), 0);
    assert_string_equal(f.url, "https://hooks.example.com/tally?x=1");
    assert_string_equal(f.description, "ops");
    assert_int_equal(f.ntypes, 2);
    assert_string_equal(f.types[0], "FundsDeposited");
    assert_string_equal(f.types[1], "TransferCompleted");
    assert_int_equal(f.enabled, -1);
    assert_true(tly_webhook_types_pg(&f, pg, sizeof(pg)));
    assert_string_equal(pg, "{\"FundsDeposited\",\"TransferCompleted\"}");
    assert_false(tly_webhook_types_pg(&f, pg, 20)); /* too small: refused, not truncated */
    json_decref(errors);

    assert_true(create("{\"url\":\"https://hooks.example.com\",\"event_types\":[\"*\",\"*\"]}", false, &f, &errors));
    assert_int_equal(f.ntypes, 1);
    assert_null(f.description);
    assert_true(tly_webhook_types_pg(&f, pg, sizeof(pg)));
    assert_string_equal(pg, "{\"*\"}");
    json_decref(errors);
}

static void
test_create_field_errors(void **state)
{
    tly_webhook_fields_t f;
    json_t *errors;
    assert_false(create("{}", false, &f, &errors));
    assert_string_equal(messages_for(errors, "url"), "is required");
    assert_string_equal(messages_for(errors, "event_types"), "is required");
    json_decref(errors);

    /* every problem at once, each under its own field */
    assert_false(
        create("{\"url\":5,\"event_types\":\"FundsDeposited\",\"description\":[],\"enabled\":true,\"x\":1}", false, &f, &errors));
    assert_string_equal(messages_for(errors, "url"), "must be a string");
    assert_non_null(strstr(messages_for(errors, "event_types"), "non-empty array"));
    assert_string_equal(messages_for(errors, "description"), "must be a string");
    assert_string_equal(messages_for(errors, "enabled"), "unknown field"); /* create takes no enabled */
    assert_string_equal(messages_for(errors, "x"), "unknown field");
    json_decref(errors);

    assert_false(create("{\"url\":\"https://a.example.com\",\"event_types\":[]}", false, &f, &errors));
    assert_non_null(strstr(messages_for(errors, "event_types"), "non-empty"));
    json_decref(errors);

    assert_false(create("{\"url\":\"https://a.example.com\",\"event_types\":[\"FundsDeposited\",\"fundsdeposited\",7]}", false, &f,
                        &errors));
    assert_string_equal(messages_for(errors, "event_types"),
                        "element 1 is not a Tally event type (e.g. FundsDeposited) nor \"*\" | "
                        "element 2 is not a Tally event type (e.g. FundsDeposited) nor \"*\"");
    assert_int_equal(f.ntypes, 0);
    json_decref(errors);

    assert_false(create("{\"url\":\"https://a.example.com\",\"event_types\":[\"*\",\"FundsDeposited\"]}", false, &f, &errors));
    assert_non_null(strstr(messages_for(errors, "event_types"), "give it alone"));
    json_decref(errors);

    assert_false(create("[1]", false, &f, &errors));
    assert_string_equal(messages_for(errors, ""), "the body must be a JSON object");
    json_decref(errors);
}

static void
test_create_description_length(void **state)
{
    tly_webhook_fields_t f;
    json_t *errors;
    /* 500 two-byte characters are 500 characters, not 1000 */
    char body[2048], desc[1100];
    size_t len = 0;
    for (int i = 0; i < 500; ++i)
        len += (size_t)snprintf(desc + len, sizeof(desc) - len, "\xc3\xa9");
    snprintf(body, sizeof(body), "{\"url\":\"https://a.example.com\",\"event_types\":[\"*\"],\"description\":\"%s\"}", desc);
    assert_true(create(body, false, &f, &errors));
    json_decref(errors);
    snprintf(body, sizeof(body), "{\"url\":\"https://a.example.com\",\"event_types\":[\"*\"],\"description\":\"%sx\"}", desc);
    assert_false(create(body, false, &f, &errors));
    assert_string_equal(messages_for(errors, "description"), "must be at most 500 characters");
    json_decref(errors);
}

static void
test_create_url_ssrf(void **state)
{
    static const char *refused[] = {
        "http://10.0.0.1/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://127.0.0.1:8443/x",
        "https://192.168.1.10/x",
        "http://hooks.example.com/x",
        "ftp://hooks.example.com/",
        "https://user:pw@hooks.example.com/",
        "https://localhost/x",
        "file:///etc/passwd",
        "hooks.example.com/x",
        "https://[::ffff:10.0.0.1]/hook",
        "https://0x7f000001/x",
    };
    tly_webhook_fields_t f;
    json_t *errors;
    char body[512];
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); ++i) {
        snprintf(body, sizeof(body), "{\"url\":\"%s\",\"event_types\":[\"*\"]}", refused[i]);
        if (create(body, false, &f, &errors))
            fail_msg("%s was accepted", refused[i]);
        assert_int_equal(json_array_size(errors), 1);
        assert_true(strlen(messages_for(errors, "url")) > 0);
        assert_null(f.url);
        json_decref(errors);
    }
    /* tests and local stacks: loopback and plain http when allowed; userinfo never */
    assert_true(create("{\"url\":\"http://127.0.0.1:9999/hook\",\"event_types\":[\"*\"]}", true, &f, &errors));
    json_decref(errors);
    assert_true(create("{\"url\":\"https://10.0.0.1/hook\",\"event_types\":[\"*\"]}", true, &f, &errors));
    json_decref(errors);
    assert_false(create("{\"url\":\"http://u@127.0.0.1/\",\"event_types\":[\"*\"]}", true, &f, &errors));
    json_decref(errors);
}

static void
test_patch(void **state)
{
    tly_webhook_fields_t f;
    json_t *errors;
    assert_false(patch("{}", &f, &errors));
    assert_non_null(strstr(messages_for(errors, ""), "at least one"));
    json_decref(errors);

    assert_true(patch("{\"enabled\":false}", &f, &errors));
    assert_int_equal(f.enabled, 0);
    assert_null(f.url);
    assert_null(f.description);
    assert_int_equal(f.ntypes, 0);
    json_decref(errors);

    assert_true(patch("{\"enabled\":true,\"description\":\"\"}", &f, &errors));
    assert_int_equal(f.enabled, 1);
    assert_string_equal(f.description, "");
    json_decref(errors);

    assert_false(patch("{\"enabled\":\"yes\",\"url\":\"https://169.254.169.254/\",\"event_types\":[]}", &f, &errors));
    assert_string_equal(messages_for(errors, "enabled"), "must be true or false");
    assert_true(strlen(messages_for(errors, "url")) > 0);
    assert_true(strlen(messages_for(errors, "event_types")) > 0);
    json_decref(errors);

    assert_true(patch("{\"event_types\":[\"TransferFailed\"]}", &f, &errors));
    assert_int_equal(f.ntypes, 1);
    assert_int_equal(f.enabled, -1);
    json_decref(errors);
}

static bool
replay(const char *text, int64_t *since, int64_t *until, json_t **errors)
{
    *errors = json_array();
    return tly_webhook_validate_replay(parse(text), since, until, *errors);
}

static void
test_replay_window(void **state)
{
    int64_t since, until;
    json_t *errors;
    assert_true(replay("{\"since\":\"2026-11-01T00:00:00Z\",\"until\":\"2026-11-01T00:00:00.000001Z\"}", &since, &until, &errors));
    assert_int_equal(until - since, 1);
    json_decref(errors);
    /* exactly 30 days is allowed, a microsecond more is not */
    assert_true(replay("{\"since\":\"2026-10-01T00:00:00Z\",\"until\":\"2026-10-31T00:00:00Z\"}", &since, &until, &errors));
    json_decref(errors);
    assert_false(replay("{\"since\":\"2026-10-01T00:00:00Z\",\"until\":\"2026-10-31T00:00:00.000001Z\"}", &since, &until, &errors));
    assert_string_equal(messages_for(errors, "until"), "must be at most 30 days after since");
    json_decref(errors);
    assert_false(replay("{\"since\":\"2026-11-01T00:00:00Z\",\"until\":\"2026-11-01T01:00:00+01:00\"}", &since, &until, &errors));
    assert_string_equal(messages_for(errors, "until"), "must be later than since");
    json_decref(errors);
    assert_false(replay("{\"since\":\"yesterday\",\"x\":1}", &since, &until, &errors));
    assert_non_null(strstr(messages_for(errors, "since"), "RFC 3339"));
    assert_string_equal(messages_for(errors, "until"), "is required");
    assert_string_equal(messages_for(errors, "x"), "unknown field");
    json_decref(errors);
    assert_false(replay("{\"since\":1,\"until\":\"2026-11-01T00:00:00Z\"}", &since, &until, &errors));
    assert_non_null(strstr(messages_for(errors, "since"), "RFC 3339"));
    json_decref(errors);
}

static void
test_secret(void **state)
{
    char a[TLY_WEBHOOK_SECRET_LEN + 1], b[TLY_WEBHOOK_SECRET_LEN + 1];
    unsigned char raw[64];
    tly_webhook_secret_generate(a);
    tly_webhook_secret_generate(b);
    assert_int_equal(strlen(a), TLY_WEBHOOK_SECRET_LEN);
    assert_int_equal(strlen(a), 6 + 44);
    assert_memory_equal(a, "whsec_", 6);
    assert_string_not_equal(a, b);
    /* standard base64 of exactly 32 bytes (one '=' of padding) */
    int n = EVP_DecodeBlock(raw, (const unsigned char *)a + 6, 44);
    assert_int_equal(n, 33); /* EVP_DecodeBlock counts the padding byte */
    assert_int_equal(a[TLY_WEBHOOK_SECRET_LEN - 1], '=');
    assert_int_not_equal(a[TLY_WEBHOOK_SECRET_LEN - 2], '=');
}

/* The list of known types is exactly the set of types in schemas/events/, sorted. */
static void
test_event_types_match_schemas(void **state)
{
    size_t n, files = 0;
    const char *const *types = tly_webhook_event_types(&n);
    for (size_t i = 1; i < n; ++i)
        assert_true(strcmp(types[i - 1], types[i]) < 0);
    DIR *d = opendir(TLY_SCHEMAS_DIR);
    assert_non_null(d);
    struct dirent *e;
    bool *found = calloc(n, sizeof(*found));
    while ((e = readdir(d)) != NULL) {
        char name[256];
        const char *dot = strstr(e->d_name, ".v");
        if (dot == NULL || strstr(e->d_name, ".json") == NULL)
            continue;
        snprintf(name, sizeof(name), "%.*s", (int)(dot - e->d_name), e->d_name);
        ++files;
        if (!tly_webhook_event_type_known(name))
            fail_msg("schemas/events/%s: type %s is not subscribable (webhook_spec.c)", e->d_name, name);
        for (size_t i = 0; i < n; ++i)
            if (strcmp(types[i], name) == 0)
                found[i] = true;
    }
    closedir(d);
    assert_true(files >= n);
    for (size_t i = 0; i < n; ++i)
        if (!found[i])
            fail_msg("%s has no schema in schemas/events/", types[i]);
    free(found);
    assert_false(tly_webhook_event_type_known("*"));
    assert_false(tly_webhook_event_type_known("FundsDeposited.v2"));
    assert_false(tly_webhook_event_type_known(""));
}

static int
teardown(void **state)
{
    json_decref(body_v);
    body_v = NULL;
    return 0;
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_create_valid_dedups_types, teardown),
        cmocka_unit_test_teardown(test_create_field_errors, teardown),
        cmocka_unit_test_teardown(test_create_description_length, teardown),
        cmocka_unit_test_teardown(test_create_url_ssrf, teardown),
        cmocka_unit_test_teardown(test_patch, teardown),
        cmocka_unit_test_teardown(test_replay_window, teardown),
        cmocka_unit_test(test_secret),
        cmocka_unit_test(test_event_types_match_schemas),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
