/* The ledger workload of the worker's stack tests. See tly_test_ledger.h. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tly_test_ledger.h"
#include "tly_test_http.h"
#include "tly_test_sql.h"
#include "tly_test_util.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NACCOUNTS TLY_TEST_ACCOUNTS
#define UUID_LEN TLY_TEST_UUID_LEN
#define SENDERS TLY_TEST_SENDERS_MAX
#define BATCH_MAX 100
#define MAX_PARTS 256

extern char **environ;

/* --- settings ---------------------------------------------------------------- */

static const char *bin_dir, *var_dir, *pg_dsn, *brokers, *topic;
static char prefix[32]; /* names the tenant, its key and the runs' idempotency keys */
static char tenant_id[320], api_key[320];
static PGconn *db;
static char db_start[64]; /* now() at the start, for dead letters */
static unsigned run_counter;
/* the consumers whose positions are watched and checked (tly_test_check_consumers) */
static const char *checked[TLY_TEST_CONSUMERS_MAX] = {"decider", "projector"};
static int nchecked = 2;

/* xorshift: deterministic from the printed seed, thread-local state passed in. */
uint64_t
tly_test_rnd(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

int
tly_test_rnd_between(uint64_t *s, int lo, int hi)
{
    return lo + (int)(tly_test_rnd(s) % (uint64_t)(hi - lo + 1));
}

uint64_t
tly_test_pick_seed(const char *var)
{
    const char *s = getenv(var);
    if (s != NULL && *s != '\0')
        return strtoull(s, NULL, 10);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000003u ^ (uint64_t)ts.tv_nsec ^ (uint64_t)getpid();
}

/* --- SQL helpers ----------------------------------------------------------------- */

#define sql(conn, q, n, vals) tly_test_sql((conn), (q), (n), (vals))
#define sql_i64(q, n, vals) tly_test_sql_i64(db, (q), (n), (vals))

/* --- worker processes ----------------------------------------------------------- */

static char **stack_argv, **stack_envp; /* captured from /proc before the first kill */

bool
tly_test_proc_alive(pid_t pid)
{
    char path[64], stat[512];
    if (pid <= 0 || kill(pid, 0) != 0)
        return false;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false;
    size_t n = fread(stat, 1, sizeof(stat) - 1, f);
    fclose(f);
    stat[n] = '\0';
    const char *p = strrchr(stat, ')');
    return p != NULL && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

/*
 * Starts the worker: setsid, log appended, every other descriptor closed (so
 * that it never holds ctest's pipes). Only the main thread calls this: the
 * instances we own die with it (PR_SET_PDEATHSIG), the stack's own must
 * outlive us.
 */
void
tly_test_worker_start(tly_test_worker_t *w)
{
    char path[1024], log[1024];
    snprintf(path, sizeof(path), "%s/tally-worker", bin_dir);
    snprintf(log, sizeof(log), "%s/log/%s.log", var_dir, w->log);
    char *default_argv[] = {path, NULL};
    char *const *argv = w->is_stack && stack_argv != NULL ? stack_argv : default_argv;
    char *const *envp = w->is_stack && stack_envp != NULL ? stack_envp : environ;
    pid_t pid = tly_test_spawn(argv, envp, log, !w->is_stack);
    w->pid = pid;
    w->ours = true;
    w->starts++;
    if (w->is_stack)
        tly_test_write_pid("tally-worker", pid);
}

/* Waits up to `timeout_ms` for the process to end; *status gets its wait status when it is ours. */
bool
tly_test_worker_wait(tly_test_worker_t *w, int timeout_ms, int *status)
{
    int64_t deadline = tly_test_now_ms() + timeout_ms;
    for (;;) {
        if (w->ours) {
            pid_t r = waitpid(w->pid, status, WNOHANG);
            if (r == w->pid || (r < 0 && errno == ECHILD))
                return true;
        } else if (!tly_test_proc_alive(w->pid)) {
            return true;
        }
        if (tly_test_now_ms() >= deadline)
            return false;
        tly_test_sleep_ms(20);
    }
}

void
tly_test_worker_kill9(tly_test_worker_t *w)
{
    int status = 0;
    if (w->pid <= 0)
        return;
    kill(w->pid, SIGKILL);
    if (!tly_test_worker_wait(w, 10000, &status))
        fail_msg("worker %s (pid %d) did not die of SIGKILL", w->name, (int)w->pid);
    w->kills++;
    w->pid = 0;
}

/* SIGTERM, up to timeout_ms for a clean exit; then SIGKILL. Returns the exit code, or -1 when killed/unknown. */
int
tly_test_worker_stop(tly_test_worker_t *w, int timeout_ms)
{
    int status = 0, code = -1;
    if (w->pid <= 0)
        return -1;
    kill(w->pid, SIGTERM);
    if (tly_test_worker_wait(w, timeout_ms, &status)) {
        if (w->ours && WIFEXITED(status))
            code = WEXITSTATUS(status);
    } else {
        fprintf(stderr, "worker %s (pid %d) did not stop within %d ms, killing it\n", w->name, (int)w->pid, timeout_ms);
        kill(w->pid, SIGKILL);
        (void)tly_test_worker_wait(w, 5000, &status);
    }
    w->pid = 0;
    return code;
}

tly_test_worker_t tly_test_stack_worker = {.name = "stack", .log = "tally-worker", .is_stack = true};

/* Adopts the stack's worker (pid file) and captures its command line and environment for restarts. */
void
tly_test_adopt_stack_worker(void)
{
    char path[128];
    pid_t pid = tly_test_read_pid("tally-worker");
    if (pid > 0 && tly_test_proc_alive(pid)) {
        if (tly_test_stack_worker.pid != pid) {
            tly_test_stack_worker.pid = pid;
            tly_test_stack_worker.ours = false;
        }
        snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
        char **argv = tly_test_read_nul_vector(path);
        if (argv != NULL && strstr(argv[0], "tally-worker") != NULL) {
            tly_test_free_nul_vector(stack_argv);
            stack_argv = argv;
            snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
            char **envp = tly_test_read_nul_vector(path);
            if (envp != NULL) {
                tly_test_free_nul_vector(stack_envp);
                stack_envp = envp;
            }
        } else {
            tly_test_free_nul_vector(argv);
        }
    } else {
        tly_test_stack_worker.pid = 0;
    }
}

/* Teardown: stop what we started, and leave the stack with its own worker alive and in its pid file. */
void
tly_test_restore_workers(tly_test_worker_t *extra, int n)
{
    for (int i = 0; i < n; ++i)
        if (extra[i].pid > 0)
            (void)tly_test_worker_stop(&extra[i], 10000);
    if (tly_test_stack_worker.pid <= 0 || !tly_test_proc_alive(tly_test_stack_worker.pid)) {
        fprintf(stderr, "restarting the stack's worker\n");
        tly_test_worker_start(&tly_test_stack_worker);
    }
    if (tly_test_read_pid("tally-worker") != tly_test_stack_worker.pid)
        tly_test_write_pid("tally-worker", tly_test_stack_worker.pid);
}

long
tly_test_file_size(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fclose(f);
    return n;
}

/* Whether the worker's log, from byte `from` on, says both consumers were assigned partitions (a nonzero count). */
bool
tly_test_log_shows_assignment(const tly_test_worker_t *w, long from)
{
    char path[1024], line[2048];
    bool decider = false, projector = false;
    snprintf(path, sizeof(path), "%s/log/%s.log", var_dir, w->log);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false;
    fseek(f, from, SEEK_SET);
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strstr(line, "\"partitions assigned\"") == NULL || strstr(line, "\"count\":\"0\"") != NULL)
            continue;
        decider |= strstr(line, "\"consumer\":\"decider\"") != NULL;
        projector |= strstr(line, "\"consumer\":\"projector\"") != NULL;
    }
    fclose(f);
    return decider && projector;
}
/* --- consumer positions monitor ----------------------------------------------- */

