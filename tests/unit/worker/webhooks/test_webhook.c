/*
 * The pure parts of webhook delivery (services/worker/webhook.c): the retry
 * schedule and its jitter bounds, Retry-After, the Standard Webhooks
 * signature against the specification's published vector, the body and its
 * size limit, delivery ids, subscriptions, the endpoint.disabled event.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "webhooks/webhook.h"
#include "tally/clock.h"

#include <stdlib.h>
#include <string.h>

#define S 1000000LL

static void
test_schedule_bounds(void **state)
{
    static const int64_t steps[] = {5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400};
    int64_t lo_sum = 0, hi_sum = 0;
    for (int a = 1; a <= 9; ++a) {
        int64_t lo = tly_webhook_retry_delay_us(a, 0.0, 1), hi = tly_webhook_retry_delay_us(a, 0.999999, 1);
        assert_int_equal(lo, a == 1 ? 0 : steps[a - 2] * S); /* never earlier than the previous step */
        assert_true(hi <= steps[a - 1] * S && hi > steps[a - 1] * S - S);
        for (int k = 0; k < 1000; ++k) {
            int64_t d = tly_webhook_retry_delay_us(a, (double)rand() / ((double)RAND_MAX + 1), 1);
            assert_true(d >= lo && d <= steps[a - 1] * S);
        }
        lo_sum += lo;
        hi_sum += hi;
    }
    /* about three days in all: between 2.1 and 3.2 days */
    assert_true(lo_sum > 2 * 86400 * S && hi_sum <= 272160 * S);
    assert_int_equal(tly_webhook_retry_delay_us(10, 0.5, 1), -1); /* the tenth attempt was the last */
    assert_int_equal(tly_webhook_retry_delay_us(0, 0.5, 1), -1);
    /* the time scale divides */
    assert_int_equal(tly_webhook_retry_delay_us(9, 0.0, 1000), 72000 * S / 1000);
    /* an out-of-range random number is the low bound, never beyond the step */
    assert_int_equal(tly_webhook_retry_delay_us(2, 1.5, 1), 5 * S);
}

static void
test_retry_after(void **state)
{
    int64_t d = -1, now = 1795356000LL * S; /* 2026-11-22T14:00:00Z */
    assert_true(tly_webhook_parse_retry_after("120", now, &d));
    assert_int_equal(d, 120 * S);
    assert_true(tly_webhook_parse_retry_after(" 0\r\n", now, &d));
    assert_int_equal(d, 0);
    assert_true(tly_webhook_parse_retry_after("Sun, 22 Nov 2026 14:01:30 GMT", now, &d));
    assert_int_equal(d, 90 * S);
    assert_true(tly_webhook_parse_retry_after("Sun, 22 Nov 2026 13:00:00 GMT", now, &d)); /* past: now */
    assert_int_equal(d, 0);
    assert_true(tly_webhook_parse_retry_after("99999999999999999", now, &d)); /* capped at a day */
    assert_int_equal(d, TLY_WEBHOOK_RETRY_AFTER_MAX_US);
    assert_true(tly_webhook_parse_retry_after("1000000", now, &d));
    assert_int_equal(d, TLY_WEBHOOK_RETRY_AFTER_MAX_US);
    assert_false(tly_webhook_parse_retry_after("", now, &d));
    assert_false(tly_webhook_parse_retry_after("-5", now, &d));
    assert_false(tly_webhook_parse_retry_after("1.5", now, &d));
    assert_false(tly_webhook_parse_retry_after("soon", now, &d));
    assert_false(tly_webhook_parse_retry_after("Sun, 22 Nov 2026 14:01:30", now, &d));
}

