/*
 * The chaos suite: retrying clients against a whole stack while processes of
 * every kind are killed, paused and killed again during their recovery; then
 * the money checks. Runs against the stack in $TALLY_TEST_ENV (started by
 * tests/chaos/run.sh, in either Kafka mode), which it owns: it kills its
 * processes and restarts them with `tests/stack.sh heal`.
 *
 * Clients: TALLY_CHAOS_CLIENTS threads, each with accounts of its own, send
 * deposits, withdrawals and transfers at TALLY_CHAOS_RATE commands/s in
 * all. Every command has its Idempotency-Key and body fixed once; any answer
 * but a 202 or a final 4xx (a 503, a 409, a 502 from the gateway, a transport
 * error, a client timeout) is retried with the same key, until the 202.
 *
 * Faults, one every 2-6 s for TALLY_CHAOS_SECONDS (random, TALLY_CHAOS_SEED):
 *   kill      SIGKILL of one process (command API, query API, worker,
 *             gateway, a Kafka node, PostgreSQL), restarted 0-1.5 s later
 *             (a node of the replicated Kafka: 8-12 s later, and the fault
 *             lasts until every partition is in sync again)
 *   pause     the worker frozen (SIGSTOP) past its consumer session timeout,
 *             so it is cut off from the broker and its group, then SIGCONT;
 *             or a Kafka node frozen for 4 s (the single node: the API's
 *             deadline answers 503)
 *   overlap   a kill, then a second kill (any kind) while the first one is
 *             being restarted
 *   failover  (replicated mode) the PostgreSQL primary killed and the
 *             standby promoted (deploy/local/pg-promote.sh --kill); the old
 *             primary then made the new standby
 *
 * Then: every command is retried until its 202, every 202'd job must be
 * terminal, each account's balance (query API) must equal the client's own
 * books (the succeeded jobs' amounts) and the sum of its ledger entries, no
 * job may have more entries than its command makes, and `tallyctl verify`
 * must pass. It prints, per kind of fault, the write outage: the longest
 * time with no 202 at all, and the slowest command in flight (first send to
 * its 202, retries included). With TALLY_CHAOS_WAIT_JOBS=1 each client
 * waits for its job after the 202, and the slowest job (202 to terminal)
 * is the job stall.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/kafka.h"
#include "tly_test_http.h"
#include "tly_test_util.h"

#include <curl/curl.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define ACCOUNTS_PER_CLIENT 6
#define MAX_FAULTS 4096
/* past the consumers' session timeout: the group must notice and move its partitions */
#define WORKER_PAUSE_MS (TLY_KAFKA_SESSION_TIMEOUT_MS + 4000)
#define BROKER_PAUSE_MS 4000
#define CLIENT_TIMEOUT_MS 15000
#define SETTLE_TIMEOUT_MS 240000

typedef enum { KIND_DEPOSIT, KIND_WITHDRAWAL, KIND_TRANSFER } cmd_kind_t;

typedef struct st_cmd_t {
    cmd_kind_t kind;
    int from, to; /* account indexes of the client; `to` for transfers */
    long amount;
    char idem[64];
    char job[64];
    int64_t first_ms, accepted_ms, terminal_ms; /* terminal_ms: seen terminal by a waiting client (TALLY_CHAOS_WAIT_JOBS) */
    int attempts;
    int outcome; /* 0 unknown, 1 succeeded, 2 failed */
} cmd_t;

typedef struct st_client_t {
    int index;
    pthread_t tid;
    CURL *curl;
    char accounts[ACCOUNTS_PER_CLIENT][64];
    cmd_t *cmds;
    size_t ncmds, cap;
    unsigned seed;
    int unexpected; /* answers that are neither retried nor 202 */
    char unexpected_body[512];
} client_t;

typedef struct st_fault_t {
    char kind[64];   /* e.g. "kill tally-worker", "pause kafka-2", "overlap ..." */
    char family[32]; /* what the outage figures are grouped by */
    int64_t start_ms, end_ms;
} fault_t;

static char key[256], tenant[64];
static const char *base_url;
static int nclients, rate, seconds;
static bool replicated, wait_jobs;
static atomic_bool running = true;
static int64_t run_start_ms, run_end_ms;
static fault_t faults[MAX_FAULTS];
static int nfaults;
static pid_t paused_pid; /* thawed by the teardown, whatever happens */

/* ---- HTTP ------------------------------------------------------------------ */

