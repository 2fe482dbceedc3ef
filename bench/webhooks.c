/*
 * Webhook delivery bench (bench/webhooks.sh builds and runs it against a
 * throwaway stack). It starts a tally-worker with only the webhooks role and
 * production settings (15 s timeout, 4 in flight per endpoint, 256 in all;
 * loopback allowed), a loopback receiver (tests/support/tly_test_receiver.c)
 * and produces events of a type no other role handles ("BenchPing") straight
 * to tally.events, so what is measured is the webhooks role alone: recording
 * in the fenced consumer, then claiming, signing, sending, recording the
 * attempt.
 *
 *   1. throughput: BENCH_WH_EVENTS events (2,500) as fast as Kafka takes
 *      them, each subscribed by BENCH_WH_ENDPOINTS endpoints (8): deliveries
 *      per second from the first produce to the last delivery answered.
 *   2. latency at a steady BENCH_WH_RATE events/s (50) to 4 fast
 *      endpoints: event time to arrival at the receiver, p50/p99; and the
 *      same with a fifth endpoint that never answers (every attempt hangs
 *      until the 15 s timeout) subscribed too. BENCH_WH_ROUNDS (3) rounds
 *      of BENCH_WH_SECONDS (10) each, the two cases interleaved.
 *
 * Usage: webhooks <stack env file> <tally-worker binary> <log file>
 * Prints one line per figure and a JSON object on the last line.
 */
#include "tly_test_receiver.h"

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

static char env_pg[2048], env_brokers[2048], env_topic[2048];
static PGconn *db;
static rd_kafka_t *rk;
static tly_test_receiver_t *rx;
static char tenant[40];

