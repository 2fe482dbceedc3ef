/*
 * A paused worker must come back (issue 22): the worker, one of its
 * consumer threads, the broker and PostgreSQL are frozen past the consumer
 * session timeout while commands arrive or a backlog is caught up, then
 * continued; afterwards every job is terminal, the positions of all four
 * consumers are at the log end and the money adds up (the ledger checks of
 * tly_test_ledger.h), each worker's /readyz is 200 again, and at the end
 * `tallyctl verify` finds the read models equal to a rebuild from the log.
 *
 * The stack's own worker is stopped for the test and workers of our own run
 * instead (restored at the end), so that their group settings are ours:
 * session.timeout.ms 6000 (Kafka's least) and max.poll.interval.ms 8000, and
 * TALLY_CONSUMER_STALL_S 5. Each pause is PAUSE_MS (session timeout + 2 s).
 *
 *   test_pause_worker: one worker, SIGSTOPped under load, SIGCONT.
 *   test_pause_two_workers: two workers, each SIGSTOPped in turn under load;
 *     the two projector consumers of each process share the group, which is
 *     the configuration of issue 22.
 *   test_pause_consumer_thread: only the projector-1 thread of a worker is
 *     stopped (ptrace: a signal stops every thread, PTRACE_INTERRUPT one),
 *     the process's other consumers and librdkafka's threads run on. Its
 *     heartbeats go on (librdkafka's thread), so the group drops it by
 *     max.poll.interval.ms: hence 8 s. Meanwhile its /readyz must turn 503
 *     naming a projector partition (the stall watch), and 200 after.
 *   test_pause_broker, test_pause_postgresql: the broker, or the postmaster
 *     and every backend, SIGSTOPped while the workers catch up a backlog.
 *
 * TALLY_PAUSE_ROUNDS (default 1) repeats each test's pauses that many times
 * (the long version); TALLY_PAUSE_COMMANDS (default 1200) is the commands of
 * each run; TALLY_PAUSE_SEED fixes the commands. Workers log to
 * $TALLY_VAR/log/pause-worker-{a,b}.log.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tly_test_http.h"
#include "tly_test_ledger.h"
#include "tly_test_util.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define SESSION_MS 6000
#define PAUSE_MS (SESSION_MS + 2000)
#define MAX_POLL_MS 8000
#define STALL_S 5
#define THREAD_PAUSE_MS (MAX_POLL_MS + 3000)
#define SETTLE_TIMEOUT_S 120
#define READY_TIMEOUT_MS 40000
#define MAX_FROZEN 256

static const char *var_dir;
static int rounds = 1, ncmds = 1200;

static tly_test_worker_t ours[2] = {{.name = "pause-a", .log = "pause-worker-a"}, {.name = "pause-b", .log = "pause-worker-b"}};
static int admin_port[2];

/* --- freezing processes; whatever happens, the teardown continues them ------- */

static pid_t frozen[MAX_FROZEN];
static int nfrozen;
static pid_t traced; /* a thread stopped with ptrace, detached by the teardown if the test failed */

static void
freeze(pid_t pid)
{
    if (pid > 0 && nfrozen < MAX_FROZEN && kill(pid, SIGSTOP) == 0)
        frozen[nfrozen++] = pid;
}

static void
thaw_all(void)
{
    for (int i = nfrozen - 1; i >= 0; --i)
        kill(frozen[i], SIGCONT);
    nfrozen = 0;
}

/* The parent pid in /proc/<pid>/stat, or -1. */
static pid_t
parent_of(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    int ppid = -1;
    return p != NULL && sscanf(p + 2, "%*c %d", &ppid) == 1 ? (pid_t)ppid : -1;
}

/* PostgreSQL as a whole: the postmaster first (it forks no new backend then), then every child of it. */
static int
freeze_postgresql(void)
{
    pid_t pm = tly_test_read_pid("postgres");
    assert_true(pm > 0 && tly_test_proc_alive(pm));
    freeze(pm);
    DIR *d = opendir("/proc");
    assert_non_null(d);
    int n = 1;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        pid_t pid = (pid_t)atoi(e->d_name);
        if (pid > 0 && parent_of(pid) == pm) {
            freeze(pid);
            n++;
        }
    }
    closedir(d);
    return n;
}

/* --- our workers ------------------------------------------------------------ */

