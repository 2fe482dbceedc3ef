/* Unit tests of pgx.c's array literals (the set-based statements' parameters). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "pgx.h"

#include <stdlib.h>
#include <string.h>

static void
test_array_empty(void **state)
{
    tly_pgx_array_t a = {0};
    assert_string_equal(tly_pgx_array_text(&a), "{}");
    tly_pgx_array_add(&a, "x");
    tly_pgx_array_reset(&a);
    assert_int_equal(a.n, 0);
    assert_string_equal(tly_pgx_array_text(&a), "{}");
    tly_pgx_array_free(&a);
}

static void
test_array_quotes_and_nulls(void **state)
{
    tly_pgx_array_t a = {0};
    tly_pgx_array_add(&a, "plain");
    tly_pgx_array_add(&a, NULL);
    tly_pgx_array_add(&a, "NULL"); /* the text, not SQL NULL */
    tly_pgx_array_add(&a, "a \"q\", {b} \\ c");
    tly_pgx_array_add(&a, "");
    tly_pgx_array_add_i64(&a, -9007199254740991LL);
    assert_int_equal(a.n, 6);
    assert_string_equal(tly_pgx_array_text(&a), "{\"plain\",NULL,\"NULL\",\"a \\\"q\\\", {b} \\\\ c\",\"\",\"-9007199254740991\"}");
    /* text() can be called, then the array grown further */
    tly_pgx_array_add(&a, "more");
    assert_string_equal(tly_pgx_array_text(&a) + strlen(tly_pgx_array_text(&a)) - 8, ",\"more\"}");
    tly_pgx_array_free(&a);
}

static void
test_array_grows(void **state)
{
    tly_pgx_array_t a = {0};
    for (int i = 0; i < 100000; ++i)
        tly_pgx_array_add_i64(&a, i);
    const char *t = tly_pgx_array_text(&a);
    assert_int_equal(a.n, 100000);
    assert_memory_equal(t, "{\"0\",\"1\",", 9);
    assert_string_equal(t + strlen(t) - 9, ",\"99999\"}");
    tly_pgx_array_free(&a);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_array_empty),
        cmocka_unit_test(test_array_quotes_and_nulls),
        cmocka_unit_test(test_array_grows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
