/* The live-traffic verdict of tallyctl replay (services/tallyctl/livewatch.c), without PostgreSQL. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "livewatch.h"

#include <string.h>

static bool
feed(tly_ctl_loadavg_t *a, int active, int times)
{
    bool busy = false;
    for (int i = 0; i < times; ++i)
        busy = tly_ctl_loadavg_add(a, active);
    return busy;
}

static void
test_quiet_database_stays_quiet(void **state)
{
    tly_ctl_loadavg_t a;
    memset(&a, 0, sizeof(a));
    assert_false(feed(&a, 0, 1000));
    /* a poller seen now and then (1 sample in 5) is not live traffic */
    for (int i = 0; i < 200; ++i)
        assert_false(tly_ctl_loadavg_add(&a, i % 5 == 0 ? 1 : 0));
    assert_true(tly_ctl_loadavg_mean(&a) < 0.25);
}

static void
test_no_verdict_on_too_few_samples(void **state)
{
    tly_ctl_loadavg_t a;
    memset(&a, 0, sizeof(a));
    assert_false(feed(&a, 5, TLY_CTL_WATCH_MIN_SAMPLES - 1));
    assert_true(tly_ctl_loadavg_add(&a, 5));
}

static void
test_busy_at_a_quarter_and_calm_after_two_seconds(void **state)
{
    tly_ctl_loadavg_t a;
    memset(&a, 0, sizeof(a));
    assert_false(feed(&a, 0, TLY_CTL_WATCH_WINDOW));
    /* one session active in every fourth sample: mean 0.25, busy */
    bool busy = false;
    for (int i = 0; i < TLY_CTL_WATCH_WINDOW; ++i)
        busy = tly_ctl_loadavg_add(&a, i % 4 == 3 ? 1 : 0);
    assert_true(busy);
    assert_true(tly_ctl_loadavg_mean(&a) >= 0.25);
    /* traffic stops: still busy until the window is below the mark for CALM samples in a row */
    int n = 0;
    while (tly_ctl_loadavg_add(&a, 0))
        ++n;
    assert_true(n >= TLY_CTL_WATCH_CALM_SAMPLES - 1);
    assert_true(n < TLY_CTL_WATCH_CALM_SAMPLES + TLY_CTL_WATCH_WINDOW);
    /* a burst in the calm period starts the count again */
    assert_true(feed(&a, 8, 3));
    assert_true(feed(&a, 0, TLY_CTL_WATCH_CALM_SAMPLES - 1));
    assert_false(feed(&a, 0, TLY_CTL_WATCH_WINDOW + 1));
}

static void
test_large_counts_are_clamped(void **state)
{
    tly_ctl_loadavg_t a;
    memset(&a, 0, sizeof(a));
    assert_true(feed(&a, 1000000, TLY_CTL_WATCH_WINDOW * 3));
    assert_true(tly_ctl_loadavg_mean(&a) == 1000.0); /* clamped to 1000 a sample */
    tly_ctl_loadavg_add(&a, -3);                     /* an error count is read as 0 */
    assert_true(tly_ctl_loadavg_mean(&a) == 1000.0 * (TLY_CTL_WATCH_WINDOW - 1) / TLY_CTL_WATCH_WINDOW);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quiet_database_stays_quiet),
        cmocka_unit_test(test_no_verdict_on_too_few_samples),
        cmocka_unit_test(test_busy_at_a_quarter_and_calm_after_two_seconds),
        cmocka_unit_test(test_large_counts_are_clamped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