typedef struct {
    atomic_bool stop;
    bool running;
    pthread_t thread;
    int64_t last[TLY_TEST_CONSUMERS_MAX][MAX_PARTS];
    atomic_int backwards, samples;
    char first_backwards[256];
} monitor_t;

static monitor_t monitor;

static void *
monitor_main(void *arg)
{
    monitor_t *m = arg;
    PGconn *conn = PQconnectdb(pg_dsn);
    for (int c = 0; c < TLY_TEST_CONSUMERS_MAX; ++c)
        for (int p = 0; p < MAX_PARTS; ++p)
            m->last[c][p] = -1;
    while (!atomic_load(&m->stop)) {
        if (PQstatus(conn) != CONNECTION_OK)
            PQreset(conn);
        const char *vals[] = {topic};
        PGresult *res = PQexecParams(conn, "SELECT consumer, partition, next_offset FROM consumer_positions WHERE topic = $1", 1,
                                     NULL, vals, NULL, NULL, 0);
        if (PQresultStatus(res) == PGRES_TUPLES_OK) {
            for (int i = 0; i < PQntuples(res); ++i) {
                const char *consumer = PQgetvalue(res, i, 0);
                int c = nchecked - 1;
                while (c >= 0 && strcmp(consumer, checked[c]) != 0)
                    --c;
                int p = atoi(PQgetvalue(res, i, 1));
                int64_t off = strtoll(PQgetvalue(res, i, 2), NULL, 10);
                if (c < 0 || p < 0 || p >= MAX_PARTS)
                    continue;
                if (off < m->last[c][p] && atomic_fetch_add(&m->backwards, 1) == 0)
                    snprintf(m->first_backwards, sizeof(m->first_backwards), "%s partition %d: %" PRId64 " -> %" PRId64, consumer,
                             p, m->last[c][p], off);
                if (off > m->last[c][p])
                    m->last[c][p] = off;
            }
            atomic_fetch_add(&m->samples, 1);
        }
        PQclear(res);
        tly_test_sleep_ms(100);
    }
    PQfinish(conn);
    return NULL;
}

void
tly_test_monitor_start(void)
{
    memset(&monitor, 0, sizeof(monitor));
    assert_int_equal(pthread_create(&monitor.thread, NULL, monitor_main, &monitor), 0);
    monitor.running = true;
}