/* One request through the gateway; the status, or 0 on a transport error (refused, reset, timed out). */
static long
http(CURL *c, const char *method, const char *path, const char *body, const char *idem, const char *prefer, tly_test_sink_t *out)
{
    char url[512], auth[320], idem_hdr[128], prefer_hdr[64];
    long status = 0;
    snprintf(url, sizeof(url), "%s%s", base_url, path);
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", key);
    struct curl_slist *h = curl_slist_append(NULL, auth);
    if (body != NULL)
        h = curl_slist_append(h, "Content-Type: application/json");
    if (idem != NULL) {
        snprintf(idem_hdr, sizeof(idem_hdr), "Idempotency-Key: %s", idem);
        h = curl_slist_append(h, idem_hdr);
    }
    if (prefer != NULL) {
        snprintf(prefer_hdr, sizeof(prefer_hdr), "Prefer: %s", prefer);
        h = curl_slist_append(h, prefer_hdr);
    }
    out->len = 0;
    out->data[0] = '\0';
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(prefer != NULL ? 40000 : CLIENT_TIMEOUT_MS));
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 3000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, tly_test_sink_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    if (body != NULL)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    return status;
}

/* Answers a retrying client tries again: the stack is (partly) down, or the same key is still in flight. */
static bool
retryable(long status)
{
    return status == 0 || status == 409 || status == 429 || status == 502 || status == 503 || status == 504;
}

static bool
job_id_of(const tly_test_sink_t *b, char *out, size_t cap)
{
    json_error_t jerr;
    json_t *v = json_loads(b->data, 0, &jerr);
    json_t *job = json_object_get(v, "job");
    const char *id = json_string_value(json_object_get(job, "id"));
    if (id != NULL)
        snprintf(out, cap, "%s", id);
    json_decref(v);
    return id != NULL;
}

static void
cmd_request(const client_t *cl, const cmd_t *cmd, char *path, size_t pcap, char *body, size_t bcap)
{
    switch (cmd->kind) {
    case KIND_DEPOSIT:
        snprintf(path, pcap, "/v1/accounts/%s/deposits", cl->accounts[cmd->from]);
        snprintf(body, bcap, "{\"amount\":%ld,\"currency\":\"EUR\"}", cmd->amount);
        break;
    case KIND_WITHDRAWAL:
        snprintf(path, pcap, "/v1/accounts/%s/withdrawals", cl->accounts[cmd->from]);
        snprintf(body, bcap, "{\"amount\":%ld,\"currency\":\"EUR\"}", cmd->amount);
        break;
    case KIND_TRANSFER:
        snprintf(path, pcap, "/v1/transfers");
        snprintf(body, bcap, "{\"from_account\":\"%s\",\"to_account\":\"%s\",\"amount\":%ld,\"currency\":\"EUR\"}",
                 cl->accounts[cmd->from], cl->accounts[cmd->to], cmd->amount);
        break;
    }
}

/* Sends `cmd` (same key, same body) until its 202 or until `until_ms`; false if it never got one. */
static bool
send_until_accepted(client_t *cl, cmd_t *cmd, int64_t until_ms)
{
    char path[256], body[512];
    tly_test_sink_t b;
    cmd_request(cl, cmd, path, sizeof(path), body, sizeof(body));
    while (tly_test_now_ms() < until_ms) {
        if (cmd->first_ms == 0)
            cmd->first_ms = tly_test_now_ms();
        ++cmd->attempts;
        long status = http(cl->curl, "POST", path, body, cmd->idem, NULL, &b);
        if (status == 202 && job_id_of(&b, cmd->job, sizeof(cmd->job))) {
            cmd->accepted_ms = tly_test_now_ms();
            return true;
        }
        if (!retryable(status)) {
            if (cl->unexpected++ == 0)
                snprintf(cl->unexpected_body, sizeof(cl->unexpected_body), "%ld %.100s %.300s", status, path, b.data);
            return false;
        }
        tly_test_sleep_ms(status == 503 || status == 429 ? 500 : 200);
    }
    return false;
}

/* ---- clients --------------------------------------------------------------- */

static void
open_accounts(client_t *cl)
{
    tly_test_sink_t b;
    for (int i = 0; i < ACCOUNTS_PER_CLIENT; ++i) {
        /* before any fault, but a stack just started may still answer 503 for a moment (an account opened twice is
           only an unused account) */
        long status = 0;
        for (int tries = 0; tries < 120 && (tries == 0 || retryable(status)); ++tries) {
            if (tries > 0)
                tly_test_sleep_ms(500);
            status = http(cl->curl, "POST", "/v1/accounts", "{\"currency\":\"EUR\",\"label\":\"chaos\"}", NULL, NULL, &b);
        }
        assert_int_equal(status, 202);
        json_error_t jerr;
        json_t *v = json_loads(b.data, 0, &jerr);
        json_t *job = json_object_get(v, "job");
        snprintf(cl->accounts[i], sizeof(cl->accounts[i]), "%s",
                 json_string_value(json_object_get(json_object_get(job, "resource"), "id")));
        char url[128];
        snprintf(url, sizeof(url), "%s", json_string_value(json_object_get(job, "url")));
        json_decref(v);
        status = http(cl->curl, "GET", url, NULL, NULL, "wait=30", &b);
        assert_int_equal(status, 200);
        assert_non_null(strstr(b.data, "\"succeeded\""));
    }
}

