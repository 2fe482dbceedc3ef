/*
 * The worker's exactly-once guarantees under abuse, against the real stack
 * (the worker's test plan):
 *
 *   test_kill9_torture: 100 accounts, 10,000 deposits and withdrawals sent
 *     through POST /v1/batch while two worker instances (the stack's own and
 *     one we start) run; a loop SIGKILLs one of them at random moments and
 *     restarts it, at least TORTURE_MIN_KILLS times, both kinds at least twice.
 *   test_rebalance_join_leave: two instances, a third joins during the load,
 *     stays ~3 s, gets SIGTERM and must exit 0 within 10 s.
 *
 * Scale: full scale (10,000 commands over 100 accounts, 4
 * senders, 100 per batch, paced so that they arrive over ~15 s while the
 * kills happen; at least 6 kills, one every 0.3-3.5 s, restart after 0-1.5 s).
 * The torture takes 40-65 s here, the rebalance test 15-25 s; most of it is
 * the consumer session timeout (10 s) that every kill -9 costs the group.
 * TALLY_TORTURE_COMMANDS overrides the number of commands, TALLY_TORTURE_SEED
 * the random seed (printed; it fixes the commands, not the kill moments).
 *
 * After each run, with SQL (TALLY_PG_DSN) and a replay of the topic
 * (TALLY_KAFKA_BROKERS):
 *   - every job of the tenant is terminal and every command request accepted;
 *   - each command's job: succeeded = exactly one ledger entry (right account,
 *     right signed amount), failed = none; deposits never fail, withdrawals
 *     fail only with insufficient_funds; no ledger entry outside the commands;
 *   - per account: accounts.balance = sum of its entries = decider_accounts
 *     balance = the balance a replay of the log gives, and the versions agree
 *     (1 + number of entries), so an event applied twice would show even
 *     where the ledger insert is idempotent;
 *   - the log: exactly one distinct outcome event per request, balance_after
 *     chains per account in log order, no negative balance;
 *   - sum of succeeded deposits - succeeded withdrawals = total balance;
 *   - consumer_positions never went backwards (sampled every 100 ms) and end
 *     at the partitions' high watermarks; the outbox drains; no dead letters.
 *
 * Workers we start log to $TALLY_VAR/log/torture-worker.log; the stack's own
 * worker, when we restart it, to its usual log, with its pid written to
 * $TALLY_VAR/run/tally-worker.pid so that tests/stack.sh down stops it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tly_test_http.h"
#include "tly_test_ledger.h"
#include "tly_test_util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TORTURE_COMMANDS 10000
#define TORTURE_MIN_KILLS 6
#define REBALANCE_COMMANDS 4000
#define SETTLE_TIMEOUT_S 180

static const char *var_dir;

static tly_test_worker_t extra_workers[2] = {{.name = "second", .log = "torture-worker"},
                                             {.name = "third", .log = "torture-worker-third"}};

/* --- the tests ----------------------------------------------------------------------- */

static tly_test_run_t *current_run;
static tly_test_senders_t current_senders;

static int
setup_test(void **state)
{
    tly_test_adopt_stack_worker();
    if (tly_test_stack_worker.pid <= 0) {
        fprintf(stderr, "the stack's worker is not running (pid file %s/run/tally-worker.pid)\n", var_dir);
        return -1;
    }
    return 0;
}

/* Runs even when the test failed: join what runs, stop our workers, leave the stack's worker alive. */
static int
teardown_test(void **state)
{
    if (current_run != NULL) {
        atomic_store(&current_run->next_batch, 1 << 30); /* senders stop after their batch in hand */
        tly_test_senders_join(&current_senders);
    }
    tly_test_monitor_stop();
    tly_test_restore_workers(extra_workers, 2);
    tly_test_run_free(current_run);
    current_run = NULL;
    return 0;
}