void
tly_test_monitor_stop(void)
{
    if (monitor.running) {
        atomic_store(&monitor.stop, true);
        pthread_join(monitor.thread, NULL);
        monitor.running = false;
    }
}

/* --- a run: accounts and commands ------------------------------------------------ */

static json_t *
item_json(tly_test_run_t *run, int i)
{
    char path[160], idem[128];
    tly_test_command_t *c = &run->cmds[i];
    snprintf(path, sizeof(path), "/v1/accounts/%s/%s", run->accounts[c->account].id, c->deposit ? "deposits" : "withdrawals");
    snprintf(idem, sizeof(idem), "%s-%d", run->tag, i);
    return json_pack("{s:s, s:{s:I, s:s}, s:s}", "path", path, "body", "amount", (json_int_t)c->amount, "currency", "EUR",
                     "idempotency_key", idem);
}

/*
 * POSTs items idx[0..n) of the run in one /v1/batch call, retrying the items
 * that were not accepted (429, 503: same idempotency key, so never twice).
 * `open` items open account idx[k] instead. Returns false after too many tries.
 */
static bool
post_batch(tly_test_run_t *run, int *idx, int n, bool open)
{
    for (int attempt = 0; n > 0 && attempt < 20; ++attempt) {
        if (attempt > 0) {
            atomic_fetch_add(&run->retried_items, n);
            tly_test_sleep_ms(100 + 50 * attempt); /* about 12 s in all: the services restart in less */
        }
        json_t *reqs = json_array();
        for (int k = 0; k < n; ++k) {
            if (open) {
                char idem[128], label[64];
                snprintf(idem, sizeof(idem), "%s-open-%d", run->tag, idx[k]);
                snprintf(label, sizeof(label), "%s %d", prefix, idx[k]);
                json_array_append_new(reqs, json_pack("{s:s, s:{s:s, s:s}, s:s}", "path", "/v1/accounts", "body", "currency", "EUR",
                                                      "label", label, "idempotency_key", idem));
            } else {
                json_array_append_new(reqs, item_json(run, idx[k]));
            }
        }
        json_t *body = json_pack("{s:o}", "requests", reqs);
        char *s = json_dumps(body, JSON_COMPACT);
        json_decref(body);
        tly_test_response_t r = tly_test_request("POST", "/v1/batch", api_key, s, NULL);
        free(s);
        json_t *results = json_object_get(r.json, "results");
        if (r.status != 200 || !json_is_array(results) || json_array_size(results) != (size_t)n) {
            if (atomic_fetch_add(&run->problems_shown, 1) < 3 || attempt == 19)
                fprintf(stderr, "POST /v1/batch (attempt %d, retried): %ld %.200s\n", attempt + 1, r.status, r.body);
            tly_test_response_free(&r);
            continue;
        }
        int left = 0;
        for (int k = 0; k < n; ++k) {
            json_t *res = json_array_get(results, (size_t)k);
            json_t *job = json_object_get(res, "job");
            const char *job_id = json_string_value(json_object_get(job, "id"));
            if (json_integer_value(json_object_get(res, "status")) == 202 && job_id != NULL && strlen(job_id) == UUID_LEN) {
                if (open) {
                    tly_test_account_t *a = &run->accounts[idx[k]];
                    snprintf(a->open_job, sizeof(a->open_job), "%s", job_id);
                    snprintf(a->id, sizeof(a->id), "%s",
                             json_string_value(json_object_get(json_object_get(job, "resource"), "id")));
                } else {
                    snprintf(run->cmds[idx[k]].job, sizeof(run->cmds[idx[k]].job), "%s", job_id);
                }
            } else {
                if (atomic_fetch_add(&run->problems_shown, 1) < 3 || (attempt == 19 && left == 0)) {
                    char *dump = json_dumps(res, JSON_COMPACT);
                    fprintf(stderr, "batch item not accepted (attempt %d, retried): %.300s\n", attempt + 1,
                            dump != NULL ? dump : "?");
                    free(dump);
                }
                idx[left++] = idx[k];
            }
        }
        tly_test_response_free(&r);
        n = left;
    }
    return n == 0;
}

static void *
sender_main(void *arg)
{
    tly_test_run_t *run = arg;
    int nbatches = (run->ncmds + BATCH_MAX - 1) / BATCH_MAX;
    int idx[BATCH_MAX];
    for (;;) {
        int b = atomic_fetch_add(&run->next_batch, 1);
        if (b >= nbatches)
            break;
        int n = 0;
        for (int i = b * BATCH_MAX; i < run->ncmds && n < BATCH_MAX; ++i)
            idx[n++] = i;
        if (!post_batch(run, idx, n, false)) {
            atomic_fetch_add(&run->send_errors, 1);
            atomic_store(&run->next_batch, 1 << 30); /* the API is gone: stop everyone, the test fails */
            atomic_store(&run->sent, run->ncmds);
            break;
        }
        atomic_fetch_add(&run->sent, n);
        if (run->pace_ms > 0)
            tly_test_sleep_ms(run->pace_ms);
    }
    return NULL;
}