/* The Standard Webhooks specification's own example. */
static void
test_signature_vector(void **state)
{
    char sig[TLY_WEBHOOK_SIGNATURE_MAX];
    const char *body = "{\"test\": 2432232314}";
    assert_int_equal(tly_webhook_sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body,
                                      strlen(body), sig, sizeof(sig)),
                     0);
    assert_string_equal(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    /* malformed secrets */
    assert_int_equal(tly_webhook_sign("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "m", 1, body, strlen(body), sig, sizeof(sig)), -1);
    assert_int_equal(tly_webhook_sign("whsec_", "m", 1, body, strlen(body), sig, sizeof(sig)), -1);
    assert_int_equal(tly_webhook_sign("whsec_abc", "m", 1, body, strlen(body), sig, sizeof(sig)), -1);
    assert_int_equal(tly_webhook_sign("whsec_a!c=", "m", 1, body, strlen(body), sig, sizeof(sig)), -1);
}

static void
test_signature_header_rotation(void **state)
{
    char one[TLY_WEBHOOK_SIGNATURE_MAX], two[TLY_WEBHOOK_SIGNATURE_MAX], hdr[TLY_WEBHOOK_SIGNATURE_MAX];
    const char *cur = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", *prev = "whsec_c2VjcmV0LWtleS1ieXRlcy0yNC1sb25nISE=";
    const char *body = "{}";
    assert_int_equal(tly_webhook_sign(cur, "id", 5, body, 2, one, sizeof(one)), 0);
    assert_int_equal(tly_webhook_sign(prev, "id", 5, body, 2, two, sizeof(two)), 0);
    assert_string_not_equal(one, two);
    assert_int_equal(tly_webhook_signature_header(cur, NULL, "id", 5, body, 2, hdr, sizeof(hdr)), 0);
    assert_string_equal(hdr, one);
    assert_int_equal(tly_webhook_signature_header(cur, prev, "id", 5, body, 2, hdr, sizeof(hdr)), 0);
    char both[2 * TLY_WEBHOOK_SIGNATURE_MAX];
    snprintf(both, sizeof(both), "%s %s", one, two);
    assert_string_equal(hdr, both);
    /* a malformed previous secret is left out; a malformed current one fails */
    assert_int_equal(tly_webhook_signature_header(cur, "bad", "id", 5, body, 2, hdr, sizeof(hdr)), 0);
    assert_string_equal(hdr, one);
    assert_int_equal(tly_webhook_signature_header("bad", prev, "id", 5, body, 2, hdr, sizeof(hdr)), -1);
}

static void
envelope(tly_envelope_t *env, json_t *data)
{
    memset(env, 0, sizeof(*env));
    assert_true(tly_uuid_parse("6b1f2e51-8c0d-4a3e-9f27-440b5da193c8", &env->id));
    assert_true(tly_uuid_parse("7b1f2e51-8c0d-4a3e-9f27-440b5da193c8", &env->aggregate_id));
    assert_true(tly_uuid_parse("8b1f2e51-8c0d-4a3e-9f27-440b5da193c8", &env->tenant_id));
    env->correlation_id = env->id;
    snprintf(env->type, sizeof(env->type), "FundsDeposited");
    snprintf(env->aggregate_type, sizeof(env->aggregate_type), "account");
    env->version = 2;
    assert_true(tly_clock_parse_rfc3339("2026-11-22T14:00:00.123456Z", &env->occurred_at_us));
    env->data = data;
}

static void
test_body(void **state)
{
    tly_envelope_t env;
    bool truncated = true;
    envelope(&env, json_pack("{s:i, s:s, s:s}", "amount", 1500, "currency", "EUR", "event_id", "spoofed"));
    char *body = tly_webhook_body(&env, &truncated);
    assert_false(truncated);
    json_error_t jerr;
    json_t *v = json_loads(body, 0, &jerr);
    assert_non_null(v);
    assert_string_equal(json_string_value(json_object_get(v, "type")), "FundsDeposited");
    assert_string_equal(json_string_value(json_object_get(v, "timestamp")), "2026-11-22T14:00:00.123456Z");
    json_t *d = json_object_get(v, "data");
    assert_string_equal(json_string_value(json_object_get(d, "event_id")), "6b1f2e51-8c0d-4a3e-9f27-440b5da193c8");
    assert_int_equal(json_integer_value(json_object_get(d, "event_version")), 2);
    assert_string_equal(json_string_value(json_object_get(d, "aggregate_type")), "account");
    assert_string_equal(json_string_value(json_object_get(d, "aggregate_id")), "7b1f2e51-8c0d-4a3e-9f27-440b5da193c8");
    assert_true(json_is_null(json_object_get(d, "job_id")));
    assert_int_equal(json_integer_value(json_object_get(d, "amount")), 1500);
    assert_null(json_object_get(d, "tenant_id")); /* the receiver is the tenant */
    assert_null(json_object_get(d, "truncated"));
    assert_int_equal(json_object_size(v), 3);
    json_decref(v);
    free(body);
    tly_envelope_clear(&env);

    /* over 20 KB: the ids only, marked truncated */
    char *big = malloc(30000);
    memset(big, 'x', 29999);
    big[29999] = '\0';
    envelope(&env, json_pack("{s:s}", "reference", big));
    free(big);
    body = tly_webhook_body(&env, &truncated);
    assert_true(truncated);
    assert_true(strlen(body) <= TLY_WEBHOOK_BODY_MAX);
    v = json_loads(body, 0, &jerr);
    d = json_object_get(v, "data");
    assert_true(json_is_true(json_object_get(d, "truncated")));
    assert_null(json_object_get(d, "reference"));
    assert_non_null(json_object_get(d, "event_id"));
    json_decref(v);
    free(body);
    tly_envelope_clear(&env);
}

static void
test_ids_and_subscriptions(void **state)
{
    tly_uuid_t ep1 = tly_uuid_v4(), ep2 = tly_uuid_v4(), ev = tly_uuid_v4();
    tly_uuid_t a = tly_webhook_delivery_id(&ep1, &ev), b = tly_webhook_delivery_id(&ep1, &ev),
               c = tly_webhook_delivery_id(&ep2, &ev);
    assert_memory_equal(&a, &b, sizeof(a));
    assert_memory_not_equal(&a, &c, sizeof(a));
    json_t *some = json_pack("[s, s]", "FundsDeposited", "AccountOpened"), *all = json_pack("[s]", "*"), *none = json_array();
    assert_true(tly_webhook_subscribed(some, "FundsDeposited"));
    assert_false(tly_webhook_subscribed(some, "FundsWithdrawn"));
    assert_false(tly_webhook_subscribed(some, "FundsDeposite"));
    assert_true(tly_webhook_subscribed(all, "anything"));
    assert_false(tly_webhook_subscribed(none, "FundsDeposited"));
    json_decref(some);
    json_decref(all);
    json_decref(none);
}

static void
test_disabled_event(void **state)
{
    tly_uuid_t ep = tly_uuid_v4(), tenant = tly_uuid_v4();
    tly_envelope_t a, b, c;
    tly_webhook_disabled_event(&a, &ep, &tenant, 3, "https://example.com/hook", "failing", 1795356000LL * S, 1795788000LL * S);
    tly_webhook_disabled_event(&b, &ep, &tenant, 3, "https://example.com/hook", "failing", 0, 1795788001LL * S);
    tly_webhook_disabled_event(&c, &ep, &tenant, 5, "https://example.com/hook", "gone", 0, 1795788001LL * S);
    assert_memory_equal(&a.id, &b.id, sizeof(a.id)); /* same row version: one event */
    assert_memory_not_equal(&a.id, &c.id, sizeof(a.id));
    assert_string_equal(a.type, "WebhookEndpointDisabled");
    assert_string_equal(a.aggregate_type, "webhook_endpoint");
    assert_memory_equal(&a.aggregate_id, &ep, sizeof(ep));
    assert_memory_equal(&a.tenant_id, &tenant, sizeof(tenant));
    assert_string_equal(json_string_value(json_object_get(a.data, "reason")), "failing");
    assert_string_equal(json_string_value(json_object_get(a.data, "failing_since")), "2026-11-22T14:00:00.000000Z");
    assert_true(json_is_null(json_object_get(b.data, "failing_since")));
    tly_envelope_clear(&a);
    tly_envelope_clear(&b);
    tly_envelope_clear(&c);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schedule_bounds),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_signature_vector),
        cmocka_unit_test(test_signature_header_rotation),
        cmocka_unit_test(test_body),
        cmocka_unit_test(test_ids_and_subscriptions),
        cmocka_unit_test(test_disabled_event),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