static void
start_ours(int i)
{
    char port[16];
    admin_port[i] = tly_test_free_port();
    snprintf(port, sizeof(port), "%d", admin_port[i]);
    setenv("TALLY_ADMIN_PORT", port, 1); /* read by the child at exec */
    char log[1024];
    snprintf(log, sizeof(log), "%s/log/%s.log", var_dir, ours[i].log);
    long from = tly_test_file_size(log);
    tly_test_worker_start(&ours[i]);
    /* until it holds partitions of the decider's and the projector's groups (bounded) */
    int64_t deadline = tly_test_now_ms() + 30000;
    while (!tly_test_log_shows_assignment(&ours[i], from) && tly_test_now_ms() < deadline)
        tly_test_sleep_ms(100);
    assert_true(tly_test_log_shows_assignment(&ours[i], from));
}

/* GET /readyz of our worker `i`: the status, and the body in *body (caller frees) when asked. */
static long
readyz(int i, char **body)
{
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/readyz", admin_port[i]);
    tly_test_response_t r = tly_test_request_url("GET", url, NULL, NULL, NULL);
    long status = r.status;
    if (body != NULL)
        *body = strdup(r.body);
    tly_test_response_free(&r);
    return status;
}

/* Polls /readyz of worker `i` until it answers `want` (and, for a 503, names `reason`), at most `timeout_ms`. */
static bool
ready_becomes(int i, long want, const char *reason, int timeout_ms, char **last)
{
    int64_t deadline = tly_test_now_ms() + timeout_ms;
    char *body = NULL;
    bool seen = false;
    while (!seen) {
        free(body);
        long st = readyz(i, &body);
        seen = st == want && (reason == NULL || strstr(body, reason) != NULL);
        if (seen || tly_test_now_ms() >= deadline)
            break;
        tly_test_sleep_ms(250);
    }
    if (last != NULL)
        *last = body;
    else
        free(body);
    return seen;
}