static cmd_t *
new_cmd(client_t *cl)
{
    if (cl->ncmds == cl->cap) {
        cl->cap = cl->cap == 0 ? 1024 : cl->cap * 2;
        cl->cmds = realloc(cl->cmds, cl->cap * sizeof(*cl->cmds));
        if (cl->cmds == NULL)
            abort();
    }
    cmd_t *cmd = &cl->cmds[cl->ncmds++];
    memset(cmd, 0, sizeof(*cmd));
    int r = rand_r(&cl->seed) % 100;
    cmd->kind = r < 45 ? KIND_DEPOSIT : r < 70 ? KIND_WITHDRAWAL : KIND_TRANSFER;
    cmd->from = rand_r(&cl->seed) % ACCOUNTS_PER_CLIENT;
    cmd->to = (cmd->from + 1 + rand_r(&cl->seed) % (ACCOUNTS_PER_CLIENT - 1)) % ACCOUNTS_PER_CLIENT;
    cmd->amount = 1 + rand_r(&cl->seed) % 5000;
    snprintf(cmd->idem, sizeof(cmd->idem), "chaos-%d-%d-%zu-%u", (int)getpid(), cl->index, cl->ncmds, (unsigned)rand_r(&cl->seed));
    return cmd;
}

static int outcome_of(const tly_test_sink_t *b);

/* A client that waits for its job (TALLY_CHAOS_WAIT_JOBS): when the job was seen terminal, for the job stall figures. */
static void
wait_terminal(client_t *cl, cmd_t *cmd)
{
    tly_test_sink_t b;
    char path[128];
    snprintf(path, sizeof(path), "/v1/jobs/%s", cmd->job);
    while (cmd->outcome == 0 && atomic_load(&running)) {
        if (http(cl->curl, "GET", path, NULL, NULL, "wait=30", &b) == 200)
            cmd->outcome = outcome_of(&b);
        else
            tly_test_sleep_ms(200);
    }
    if (cmd->outcome != 0)
        cmd->terminal_ms = tly_test_now_ms();
}

static void *
client_main(void *arg)
{
    client_t *cl = arg;
    int64_t period_ms = (int64_t)nclients * 1000 / rate, next = tly_test_now_ms();
    while (atomic_load(&running)) {
        cmd_t *cmd = new_cmd(cl);
        /* a command started is finished: after the faults stop, the stack settles and the retry gets its 202 */
        if (send_until_accepted(cl, cmd, INT64_MAX / 2) && wait_jobs)
            wait_terminal(cl, cmd);
        next += period_ms;
        int64_t now = tly_test_now_ms();
        if (next > now)
            tly_test_sleep_ms((int)(next - now));
        else
            next = now;
    }
    return NULL;
}

/* ---- faults ---------------------------------------------------------------- */

static void heal_command(char *cmd, size_t cap);

