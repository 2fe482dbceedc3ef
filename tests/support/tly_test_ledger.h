/*
 * The ledger workload of the worker's stack tests (torture, pause): the
 * worker processes (the stack's own, adopted from its pid file, and the ones
 * a test starts), a run of deposits and withdrawals over 100 accounts of a
 * tenant of the test's own sent through POST /v1/batch by sender threads,
 * and the checks after it (every job terminal, each command's ledger entry,
 * balances = sum of entries = the decider's = a replay of the log, one
 * outcome per request, positions never backwards and at the log end, no
 * dead letters, the outbox drained). Failures are cmocka failures.
 *
 * tly_test_ledger_init reads the stack (TALLY_TEST_ENV) once; the workers a
 * test starts inherit its environment (TALLY_PG_DSN, TALLY_KAFKA_*).
 */
#ifndef TLY_TEST_LEDGER_H
#define TLY_TEST_LEDGER_H

#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define TLY_TEST_ACCOUNTS 100
#define TLY_TEST_UUID_LEN 36
#define TLY_TEST_SENDERS_MAX 4
#define TLY_TEST_CONSUMERS_MAX 4

/* A worker process; zeroed plus `name` and `log` is ready. */
typedef struct {
    const char *name;
    const char *log; /* $TALLY_VAR/log/<log>.log */
    bool is_stack;   /* the stack's own worker: owns run/tally-worker.pid */
    pid_t pid;       /* 0 = not running */
    bool ours;       /* our child: reaped with waitpid */
    int kills, starts;
} tly_test_worker_t;

typedef struct {
    int account;
    bool deposit;
    int64_t amount;
    char job[TLY_TEST_UUID_LEN + 1];
    /* filled by the checks */
    int status; /* 0 unknown/non-terminal, 1 succeeded, 2 failed */
    char code[64];
    int entries;
    int64_t entry_sum;
    bool entry_account_ok;
    int outcomes; /* distinct outcome events in the log */
    bool outcome_succeeded;
    int64_t outcome_amount;
} tly_test_command_t;

typedef struct {
    char id[TLY_TEST_UUID_LEN + 1];
    char open_job[TLY_TEST_UUID_LEN + 1];
    int64_t replay_balance, replay_version;
    bool replay_opened;
} tly_test_account_t;

typedef struct {
    char tag[64]; /* idempotency key prefix */
    tly_test_account_t accounts[TLY_TEST_ACCOUNTS];
    tly_test_command_t *cmds;
    int ncmds;
    tly_test_command_t **by_job; /* sorted by job id */
    /* sending */
    atomic_int next_batch;
    atomic_int send_errors;
    atomic_int retried_items;
    atomic_int sent;
    atomic_int problems_shown;
    int pace_ms;
} tly_test_run_t;

typedef struct {
    pthread_t threads[TLY_TEST_SENDERS_MAX];
    int n;
} tly_test_senders_t;

/** The stack's own worker (run/tally-worker.pid); tly_test_adopt_stack_worker fills it in. */
extern tly_test_worker_t tly_test_stack_worker;

/**
 * Reads the stack's settings, exports them for the workers and tallyctl,
 * connects to PostgreSQL and creates a tenant `prefix`-<pid>-<time> with an
 * unthrottled key. 0, or -1 with a message on stderr.
 */
int tly_test_ledger_init(const char *prefix);
void tly_test_ledger_finish(void);
/** The test's connection to the stack's PostgreSQL. */
PGconn *tly_test_ledger_db(void);

/** xorshift: deterministic from a printed seed; the state is the caller's. */
uint64_t tly_test_rnd(uint64_t *s);
int tly_test_rnd_between(uint64_t *s, int lo, int hi);
/** The seed in env `var` when set, else one from the clock and the pid. */
uint64_t tly_test_pick_seed(const char *var);

bool tly_test_proc_alive(pid_t pid);
/** Starts the worker (the stack's with its own command line and environment), appending to $TALLY_VAR/log/<log>.log. */
void tly_test_worker_start(tly_test_worker_t *w);
/** Waits up to `timeout_ms` for the process to end; *status gets its wait status when it is ours. */
bool tly_test_worker_wait(tly_test_worker_t *w, int timeout_ms, int *status);
void tly_test_worker_kill9(tly_test_worker_t *w);
/** SIGTERM, up to timeout_ms for a clean exit; then SIGKILL. Returns the exit code, or -1 when killed/unknown. */
int tly_test_worker_stop(tly_test_worker_t *w, int timeout_ms);
/** Adopts the stack's worker (pid file) and captures its command line and environment for restarts. */
void tly_test_adopt_stack_worker(void);
/** Stops `extra[0..n)` and leaves the stack with its own worker alive and in its pid file. */
void tly_test_restore_workers(tly_test_worker_t *extra, int n);

/** The size of a file (0 when it cannot be read): where a log was before a step. */
long tly_test_file_size(const char *path);
/** Whether the worker's log, from byte `from` on, says its decider and projector consumers were assigned partitions. */
bool tly_test_log_shows_assignment(const tly_test_worker_t *w, long from);

/** The consumers whose positions the monitor and the checks look at (NULL-ended; default decider, projector). */
void tly_test_check_consumers(const char *const *names);
/** Samples consumer_positions every 100 ms on a thread of its own: a position that goes backwards fails the checks. */
void tly_test_monitor_start(void);
void tly_test_monitor_stop(void);

/** `ncmds` random deposits and withdrawals (55 % deposits), fixed by `seed`, over TLY_TEST_ACCOUNTS new accounts. */
tly_test_run_t *tly_test_run_create(int ncmds, uint64_t seed);
void tly_test_run_free(tly_test_run_t *run);
/** Opens the run's accounts and waits until every one is open. */
void tly_test_open_accounts(tly_test_run_t *run);
/** `nthreads` senders post the run's commands in batches of 100, `run->pace_ms` apart each. */
void tly_test_senders_start(tly_test_senders_t *s, tly_test_run_t *run, int nthreads);
void tly_test_senders_join(tly_test_senders_t *s);
bool tly_test_senders_done(tly_test_run_t *run);
/** Waits (bounded) until every job of the tenant is terminal; returns the number still not terminal. */
int64_t tly_test_wait_settled(tly_test_run_t *run, int timeout_s);
/** Every check of the header comment; stops the monitor. `what` names the run in its summary line on stderr. */
void tly_test_verify_run(tly_test_run_t *run, const char *what);

#endif
