/* Page cursors: base64url, encode/decode round trip, signature, filter binding. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "qa_cursor.h"
#include "tally/base64url.h"

#include <string.h>

static const uint8_t key[] = "0123456789abcdef0123456789abcdef";
static const uint8_t other_key[] = "fedcba9876543210fedcba9876543210";

static qa_cursor_t
sample(void)
{
    qa_cursor_t c;
    c.created_us = 1795000000123456LL;
    assert_true(tly_uuid_parse("6b1f2e51-8c0d-4a3e-9f27-440b5da193c8", &c.id));
    qa_cursor_filters_hash("accounts\ntenant/\nstatus=open", c.filters);
    return c;
}

static void
test_base64url(void **state)
{
    char out[16];
    uint8_t back[16];
    assert_int_equal(tly_base64url_encode((const uint8_t *)"\xfb\xff", 2, out), 3);
    assert_string_equal(out, "-_8");
    assert_int_equal(tly_base64url_decode(out, 3, back, sizeof(back)), 2);
    assert_memory_equal(back, "\xfb\xff", 2);
    assert_int_equal(tly_base64url_encode((const uint8_t *)"abc", 3, out), 4);
    assert_string_equal(out, "YWJj");
    assert_int_equal(tly_base64url_decode("YWJj", 4, back, sizeof(back)), 3);
    assert_int_equal(tly_base64url_decode("YWI", 3, back, sizeof(back)), 2);
    assert_int_equal(tly_base64url_decode("Y", 1, back, sizeof(back)), -1);
    assert_int_equal(tly_base64url_decode("YW+j", 4, back, sizeof(back)), -1); /* standard alphabet */
    assert_int_equal(tly_base64url_decode("YW==", 4, back, sizeof(back)), -1); /* padding */
    assert_int_equal(tly_base64url_decode("YWK", 3, back, sizeof(back)), -1);  /* non-zero leftover bits */
    assert_int_equal(tly_base64url_decode("YWJjYWJj", 8, back, 3), -1);        /* short output */
}

static void
test_round_trip(void **state)
{
    qa_cursor_t c = sample(), d;
    char text[QA_CURSOR_TEXT_CAP];
    qa_cursor_encode(&c, key, 32, text);
    assert_true(strlen(text) < QA_CURSOR_TEXT_CAP);
    assert_null(strpbrk(text, "+/="));
    assert_int_equal(qa_cursor_decode(text, key, 32, c.filters, &d), QA_CURSOR_OK);
    assert_int_equal(d.created_us, c.created_us);
    assert_memory_equal(d.id.b, c.id.b, 16);
    /* negative and zero times survive too */
    c.created_us = -5;
    qa_cursor_encode(&c, key, 32, text);
    assert_int_equal(qa_cursor_decode(text, key, 32, c.filters, &d), QA_CURSOR_OK);
    assert_int_equal(d.created_us, -5);
}

static void
test_tampered(void **state)
{
    qa_cursor_t c = sample(), d;
    char text[QA_CURSOR_TEXT_CAP], bad[QA_CURSOR_TEXT_CAP];
    qa_cursor_encode(&c, key, 32, text);
    size_t len = strlen(text);
    /* every single-character change is caught */
    for (size_t i = 0; i < len; ++i) {
        memcpy(bad, text, len + 1);
        bad[i] = bad[i] == 'A' ? 'B' : 'A';
        assert_int_not_equal(qa_cursor_decode(bad, key, 32, c.filters, &d), QA_CURSOR_OK);
    }
    memcpy(bad, text, len + 1);
    bad[len - 2] = '\0';
    assert_int_equal(qa_cursor_decode(bad, key, 32, c.filters, &d), QA_CURSOR_INVALID);
    assert_int_equal(qa_cursor_decode("", key, 32, c.filters, &d), QA_CURSOR_INVALID);
    assert_int_equal(qa_cursor_decode("not a cursor!", key, 32, c.filters, &d), QA_CURSOR_INVALID);
    /* a cursor signed by another server key is foreign */
    assert_int_equal(qa_cursor_decode(text, other_key, 32, c.filters, &d), QA_CURSOR_INVALID);
}

static void
test_other_filters(void **state)
{
    qa_cursor_t c = sample(), d;
    uint8_t other[QA_CURSOR_HASH_LEN];
    char text[QA_CURSOR_TEXT_CAP];
    qa_cursor_encode(&c, key, 32, text);
    qa_cursor_filters_hash("accounts\ntenant/\nstatus=frozen", other);
    assert_int_equal(qa_cursor_decode(text, key, 32, other, &d), QA_CURSOR_MISMATCH);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64url),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_tampered),
        cmocka_unit_test(test_other_filters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
