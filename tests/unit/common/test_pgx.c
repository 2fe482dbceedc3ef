/* Unit tests of pgx.c's array parameters (the set-based statements'): literals and the binary format. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/pgx.h"
#include "tally/pgx_binary.h"

#include <stdlib.h>
#include <string.h>

static void
test_array_empty(void **state)
{
    tly_pg_array_t a = {0};
    assert_string_equal(tly_pg_array_text(&a), "{}");
    tly_pg_array_add(&a, "x");
    tly_pg_array_reset(&a);
    assert_int_equal(a.n, 0);
    assert_string_equal(tly_pg_array_text(&a), "{}");
    tly_pg_array_free(&a);
}

static void
test_array_quotes_and_nulls(void **state)
{
    tly_pg_array_t a = {0};
    tly_pg_array_add(&a, "plain");
    tly_pg_array_add(&a, NULL);
    tly_pg_array_add(&a, "NULL"); /* the text, not SQL NULL */
    tly_pg_array_add(&a, "a \"q\", {b} \\ c");
    tly_pg_array_add(&a, "");
    tly_pg_array_add_i64(&a, -9007199254740991LL);
    assert_int_equal(a.n, 6);
    assert_string_equal(tly_pg_array_text(&a), "{\"plain\",NULL,\"NULL\",\"a \\\"q\\\", {b} \\\\ c\",\"\",\"-9007199254740991\"}");
    /* text() can be called, then the array grown further */
    tly_pg_array_add(&a, "more");
    assert_string_equal(tly_pg_array_text(&a) + strlen(tly_pg_array_text(&a)) - 8, ",\"more\"}");
    tly_pg_array_free(&a);
}

static void
test_array_grows(void **state)
{
    tly_pg_array_t a = {0};
    for (int i = 0; i < 100000; ++i)
        tly_pg_array_add_i64(&a, i);
    const char *t = tly_pg_array_text(&a);
    assert_int_equal(a.n, 100000);
    assert_memory_equal(t, "{\"0\",\"1\",", 9);
    assert_string_equal(t + strlen(t) - 9, ",\"99999\"}");
    tly_pg_array_free(&a);
}

/* The big-endian 4-byte integer at p. */
static uint32_t
be32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

static void
test_barray_empty(void **state)
{
    tly_pgx_barray_t a = {0};
    int len = -1;
    tly_pgx_barray_reset(&a, TLY_PGX_UUID);
    const char *p = tly_pgx_barray_bytes(&a, &len);
    assert_int_equal(len, 12); /* ndim 0, no null, element type; no dimensions */
    assert_int_equal(be32(p), 0);
    assert_int_equal(be32(p + 4), 0);
    assert_int_equal(be32(p + 8), 2950);
    tly_pgx_barray_free(&a);
}

/* array_send's layout: ndim 1, has-null flag, element type, length, lower bound 1, then (length, bytes) per element. */
static void
test_barray_layout(void **state)
{
    tly_pgx_barray_t a = {0};
    uint8_t id[16];
    int len = 0;
    for (int i = 0; i < 16; ++i)
        id[i] = (uint8_t)(0xa0 + i);
    tly_pgx_barray_reset(&a, TLY_PGX_UUID);
    tly_pgx_barray_uuid(&a, id);
    tly_pgx_barray_uuid(&a, NULL);
    const char *p = tly_pgx_barray_bytes(&a, &len);
    assert_int_equal(len, 20 + 4 + 16 + 4);
    assert_int_equal(be32(p), 1);
    assert_int_equal(be32(p + 4), 1); /* has a NULL */
    assert_int_equal(be32(p + 8), TLY_PGX_UUID);
    assert_int_equal(be32(p + 12), 2);
    assert_int_equal(be32(p + 16), 1);
    assert_int_equal(be32(p + 20), 16);
    assert_memory_equal(p + 24, id, 16);
    assert_int_equal(be32(p + 40), UINT32_MAX); /* -1: NULL */

    /* reset keeps nothing of the previous content; integers, times and text */
    tly_pgx_barray_reset(&a, TLY_PGX_INT8);
    tly_pgx_barray_i64(&a, -2);
    p = tly_pgx_barray_bytes(&a, &len);
    assert_int_equal(len, 20 + 4 + 8);
    assert_int_equal(be32(p + 4), 0);
    assert_int_equal(be32(p + 12), 1);
    assert_int_equal(be32(p + 20), 8);
    assert_int_equal(be32(p + 24), UINT32_MAX);
    assert_int_equal(be32(p + 28), UINT32_MAX - 1);

    tly_pgx_barray_reset(&a, TLY_PGX_TIMESTAMPTZ);
    tly_pgx_barray_time(&a, 946684800000000LL + 1); /* 2000-01-01T00:00:00.000001Z: PostgreSQL's 1 */
    p = tly_pgx_barray_bytes(&a, &len);
    assert_int_equal(be32(p + 8), 1184);
    assert_int_equal(be32(p + 24), 0);
    assert_int_equal(be32(p + 28), 1);

    tly_pgx_barray_reset(&a, TLY_PGX_TEXT);
    tly_pgx_barray_text(&a, "a \"q\"");
    tly_pgx_barray_text(&a, "");
    p = tly_pgx_barray_bytes(&a, &len);
    assert_int_equal(len, 20 + 4 + 5 + 4);
    assert_int_equal(be32(p + 20), 5);
    assert_memory_equal(p + 24, "a \"q\"", 5); /* raw bytes, no quoting */
    assert_int_equal(be32(p + 29), 0);         /* empty, not NULL */
    tly_pgx_barray_free(&a);
}

static void
test_barray_grows(void **state)
{
    tly_pgx_barray_t a = {0};
    int len = 0;
    tly_pgx_barray_reset(&a, TLY_PGX_INT8);
    for (int i = 0; i < 100000; ++i)
        tly_pgx_barray_i64(&a, i);
    const char *p = tly_pgx_barray_bytes(&a, &len);
    assert_int_equal(len, 20 + 100000 * 12);
    assert_int_equal(be32(p + 12), 100000);
    assert_int_equal(be32(p + len - 4), 99999);
    tly_pgx_barray_free(&a);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_array_empty),  cmocka_unit_test(test_array_quotes_and_nulls), cmocka_unit_test(test_array_grows),
        cmocka_unit_test(test_barray_empty), cmocka_unit_test(test_barray_layout),          cmocka_unit_test(test_barray_grows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
