/* RFC 3339 formatting and strict parsing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/clock.h"

static void
test_format_parse(void **state)
{
    char s[40];
    int64_t us;
    tly_clock_format_rfc3339(0, s, sizeof(s));
    assert_string_equal(s, "1970-01-01T00:00:00.000000Z");
    assert_true(tly_clock_parse_rfc3339("2026-11-22T10:00:00.5Z", &us));
    tly_clock_format_rfc3339(us, s, sizeof(s));
    assert_string_equal(s, "2026-11-22T10:00:00.500000Z");
    assert_true(tly_clock_parse_rfc3339("2026-11-22T12:00:00+02:00", &us));
    tly_clock_format_rfc3339(us, s, sizeof(s));
    assert_string_equal(s, "2026-11-22T10:00:00.000000Z");
}

static void
test_rejects(void **state)
{
    int64_t us;
    const char *bad[] = {"2026-02-30T00:00:00Z", "2026-11-22 10:00:00Z", "2026-11-22T10:00:00", "2026-11-22T25:00:00Z",
                         "2026-11-22T10:00:00.Z", "2026-11-22T10:00:00Zjunk",
                         /* outside years 1 to 9999 in UTC: PostgreSQL would refuse them */
                         "0000-01-01T00:00:00Z", "0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i)
        assert_false(tly_clock_parse_rfc3339(bad[i], &us));
    assert_true(tly_clock_parse_rfc3339("2024-02-29T00:00:00Z", &us));
    assert_true(tly_clock_parse_rfc3339("0001-01-01T00:00:00Z", &us));
    assert_int_equal(us, TLY_CLOCK_MIN_S * 1000000);
    assert_true(tly_clock_parse_rfc3339("9999-12-31T23:59:59.999999Z", &us));
    assert_int_equal(us, TLY_CLOCK_MAX_S * 1000000 + 999999);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_format_parse), cmocka_unit_test(test_rejects)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
