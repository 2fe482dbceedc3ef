/*
 * The worker's progress watch (admin.c): a partition with lag whose position
 * does not move for the stall time is stalled (readiness reasons, the age
 * metric, one log line each way); a caught-up partition, a claim, a moving
 * position and a stopped process are not stalls; only the instance that
 * claimed a partition last reports on it. Driven with its own clock.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "admin.h"
#include "tally/metrics.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define S 1000000LL
#define STALL (30 * S)

static int64_t now = 1000 * S; /* the test's monotonic clock */

/* One watcher pass a second from now to now + `seconds`, as the watcher thread makes them. */
static void
run_for(int seconds)
{
    for (int i = 0; i < seconds; ++i) {
        now += S;
        tly_worker_admin_watch(now, STALL);
    }
}

static bool
reason_false(json_t *reasons, const char *key)
{
    return json_is_false(json_object_get(reasons, key));
}

static int
stalled(const char *consumer, const char *key_wanted)
{
    json_t *reasons = json_object();
    int n = tly_worker_admin_stalled(consumer, reasons);
    if (key_wanted != NULL)
        assert_true(reason_false(reasons, key_wanted));
    json_decref(reasons);
    return n;
}

/* The age gauge's value for consumer/partition in /metrics, or -1 when the series is not shown. */
static double
age_metric(const char *consumer, int partition)
{
    size_t len = 0;
    char *text = tly_metrics_render(tly_metrics_default(), &len), want[160];
    snprintf(want, sizeof(want), "tally_consumer_progress_age_seconds{consumer=\"%s\",partition=\"%d\"} ", consumer, partition);
    char *at = strstr(text, want);
    double v = at != NULL ? strtod(at + strlen(want), NULL) : -1;
    free(text);
    return v;
}

/* stderr goes to a file while `fn` runs; returns how many lines contain `needle`. */
static int
count_log_lines(void (*fn)(void), const char *needle)
{
    char path[] = "/tmp/tally-watch-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    fn();
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    FILE *f = fdopen(fd, "r");
    rewind(f);
    char line[2048];
    int n = 0;
    while (fgets(line, sizeof(line), f) != NULL)
        n += strstr(line, needle) != NULL;
    fclose(f);
    unlink(path);
    return n;
}

static int owner_a, owner_b; /* two instances of one consumer name, as the projector's two */

static void
stall_then_recover(void)
{
    tly_worker_admin_claimed(&owner_a, "projector", 4, 99);
    run_for(1);
    tly_worker_admin_position(&owner_a, "projector", 4, 100, 150); /* moved: the clock starts at the next pass */
    run_for(29);
    assert_int_equal(stalled("projector", NULL), 0);
    run_for(2);
    assert_int_equal(stalled("projector", "consumer_projector_partition_4_progressing"), 1);
    run_for(20); /* still stalled: logged once, not once per pass */
    assert_int_equal(stalled("projector", NULL), 1);
    tly_worker_admin_position(&owner_a, "projector", 4, 101, 150);
    run_for(1);
    assert_int_equal(stalled("projector", NULL), 0);
}

static void
test_stall_is_logged_once_each_way(void **state)
{
    (void)state;
    assert_int_equal(count_log_lines(stall_then_recover, "partition makes no progress"), 1);
    tly_worker_admin_position(&owner_a, "projector", 4, 101, 150);
    assert_int_equal(count_log_lines(stall_then_recover, "partition makes progress again"), 1);
    tly_worker_admin_released(&owner_a, "projector", 4);
    run_for(1);
}

static void
test_age_metric_follows_progress(void **state)
{
    (void)state;
    tly_worker_admin_claimed(&owner_a, "saga", 2, 10);
    tly_worker_admin_position(&owner_a, "saga", 2, 10, 20);
    run_for(1);
    assert_true(age_metric("saga", 2) == 0);
    run_for(12);
    assert_true(age_metric("saga", 2) == 12);
    tly_worker_admin_position(&owner_a, "saga", 2, 20, 20); /* moved and caught up */
    run_for(1);
    assert_true(age_metric("saga", 2) == 0);
    tly_worker_admin_released(&owner_a, "saga", 2);
    run_for(1);
    assert_true(age_metric("saga", 2) < 0); /* not ours: no series */
}

static void
test_caught_up_is_no_stall(void **state)
{
    (void)state;
    tly_worker_admin_claimed(&owner_a, "webhooks", 1, 500);
    for (int i = 0; i < 120; ++i) { /* the loop reports every pass, caught up all along */
        tly_worker_admin_position(&owner_a, "webhooks", 1, 500, 500);
        run_for(1);
    }
    assert_int_equal(stalled("webhooks", NULL), 0);
    tly_worker_admin_released(&owner_a, "webhooks", 1);
}