/* Partitions (of every topic) with fewer replicas in sync than they have, or -1 when the cluster does not answer. */
static int
under_replicated(rd_kafka_t *rk)
{
    const struct rd_kafka_metadata *md = NULL;
    if (rd_kafka_metadata(rk, 1, NULL, &md, 5000) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return -1;
    int n = 0;
    for (int t = 0; t < md->topic_cnt; ++t)
        for (int p = 0; p < md->topics[t].partition_cnt; ++p)
            n += md->topics[t].partitions[p].isr_cnt < md->topics[t].partitions[p].replica_cnt;
    rd_kafka_metadata_destroy(md);
    return n;
}

/*
 * In the replicated mode a restarted node is "started" before it has caught
 * up: a second kill then would be a double fault (a partition with one
 * replica in sync refuses acks=all writes until another returns). So a
 * fault ends once every partition is fully in sync again.
 */
static void
wait_in_sync(void)
{
    char err[256];
    if (!replicated)
        return;
    rd_kafka_t *rk = tly_kafka_producer_create(tly_test_env("TALLY_KAFKA_BROKERS"), 5000, NULL, NULL, err, sizeof(err));
    assert_non_null(rk);
    int n = -1;
    for (int waited = 0; waited < 300000 && (n = under_replicated(rk)) != 0; waited += 500)
        tly_test_sleep_ms(500);
    rd_kafka_destroy(rk);
    if (n != 0)
        fail_msg("partitions still under-replicated 300 s after a fault: %d", n);
}

static void
heal(void)
{
    char cmd[1024];
    heal_command(cmd, sizeof(cmd));
    /* a start that a second fault interrupted fails: start again */
    for (int i = 0; i < 10; ++i) {
        if (system(cmd) == 0) {
            wait_in_sync();
            return;
        }
        tly_test_sleep_ms(1000);
    }
    fail_msg("could not heal the stack: see %s/log/chaos-heal.log", tly_test_env("TALLY_VAR"));
}

/* The processes a fault may hit, by their names in $TALLY_VAR/run. */
static const char *single_targets[] = {"tally-command-api", "tally-query-api", "tally-worker", "nginx", "kafka", "postgres"};
static const char *replicated_targets[] = {"tally-command-api", "tally-query-api", "tally-worker", "nginx",           "kafka-1",
                                           "kafka-2",           "kafka-3",         "postgres",     "postgres-standby"};

static const char *
random_target(unsigned *seed)
{
    if (replicated)
        return replicated_targets[rand_r(seed) % (sizeof(replicated_targets) / sizeof(replicated_targets[0]))];
    return single_targets[rand_r(seed) % (sizeof(single_targets) / sizeof(single_targets[0]))];
}

/* "kafka-2" and "kafka" are one family: a broker. */
static const char *
family_of(const char *target)
{
    return strncmp(target, "kafka", 5) == 0 ? "kafka" : target;
}

/* PostgreSQL's run name: "postgres" is the primary, whichever node that is ($TALLY_VAR/pg-primary). */
static void
run_name(const char *target, char *out, size_t cap)
{
    int primary = 1;
    char path[1024];
    if (strncmp(target, "postgres", 8) != 0) {
        snprintf(out, cap, "%s", target);
        return;
    }
    snprintf(path, sizeof(path), "%s/pg-primary", tly_test_env("TALLY_VAR"));
    FILE *f = fopen(path, "r");
    if (f != NULL) {
        if (fscanf(f, "%d", &primary) != 1)
            primary = 1;
        fclose(f);
    }
    int node = strcmp(target, "postgres-standby") == 0 ? 3 - primary : primary;
    if (node == 1)
        snprintf(out, cap, "postgres");
    else
        snprintf(out, cap, "postgres-%d", node);
}

/*
 * The pid recorded for `target` if that process is alive and is the one we
 * started (its command line names it), else 0: a pid file outlives a killed
 * process, and its pid may belong to something else by now.
 */
static pid_t
target_pid(const char *target)
{
    char path[64], needle[1024], cmdline[4096], name[64];
    const char *var = tly_test_env("TALLY_VAR");
    run_name(target, name, sizeof(name));
    pid_t pid = tly_test_read_pid(name);
    if (pid <= 0)
        return 0;
    if (strncmp(target, "kafka", 5) == 0)
        snprintf(needle, sizeof(needle), "%s/%s/server.properties", var, target);
    else if (strcmp(name, "postgres") == 0)
        snprintf(needle, sizeof(needle), "%s/pg/data", var);
    else if (strncmp(name, "postgres-", 9) == 0)
        snprintf(needle, sizeof(needle), "%s/pg-%s/data", var, name + 9);
    else if (strcmp(target, "nginx") == 0)
        snprintf(needle, sizeof(needle), "%s/nginx/nginx.conf", var);
    else
        snprintf(needle, sizeof(needle), "/%s", target);
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    size_t n = fread(cmdline, 1, sizeof(cmdline) - 1, f);
    fclose(f);
    for (size_t i = 0; i < n; ++i)
        if (cmdline[i] == '\0')
            cmdline[i] = ' ';
    cmdline[n] = '\0';
    return strstr(cmdline, needle) != NULL ? pid : 0;
}

static void
kill_target(const char *target)
{
    pid_t pid = target_pid(target);
    if (pid > 0)
        kill(pid, SIGKILL);
}

typedef enum { FAULT_KILL, FAULT_PAUSE, FAULT_OVERLAP, FAULT_FAILOVER } fault_type_t;

/* A fault drawn at random: its type, its target(s), and the names it is reported under. */
typedef struct st_plan_t {
    fault_type_t type;
    const char *target, *second;
    char kind[64], family[32];
} plan_t;

static void
plan_fault(unsigned *seed, plan_t *p)
{
    int r = rand_r(seed) % 100;
    p->type = r < 55 ? FAULT_KILL : r < 75 ? FAULT_PAUSE : r < 90 || !replicated ? FAULT_OVERLAP : FAULT_FAILOVER;
    p->second = NULL;
    switch (p->type) {
    case FAULT_KILL:
        p->target = random_target(seed);
        snprintf(p->kind, sizeof(p->kind), "kill %s", p->target);
        snprintf(p->family, sizeof(p->family), "kill %s", family_of(p->target));
        break;
    case FAULT_PAUSE:
        p->target = rand_r(seed) % 2 == 0 ? "tally-worker" : replicated ? replicated_targets[4 + rand_r(seed) % 3] : "kafka";
        snprintf(p->kind, sizeof(p->kind), "pause %s", p->target);
        snprintf(p->family, sizeof(p->family), "pause %s", family_of(p->target));
        break;
    case FAULT_OVERLAP:
        p->target = random_target(seed);
        p->second = random_target(seed);
        snprintf(p->kind, sizeof(p->kind), "overlap %s + %s", p->target, p->second);
        snprintf(p->family, sizeof(p->family), "overlap");
        break;
    case FAULT_FAILOVER:
        p->target = "postgres";
        snprintf(p->kind, sizeof(p->kind), "failover postgres");
        snprintf(p->family, sizeof(p->family), "failover postgres");
        break;
    }
}

static fault_t *
fault_begin(const plan_t *p)
{
    assert_true(nfaults < MAX_FAULTS);
    fault_t *f = &faults[nfaults++];
    snprintf(f->kind, sizeof(f->kind), "%s", p->kind);
    snprintf(f->family, sizeof(f->family), "%s", p->family);
    f->start_ms = tly_test_now_ms();
    fprintf(stderr, "chaos %6.1f s: %s\n", (double)(f->start_ms - run_start_ms) / 1000.0, p->kind);
    return f;
}

static void
heal_command(char *cmd, size_t cap)
{
    snprintf(cmd, cap, "%s/tests/stack.sh heal '%s' >>'%s/log/chaos-heal.log' 2>&1", TALLY_SOURCE_DIR, tly_test_env("TALLY_VAR"),
             tly_test_env("TALLY_VAR"));
}

/*
 * SIGKILL, restarted 0-1.5 s later; a node of the replicated Kafka stays
 * down 8-12 s: the cluster must go on without it, and the outage measured
 * is its failover, not the restart of a JVM competing for the CPU.
 */
static void
fault_kill(unsigned *seed, const plan_t *p)
{
    bool broker = replicated && strncmp(p->target, "kafka", 5) == 0;
    kill_target(p->target);
    tly_test_sleep_ms(broker ? 8000 + rand_r(seed) % 4000 : rand_r(seed) % 1500);
    heal();
}

/* Frozen, then thawed: the worker past its session timeout, a broker for a few seconds. */
static void
fault_pause(const plan_t *p)
{
    pid_t pid = target_pid(p->target);
    if (pid > 0 && kill(pid, SIGSTOP) == 0) {
        paused_pid = pid;
        tly_test_sleep_ms(strcmp(p->target, "tally-worker") == 0 ? WORKER_PAUSE_MS : BROKER_PAUSE_MS);
        kill(pid, SIGCONT);
        paused_pid = 0;
    }
    wait_in_sync(); /* a thawed broker catches up before the next fault */
}

/*
 * The PostgreSQL primary killed and its standby promoted (the documented
 * procedure: deploy/local/pg-promote.sh --kill); the services must find the
 * new primary by themselves. 0-1.5 s later the old primary is made the new
 * standby (heal).
 */
static void
fault_failover(unsigned *seed)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "TALLY_VAR='%s' %s/deploy/local/pg-promote.sh --kill >>'%s/log/chaos-heal.log' 2>&1",
             tly_test_env("TALLY_VAR"), TALLY_SOURCE_DIR, tly_test_env("TALLY_VAR"));
    assert_int_equal(system(cmd), 0);
    tly_test_sleep_ms(rand_r(seed) % 1500);
    heal();
}

