/* Unit tests of the consumer's pure helpers (backoff, payload sanitising, role parsing). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "runtime/consumer.h"
#include "runtime/retry.h"
#include "worker.h"

#include <stdlib.h>
#include <string.h>

static void
test_text_or_hex_keeps_utf8(void **state)
{
    char *s = tly_text_or_hex("{\"a\":\"h\xc3\xa9\"}", 11);
    assert_string_equal(s, "{\"a\":\"h\xc3\xa9\"}");
    free(s);
}

static void
test_text_or_hex_hexes_binary(void **state)
{
    char *s = tly_text_or_hex("a\0\xff", 3);
    assert_string_equal(s, "\\x6100ff");
    free(s);
    s = tly_text_or_hex("\xc3", 1); /* truncated sequence */
    assert_string_equal(s, "\\xc3");
    free(s);
}

static void
test_backoff_doubles_and_caps(void **state)
{
    atomic_bool stop = true; /* do not actually sleep */
    int delay = 0;
    tly_retry_backoff(&delay, &stop);
    assert_int_equal(delay, 100);
    for (int i = 0; i < 20; ++i)
        tly_retry_backoff(&delay, &stop);
    assert_int_equal(delay, 5000);
}

static void
test_parse_roles(void **state)
{
    char err[128];
    unsigned m;
    assert_int_equal(tly_worker_parse_roles("decider,projector", &m, err, sizeof(err)), 0);
    assert_int_equal(m, TLY_ROLE_DECIDER | TLY_ROLE_PROJECTOR);
    assert_int_equal(tly_worker_parse_roles("projector", &m, err, sizeof(err)), 0);
    assert_int_equal(m, TLY_ROLE_PROJECTOR);
    assert_int_equal(tly_worker_parse_roles("saga", &m, err, sizeof(err)), 0);
    assert_int_equal(m, TLY_ROLE_SAGA);
    assert_int_equal(tly_worker_parse_roles("projector,saga,decider", &m, err, sizeof(err)), 0);
    assert_int_equal(m, TLY_ROLE_DECIDER | TLY_ROLE_SAGA | TLY_ROLE_PROJECTOR);
    assert_int_equal(tly_worker_parse_roles("sagas", &m, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "sagas"));
    assert_int_equal(tly_worker_parse_roles("", &m, err, sizeof(err)), -1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_or_hex_keeps_utf8),
        cmocka_unit_test(test_text_or_hex_hexes_binary),
        cmocka_unit_test(test_backoff_doubles_and_caps),
        cmocka_unit_test(test_parse_roles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