void
tly_test_senders_start(tly_test_senders_t *s, tly_test_run_t *run, int nthreads)
{
    s->n = nthreads;
    for (int i = 0; i < nthreads; ++i)
        assert_int_equal(pthread_create(&s->threads[i], NULL, sender_main, run), 0);
}

void
tly_test_senders_join(tly_test_senders_t *s)
{
    for (int i = 0; i < s->n; ++i)
        pthread_join(s->threads[i], NULL);
    s->n = 0;
}

bool
tly_test_senders_done(tly_test_run_t *run)
{
    return atomic_load(&run->sent) >= run->ncmds;
}

/* Builds "{a,b,...}" for a uuid[] parameter. */
static char *
uuid_array(tly_test_run_t *run, bool accounts)
{
    int n = accounts ? NACCOUNTS : run->ncmds;
    char *s = malloc((size_t)n * (UUID_LEN + 1) + 3);
    size_t len = 0;
    s[len++] = '{';
    for (int i = 0; i < n; ++i) {
        const char *id = accounts ? run->accounts[i].id : run->cmds[i].job;
        if (i > 0)
            s[len++] = ',';
        memcpy(s + len, id, UUID_LEN);
        len += UUID_LEN;
    }
    s[len++] = '}';
    s[len] = '\0';
    return s;
}

tly_test_run_t *
tly_test_run_create(int ncmds, uint64_t seed)
{
    tly_test_run_t *run = calloc(1, sizeof(*run));
    snprintf(run->tag, sizeof(run->tag), "%s-%d-%u-%" PRIu64, prefix, (int)getpid(), ++run_counter, seed);
    run->ncmds = ncmds;
    run->cmds = calloc((size_t)ncmds, sizeof(*run->cmds));
    uint64_t s = seed | 1;
    for (int i = 0; i < ncmds; ++i) {
        tly_test_command_t *c = &run->cmds[i];
        c->account = (int)(tly_test_rnd(&s) % NACCOUNTS);
        c->deposit = tly_test_rnd(&s) % 100 < 55;
        c->amount = c->deposit ? tly_test_rnd_between(&s, 1, 10000) : tly_test_rnd_between(&s, 1, 12000);
    }
    return run;
}

void
tly_test_run_free(tly_test_run_t *run)
{
    if (run == NULL)
        return;
    free(run->cmds);
    free(run->by_job);
    free(run);
}

/* Opens the run's 100 accounts and waits until every open job succeeded. */
void
tly_test_open_accounts(tly_test_run_t *run)
{
    int idx[NACCOUNTS];
    for (int i = 0; i < NACCOUNTS; ++i)
        idx[i] = i;
    assert_true(post_batch(run, idx, NACCOUNTS, true));
    char *ids = uuid_array(run, true);
    const char *vals[] = {ids};
    int64_t deadline = tly_test_now_ms() + 60000, opened = 0;
    while ((opened = sql_i64("SELECT count(*) FROM accounts WHERE id = ANY($1::uuid[]) AND status = 'open'", 1, vals)) <
               NACCOUNTS &&
           tly_test_now_ms() < deadline)
        tly_test_sleep_ms(100);
    free(ids);
    assert_int_equal(opened, NACCOUNTS);
}

/* Waits (bounded) until every job of the tenant is terminal; returns the number still not terminal. */
int64_t
tly_test_wait_settled(tly_test_run_t *run, int timeout_s)
{
    const char *vals[] = {tenant_id};
    int64_t deadline = tly_test_now_ms() + (int64_t)timeout_s * 1000, left = 0, last_report = tly_test_now_ms();
    for (;;) {
        left = sql_i64("SELECT count(*) FROM command_requests cr LEFT JOIN jobs j ON j.id = cr.job_id "
                       "WHERE cr.tenant_id = $1 AND (j.id IS NULL OR j.status NOT IN ('succeeded', 'failed'))",
                       1, vals);
        if (left == 0 || tly_test_now_ms() >= deadline)
            return left;
        if (tly_test_now_ms() - last_report >= 5000) {
            fprintf(stderr, "  ... %" PRId64 " jobs not terminal yet\n", left);
            last_report = tly_test_now_ms();
        }
        tly_test_sleep_ms(200);
    }
}

/* --- checks --------------------------------------------------------------------- */

static int
cmp_cmd_job(const void *a, const void *b)
{
    return strcmp((*(tly_test_command_t *const *)a)->job, (*(tly_test_command_t *const *)b)->job);
}

static tly_test_command_t *
cmd_by_job(tly_test_run_t *run, const char *job)
{
    tly_test_command_t key, *kp = &key;
    snprintf(key.job, sizeof(key.job), "%s", job);
    tly_test_command_t **hit = bsearch(&kp, run->by_job, (size_t)run->ncmds, sizeof(*run->by_job), cmp_cmd_job);
    return hit != NULL ? *hit : NULL;
}

static int
account_index(tly_test_run_t *run, const char *id)
{
    for (int i = 0; i < NACCOUNTS; ++i)
        if (strcmp(run->accounts[i].id, id) == 0)
            return i;
    return -1;
}