/* A kill, and a second one while the stack restarts the first. */
static void
fault_overlap(unsigned *seed, const plan_t *p)
{
    char cmd[1024];
    kill_target(p->target);
    heal_command(cmd, sizeof(cmd));
    FILE *healing = popen(cmd, "r");
    assert_non_null(healing);
    tly_test_sleep_ms(300 + rand_r(seed) % 1500);
    kill_target(p->second);
    pclose(healing); /* it may fail: the second kill hit what it was starting */
    heal();
}

static void *
faults_main(void *arg)
{
    unsigned seed = *(unsigned *)arg;
    /* TALLY_CHAOS_ONLY: only faults whose kind contains it, e.g. "kill kafka"; TALLY_CHAOS_FIRST: the first one's */
    const char *only = getenv("TALLY_CHAOS_ONLY"), *first = getenv("TALLY_CHAOS_FIRST");
    while (tly_test_now_ms() < run_end_ms) {
        tly_test_sleep_ms(2000 + rand_r(&seed) % 4000);
        if (tly_test_now_ms() >= run_end_ms)
            break;
        plan_t p;
        int draws = 0;
        const char *want = nfaults == 0 && first != NULL ? first : only;
        do
            plan_fault(&seed, &p);
        while (want != NULL && strstr(p.kind, want) == NULL && ++draws < 10000);
        fault_t *f = fault_begin(&p);
        if (p.type == FAULT_KILL)
            fault_kill(&seed, &p);
        else if (p.type == FAULT_PAUSE)
            fault_pause(&p);
        else if (p.type == FAULT_FAILOVER)
            fault_failover(&seed);
        else
            fault_overlap(&seed, &p);
        f->end_ms = tly_test_now_ms();
    }
    return NULL;
}

/* ---- checks ---------------------------------------------------------------- */

/* 1 succeeded, 2 failed, 0 not terminal: from a job's JSON. */
static int
outcome_of(const tly_test_sink_t *b)
{
    json_error_t jerr;
    json_t *job = json_loads(b->data, 0, &jerr);
    const char *st = json_string_value(json_object_get(job, "status"));
    int outcome = st == NULL ? 0 : strcmp(st, "succeeded") == 0 ? 1 : strcmp(st, "failed") == 0 ? 2 : 0;
    json_decref(job);
    return outcome;
}

