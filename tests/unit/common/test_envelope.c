/* Envelope wire format, deterministic derivation and traceparent. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/envelope.h"
#include "tally/uuid.h"

#include <stdlib.h>
#include <string.h>

static tly_envelope_t
sample(void)
{
    tly_envelope_t e;
    memset(&e, 0, sizeof(e));
    e.id = tly_uuid_v4();
    strcpy(e.type, "DepositRequested");
    e.version = 1;
    strcpy(e.aggregate_type, "account");
    e.aggregate_id = tly_uuid_v4();
    e.tenant_id = tly_uuid_v4();
    e.job_id = tly_uuid_v4();
    e.correlation_id = e.id;
    e.occurred_at_us = 1763805600123456LL;
    e.data = json_pack("{s:I, s:s}", "amount", (json_int_t)1500, "currency", "EUR");
    return e;
}

static void
test_roundtrip(void **state)
{
    tly_envelope_t e = sample(), back;
    char err[128];
    char *wire = tly_envelope_to_json(&e);
    assert_int_equal(tly_envelope_parse(wire, strlen(wire), &back, err, sizeof(err)), 0);
    assert_memory_equal(back.id.b, e.id.b, 16);
    assert_string_equal(back.type, "DepositRequested");
    assert_int_equal(back.version, 1);
    assert_memory_equal(back.aggregate_id.b, e.aggregate_id.b, 16);
    assert_memory_equal(back.tenant_id.b, e.tenant_id.b, 16);
    assert_memory_equal(back.job_id.b, e.job_id.b, 16);
    assert_true(tly_uuid_is_nil(&back.causation_id));
    assert_int_equal(back.occurred_at_us, e.occurred_at_us);
    assert_int_equal(json_integer_value(json_object_get(back.data, "amount")), 1500);
    assert_non_null(strstr(wire, "\"occurred_at\":\"2025-11-22T10:00:00.123456Z\""));
    free(wire);
    tly_envelope_clear(&back);
    tly_envelope_clear(&e);
}

static void
test_rejects_bad_envelopes(void **state)
{
    tly_envelope_t back;
    char err[128];
    const char *bad[] = {
        "not json",
        "[]",
        "{\"id\":\"x\"}",
        "{\"id\":\"6b1f2e51-8c0d-4a3e-9f27-440b5da193c8\",\"type\":\"T\",\"version\":0,\"aggregate_type\":\"a\","
        "\"aggregate_id\":\"6b1f2e51-8c0d-4a3e-9f27-440b5da193c8\",\"tenant_id\":\"6b1f2e51-8c0d-4a3e-9f27-440b5da193c8\","
        "\"occurred_at\":\"2026-01-01T00:00:00Z\",\"data\":{}}",
        "{\"id\":\"6b1f2e51-8c0d-4a3e-9f27-440b5da193c8\",\"type\":\"T\",\"version\":1,\"aggregate_type\":\"a\","
        "\"aggregate_id\":\"6b1f2e51-8c0d-4a3e-9f27-440b5da193c8\",\"tenant_id\":\"6b1f2e51-8c0d-4a3e-9f27-440b5da193c8\","
        "\"occurred_at\":\"yesterday\",\"data\":{}}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
        assert_int_equal(tly_envelope_parse(bad[i], strlen(bad[i]), &back, err, sizeof(err)), -1);
        assert_true(strlen(err) > 0);
    }
}

static void
test_derive_is_deterministic(void **state)
{
    tly_envelope_t req = sample(), a, b, c;
    tly_envelope_derive(&a, &req, "FundsDeposited", 1, json_object(), NULL);
    tly_envelope_derive(&b, &req, "FundsDeposited", 1, json_object(), NULL);
    tly_envelope_derive(&c, &req, "DepositRejected", 1, json_object(), NULL);
    assert_memory_equal(a.id.b, b.id.b, 16);
    assert_memory_not_equal(a.id.b, c.id.b, 16);
    assert_memory_equal(a.causation_id.b, req.id.b, 16);
    assert_memory_equal(a.correlation_id.b, req.id.b, 16);
    assert_memory_equal(a.job_id.b, req.job_id.b, 16);
    assert_int_equal(a.id.b[6] >> 4, 5); /* version 5 uuid */
    tly_envelope_clear(&a);
    tly_envelope_clear(&b);
    tly_envelope_clear(&c);
    tly_envelope_clear(&req);
}

static void
test_traceparent(void **state)
{
    char tp[56], child[56];
    tly_traceparent_new(tp);
    assert_true(tly_traceparent_valid(tp, strlen(tp)));
    tly_traceparent_child(tp, child);
    assert_true(tly_traceparent_valid(child, strlen(child)));
    assert_memory_equal(tp, child, 35); /* same trace id */
    assert_memory_not_equal(tp + 36, child + 36, 16);
    const char *bad[] = {"00-00000000000000000000000000000000-b7ad6b7169203331-01",
                         "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
                         "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                         "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", "garbage"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i)
        assert_false(tly_traceparent_valid(bad[i], strlen(bad[i])));
    assert_true(tly_traceparent_valid("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", 55));
}

static void
test_uuid_parse_format(void **state)
{
    tly_uuid_t u;
    char s[37];
    assert_true(tly_uuid_parse("6B1F2E51-8C0D-4A3E-9F27-440B5DA193C8", &u));
    tly_uuid_format(&u, s);
    assert_string_equal(s, "6b1f2e51-8c0d-4a3e-9f27-440b5da193c8");
    assert_false(tly_uuid_parse("6b1f2e51-8c0d-4a3e-9f27-440b5da193c", &u));
    assert_false(tly_uuid_parse("6b1f2e51-8c0d-4a3e-9f27-440b5da193c8x", &u));
    assert_false(tly_uuid_parse("6b1f2e518c0d-4a3e-9f27-440b5da193c8ab", &u));
    assert_false(tly_uuid_parse("zb1f2e51-8c0d-4a3e-9f27-440b5da193c8", &u));
    assert_false(tly_uuid_parse("", &u));
}

/* Every byte value at every position of a valid id: accepted exactly when it keeps the id's shape, and then decoded. */
static void
test_uuid_parse_every_byte(void **state)
{
    const char *base = "0123abcd-ef45-6789-ABCD-ef0123456789";
    char s[40];
    tly_uuid_t u, want;
    assert_true(tly_uuid_parse(base, &want));
    for (size_t pos = 0; pos < 36; ++pos) {
        for (int c = 1; c < 256; ++c) {
            memcpy(s, base, 37);
            s[pos] = (char)c;
            bool dash = pos == 8 || pos == 13 || pos == 18 || pos == 23;
            bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
            bool ok = dash ? c == '-' : hex;
            assert_int_equal(tly_uuid_parse(s, &u), ok);
            if (ok && !dash) {
                int v = c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
                size_t digit = pos - (pos > 8) - (pos > 13) - (pos > 18) - (pos > 23);
                int got = digit % 2 == 0 ? u.b[digit / 2] >> 4 : u.b[digit / 2] & 0x0f;
                assert_int_equal(got, v);
            }
        }
        memcpy(s, base, 37);
        s[pos] = '\0'; /* shorter strings: refused, and nothing past the end is read (ASan) */
        char *short_copy = strdup(s);
        assert_false(tly_uuid_parse(short_copy, &u));
        free(short_copy);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_rejects_bad_envelopes),
        cmocka_unit_test(test_derive_is_deterministic),
        cmocka_unit_test(test_traceparent),
        cmocka_unit_test(test_uuid_parse_every_byte),
        cmocka_unit_test(test_uuid_parse_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
