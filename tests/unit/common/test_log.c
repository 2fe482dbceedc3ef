/* The JSON-lines logger: every line parses, every value survives escaping. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/clock.h"
#include "tally/log.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Runs tly_log with stderr redirected to a pipe; returns the parsed line. */
static json_t *
log_line(const char *msg, const char *key, const char *value)
{
    int fds[2], saved = dup(STDERR_FILENO);
    char buf[16384];
    assert_int_equal(pipe(fds), 0);
    dup2(fds[1], STDERR_FILENO);
    tly_log(TLY_LOG_INFO, msg, key, value, NULL);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fds[1]);
    ssize_t n = read(fds[0], buf, sizeof(buf) - 1);
    close(fds[0]);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_int_equal(buf[n - 1], '\n');
    json_error_t jerr;
    json_t *v = json_loads(buf, JSON_REJECT_DUPLICATES, &jerr);
    assert_non_null(v);
    return v;
}

static void
test_escaping(void **state)
{
    const char *values[] = {"plain", "with \"quotes\" and \\backslashes\\", "tab\there\nnewline\x01\x1f", "é ünïcode ✓", ""};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); ++i) {
        json_t *v = log_line("a \"message\"", "field", values[i]);
        assert_string_equal(json_string_value(json_object_get(v, "field")), values[i]);
        assert_string_equal(json_string_value(json_object_get(v, "msg")), "a \"message\"");
        assert_string_equal(json_string_value(json_object_get(v, "level")), "info");
        json_decref(v);
    }
}

static void
test_time_format(void **state)
{
    int64_t parsed;
    char a[40], b[40];
    json_t *v = log_line("tick", "k", "v");
    assert_true(tly_clock_parse_rfc3339(json_string_value(json_object_get(v, "time")), &parsed));
    json_decref(v);
    /* the per-thread cache of the second must not leak into another second */
    tly_clock_format_rfc3339(1795000000999999LL, a, sizeof(a));
    tly_clock_format_rfc3339(1795000001000000LL, b, sizeof(b));
    assert_string_equal(a, "2026-11-18T11:06:40.999999Z");
    assert_string_equal(b, "2026-11-18T11:06:41.000000Z");
    tly_clock_format_rfc3339(-1, a, sizeof(a));
    assert_string_equal(a, "1969-12-31T23:59:59.999999Z");
}

int
main(void)
{
    tly_log_init("test", TLY_LOG_DEBUG);
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_escaping), cmocka_unit_test(test_time_format)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
