/*
 * common/envscan.c against tly_envelope_parse: the scanner reads
 * the envelopes Tally writes, and whatever it accepts, mutated or not, it
 * reads exactly as tly_envelope_parse does (every field, data json_equal).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/envscan.h"

#include "tally/envelope.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int scanned, declined;

/* Both parsers on buf: when the scanner accepts, tly_envelope_parse accepts the same envelope. Returns the scanner's answer. */
static int
check_same(const char *buf, size_t len)
{
    tly_envelope_t a, b;
    char err[256];
    int rs = tly_envelope_scan(buf, len, &a);
    int rp = tly_envelope_parse(buf, len, &b, err, sizeof(err));
    if (rs == 0) {
        if (rp != 0)
            fail_msg("scanner accepted what tly_envelope_parse refuses (%s): %.*s", err, (int)len, buf);
        assert_memory_equal(&a.id, &b.id, sizeof(a.id));
        assert_string_equal(a.type, b.type);
        assert_int_equal(a.version, b.version);
        assert_string_equal(a.aggregate_type, b.aggregate_type);
        assert_memory_equal(&a.aggregate_id, &b.aggregate_id, sizeof(a.aggregate_id));
        assert_memory_equal(&a.tenant_id, &b.tenant_id, sizeof(a.tenant_id));
        assert_memory_equal(&a.job_id, &b.job_id, sizeof(a.job_id));
        assert_memory_equal(&a.causation_id, &b.causation_id, sizeof(a.causation_id));
        assert_memory_equal(&a.correlation_id, &b.correlation_id, sizeof(a.correlation_id));
        assert_true(a.occurred_at_us == b.occurred_at_us);
        assert_true(json_equal(a.data, b.data));
        /* same keys in the same order, as the projections may iterate them */
        const char *ka, *kb;
        void *ia = json_object_iter(a.data), *ib = json_object_iter(b.data);
        for (; ia != NULL && ib != NULL; ia = json_object_iter_next(a.data, ia), ib = json_object_iter_next(b.data, ib)) {
            ka = json_object_iter_key(ia);
            kb = json_object_iter_key(ib);
            assert_string_equal(ka, kb);
        }
        assert_true(ia == NULL && ib == NULL);
        tly_envelope_clear(&a);
        ++scanned;
    } else {
        assert_null(a.data);
        ++declined;
    }
    if (rp == 0)
        tly_envelope_clear(&b);
    return rs;
}

static char *
sample(const char *type, int version, const char *data_json, bool with_job)
{
    tly_envelope_t env;
    memset(&env, 0, sizeof(env));
    env.id = tly_uuid_v4();
    snprintf(env.type, sizeof(env.type), "%s", type);
    env.version = version;
    snprintf(env.aggregate_type, sizeof(env.aggregate_type), "account");
    env.aggregate_id = tly_uuid_v4();
    env.tenant_id = tly_uuid_v4();
    if (with_job)
        env.job_id = tly_uuid_v4();
    env.correlation_id = tly_uuid_v4();
    env.occurred_at_us = 1795366206123456LL;
    env.data = json_loads(data_json, 0, NULL);
    assert_non_null(env.data);
    char *s = tly_envelope_to_json(&env);
    json_decref(env.data);
    return s;
}

static const char *datas[] = {
    "{\"amount\": 1500, \"currency\": \"EUR\", \"balance_after\": 4500, \"channel\": \"api\"}",
    "{\"currency\": \"USD\", \"label\": \"main account\"}",
    "{\"code\": \"insufficient_funds\", \"detail\": \"balance 10 < 20\", \"amount\": -900719925474099}",
    "{\"flag\": true, \"other\": false, \"none\": null, \"n\": 0, \"neg\": -12}",
    "{}",
    "{\"label\": \"caf\\u00e9 \\\"quoted\\\"\"}",
    "{\"nested\": {\"a\": 1}, \"list\": [1, 2]}",
    "{\"big\": -9223372036854775807, \"real\": 1.5, \"exp\": 1e3}",
};

static void
test_written_envelopes_are_scanned(void **state)
{
    for (size_t i = 0; i < 5; ++i) {
        char *s = sample("FundsDeposited", 2, datas[i], i % 2 == 0);
        assert_int_equal(check_same(s, strlen(s)), 0);
        free(s);
    }
}