static void
test_kill9_torture(void **state)
{
    const char *n_env = getenv("TALLY_TORTURE_COMMANDS");
    int ncmds = n_env != NULL && atoi(n_env) > 0 ? atoi(n_env) : TORTURE_COMMANDS;
    uint64_t seed = tly_test_pick_seed("TALLY_TORTURE_SEED"), ks = seed * 2654435761u | 1;
    int64_t t0 = tly_test_now_ms();
    fprintf(stderr, "torture: %d commands over %d accounts, seed %" PRIu64 "\n", ncmds, TLY_TEST_ACCOUNTS, seed);
    tly_test_run_t *run = current_run = tly_test_run_create(ncmds, seed);
    tly_test_open_accounts(run);

    tly_test_worker_t *second = &extra_workers[0];
    tly_test_worker_start(second);
    tly_test_monitor_start();
    tly_test_sleep_ms(1500); /* let it join the groups: the first rebalance is part of the test, not its start */
    int64_t t_send = tly_test_now_ms();
    /* paced (about 15 s of arrivals) so that the kills land while commands arrive, not only on the backlog */
    run->pace_ms = 400;
    tly_test_senders_start(&current_senders, run, TLY_TEST_SENDERS_MAX);

    /* The killer: SIGKILL one instance at a random moment, restart it after a random pause; both kinds. */
    tly_test_worker_t *victims[2] = {&tly_test_stack_worker, second};
    int kills = 0, sent_at_kill[64];
    int64_t t_sent = 0;
    while (!tly_test_senders_done(run) || kills < TORTURE_MIN_KILLS) {
        tly_test_sleep_ms(tly_test_rnd_between(&ks, 300, 3500));
        if (t_sent == 0 && tly_test_senders_done(run))
            t_sent = tly_test_now_ms();
        tly_test_worker_t *v = victims[tly_test_rnd(&ks) % 2];
        if (kills >= TORTURE_MIN_KILLS - 2 && tly_test_stack_worker.kills < 2)
            v = &tly_test_stack_worker;
        else if (kills >= TORTURE_MIN_KILLS - 2 && second->kills < 2)
            v = second;
        if (kills < 64)
            sent_at_kill[kills] = atomic_load(&run->sent);
        tly_test_worker_kill9(v);
        kills++;
        tly_test_sleep_ms(tly_test_rnd_between(&ks, 0, 1500));
        tly_test_worker_start(v);
    }
    tly_test_senders_join(&current_senders);
    if (t_sent == 0)
        t_sent = tly_test_now_ms();
    fprintf(stderr, "torture: sent in %" PRId64 " ms; %d kills (stack worker %d, second %d), at commands sent:", t_sent - t_send,
            kills, tly_test_stack_worker.kills, second->kills);
    for (int i = 0; i < kills && i < 64; ++i)
        fprintf(stderr, " %d", sent_at_kill[i]);
    fprintf(stderr, "\n");
    assert_int_equal(atomic_load(&run->send_errors), 0);

    int64_t left = tly_test_wait_settled(run, SETTLE_TIMEOUT_S);
    fprintf(stderr, "torture: settled %" PRId64 " ms after the last command (%" PRId64 " jobs left)\n", tly_test_now_ms() - t_sent,
            left);
    assert_int_equal(left, 0);
    assert_true(tly_test_proc_alive(tly_test_stack_worker.pid));
    assert_true(tly_test_proc_alive(second->pid));
    tly_test_verify_run(run, "torture");
    fprintf(stderr, "torture: total %" PRId64 " ms\n", tly_test_now_ms() - t0);
}

static void
test_rebalance_join_leave(void **state)
{
    uint64_t seed = tly_test_pick_seed("TALLY_TORTURE_SEED");
    int64_t t0 = tly_test_now_ms();
    fprintf(stderr, "rebalance: %d commands over %d accounts, seed %" PRIu64 "\n", REBALANCE_COMMANDS, TLY_TEST_ACCOUNTS, seed);
    tly_test_run_t *run = current_run = tly_test_run_create(REBALANCE_COMMANDS, seed);
    tly_test_open_accounts(run);
    tly_test_worker_t *second = &extra_workers[0], *third = &extra_workers[1];
    tly_test_worker_start(second);
    tly_test_monitor_start();
    tly_test_sleep_ms(1500);
    /* paced so that the load lasts well past the third instance's stay (about 10 s in all) */
    run->pace_ms = 400;
    tly_test_senders_start(&current_senders, run, 2);
    tly_test_sleep_ms(1000);
    int sent_join = atomic_load(&run->sent);
    char third_log[1024];
    snprintf(third_log, sizeof(third_log), "%s/log/%s.log", var_dir, third->log);
    long log_from = tly_test_file_size(third_log);
    int64_t t_join = tly_test_now_ms();
    tly_test_worker_start(third);
    /* ~3 s, and at least until it holds partitions of both groups (bounded) */
    bool assigned = false;
    while (tly_test_now_ms() - t_join < 3000 || (!assigned && tly_test_now_ms() - t_join < 20000)) {
        tly_test_sleep_ms(100);
        assigned = assigned || tly_test_log_shows_assignment(third, log_from);
    }
    int64_t assigned_ms = tly_test_now_ms() - t_join;
    int sent_leave = atomic_load(&run->sent);
    int64_t t_term = tly_test_now_ms();
    int code = tly_test_worker_stop(third, 10000);
    int64_t stop_ms = tly_test_now_ms() - t_term;
    fprintf(stderr,
            "rebalance: third joined at %d commands sent, held partitions: %s, left after %" PRId64
            " ms at %d commands sent, exited %d %" PRId64 " ms after SIGTERM\n",
            sent_join, assigned ? "yes" : "no", assigned_ms, sent_leave, code, stop_ms);
    assert_true(assigned);
    assert_int_equal(code, 0);
    assert_true(stop_ms <= 10000);
    assert_true(sent_leave < run->ncmds); /* it left during the load */
    tly_test_senders_join(&current_senders);
    int64_t t_sent = tly_test_now_ms();
    assert_int_equal(atomic_load(&run->send_errors), 0);
    int64_t left = tly_test_wait_settled(run, SETTLE_TIMEOUT_S);
    fprintf(stderr, "rebalance: settled %" PRId64 " ms after the last command\n", tly_test_now_ms() - t_sent);
    assert_int_equal(left, 0);
    tly_test_verify_run(run, "rebalance");
    fprintf(stderr, "rebalance: total %" PRId64 " ms\n", tly_test_now_ms() - t0);
}

int
main(void)
{
    var_dir = tly_test_env("TALLY_VAR");
    if (tly_test_ledger_init("torture") != 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_kill9_torture, setup_test, teardown_test),
        cmocka_unit_test_setup_teardown(test_rebalance_join_leave, setup_test, teardown_test),
    };
    int ret = cmocka_run_group_tests(tests, NULL, NULL);
    tly_test_ledger_finish();
    return ret;
}