/* Waits for every 202'd job of the client to be terminal and records its outcome. */
static void *
settle_main(void *arg)
{
    client_t *cl = arg;
    tly_test_sink_t b;
    char path[128];
    int64_t until = tly_test_now_ms() + SETTLE_TIMEOUT_MS;
    for (size_t i = 0; i < cl->ncmds; ++i) {
        cmd_t *cmd = &cl->cmds[i];
        if (cmd->job[0] == '\0' && !send_until_accepted(cl, cmd, until))
            continue;
        snprintf(path, sizeof(path), "/v1/jobs/%s", cmd->job);
        while (cmd->outcome == 0 && tly_test_now_ms() < until) {
            long status = http(cl->curl, "GET", path, NULL, NULL, "wait=30", &b);
            if (status != 200) {
                tly_test_sleep_ms(200);
                continue;
            }
            cmd->outcome = outcome_of(&b);
        }
    }
    return NULL;
}

static long
api_balance(client_t *cl, int account)
{
    tly_test_sink_t b;
    char path[128];
    snprintf(path, sizeof(path), "/v1/accounts/%s", cl->accounts[account]);
    long status = 0;
    for (int64_t until = tly_test_now_ms() + 30000; tly_test_now_ms() < until; tly_test_sleep_ms(200))
        if (!retryable(status = http(cl->curl, "GET", path, NULL, NULL, NULL, &b)))
            break;
    assert_int_equal(status, 200);
    json_error_t jerr;
    json_t *v = json_loads(b.data, 0, &jerr);
    long balance = (long)json_integer_value(json_object_get(v, "balance"));
    json_decref(v);
    return balance;
}

/* The client's own books: what its succeeded jobs moved. */
static void
books_of(const client_t *cl, long *books)
{
    memset(books, 0, ACCOUNTS_PER_CLIENT * sizeof(*books));
    for (size_t i = 0; i < cl->ncmds; ++i) {
        const cmd_t *cmd = &cl->cmds[i];
        if (cmd->outcome != 1)
            continue;
        if (cmd->kind == KIND_DEPOSIT)
            books[cmd->from] += cmd->amount;
        else if (cmd->kind == KIND_WITHDRAWAL)
            books[cmd->from] -= cmd->amount;
        else {
            books[cmd->from] -= cmd->amount;
            books[cmd->to] += cmd->amount;
        }
    }
}

/* The projected balance, the sum of its ledger entries, and the most entries any one job made on it. */
static void
ledger_of(PGconn *pg, const char *account, long *balance, long *entries_sum, long *max_per_job)
{
    const char *params[1] = {account};
    PGresult *res = PQexecParams(pg,
                                 "SELECT a.balance, (SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE account_id = a.id), "
                                 "(SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM ledger_entries "
                                 "WHERE account_id = a.id GROUP BY job_id, kind) c) FROM accounts a WHERE a.id = $1",
                                 1, NULL, params, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(res), 1);
    *balance = atol(PQgetvalue(res, 0, 0));
    *entries_sum = atol(PQgetvalue(res, 0, 1));
    *max_per_job = atol(PQgetvalue(res, 0, 2));
    PQclear(res);
}