static void
test_other_shapes_are_declined(void **state)
{
    for (size_t i = 5; i < sizeof(datas) / sizeof(datas[0]); ++i) {
        char *s = sample("AccountOpened", 1, datas[i], true);
        assert_int_equal(check_same(s, strlen(s)), 1);
        free(s);
    }
    static const char *bad[] = {
        "",
        "{}",
        "[]",
        "{\"id\": 1}",
        "not json",
        "{\"id\":\"x\",\"id\":\"y\"}",
        "{\"data\": {\"big\": 123456789012345678901234567890}}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i)
        assert_int_equal(check_same(bad[i], strlen(bad[i])), 1);
}

/* Whitespace, key order, nulls and extra fields the envelope does not read. */
static void
test_hand_written(void **state)
{
    static const char *ok[] = {
        " { \"data\" : { \"amount\" : 5 } , \"version\" : 1 , \"type\" : \"FundsWithdrawn\", \"aggregate_type\": \"account\",\r\n"
        "\t\"aggregate_id\": \"6f1c2b8e-7a41-4c9e-9d5a-1b2c3d4e5f60\", \"tenant_id\": \"0b1c2b8e-7a41-4c9e-9d5a-1b2c3d4e5f61\", "
        "\"id\": \"1f1c2b8e-7a41-4c9e-9d5a-1b2c3d4e5f62\", \"job_id\": null, \"causation_id\": null, \"traceparent\": \"x\", "
        "\"occurred_at\": \"2026-11-22T14:00:00.5+01:00\", \"extra\": true } \n",
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); ++i)
        assert_int_equal(check_same(ok[i], strlen(ok[i])), 0);
}

/* random(): a fixed sequence (srandom in the test), so a failure reproduces */
static uint64_t
next_rand(void)
{
    return (uint64_t)random();
}

/* One random edit of buf[0, *len): delete, insert, replace, or copy a span elsewhere (duplicate keys). */
static void
mutate(char *buf, size_t *len, size_t cap)
{
    static const char alphabet[] = "\"\\,:{}[] 0123456789-+.eEnultrfasT\n\t\x01\xc3\xa9";
    size_t at = *len > 0 ? next_rand() % *len : 0;
    char c = alphabet[next_rand() % (sizeof(alphabet) - 1)];
    switch (next_rand() % 4) {
    case 0:
        if (*len > 0) {
            memmove(buf + at, buf + at + 1, *len - at - 1);
            --*len;
        }
        break;
    case 1:
        if (*len + 1 < cap) {
            memmove(buf + at + 1, buf + at, *len - at);
            buf[at] = c;
            ++*len;
        }
        break;
    case 2:
        if (*len > 0)
            buf[at] = c;
        break;
    default: {
        size_t from = *len > 0 ? next_rand() % *len : 0, n = next_rand() % 48;
        if (from + n > *len)
            n = *len - from;
        if (*len + n < cap) {
            char tmp[48];
            memcpy(tmp, buf + from, n);
            memmove(buf + at + n, buf + at, *len - at);
            memcpy(buf + at, tmp, n);
            *len += n;
        }
    }
    }
}

static void
test_mutations_never_disagree(void **state)
{
    char buf[4096];
    scanned = declined = 0;
    srandom(20261122);
    for (int round = 0; round < 40000; ++round) {
        char *s = sample(round % 3 ? "FundsDeposited" : "DepositRejected", 1 + round % 2, datas[round % 5], round % 4 != 0);
        size_t len = strlen(s);
        memcpy(buf, s, len);
        free(s);
        int edits = 1 + (int)(next_rand() % 3);
        for (int e = 0; e < edits; ++e)
            mutate(buf, &len, sizeof(buf));
        (void)check_same(buf, len);
    }
    /* both sides were exercised */
    assert_true(scanned > 1000);
    assert_true(declined > 1000);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_written_envelopes_are_scanned),
        cmocka_unit_test(test_other_shapes_are_declined),
        cmocka_unit_test(test_hand_written),
        cmocka_unit_test(test_mutations_never_disagree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