static int64_t
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
sleep_us(int64_t us)
{
    if (us <= 0)
        return;
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static void
die(const char *what, const char *detail)
{
    fprintf(stderr, "webhooks bench: %s: %s\n", what, detail != NULL ? detail : "");
    exit(1);
}

static void
uuid4(char *out)
{
    unsigned char b[16];
    FILE *f = fopen("/dev/urandom", "rb");
    if (f == NULL || fread(b, 1, 16, f) != 16)
        die("could not read /dev/urandom", NULL);
    fclose(f);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    sprintf(out, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3], b[4], b[5], b[6],
            b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static void
read_env(const char *path)
{
    char line[2048];
    FILE *f = fopen(path, "r");
    if (f == NULL)
        die("could not open the env file", path);
    while (fgets(line, sizeof(line), f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        if (strncmp(line, "TALLY_PG_DSN=", 13) == 0)
            snprintf(env_pg, sizeof(env_pg), "%s", line + 13);
        else if (strncmp(line, "TALLY_KAFKA_BROKERS=", 20) == 0)
            snprintf(env_brokers, sizeof(env_brokers), "%s", line + 20);
        else if (strncmp(line, "TALLY_KAFKA_TOPIC=", 18) == 0)
            snprintf(env_topic, sizeof(env_topic), "%s", line + 18);
    }
    fclose(f);
}

static PGresult *
sql(const char *q, int n, const char *const *vals)
{
    PGresult *res = PQexecParams(db, q, n, NULL, vals, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK)
        die("sql failed", PQerrorMessage(db));
    return res;
}

static long long
sql_ll(const char *q, int n, const char *const *vals)
{
    PGresult *res = sql(q, n, vals);
    long long v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return v;
}

static void
add_endpoint(const char *path, char *id)
{
    char url[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", tly_test_receiver_port(rx), path);
    const char *vals[] = {tenant, url, SECRET};
    PGresult *res = sql("INSERT INTO webhook_endpoints (id, tenant_id, url, event_types, secret) "
                        "VALUES (gen_random_uuid(), $1, $2, '{BenchPing}', $3) RETURNING id",
                        3, vals);
    snprintf(id, 40, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
}

static void
drop_endpoints(void)
{
    const char *vals[] = {tenant};
    PQclear(sql("UPDATE webhook_endpoints SET deleted_at = now() WHERE tenant_id = $1 AND deleted_at IS NULL", 1, vals));
}

/* One BenchPing event of our tenant, its time in data.sent_us and in occurred_at. */
static void
produce(int seq)
{
    char id[40], agg[40], when[40], buf[1024];
    int64_t t = now_us();
    time_t secs = (time_t)(t / 1000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + n, sizeof(when) - n, ".%06lldZ", (long long)(t % 1000000));
    uuid4(id);
    uuid4(agg);
    int len = snprintf(buf, sizeof(buf),
                       "{\"id\":\"%s\",\"type\":\"BenchPing\",\"version\":1,\"aggregate_type\":\"bench\",\"aggregate_id\":\"%s\","
                       "\"tenant_id\":\"%s\",\"job_id\":null,\"causation_id\":null,\"correlation_id\":\"%s\","
                       "\"occurred_at\":\"%s\",\"data\":{\"seq\":%d,\"sent_us\":%lld}}",
                       id, agg, tenant, id, when, seq, (long long)t);
    for (;;) {
        rd_kafka_resp_err_t e =
            rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(env_topic), RD_KAFKA_V_KEY(agg, strlen(agg)), RD_KAFKA_V_VALUE(buf, (size_t)len),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
            break;
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            die("could not produce", rd_kafka_err2str(e));
        rd_kafka_poll(rk, 10);
    }
    rd_kafka_poll(rk, 0);
}

static pid_t
start_worker(const char *bin, const char *log)
{
    static char pg[2100], brokers[2100], topic[2100];
    snprintf(pg, sizeof(pg), "TALLY_PG_DSN=%s", env_pg);
    snprintf(brokers, sizeof(brokers), "TALLY_KAFKA_BROKERS=%s", env_brokers);
    snprintf(topic, sizeof(topic), "TALLY_KAFKA_TOPIC=%s", env_topic);
    char *envp[] = {pg,
                    brokers,
                    topic,
                    "TALLY_WORKER_ROLES=webhooks",
                    "TALLY_ADMIN_PORT=0",
                    "TALLY_WEBHOOK_ALLOW_PRIVATE=true",
                    "TALLY_LOG_LEVEL=warn",
                    NULL};
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        FILE *f = freopen(log, "a", stdout);
        if (f == NULL || dup2(1, 2) < 0)
            _exit(125);
        char *argv[] = {(char *)bin, NULL};
        execve(bin, argv, envp);
        _exit(127);
    }
    return pid;
}

/* Arrival minus data.sent_us of every 2xx hit of `path`, in ms, into `out` (grown); returns the count. */
static int
latencies(const char *path, double **out, int have)
{
    int n;
    tly_test_hit_t *h = tly_test_receiver_hits(rx, path, &n);
    *out = realloc(*out, sizeof(double) * (size_t)(have + n + 1));
    for (int i = 0; i < n; ++i) {
        const char *p = strstr(h[i].body, "\"sent_us\":");
        if (p == NULL || h[i].answered != 200)
            continue;
        (*out)[have++] = (double)(h[i].at_us - strtoll(p + 10, NULL, 10)) / 1000.0;
    }
    tly_test_hits_free(h, n);
    return have;
}

static int
cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double
pct(double *v, int n, double p)
{
    if (n == 0)
        return 0;
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    int i = (int)(p * (n - 1) + 0.5);
    return v[i];
}

static int
wait_count(const char *const *paths, int npaths, int want, int timeout_s)
{
    int64_t end = now_us() + (int64_t)timeout_s * 1000000;
    int got = 0;
    while (now_us() < end) {
        got = 0;
        for (int i = 0; i < npaths; ++i)
            got += tly_test_receiver_count(rx, paths[i]);
        if (got >= want)
            break;
        sleep_us(5000);
    }
    return got;
}

static int
env_int(const char *name, int def)
{
    const char *v = getenv(name);
    return v != NULL && atoi(v) > 0 ? atoi(v) : def;
}

/*
 * Steady `rate` events/s for `seconds` to four fresh fast endpoints (and a
 * fresh endpoint that never answers when `with_stuck`); appends the fast
 * endpoints' latencies (ms) to `*v`.
 */
static int
latency_run(int run, bool with_stuck, int rate, int seconds, double **v, int have)
{
    char id[40], paths[4][64], never[64];
    tly_test_script_t ok = {.secrets = {SECRET}};
    tly_test_script_t hang = {.fail_first = 1 << 30, .fail_status = 0, .hang_ms = 3600 * 1000};
    const char *ps[4];
    for (int i = 0; i < 4; ++i) {
        snprintf(paths[i], sizeof(paths[i]), "/lat-%d-%d", run, i);
        tly_test_receiver_script(rx, paths[i], &ok);
        add_endpoint(paths[i], id);
        ps[i] = paths[i];
    }
    snprintf(never, sizeof(never), "/never-%d", run);
    tly_test_receiver_script(rx, never, &hang);
    if (with_stuck)
        add_endpoint(never, id);
    sleep_us(1500000); /* the recorder reads endpoints per batch; let one pass */
    int n = rate * seconds;
    int64_t t0 = now_us();
    for (int i = 0; i < n; ++i) {
        sleep_us(t0 + (int64_t)i * 1000000 / rate - now_us());
        produce(i);
    }
    rd_kafka_flush(rk, 10000);
    wait_count(ps, 4, 4 * n, 60);
    for (int i = 0; i < 4; ++i)
        have = latencies(paths[i], v, have);
    drop_endpoints();
    return have;
}

int
main(int argc, char **argv)
{
    char err[512], id[40], name[64];
    if (argc != 4)
        die("usage", "webhooks <stack env file> <tally-worker binary> <log file>");
    read_env(argv[1]);
    db = PQconnectdb(env_pg);
    if (PQstatus(db) != CONNECTION_OK)
        die("could not connect to postgresql", PQerrorMessage(db));
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", env_brokers, err, sizeof(err)) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "linger.ms", "1", err, sizeof(err)) != RD_KAFKA_CONF_OK)
        die("kafka config", err);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (rk == NULL)
        die("could not create a kafka producer", err);
    uuid4(tenant);
    snprintf(name, sizeof(name), "bench-webhooks-%lld", (long long)time(NULL));
    const char *tv[] = {tenant, name};
    PQclear(sql("INSERT INTO tenants (id, name) VALUES ($1, $2)", 2, tv));
    rx = tly_test_receiver_start();
    pid_t worker = start_worker(argv[2], argv[3]);

    /* warm-up: the worker's consumer joins its group */
    tly_test_script_t ok = {.secrets = {SECRET}};
    tly_test_receiver_script(rx, "/warm", &ok);
    add_endpoint("/warm", id);
    sleep_us(1500000);
    const char *warm[] = {"/warm"};
    int got = 0;
    for (int i = 0; i < 120 && got == 0; ++i) {
        produce(-1);
        rd_kafka_flush(rk, 5000);
        got = wait_count(warm, 1, 1, 1);
    }
    if (got == 0)
        die("the webhooks worker never delivered", argv[3]);
    drop_endpoints();

    /* 1. throughput */
    int nevents = env_int("BENCH_WH_EVENTS", 2500), nend = env_int("BENCH_WH_ENDPOINTS", 8);
    char tpaths[64][32];
    const char *tp[64];
    if (nend > 64)
        nend = 64;
    for (int i = 0; i < nend; ++i) {
        snprintf(tpaths[i], sizeof(tpaths[i]), "/tp-%d", i);
        tly_test_receiver_script(rx, tpaths[i], &ok);
        add_endpoint(tpaths[i], id);
        tp[i] = tpaths[i];
    }
    sleep_us(1500000);
    int64_t t0 = now_us();
    for (int i = 0; i < nevents; ++i)
        produce(i);
    rd_kafka_flush(rk, 30000);
    int64_t produced = now_us();
    int delivered = wait_count(tp, nend, nevents * nend, 300);
    int64_t t1 = now_us();
    double tput = delivered / ((double)(t1 - t0) / 1e6);
    int bad = 0, n;
    for (int i = 0; i < nend; ++i) {
        tly_test_hit_t *h = tly_test_receiver_hits(rx, tpaths[i], &n);
        for (int k = 0; k < n; ++k)
            bad += h[k].sig_ok != 1;
        tly_test_hits_free(h, n);
    }
    printf("throughput: %d deliveries (%d events x %d endpoints) in %.2f s = %.0f deliveries/s (produce took %.2f s; %d bad "
           "signatures)\n",
           delivered, nevents, nend, (t1 - t0) / 1e6, tput, (produced - t0) / 1e6, bad);
    drop_endpoints();
    sleep_us(1000000);

    /* 2. latency with and without an endpoint that never answers, rounds interleaved (the machine's load drifts) */
    int rate = env_int("BENCH_WH_RATE", 50), secs = env_int("BENCH_WH_SECONDS", 10), rounds = env_int("BENCH_WH_ROUNDS", 3);
    double *va = NULL, *vb = NULL;
    int na = 0, nb = 0, stuck_attempts = 0;
    for (int r = 0; r < rounds; ++r) {
        na = latency_run(2 * r, false, rate, secs, &va, na);
        nb = latency_run(2 * r + 1, true, rate, secs, &vb, nb);
        char never[64];
        snprintf(never, sizeof(never), "/never-%d", 2 * r + 1);
        stuck_attempts += tly_test_receiver_count(rx, never);
    }
    double a50 = pct(va, na, 0.50), a99 = pct(va, na, 0.99), b50 = pct(vb, nb, 0.50), b99 = pct(vb, nb, 0.99);
    printf("latency, 4 fast endpoints, %d events/s, %d x %d s: p50 %.1f ms, p99 %.1f ms (%d deliveries)\n", rate, rounds, secs, a50,
           a99, na);
    printf("latency, same + 1 endpoint that never answers (rounds interleaved): p50 %.1f ms, p99 %.1f ms (%d deliveries; %d "
           "attempts to the stuck endpoints started)\n",
           b50, b99, nb, stuck_attempts);
    printf("{\"deliveries_per_s\":%.0f,\"deliveries\":%d,\"endpoints\":%d,\"latency_p50_ms\":%.1f,\"latency_p99_ms\":%.1f,"
           "\"stuck_latency_p50_ms\":%.1f,\"stuck_latency_p99_ms\":%.1f,\"rate\":%d}\n",
           tput, delivered, nend, a50, a99, b50, b99, rate);
    fflush(stdout);
    free(va);
    free(vb);

    kill(worker, SIGTERM);
    waitpid(worker, NULL, 0);
    const char *cv[] = {tenant};
    long long pending = sql_ll("SELECT count(*) FROM webhook_deliveries WHERE tenant_id = $1 AND status = 'pending'", 1, cv);
    fprintf(stderr, "(%lld deliveries left pending, those of the endpoint that never answers)\n", pending);
    rd_kafka_destroy(rk);
    PQfinish(db);
    _exit(0); /* the receiver may still hold the hanging connections' threads */
}