/* How many of the 202'd jobs have their command record. */
static size_t
records_of(PGconn *pg, client_t *clients)
{
    size_t n = 0, cap = 1 << 16, len = 0;
    char *ids = malloc(cap);
    if (ids == NULL)
        abort();
    ids[len++] = '{';
    for (int c = 0; c < nclients; ++c)
        for (size_t i = 0; i < clients[c].ncmds; ++i) {
            const char *job = clients[c].cmds[i].job;
            if (job[0] == '\0')
                continue;
            if (len + strlen(job) + 3 > cap && (ids = realloc(ids, cap *= 2)) == NULL)
                abort();
            len += (size_t)sprintf(ids + len, "%s%s", n++ > 0 ? "," : "", job);
        }
    ids[len++] = '}';
    ids[len] = '\0';
    const char *params[1] = {ids};
    PGresult *res =
        PQexecParams(pg, "SELECT count(*) FROM command_requests WHERE job_id = ANY($1::uuid[])", 1, NULL, params, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    size_t found = (size_t)atol(PQgetvalue(res, 0, 0));
    PQclear(res);
    free(ids);
    return found;
}

/* ---- outage figures -------------------------------------------------------- */

typedef struct st_stamp_t {
    int64_t first_ms, accepted_ms, terminal_ms;
} stamp_t;

static int
cmp_accepted(const void *a, const void *b)
{
    const stamp_t *x = a, *y = b;
    return x->accepted_ms < y->accepted_ms ? -1 : x->accepted_ms > y->accepted_ms;
}

/*
 * For each fault: the longest gap between two consecutive 202s that
 * overlaps [start, end + 5 s] (cut at the next fault's start): no write
 * went through; and the slowest command in flight then (first send to
 * 202, retries included). Printed per family.
 */
static void
print_outages(client_t *clients)
{
    size_t n = 0;
    for (int c = 0; c < nclients; ++c)
        n += clients[c].ncmds;
    stamp_t *s = calloc(n + 1, sizeof(*s));
    if (s == NULL)
        abort();
    size_t k = 0;
    for (int c = 0; c < nclients; ++c)
        for (size_t i = 0; i < clients[c].ncmds; ++i)
            if (clients[c].cmds[i].accepted_ms > 0)
                s[k++] = (stamp_t){clients[c].cmds[i].first_ms, clients[c].cmds[i].accepted_ms, clients[c].cmds[i].terminal_ms};
    qsort(s, k, sizeof(*s), cmp_accepted);
    fprintf(stderr, "\n%-28s %5s %14s %14s %16s %16s\n", "fault", "count", "no-202 max ms", "no-202 avg ms", "slowest 202 ms",
            wait_jobs ? "slowest job ms" : "");
    for (int i = 0; i < nfaults; ++i) {
        bool first_of_family = true;
        for (int j = 0; j < i && first_of_family; ++j)
            first_of_family = strcmp(faults[j].family, faults[i].family) != 0;
        if (!first_of_family)
            continue;
        int count = 0;
        int64_t gap_max = 0, gap_sum = 0, slowest = 0, slowest_job = 0;
        for (int j = i; j < nfaults; ++j) {
            if (strcmp(faults[j].family, faults[i].family) != 0)
                continue;
            /* until 5 s after the fault, or the next fault's start */
            int64_t from = faults[j].start_ms, to = (faults[j].end_ms > 0 ? faults[j].end_ms : from) + 5000, gap = 0;
            if (j + 1 < nfaults && faults[j + 1].start_ms < to)
                to = faults[j + 1].start_ms;
            for (size_t m = 1; m < k; ++m)
                if (s[m].accepted_ms >= from && s[m - 1].accepted_ms <= to && s[m].accepted_ms - s[m - 1].accepted_ms > gap)
                    gap = s[m].accepted_ms - s[m - 1].accepted_ms;
            for (size_t m = 0; m < k; ++m)
                if (s[m].accepted_ms >= from && s[m].first_ms <= to && s[m].accepted_ms - s[m].first_ms > slowest)
                    slowest = s[m].accepted_ms - s[m].first_ms;
            /* a job 202'd before or during the fault, and when its client saw it terminal */
            for (size_t m = 0; m < k; ++m)
                if (s[m].terminal_ms >= from && s[m].accepted_ms <= to && s[m].terminal_ms - s[m].accepted_ms > slowest_job)
                    slowest_job = s[m].terminal_ms - s[m].accepted_ms;
            ++count;
            gap_sum += gap;
            gap_max = gap > gap_max ? gap : gap_max;
        }
        char job[24] = "";
        if (wait_jobs)
            snprintf(job, sizeof(job), "%lld", (long long)slowest_job);
        fprintf(stderr, "%-28s %5d %14lld %14lld %16lld %16s\n", faults[i].family, count, (long long)gap_max,
                (long long)(gap_sum / count), (long long)slowest, job);
    }
    free(s);
}

/* ---- the run --------------------------------------------------------------- */

static void
test_chaos(void **state)
{
    const char *v;
    unsigned seed = (v = getenv("TALLY_CHAOS_SEED")) != NULL ? (unsigned)atol(v) : (unsigned)time(NULL);
    fprintf(stderr, "chaos: %d s, %d clients, %d commands/s, %s kafka, seed %u\n", seconds, nclients, rate,
            replicated ? "replicated (3 nodes)" : "single-node", seed);
    /* faults are under test here, not limits: the key's contract leaves room for the settle phase's reads, which
       run as fast as jobs end; the one bucket is shared by both APIs (a 429 is still retried) */
    tly_test_make_tenant("chaos", rate * 50, tenant, sizeof(tenant), key, sizeof(key));
    client_t *clients = calloc((size_t)nclients, sizeof(*clients));
    if (clients == NULL)
        abort();
    for (int c = 0; c < nclients; ++c) {
        clients[c].index = c;
        clients[c].seed = seed + (unsigned)c * 7919u;
        clients[c].curl = curl_easy_init();
        open_accounts(&clients[c]);
    }
    run_start_ms = tly_test_now_ms();
    run_end_ms = run_start_ms + (int64_t)seconds * 1000;
    for (int c = 0; c < nclients; ++c)
        assert_int_equal(pthread_create(&clients[c].tid, NULL, client_main, &clients[c]), 0);
    pthread_t faulter;
    assert_int_equal(pthread_create(&faulter, NULL, faults_main, &seed), 0);
    assert_int_equal(pthread_join(faulter, NULL), 0);
    heal(); /* the last fault is over: everything runs */
    atomic_store(&running, false);
    for (int c = 0; c < nclients; ++c)
        assert_int_equal(pthread_join(clients[c].tid, NULL), 0);

    /* every command gets its 202, every job its end */
    for (int c = 0; c < nclients; ++c)
        assert_int_equal(pthread_create(&clients[c].tid, NULL, settle_main, &clients[c]), 0);
    for (int c = 0; c < nclients; ++c)
        assert_int_equal(pthread_join(clients[c].tid, NULL), 0);

    PGconn *pg = PQconnectdb(tly_test_env("TALLY_PG_DSN"));
    assert_int_equal(PQstatus(pg), CONNECTION_OK);
    size_t total = 0, accepted = 0, terminal = 0, succeeded = 0, retried = 0;
    int problems = 0;
    for (int c = 0; c < nclients; ++c) {
        client_t *cl = &clients[c];
        long books[ACCOUNTS_PER_CLIENT];
        books_of(cl, books);
        for (size_t i = 0; i < cl->ncmds; ++i) {
            ++total;
            accepted += cl->cmds[i].job[0] != '\0';
            terminal += cl->cmds[i].outcome != 0;
            succeeded += cl->cmds[i].outcome == 1;
            retried += cl->cmds[i].attempts > 1;
            if (cl->cmds[i].job[0] != '\0' && cl->cmds[i].outcome == 0 && problems++ < 10)
                fprintf(stderr, "job %s (key %s) not terminal\n", cl->cmds[i].job, cl->cmds[i].idem);
        }
        if (cl->unexpected > 0) {
            fprintf(stderr, "client %d: %d unexpected answers, first: %s\n", c, cl->unexpected, cl->unexpected_body);
            problems += cl->unexpected;
        }
        for (int a = 0; a < ACCOUNTS_PER_CLIENT; ++a) {
            long balance, sum, per_job, api = api_balance(cl, a);
            ledger_of(pg, cl->accounts[a], &balance, &sum, &per_job);
            if (api != books[a] || balance != books[a] || sum != books[a] || per_job > 1) {
                fprintf(stderr,
                        "account %s: books %ld, api %ld, projected %ld, entries %ld, most entries of one job and kind %ld\n",
                        cl->accounts[a], books[a], api, balance, sum, per_job);
                ++problems;
            }
        }
    }
    /* every 202 was preceded by its committed command record: none may be lost (a failover in particular) */
    size_t recorded = records_of(pg, clients);
    if (recorded != accepted) {
        fprintf(stderr, "command records: %zu of %zu 202'd commands\n", recorded, accepted);
        ++problems;
    }
    PQfinish(pg);
    fprintf(stderr, "chaos: %d faults; %zu commands, %zu with retries, %zu 202'd, %zu terminal (%zu succeeded)\n", nfaults, total,
            retried, accepted, terminal, succeeded);
    print_outages(clients);
    char verify[1024];
    snprintf(verify, sizeof(verify), "\"%s/tallyctl\" verify >>'%s/log/chaos-verify.log' 2>&1", tly_test_env("TALLY_BIN"),
             tly_test_env("TALLY_VAR"));
    int vrc = system(verify);
    fprintf(stderr, "tallyctl verify: %s\n", vrc == 0 ? "clean" : "DIFFERENCES (see log/chaos-verify.log)");
    for (int c = 0; c < nclients; ++c) {
        curl_easy_cleanup(clients[c].curl);
        free(clients[c].cmds);
    }
    free(clients);
    assert_int_equal(problems, 0);
    assert_int_equal(accepted, total);
    assert_int_equal(terminal, accepted);
    assert_int_equal(vrc, 0);
}

static int
thaw(void **state)
{
    if (paused_pid > 0)
        kill(paused_pid, SIGCONT);
    return 0;
}

static int
env_int(const char *name, int dflt)
{
    const char *v = getenv(name);
    return v != NULL && atoi(v) > 0 ? atoi(v) : dflt;
}

int
main(void)
{
    if ((base_url = tly_test_env("TALLY_URL")) == NULL || tly_test_env("TALLY_VAR") == NULL || tly_test_env("TALLY_BIN") == NULL) {
        fprintf(stderr, "TALLY_URL, TALLY_VAR and TALLY_BIN are needed (TALLY_TEST_ENV=<stack>/env)\n");
        return 1;
    }
    /* tallyctl (tenant, key, verify) reads the stack's settings from the environment */
    static const char *const exported[] = {"TALLY_PG_DSN", "TALLY_KAFKA_BROKERS", "TALLY_KAFKA_TOPIC", "TALLY_BIN"};
    for (size_t i = 0; i < sizeof(exported) / sizeof(exported[0]); ++i)
        if (tly_test_env(exported[i]) != NULL)
            setenv(exported[i], tly_test_env(exported[i]), 0);
    const char *nodes = tly_test_env("TALLY_KAFKA_NODES");
    replicated = nodes != NULL && atoi(nodes) == 3;
    seconds = env_int("TALLY_CHAOS_SECONDS", 60);
    nclients = env_int("TALLY_CHAOS_CLIENTS", 6);
    rate = env_int("TALLY_CHAOS_RATE", 120);
    wait_jobs = env_int("TALLY_CHAOS_WAIT_JOBS", 0) == 1;
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {cmocka_unit_test_teardown(test_chaos, thaw)};
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