/* An open-addressing set of event ids (the log's duplicates are expected: the relay republishes after a crash). */
typedef struct {
    char (*slots)[UUID_LEN + 1];
    size_t cap;
} idset_t;

static bool
idset_add(idset_t *s, const char *id)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = id; *p != '\0'; ++p)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    for (size_t i = h & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (s->slots[i][0] == '\0') {
            snprintf(s->slots[i], sizeof(s->slots[i]), "%s", id);
            return true;
        }
        if (strcmp(s->slots[i], id) == 0)
            return false;
    }
}

typedef struct {
    int64_t messages, tenant_events, duplicates, requests, chain_errors, negative, unknown_job, amount_mismatch;
} replay_stats_t;

static bool
is_type(const char *t, const char *a, const char *b)
{
    return t != NULL && (strcmp(t, a) == 0 || strcmp(t, b) == 0);
}

/* Reads the whole topic (every partition up to its high watermark) and replays the run's accounts. */
static void
replay_log(tly_test_run_t *run, replay_stats_t *st, int64_t high_out[MAX_PARTS], int *nparts_out)
{
    char errstr[512], group[128];
    memset(st, 0, sizeof(*st));
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    snprintf(group, sizeof(group), "tally-test-replay-%d", (int)getpid());
    assert_int_equal(rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr, sizeof(errstr)), RD_KAFKA_CONF_OK);
    assert_int_equal(rd_kafka_conf_set(conf, "group.id", group, errstr, sizeof(errstr)), RD_KAFKA_CONF_OK);
    assert_int_equal(rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, sizeof(errstr)), RD_KAFKA_CONF_OK);
    assert_int_equal(rd_kafka_conf_set(conf, "enable.partition.eof", "true", errstr, sizeof(errstr)), RD_KAFKA_CONF_OK);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    assert_non_null(rk);
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    assert_int_equal(rd_kafka_metadata(rk, 0, rkt, &md, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
    assert_int_equal(md->topic_cnt, 1);
    int nparts = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    assert_true(nparts > 0 && nparts <= MAX_PARTS);
    int64_t total = 0, pos[MAX_PARTS];
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(nparts);
    int pending = 0;
    for (int p = 0; p < nparts; ++p) {
        int64_t lo = 0, hi = 0;
        assert_int_equal(rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
        high_out[p] = hi;
        pos[p] = lo;
        total += hi - lo;
        if (hi > lo) {
            rd_kafka_topic_partition_list_add(list, topic, p)->offset = lo;
            pending++;
        }
    }
    *nparts_out = nparts;
    assert_int_equal(rd_kafka_assign(rk, list), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_topic_partition_list_destroy(list);

    idset_t seen = {.cap = 1024};
    while (seen.cap < (size_t)total * 2 + 16)
        seen.cap *= 2;
    seen.slots = calloc(seen.cap, sizeof(*seen.slots));
    int64_t deadline = tly_test_now_ms() + 120000;
    while (pending > 0 && tly_test_now_ms() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 500);
        if (m == NULL)
            continue;
        if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR || m->partition < 0 || m->partition >= nparts ||
            pos[m->partition] >= high_out[m->partition]) {
            rd_kafka_message_destroy(m);
            continue;
        }
        int32_t p = m->partition;
        pos[p] = m->offset + 1;
        if (pos[p] >= high_out[p])
            pending--;
        st->messages++;
        json_error_t jerr;
        json_t *ev = json_loadb(m->payload, m->len, 0, &jerr);
        rd_kafka_message_destroy(m);
        const char *tenant = json_string_value(json_object_get(ev, "tenant_id"));
        if (ev == NULL || tenant == NULL || strcmp(tenant, tenant_id) != 0) {
            json_decref(ev);
            continue;
        }
        const char *id = json_string_value(json_object_get(ev, "id"));
        const char *type = json_string_value(json_object_get(ev, "type"));
        const char *agg = json_string_value(json_object_get(ev, "aggregate_id"));
        const char *job = json_string_value(json_object_get(ev, "job_id"));
        json_t *data = json_object_get(ev, "data");
        int a = agg != NULL ? account_index(run, agg) : -1;
        if (a < 0 || id == NULL || type == NULL) {
            json_decref(ev);
            continue; /* another run's account */
        }
        st->tenant_events++;
        if (!idset_add(&seen, id)) {
            st->duplicates++;
            json_decref(ev);
            continue;
        }
        tly_test_account_t *acc = &run->accounts[a];
        tly_test_command_t *c = job != NULL ? cmd_by_job(run, job) : NULL;
        if (strstr(type, "Requested") != NULL) {
            st->requests++;
        } else if (strcmp(type, "AccountOpened") == 0) {
            acc->replay_opened = true;
            acc->replay_version = 1;
        } else if (is_type(type, "FundsDeposited", "FundsWithdrawn")) {
            bool dep = strcmp(type, "FundsDeposited") == 0;
            int64_t amount = (int64_t)json_integer_value(json_object_get(data, "amount"));
            int64_t after = (int64_t)json_integer_value(json_object_get(data, "balance_after"));
            acc->replay_balance += dep ? amount : -amount;
            acc->replay_version++;
            if (after != acc->replay_balance)
                st->chain_errors++;
            if (acc->replay_balance < 0)
                st->negative++;
            if (c == NULL) {
                st->unknown_job++;
            } else {
                c->outcomes++;
                c->outcome_succeeded = true;
                c->outcome_amount = dep ? amount : -amount;
                if (c->deposit != dep || c->amount != amount || c->account != a)
                    st->amount_mismatch++;
            }
        } else if (is_type(type, "DepositRejected", "WithdrawalRejected")) {
            if (c == NULL) {
                st->unknown_job++;
            } else {
                c->outcomes++;
                c->outcome_succeeded = false;
            }
        }
        json_decref(ev);
    }
    free(seen.slots);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    assert_int_equal(pending, 0);
}

/* Waits (bounded) until the checked consumers' positions reach the high watermarks read by the replay. */
static void
check_positions(const int64_t *high, int nparts)
{
    char part_s[16];
    int64_t deadline = tly_test_now_ms() + 30000;
    for (int c = 0; c < nchecked; ++c)
        for (int p = 0; p < nparts; ++p) {
            snprintf(part_s, sizeof(part_s), "%d", p);
            const char *vals[] = {checked[c], topic, part_s};
            int64_t next = -1;
            while ((next = sql_i64("SELECT COALESCE(max(next_offset), -1) FROM consumer_positions "
                                   "WHERE consumer = $1 AND topic = $2 AND partition = $3",
                                   3, vals)) < high[p] &&
                   tly_test_now_ms() < deadline)
                tly_test_sleep_ms(100);
            if (next < high[p])
                fail_msg("%s partition %d: position %" PRId64 " is behind the log end %" PRId64, checked[c], p, next, high[p]);
        }
}

void
tly_test_check_consumers(const char *const *names)
{
    for (nchecked = 0; names[nchecked] != NULL && nchecked < TLY_TEST_CONSUMERS_MAX; ++nchecked)
        checked[nchecked] = names[nchecked];
}

void
tly_test_verify_run(tly_test_run_t *run, const char *what)
{
    int64_t t0 = tly_test_now_ms();
    const char *tenant_vals[] = {tenant_id};

    /* every command request accepted, every job terminal (the caller waited) */
    assert_int_equal(sql_i64("SELECT count(*) FROM command_requests WHERE tenant_id = $1 AND state <> 'accepted'", 1, tenant_vals),
                     0);
    assert_int_equal(sql_i64("SELECT count(*) FROM command_requests cr LEFT JOIN jobs j ON j.id = cr.job_id "
                             "WHERE cr.tenant_id = $1 AND (j.id IS NULL OR j.status NOT IN ('succeeded', 'failed'))",
                             1, tenant_vals),
                     0);

    run->by_job = malloc((size_t)run->ncmds * sizeof(*run->by_job));
    for (int i = 0; i < run->ncmds; ++i) {
        assert_int_equal(strlen(run->cmds[i].job), UUID_LEN);
        run->by_job[i] = &run->cmds[i];
    }
    qsort(run->by_job, (size_t)run->ncmds, sizeof(*run->by_job), cmp_cmd_job);
    for (int i = 1; i < run->ncmds; ++i)
        assert_string_not_equal(run->by_job[i - 1]->job, run->by_job[i]->job); /* one job per idempotency key */

    char *jobs = uuid_array(run, false), *accts = uuid_array(run, true);
    const char *job_vals[] = {jobs}, *acct_vals[] = {accts};

    /* jobs */
    PGresult *res = sql(db, "SELECT id, status, COALESCE(error_code, '') FROM jobs WHERE id = ANY($1::uuid[])", 1, job_vals);
    assert_int_equal(PQntuples(res), run->ncmds);
    for (int i = 0; i < PQntuples(res); ++i) {
        tly_test_command_t *c = cmd_by_job(run, PQgetvalue(res, i, 0));
        assert_non_null(c);
        const char *status = PQgetvalue(res, i, 1);
        c->status = strcmp(status, "succeeded") == 0 ? 1 : strcmp(status, "failed") == 0 ? 2 : 0;
        snprintf(c->code, sizeof(c->code), "%s", PQgetvalue(res, i, 2));
    }
    PQclear(res);

    /* ledger entries of the run's accounts */
    int64_t entry_count[NACCOUNTS] = {0}, entry_sum[NACCOUNTS] = {0}, stray = 0, negative_after = 0;
    res = sql(db, "SELECT account_id, job_id, amount, balance_after FROM ledger_entries WHERE account_id = ANY($1::uuid[])", 1,
              acct_vals);
    int64_t nentries = PQntuples(res);
    for (int i = 0; i < PQntuples(res); ++i) {
        int a = account_index(run, PQgetvalue(res, i, 0));
        assert_true(a >= 0);
        int64_t amount = strtoll(PQgetvalue(res, i, 2), NULL, 10);
        entry_count[a]++;
        entry_sum[a] += amount;
        if (strtoll(PQgetvalue(res, i, 3), NULL, 10) < 0)
            negative_after++;
        tly_test_command_t *c = PQgetisnull(res, i, 1) ? NULL : cmd_by_job(run, PQgetvalue(res, i, 1));
        if (c == NULL) {
            stray++;
            continue;
        }
        c->entries++;
        c->entry_sum += amount;
        c->entry_account_ok = c->account == a;
    }
    PQclear(res);

    /* the log */
    replay_stats_t rs;
    int64_t high[MAX_PARTS];
    int nparts = 0;
    replay_log(run, &rs, high, &nparts);

    /* per command */
    int64_t succeeded = 0, failed_insufficient = 0, deposits_ok = 0, withdrawals_ok = 0, sum_dep = 0, sum_wd = 0;
    int64_t bad_status = 0, bad_entries = 0, bad_failures = 0, bad_outcomes = 0;
    int reported = 0;
    for (int i = 0; i < run->ncmds; ++i) {
        tly_test_command_t *c = &run->cmds[i];
        int64_t signed_amount = c->deposit ? c->amount : -c->amount;
        if (c->status == 1) {
            succeeded++;
            if (c->deposit) {
                deposits_ok++;
                sum_dep += c->amount;
            } else {
                withdrawals_ok++;
                sum_wd += c->amount;
            }
            if (c->entries != 1 || c->entry_sum != signed_amount || !c->entry_account_ok)
                bad_entries++;
            if (c->outcomes != 1 || !c->outcome_succeeded || c->outcome_amount != signed_amount)
                bad_outcomes++;
        } else if (c->status == 2) {
            if (c->entries != 0)
                bad_entries++;
            if (c->deposit || strcmp(c->code, "insufficient_funds") != 0)
                bad_failures++;
            else
                failed_insufficient++;
            if (c->outcomes != 1 || c->outcome_succeeded)
                bad_outcomes++;
        } else {
            bad_status++;
        }
        if (bad_status + bad_entries + bad_outcomes + bad_failures > 0 && !reported++)
            fprintf(stderr,
                    "first bad command: #%d %s %s %" PRId64 " job %s status %d code '%s' entries %d (sum %" PRId64
                    ") outcomes %d\n",
                    i, c->deposit ? "deposit" : "withdrawal", run->accounts[c->account].id, c->amount, c->job, c->status, c->code,
                    c->entries, c->entry_sum, c->outcomes);
    }

    /* per account: read model, decider state, ledger and replay agree */
    int64_t total_balance = 0, bad_accounts = 0;
    res = sql(db,
              "SELECT a.id, a.balance, a.version, a.status, d.balance, d.version FROM accounts a "
              "LEFT JOIN decider_accounts d ON d.id = a.id WHERE a.id = ANY($1::uuid[])",
              1, acct_vals);
    assert_int_equal(PQntuples(res), NACCOUNTS);
    for (int i = 0; i < PQntuples(res); ++i) {
        int a = account_index(run, PQgetvalue(res, i, 0));
        assert_true(a >= 0);
        tly_test_account_t *acc = &run->accounts[a];
        int64_t bal = strtoll(PQgetvalue(res, i, 1), NULL, 10), ver = strtoll(PQgetvalue(res, i, 2), NULL, 10);
        bool has_decider = !PQgetisnull(res, i, 4);
        int64_t dbal = has_decider ? strtoll(PQgetvalue(res, i, 4), NULL, 10) : -1;
        int64_t dver = has_decider ? strtoll(PQgetvalue(res, i, 5), NULL, 10) : -1;
        total_balance += bal;
        if (!has_decider || bal != entry_sum[a] || bal != dbal || bal != acc->replay_balance || bal < 0 ||
            ver != 1 + entry_count[a] || dver != ver || acc->replay_version != ver || !acc->replay_opened ||
            strcmp(PQgetvalue(res, i, 3), "open") != 0) {
            if (bad_accounts++ == 0)
                fprintf(stderr,
                        "first bad account %s: balance %" PRId64 " entries %" PRId64 " (%" PRId64 " of them) decider %" PRId64
                        " replay %" PRId64 "; version %" PRId64 " decider %" PRId64 " replay %" PRId64 "\n",
                        acc->id, bal, entry_sum[a], entry_count[a], dbal, acc->replay_balance, ver, dver, acc->replay_version);
        }
    }
    PQclear(res);
    int64_t decider_total =
        sql_i64("SELECT COALESCE(sum(balance), 0) FROM decider_accounts WHERE id = ANY($1::uuid[])", 1, acct_vals);

    /* dead letters since the start of this binary; the outbox drains */
    const char *since_vals[] = {db_start};
    int64_t dead = sql_i64("SELECT count(*) FROM dead_letters WHERE created_at >= $1::timestamptz", 1, since_vals);
    int64_t outbox = 0, deadline = tly_test_now_ms() + 30000;
    while ((outbox = sql_i64("SELECT count(*) FROM outbox", 0, NULL)) > 0 && tly_test_now_ms() < deadline)
        tly_test_sleep_ms(100);

    /* positions: never backwards while we watched, and at the log end now */
    tly_test_monitor_stop();
    check_positions(high, nparts);
    char names[TLY_TEST_CONSUMERS_MAX * 32 + 2] = "{";
    for (int c = 0; c < nchecked; ++c)
        snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s", c > 0 ? "," : "", checked[c]);
    strcat(names, "}");
    const char *pos_vals[] = {topic, names};
    assert_int_equal(
        sql_i64("SELECT count(*) FROM consumer_positions WHERE topic = $1 AND consumer = ANY($2::text[])", 2, pos_vals),
        nchecked * nparts);

    fprintf(stderr,
            "%s: %d commands: %" PRId64 " succeeded (%" PRId64 " deposits = %" PRId64 ", %" PRId64 " withdrawals = %" PRId64
            "), %" PRId64 " failed insufficient_funds; %" PRId64 " ledger entries; total balance %" PRId64 " (decider %" PRId64
            ")\n"
            "  log: %" PRId64 " messages read, %" PRId64 " of the run, %" PRId64 " duplicate deliveries (same id), %" PRId64
            " requests; positions sampled %d times, %d went backwards; dead letters %" PRId64 ", outbox %" PRId64
            "; sends retried %d items; checks took %" PRId64 " ms\n",
            what, run->ncmds, succeeded, deposits_ok, sum_dep, withdrawals_ok, sum_wd, failed_insufficient, nentries, total_balance,
            decider_total, rs.messages, rs.tenant_events, rs.duplicates, rs.requests, atomic_load(&monitor.samples),
            atomic_load(&monitor.backwards), dead, outbox, atomic_load(&run->retried_items), tly_test_now_ms() - t0);
    if (atomic_load(&monitor.backwards) > 0)
        fprintf(stderr, "  first position that went backwards: %s\n", monitor.first_backwards);

    assert_int_equal(bad_status, 0);
    assert_int_equal(bad_entries, 0);
    assert_int_equal(bad_failures, 0);
    assert_int_equal(bad_outcomes, 0);
    assert_int_equal(stray, 0);
    assert_int_equal(negative_after, 0);
    assert_int_equal(nentries, succeeded);
    assert_int_equal(bad_accounts, 0);
    assert_int_equal(sum_dep - sum_wd, total_balance);
    assert_int_equal(decider_total, total_balance);
    assert_int_equal(rs.chain_errors, 0);
    assert_int_equal(rs.negative, 0);
    assert_int_equal(rs.unknown_job, 0);
    assert_int_equal(rs.amount_mismatch, 0);
    assert_int_equal(rs.requests, run->ncmds + NACCOUNTS);
    assert_int_equal(atomic_load(&monitor.backwards), 0);
    assert_int_equal(dead, 0);
    assert_int_equal(outbox, 0);
    free(jobs);
    free(accts);
}

/* --- setup ---------------------------------------------------------------------- */

int
tly_test_ledger_init(const char *name)
{
    snprintf(prefix, sizeof(prefix), "%s", name);
    bin_dir = tly_test_env("TALLY_BIN");
    var_dir = tly_test_env("TALLY_VAR");
    pg_dsn = tly_test_env("TALLY_PG_DSN");
    brokers = tly_test_env("TALLY_KAFKA_BROKERS");
    topic = tly_test_env("TALLY_KAFKA_TOPIC");
    if (bin_dir == NULL || var_dir == NULL || pg_dsn == NULL || brokers == NULL || topic == NULL ||
        tly_test_env("TALLY_URL") == NULL) {
        fprintf(stderr, "TALLY_BIN, TALLY_VAR, TALLY_PG_DSN, TALLY_KAFKA_BROKERS, TALLY_KAFKA_TOPIC, TALLY_URL are needed "
                        "(TALLY_TEST_ENV=<stack dir>/env)\n");
        return -1;
    }
    /* the environment of the workers we start, and of tallyctl */
    setenv("TALLY_PG_DSN", pg_dsn, 1);
    setenv("TALLY_KAFKA_BROKERS", brokers, 1);
    setenv("TALLY_KAFKA_TOPIC", topic, 1);
    unsetenv("TALLY_HTTP_PORT");
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_ALL); /* before the sender threads */

    db = PQconnectdb(pg_dsn);
    if (PQstatus(db) != CONNECTION_OK) {
        fprintf(stderr, "could not connect to PostgreSQL: %s", PQerrorMessage(db));
        return -1;
    }
    PGresult *res = PQexec(db, "SELECT now()::text");
    snprintf(db_start, sizeof(db_start), "%s", PQresultStatus(res) == PGRES_TUPLES_OK ? PQgetvalue(res, 0, 0) : "-infinity");
    PQclear(res);
    /* a tenant of our own, with a key whose rate limit does not throttle the load */
    tly_test_make_tenant(prefix, 1000000, tenant_id, sizeof(tenant_id), api_key, sizeof(api_key));
    return strlen(tenant_id) == UUID_LEN ? 0 : -1;
}

void
tly_test_ledger_finish(void)
{
    PQfinish(db);
    db = NULL;
    tly_test_free_nul_vector(stack_argv);
    tly_test_free_nul_vector(stack_envp);
    stack_argv = stack_envp = NULL;
}

PGconn *
tly_test_ledger_db(void)
{
    return db;
}