/* A claimed partition no fetch ever answered for (paused in librdkafka, as in issue 22 on a fresh start): unknown lag counts. */
static void
test_never_fetched_is_a_stall(void **state)
{
    (void)state;
    tly_worker_admin_claimed(&owner_a, "decider", 7, 42);
    tly_worker_admin_position(&owner_a, "decider", 7, 42, -1);
    run_for(31);
    assert_int_equal(stalled("decider", "consumer_decider_partition_7_progressing"), 1);
    tly_worker_admin_claimed(&owner_a, "decider", 7, 42); /* claimed again: unknown for less than the stall time */
    run_for(1);
    assert_int_equal(stalled("decider", NULL), 0);
    tly_worker_admin_released(&owner_a, "decider", 7);
    run_for(1);
}

/* Issue 22's order: B (fenced, revocation not run yet) keeps reporting and then releases, after A claimed the partition. */
static void
test_only_the_last_claimer_counts(void **state)
{
    (void)state;
    tly_worker_admin_claimed(&owner_b, "projector", 5, 18551);
    tly_worker_admin_position(&owner_b, "projector", 5, 18551, 77098);
    tly_worker_admin_claimed(&owner_a, "projector", 5, 18551);
    tly_worker_admin_position(&owner_a, "projector", 5, 18551, 77098);
    tly_worker_admin_released(&owner_b, "projector", 5); /* B's late revocation: not B's any more */
    for (int i = 0; i < 31; ++i) {
        tly_worker_admin_position(&owner_b, "projector", 5, 18600 + i, 77098); /* B's rolled-back batches: no progress of A's */
        run_for(1);
    }
    assert_int_equal(stalled("projector", "consumer_projector_partition_5_progressing"), 1);
    tly_worker_admin_released(&owner_a, "projector", 5);
    run_for(1);
    assert_int_equal(stalled("projector", NULL), 0);
}

/* A consumer that stops reporting (its thread stopped, its loop blocked) after saying it was caught up. */
static void
test_silent_consumer_is_a_stall(void **state)
{
    (void)state;
    tly_worker_admin_claimed(&owner_a, "saga", 9, 300);
    tly_worker_admin_position(&owner_a, "saga", 9, 300, 300);
    run_for(29);
    assert_int_equal(stalled("saga", NULL), 0);
    run_for(2);
    assert_int_equal(stalled("saga", "consumer_saga_partition_9_progressing"), 1);
    assert_true(age_metric("saga", 9) >= 30);
    tly_worker_admin_position(&owner_a, "saga", 9, 300, 300); /* it runs again, still caught up */
    run_for(1);
    assert_int_equal(stalled("saga", NULL), 0);
    tly_worker_admin_released(&owner_a, "saga", 9);
    run_for(1);
}

/*
 * Without the fix of issue 22 the pause test saw this: a saga partition fenced
 * back to its stored position, then claimed by one consumer after another
 * every few seconds, never moving. Claims are no progress, so it stalls.
 */
static void
test_stuck_partition_passed_around_stalls(void **state)
{
    (void)state;
    int *owners[] = {&owner_a, &owner_b};
    for (int i = 0; i < 12; ++i) { /* a rebalance every 3 s for 36 s */
        int *o = owners[i % 2];
        tly_worker_admin_claimed(o, "saga", 0, 320);
        for (int k = 0; k < 3; ++k) {
            tly_worker_admin_position(o, "saga", 0, 320, 416);
            run_for(1);
        }
        if (i < 11)
            tly_worker_admin_released(o, "saga", 0);
    }
    assert_int_equal(stalled("saga", "consumer_saga_partition_0_progressing"), 1);
    tly_worker_admin_position(&owner_b, "saga", 0, 416, 416);
    run_for(1);
    assert_int_equal(stalled("saga", NULL), 0);
    tly_worker_admin_released(&owner_b, "saga", 0);
    run_for(1);
}

/* The process stopped (SIGSTOP) for longer than the stall time: not a stall of its consumers. */
static void
test_stopped_process_is_no_stall(void **state)
{
    (void)state;
    tly_worker_admin_claimed(&owner_a, "projector", 0, 1);
    tly_worker_admin_position(&owner_a, "projector", 0, 1, 1000);
    run_for(1);
    now += 45 * S; /* no pass while stopped */
    tly_worker_admin_watch(now, STALL);
    assert_int_equal(stalled("projector", NULL), 0);
    run_for(31); /* and after the continue, the clock runs again */
    assert_int_equal(stalled("projector", NULL), 1);
    tly_worker_admin_released(&owner_a, "projector", 0);
    run_for(1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stall_is_logged_once_each_way),
        cmocka_unit_test(test_age_metric_follows_progress),
        cmocka_unit_test(test_caught_up_is_no_stall),
        cmocka_unit_test(test_never_fetched_is_a_stall),
        cmocka_unit_test(test_only_the_last_claimer_counts),
        cmocka_unit_test(test_silent_consumer_is_a_stall),
        cmocka_unit_test(test_stuck_partition_passed_around_stalls),
        cmocka_unit_test(test_stopped_process_is_no_stall),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
