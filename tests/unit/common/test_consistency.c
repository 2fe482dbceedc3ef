/*
 * Consistency tokens (common/consistency.c): a token round-trips; any changed
 * character, another key, another tenant, a truncated or padded text is
 * refused; no secret means no key; the unknown position (-1) survives.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/consistency.h"

#include <string.h>

static tly_consistency_t
sample(void)
{
    tly_consistency_t t;
    memset(&t, 0, sizeof(t));
    assert_true(tly_uuid_parse("0b5e9c1e-6f0a-4a53-9a8e-3c1d2b4f5a60", &t.tenant));
    assert_true(tly_uuid_parse("7d1c2b3a-4e5f-4061-8a7b-9c0d1e2f3a4b", &t.job));
    t.partition = 11;
    t.offset = 1234567890123LL;
    return t;
}

static void
test_round_trip(void **state)
{
    uint8_t key[TLY_CONSISTENCY_KEY_LEN];
    char text[TLY_CONSISTENCY_TEXT_CAP];
    assert_true(tly_consistency_key("shared", key));
    tly_consistency_t t = sample(), out;
    tly_consistency_encode(&t, key, text);
    assert_int_equal(strlen(text), 82); /* 61 bytes, base64url */
    assert_int_equal(tly_consistency_decode(text, strlen(text), key, &t.tenant, &out), TLY_CONSISTENCY_OK);
    assert_memory_equal(out.job.b, t.job.b, 16);
    assert_int_equal(out.partition, 11);
    assert_int_equal(out.offset, 1234567890123LL);

    t.partition = -1;
    t.offset = 0;
    tly_consistency_encode(&t, key, text);
    assert_int_equal(tly_consistency_decode(text, strlen(text), key, &t.tenant, &out), TLY_CONSISTENCY_OK);
    assert_int_equal(out.partition, -1);
}

static void
test_refused(void **state)
{
    uint8_t key[TLY_CONSISTENCY_KEY_LEN], other[TLY_CONSISTENCY_KEY_LEN];
    char text[TLY_CONSISTENCY_TEXT_CAP], bad[TLY_CONSISTENCY_TEXT_CAP + 8];
    assert_true(tly_consistency_key("shared", key));
    assert_true(tly_consistency_key("another", other));
    assert_false(tly_consistency_key("", other));
    assert_false(tly_consistency_key(NULL, other));
    tly_consistency_t t = sample(), out;
    tly_consistency_encode(&t, key, text);
    size_t len = strlen(text);
    for (size_t i = 0; i < len; ++i) { /* every single changed character */
        memcpy(bad, text, len + 1);
        bad[i] = bad[i] == 'A' ? 'B' : 'A';
        assert_int_equal(tly_consistency_decode(bad, len, key, &t.tenant, &out), TLY_CONSISTENCY_INVALID);
    }
    assert_int_equal(tly_consistency_decode(text, len, other, &t.tenant, &out), TLY_CONSISTENCY_INVALID);
    assert_int_equal(tly_consistency_decode(text, len - 1, key, &t.tenant, &out), TLY_CONSISTENCY_INVALID);
    snprintf(bad, sizeof(bad), "%sAA", text);
    assert_int_equal(tly_consistency_decode(bad, strlen(bad), key, &t.tenant, &out), TLY_CONSISTENCY_INVALID);
    assert_int_equal(tly_consistency_decode("", 0, key, &t.tenant, &out), TLY_CONSISTENCY_INVALID);
    tly_uuid_t tenant_b = t.tenant;
    tenant_b.b[15] ^= 1;
    assert_int_equal(tly_consistency_decode(text, len, key, &tenant_b, &out), TLY_CONSISTENCY_OTHER_TENANT);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