/* The tid of worker `w`'s thread named `name`, or 0. */
static pid_t
thread_named(const tly_test_worker_t *w, const char *name)
{
    char path[384], comm[64];
    snprintf(path, sizeof(path), "/proc/%d/task", (int)w->pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return 0;
    pid_t found = 0;
    for (struct dirent *e; found == 0 && (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "/proc/%d/task/%s/comm", (int)w->pid, e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        if (fgets(comm, sizeof(comm), f) != NULL) {
            comm[strcspn(comm, "\n")] = '\0';
            if (strcmp(comm, name) == 0)
                found = (pid_t)atoi(e->d_name);
        }
        fclose(f);
    }
    closedir(d);
    return found;
}

/* --- a run with pauses -------------------------------------------------------- */

static tly_test_run_t *current_run;
static tly_test_senders_t current_senders;
static unsigned seed_counter;

/* A run of ncmds commands over fresh accounts; `pace_ms` between each sender's batches (0: as fast as it goes). */
static tly_test_run_t *
run_begin(int pace_ms, int senders)
{
    uint64_t seed = tly_test_pick_seed("TALLY_PAUSE_SEED") + seed_counter++;
    fprintf(stderr, "pause: %d commands, seed %" PRIu64 "\n", ncmds, seed);
    tly_test_run_t *run = current_run = tly_test_run_create(ncmds, seed);
    tly_test_open_accounts(run);
    tly_test_monitor_start();
    run->pace_ms = pace_ms;
    tly_test_senders_start(&current_senders, run, senders);
    return run;
}

/* Paced so that the commands keep arriving over about `seconds` (2 senders, batches of 100). */
static int
pace_for(int seconds)
{
    int batches_each = (ncmds + 199) / 200;
    return batches_each > 0 ? seconds * 1000 / batches_each : 0;
}

static void
run_end(tly_test_run_t *run, const char *what, int nworkers)
{
    tly_test_senders_join(&current_senders);
    assert_int_equal(atomic_load(&run->send_errors), 0);
    int64_t t0 = tly_test_now_ms();
    int64_t left = tly_test_wait_settled(run, SETTLE_TIMEOUT_S);
    fprintf(stderr, "%s: settled %" PRId64 " ms after the last command (%" PRId64 " jobs left)\n", what, tly_test_now_ms() - t0,
            left);
    assert_int_equal(left, 0);
    tly_test_verify_run(run, what);
    for (int i = 0; i < nworkers; ++i) {
        char *body = NULL;
        assert_true(tly_test_proc_alive(ours[i].pid));
        if (!ready_becomes(i, 200, NULL, READY_TIMEOUT_MS, &body))
            fail_msg("%s: /readyz of %s after the pauses: %s", what, ours[i].name, body);
        free(body);
    }
    tly_test_run_free(run);
    current_run = NULL;
}

/* Freezes `pid` for `ms` (the teardown continues it if the test fails on the way). */
static void
pause_process(pid_t pid, int ms, const char *what)
{
    int64_t t0 = tly_test_now_ms();
    freeze(pid);
    tly_test_sleep_ms(ms);
    thaw_all();
    fprintf(stderr, "  %s (pid %d) stopped %" PRId64 " ms\n", what, (int)pid, tly_test_now_ms() - t0);
}

/* --- the tests ------------------------------------------------------------------- */

static void
test_pause_worker(void **state)
{
    (void)state;
    start_ours(0);
    for (int r = 0; r < rounds; ++r) {
        tly_test_run_t *run = run_begin(pace_for(PAUSE_MS / 1000 + 4), 2);
        tly_test_sleep_ms(1500);
        pause_process(ours[0].pid, PAUSE_MS, "the worker");
        run_end(run, "pause worker", 1);
    }
}

static void
test_pause_two_workers(void **state)
{
    (void)state;
    start_ours(0);
    start_ours(1);
    for (int r = 0; r < rounds; ++r) {
        tly_test_run_t *run = run_begin(pace_for(2 * PAUSE_MS / 1000 + 6), 2);
        int first = r % 2;
        tly_test_sleep_ms(1500);
        pause_process(ours[first].pid, PAUSE_MS, ours[first].name);
        tly_test_sleep_ms(2000); /* it rejoins while the other one is stopped next */
        pause_process(ours[1 - first].pid, PAUSE_MS, ours[1 - first].name);
        run_end(run, "pause two workers", 2);
    }
}

static void
test_pause_consumer_thread(void **state)
{
    (void)state;
    start_ours(0);
    start_ours(1);
    for (int r = 0; r < rounds; ++r) {
        tly_test_worker_t *w = &ours[r % 2];
        pid_t tid = thread_named(w, "projector-1");
        assert_true(tid > 0);
        tly_test_run_t *run = run_begin(pace_for(THREAD_PAUSE_MS / 1000 + 4), 2);
        tly_test_sleep_ms(1500);
        if (ptrace(PTRACE_SEIZE, tid, NULL, NULL) != 0) {
            /* no ptrace here (a container without CAP_SYS_PTRACE, Yama): the thread cannot be stopped alone */
            fprintf(stderr, "  ptrace of thread %d: %s; skipping the thread pause\n", (int)tid, strerror(errno));
            run_end(run, "pause consumer thread (not stopped)", 2);
            skip();
        }
        traced = tid;
        int64_t t0 = tly_test_now_ms();
        assert_int_equal(ptrace(PTRACE_INTERRUPT, tid, NULL, NULL), 0);
        int st = 0;
        assert_int_equal(waitpid(tid, &st, __WALL), tid);
        /* its partitions stop moving: the worker says so, naming one, within the stall time and a pass */
        char *body = NULL;
        bool seen = ready_becomes(r % 2, 503, "\"consumer_projector_partition_", (STALL_S + 3) * 1000, &body);
        int64_t seen_ms = tly_test_now_ms() - t0;
        int64_t left = THREAD_PAUSE_MS - (tly_test_now_ms() - t0);
        if (left > 0)
            tly_test_sleep_ms((int)left);
        assert_int_equal(ptrace(PTRACE_DETACH, tid, NULL, NULL), 0);
        traced = 0;
        fprintf(stderr, "  %s thread projector-1 (tid %d) stopped %" PRId64 " ms; /readyz 503 after %" PRId64 " ms: %.300s\n",
                w->name, (int)tid, tly_test_now_ms() - t0, seen_ms, body);
        if (!seen)
            fail_msg("/readyz of %s did not name a stalled projector partition: %s", w->name, body);
        free(body);
        run_end(run, "pause consumer thread", 2);
    }
}

static void
test_pause_broker(void **state)
{
    (void)state;
    start_ours(0);
    start_ours(1);
    pid_t kafka = tly_test_read_pid("kafka");
    assert_true(kafka > 0 && tly_test_proc_alive(kafka));
    for (int r = 0; r < rounds; ++r) {
        tly_test_run_t *run = run_begin(0, TLY_TEST_SENDERS_MAX);
        while (!tly_test_senders_done(run)) /* a backlog: everything accepted, the workers catching up */
            tly_test_sleep_ms(20);
        pause_process(kafka, PAUSE_MS, "the broker");
        run_end(run, "pause broker", 2);
    }
}

static void
test_pause_postgresql(void **state)
{
    (void)state;
    start_ours(0);
    start_ours(1);
    for (int r = 0; r < rounds; ++r) {
        tly_test_run_t *run = run_begin(0, TLY_TEST_SENDERS_MAX);
        while (!tly_test_senders_done(run))
            tly_test_sleep_ms(20);
        int64_t t0 = tly_test_now_ms();
        int n = freeze_postgresql();
        tly_test_sleep_ms(PAUSE_MS);
        thaw_all();
        fprintf(stderr, "  postgresql (%d processes) stopped %" PRId64 " ms\n", n, tly_test_now_ms() - t0);
        run_end(run, "pause postgresql", 2);
    }
}

/* --- setup ---------------------------------------------------------------------------- */

static int
setup_test(void **state)
{
    (void)state;
    tly_test_adopt_stack_worker();
    if (tly_test_stack_worker.pid > 0)
        (void)tly_test_worker_stop(&tly_test_stack_worker, 15000); /* not our child: no exit code to read */
    return 0;
}

static int
teardown_test(void **state)
{
    (void)state;
    thaw_all();
    if (traced > 0)
        (void)ptrace(PTRACE_DETACH, traced, NULL, NULL);
    traced = 0;
    if (current_run != NULL) {
        atomic_store(&current_run->next_batch, 1 << 30);
        tly_test_senders_join(&current_senders);
    }
    tly_test_monitor_stop();
    tly_test_run_free(current_run);
    current_run = NULL;
    tly_test_restore_workers(ours, 2); /* and the stack's worker back */
    return 0;
}

/* Last: the read models equal a rebuild from the log, and the ledger invariants hold. */
static void
test_tallyctl_verify(void **state)
{
    (void)state;
    char cmd[1024];
    int64_t t0 = tly_test_now_ms();
    snprintf(cmd, sizeof(cmd), "'%s/tallyctl' verify --quiet >&2", tly_test_env("TALLY_BIN"));
    tly_test_sh(cmd, NULL, 0);
    fprintf(stderr, "tallyctl verify: ok in %" PRId64 " ms\n", tly_test_now_ms() - t0);
}

static int
env_int(const char *name, int dflt)
{
    const char *s = getenv(name);
    return s != NULL && atoi(s) > 0 ? atoi(s) : dflt;
}

int
main(void)
{
    var_dir = tly_test_env("TALLY_VAR");
    rounds = env_int("TALLY_PAUSE_ROUNDS", 1);
    ncmds = env_int("TALLY_PAUSE_COMMANDS", 1200);
    if (tly_test_ledger_init("pause") != 0)
        return 1;
    static const char *const all[] = {"decider", "saga", "projector", "webhooks", NULL};
    tly_test_check_consumers(all);
    /* our workers' group settings (Kafka's least session timeout), and their stall time */
    char kconf[128];
    snprintf(kconf, sizeof(kconf), "session.timeout.ms=%d;max.poll.interval.ms=%d", SESSION_MS, MAX_POLL_MS);
    setenv("TALLY_KAFKA_CONSUMER_CONFIG", kconf, 1);
    char stall[16];
    snprintf(stall, sizeof(stall), "%d", STALL_S);
    setenv("TALLY_CONSUMER_STALL_S", stall, 1);
    fprintf(stderr, "pause: %d round(s) of each, %d commands per run, pauses of %d ms\n", rounds, ncmds, PAUSE_MS);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pause_worker, setup_test, teardown_test),
        cmocka_unit_test_setup_teardown(test_pause_two_workers, setup_test, teardown_test),
        cmocka_unit_test_setup_teardown(test_pause_consumer_thread, setup_test, teardown_test),
        cmocka_unit_test_setup_teardown(test_pause_broker, setup_test, teardown_test),
        cmocka_unit_test_setup_teardown(test_pause_postgresql, setup_test, teardown_test),
        cmocka_unit_test(test_tallyctl_verify),
    };
    int ret = cmocka_run_group_tests(tests, NULL, NULL);
    tly_test_ledger_finish();
    return ret;
}
