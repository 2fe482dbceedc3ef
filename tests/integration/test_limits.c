/*
 * Rate limits across the fleet, on the `stack2` fixture: two command APIs and
 * two query APIs behind the gateway, sharing Redis.
 *
 *   one key hammered through both APIs (both instances each) for 10 s:
 *   admitted within 10 % of rate × time + burst; two keys of one tenant
 *   share its budget, each about half; Redis SIGKILLed and restarted under
 *   load: no 5xx, the free tier refuses and the standard tier keeps its
 *   local share while it is down, /readyz says degraded, and it all comes
 *   back by itself; long-polls beyond a key's share get 429; an overloaded
 *   query API sheds long-polls first (503 + Retry-After) and still answers
 *   lists and reads.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tly_test_http.h"
#include "tly_test_sql.h"
#include "tly_test_util.h"

#include <curl/curl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define NO_SUCH_JOB "/v1/jobs/6b1f2e51-8c0d-4a3e-9f27-440b5da193c8"

/* ---- hammering ------------------------------------------------------------ */

typedef struct st_hammer_t {
    const char *key;
    int64_t start_ms, end_ms;
    bool mixed; /* alternate reads (query APIs) and commands (command APIs) */
    pthread_mutex_t *lock;
    /* per 500 ms window since start_ms: admitted, limited; and totals */
    int admitted[64], limited[64];
    int total_admitted, total_limited, server_errors;
} hammer_t;

static void *
hammer_main(void *arg)
{
    hammer_t *h = arg;
    const char *json[] = {"Content-Type: application/json", NULL};
    for (int n = 0; tly_test_now_ms() < h->end_ms; ++n) {
        bool post = h->mixed && n % 2 == 1;
        tly_test_response_t r = post ? tly_test_request("POST", "/v1/accounts", h->key, "{}", json)
                                     : tly_test_request("GET", NO_SUCH_JOB, h->key, NULL, NULL);
        int64_t w = (tly_test_now_ms() - h->start_ms) / 500;
        if (w < 0 || w > 63)
            w = 63;
        pthread_mutex_lock(h->lock);
        if (r.status >= 500)
            ++h->server_errors;
        else if (r.status == 429)
            ++h->limited[w], ++h->total_limited;
        else
            ++h->admitted[w], ++h->total_admitted;
        pthread_mutex_unlock(h->lock);
        tly_test_response_free(&r);
    }
    return NULL;
}

/* Runs one hammer thread per key (`copies` each) for `ms`; results summed per key into `out`. */
static void
hammer(const char *const *keys, int nkeys, int copies, int ms, bool mixed, hammer_t *out)
{
    pthread_t tids[16];
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    int64_t start = tly_test_now_ms();
    int n = 0;
    for (int k = 0; k < nkeys; ++k) {
        memset(&out[k], 0, sizeof(out[k]));
        out[k] = (hammer_t){.key = keys[k], .start_ms = start, .end_ms = start + ms, .mixed = mixed, .lock = &lock};
    }
    for (int k = 0; k < nkeys; ++k)
        for (int c = 0; c < copies; ++c)
            assert_int_equal(pthread_create(&tids[n++], NULL, hammer_main, &out[k]), 0);
    for (int i = 0; i < n; ++i)
        pthread_join(tids[i], NULL);
}

/* ---- helpers ---------------------------------------------------------------- */

static void
tallyctl(const char *args, char *out, size_t cap)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "\"$TALLY_BIN/tallyctl\" %s 2>>\"$TALLY_VAR/log/tallyctl.log\"", args);
    tly_test_sh(cmd, out, cap);
}

/* Waits until every API instance authenticates `key` (keys are loaded every second). */
static void
wait_usable(const char *key)
{
    for (int i = 0; i < 100; ++i) {
        int ok = 0;
        for (int j = 0; j < 4; ++j) { /* round robin: both instances of each API */
            tly_test_response_t r = tly_test_request("GET", NO_SUCH_JOB, key, NULL, NULL);
            ok += r.status == 404;
            tly_test_response_free(&r);
        }
        if (ok == 4)
            return;
        tly_test_sleep_ms(100);
    }
    fail_msg("a new key never became usable");
}

static size_t
discard(char *p, size_t s, size_t n, void *u)
{
    return s * n;
}

static size_t
keep(char *p, size_t s, size_t n, void *u)
{
    char *buf = u;
    size_t have = strlen(buf), add = s * n;
    if (have + add < 4096) {
        memcpy(buf + have, p, add);
        buf[have + add] = '\0';
    }
    return s * n;
}

/* GET `url` (no key); the body goes to `body` (4 KiB) when not NULL. */
static long
get_url(const char *url, char *body)
{
    CURL *c = curl_easy_init();
    long status = 0;
    if (body != NULL)
        body[0] = '\0';
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, body != NULL ? keep : discard);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    return status;
}

/* Polls the first query API's admin /readyz until its status is `want`; true when it got there. */
static bool
readyz_becomes(const char *want, int timeout_ms)
{
    char url[256], body[4096], needle[64];
    snprintf(url, sizeof(url), "%s/readyz", tly_test_env("TALLY_QUERY_ADMIN_URL"));
    snprintf(needle, sizeof(needle), "\"status\":\"%s\"", want);
    for (int64_t end = tly_test_now_ms() + timeout_ms; tly_test_now_ms() < end; tly_test_sleep_ms(100))
        if (get_url(url, body) == 200 && strstr(body, needle) != NULL)
            return true;
    return false;
}

/* ---- one key, every instance ------------------------------------------------ */

static void
test_one_key_across_instances(void **state)
{
    char tenant[64], key[128];
    tly_test_make_tenant("limits-one", 20, tenant, sizeof(tenant), key, sizeof(key));
    tly_test_sleep_ms(1500); /* the readiness probes spent tokens: let the bucket fill */
    hammer_t h;
    const char *keys[] = {key};
    hammer(keys, 1, 3, 10000, true, &h);
    double expected = 20 * 10 + 20;
    fprintf(stderr,
            "# one key (20/s, burst 20) through 2 command + 2 query APIs for 10 s: %d admitted (expected %.0f), %d limited\n",
            h.total_admitted, expected, h.total_limited);
    assert_int_equal(h.server_errors, 0);
    assert_true(h.total_limited > h.total_admitted); /* the key really was hammered */
    assert_true(h.total_admitted >= 0.9 * expected && h.total_admitted <= 1.1 * expected);
}

/* ---- a tenant's budget, shared by its keys ---------------------------------- */

static void
test_tenant_budget_shared(void **state)
{
    char tenant[64], a[128], b[128], args[512];
    tly_test_make_tenant("limits-tenant", 1000, tenant, sizeof(tenant), a, sizeof(a));
    snprintf(args, sizeof(args), "keys create --tenant %s --scopes read,write --rate 1000 --burst 1000", tenant);
    tallyctl(args, b, sizeof(b));
    wait_usable(b);
    snprintf(args, sizeof(args), "limits set --tenant %s --rate 20 --burst 20", tenant);
    tallyctl(args, NULL, 0);
    /* every instance loads the budget within a second: RateLimit-Policy names it */
    bool seen = false;
    for (int i = 0; i < 40 && !seen; ++i, tly_test_sleep_ms(100)) {
        int named = 0;
        for (int j = 0; j < 4; ++j) {
            char policy[256] = "";
            tly_test_response_t r = tly_test_request("GET", NO_SUCH_JOB, j % 2 ? a : b, NULL, NULL);
            named += tly_test_header(&r, "ratelimit-policy", policy, sizeof(policy)) && strstr(policy, "\"tenant\";q=20;w=1");
            tly_test_response_free(&r);
        }
        seen = named == 4;
    }
    assert_true(seen);
    tly_test_sleep_ms(1500);
    hammer_t h[2];
    const char *keys[] = {a, b};
    hammer(keys, 2, 1, 6000, false, h);
    int total = h[0].total_admitted + h[1].total_admitted;
    double expected = 20 * 6 + 20;
    fprintf(stderr, "# two keys of a tenant (budget 20/s, burst 20) for 6 s: %d + %d admitted (expected %.0f in all)\n",
            h[0].total_admitted, h[1].total_admitted, expected);
    assert_int_equal(h[0].server_errors + h[1].server_errors, 0);
    assert_true(total >= 0.9 * expected && total <= 1.1 * expected);
    assert_true(h[0].total_admitted >= 0.3 * total && h[1].total_admitted >= 0.3 * total);
    /* RateLimit reports the policy nearest exhaustion: the tenant's */
    char limit[128] = "";
    tly_test_response_t r = tly_test_request("GET", NO_SUCH_JOB, a, NULL, NULL);
    assert_true(tly_test_header(&r, "ratelimit", limit, sizeof(limit)));
    assert_non_null(strstr(limit, "\"tenant\";r="));
    tly_test_response_free(&r);
}

/* ---- Redis SIGKILLed and restarted under load ------------------------------- */

static pid_t
redis_restart(void)
{
    char conf[512], logf[512], bin[256];
    tly_test_sh("command -v redis-server", bin, sizeof(bin));
    snprintf(conf, sizeof(conf), "%s/redis/redis.conf", tly_test_env("TALLY_VAR"));
    snprintf(logf, sizeof(logf), "%s/log/redis.log", tly_test_env("TALLY_VAR"));
    char *argv[] = {bin, conf, NULL};
    char *envp[] = {"PATH=/usr/bin:/bin", NULL};
    pid_t pid = tly_test_spawn(argv, envp, logf, false);
    tly_test_write_pid("redis", pid); /* tests/stack.sh down stops it */
    return pid;
}

typedef struct st_outage_t {
    hammer_t h[2];
    const char *keys[2];
} outage_t;

static void *
outage_load(void *arg)
{
    outage_t *o = arg;
    hammer(o->keys, 2, 1, 9000, false, o->h);
    return NULL;
}

static void
test_redis_killed_under_load(void **state)
{
    char tenant[64], admin[128], std[128], fr[128], args[512];
    tly_test_make_tenant("limits-outage", 1000, tenant, sizeof(tenant), admin, sizeof(admin));
    snprintf(args, sizeof(args), "keys create --tenant %s --scopes read --tier standard", tenant);
    tallyctl(args, std, sizeof(std));
    snprintf(args, sizeof(args), "keys create --tenant %s --scopes read --tier free", tenant);
    tallyctl(args, fr, sizeof(fr));
    wait_usable(std);
    wait_usable(fr);
    tly_test_sleep_ms(2000);
    outage_t o = {.keys = {std, fr}};
    pthread_t load;
    assert_int_equal(pthread_create(&load, NULL, outage_load, &o), 0);
    tly_test_sleep_ms(2000); /* windows 0-3: Redis up */
    pid_t redis = tly_test_read_pid("redis");
    assert_true(redis > 0);
    assert_int_equal(kill(redis, SIGKILL), 0);
    assert_true(readyz_becomes("degraded", 3000));
    tly_test_sleep_ms(2500 - 0); /* windows 5-8 (after 2.5 s): Redis down */
    redis_restart();
    assert_true(readyz_becomes("ok", 5000));
    pthread_join(load, NULL);
    int std_down = 0, free_down = 0, free_back = 0;
    for (int w = 5; w <= 8; ++w)
        std_down += o.h[0].admitted[w], free_down += o.h[1].admitted[w];
    for (int w = 14; w <= 17; ++w)
        free_back += o.h[1].admitted[w];
    fprintf(stderr,
            "# redis down: standard admitted %d, free %d (policy: local share, refuse); after recovery free admitted %d; "
            "5xx %d\n",
            std_down, free_down, free_back, o.h[0].server_errors + o.h[1].server_errors);
    assert_int_equal(o.h[0].server_errors + o.h[1].server_errors, 0);
    assert_true(std_down > 0);
    assert_int_equal(free_down, 0);
    assert_true(free_back > 0);
}

/* ---- long-polls beyond a key's share ---------------------------------------- */

/* A job that stays queued: a pending command record of the tenant. */
static void
queued_job(const char *tenant, char *job, size_t cap)
{
    PGconn *db = PQconnectdb(tly_test_env("TALLY_PG_DSN"));
    assert_int_equal(PQstatus(db), CONNECTION_OK);
    const char *params[] = {tenant};
    char *id = tly_test_sql_text(db,
                                 "INSERT INTO command_requests (job_id, event_id, tenant_id, idempotency_key, request_hash, "
                                 "state, locked_until, resource_type, resource_id) VALUES (gen_random_uuid(), "
                                 "gen_random_uuid(), $1::uuid, NULL, '\\x00', 'pending', now() + interval '1 hour', "
                                 "'account', gen_random_uuid()) RETURNING job_id",
                                 1, params);
    snprintf(job, cap, "%s", id);
    free(id);
    PQfinish(db);
}

typedef struct st_poll_t {
    const char *key, *path;
    long status;
    char code[64];
} poll_t;

static void *
poll_main(void *arg)
{
    poll_t *p = arg;
    const char *hdrs[] = {"Prefer: wait=3", NULL};
    tly_test_response_t r = tly_test_request("GET", p->path, p->key, NULL, hdrs);
    p->status = r.status;
    const char *code = r.json != NULL ? json_string_value(json_object_get(r.json, "code")) : NULL;
    snprintf(p->code, sizeof(p->code), "%s", code != NULL ? code : "");
    tly_test_response_free(&r);
    return NULL;
}

static void
test_long_poll_limit(void **state)
{
    char tenant[64], admin[128], fr[128], args[512], job[64], path[128];
    tly_test_make_tenant("limits-polls", 1000, tenant, sizeof(tenant), admin, sizeof(admin));
    snprintf(args, sizeof(args), "keys create --tenant %s --scopes read --tier free", tenant);
    tallyctl(args, fr, sizeof(fr));
    wait_usable(fr);
    queued_job(tenant, job, sizeof(job));
    snprintf(path, sizeof(path), "/v1/jobs/%s", job);
    poll_t polls[6];
    pthread_t tids[6];
    for (int i = 0; i < 6; ++i) {
        polls[i] = (poll_t){.key = fr, .path = path};
        assert_int_equal(pthread_create(&tids[i], NULL, poll_main, &polls[i]), 0);
    }
    int waited = 0, refused = 0;
    for (int i = 0; i < 6; ++i) {
        pthread_join(tids[i], NULL);
        waited += polls[i].status == 200;
        refused += polls[i].status == 429 && strcmp(polls[i].code, "concurrency_limited") == 0;
    }
    fprintf(stderr, "# 6 long-polls of a free key (2 long-polls: 1 per instance): %d waited, %d refused\n", waited, refused);
    assert_true(waited >= 1 && waited <= 2);
    assert_int_equal(waited + refused, 6);
}

/* ---- shedding order ------------------------------------------------------------ */

static void
test_shedding_order(void **state)
{
    char tenant[64], key[128], job[64], path[160], bin[512], port[16], base[64], logf[512];
    tly_test_make_tenant("limits-shed", 1000, tenant, sizeof(tenant), key, sizeof(key));
    queued_job(tenant, job, sizeof(job));
    int p = tly_test_free_port(), ap = tly_test_free_port();
    snprintf(port, sizeof(port), "%d", p);
    snprintf(base, sizeof(base), "http://127.0.0.1:%d", p);
    snprintf(bin, sizeof(bin), "%s/tally-query-api", tly_test_env("TALLY_BIN"));
    snprintf(logf, sizeof(logf), "%s/log/limits-shed-query-api.log", tly_test_env("TALLY_VAR"));
    char dsn[512], redis[128];
    snprintf(dsn, sizeof(dsn), "TALLY_PG_DSN=%s", tly_test_env("TALLY_PG_DSN"));
    snprintf(redis, sizeof(redis), "TALLY_REDIS_URL=%s", tly_test_env("TALLY_REDIS_URL"));
    char port_env[48], admin_env[48];
    snprintf(port_env, sizeof(port_env), "TALLY_HTTP_PORT=%s", port);
    snprintf(admin_env, sizeof(admin_env), "TALLY_ADMIN_PORT=%d", ap);
    /* one thread, and load 1.0 at 2 requests in flight */
    char *argv[] = {bin, NULL};
    char *envp[] = {dsn, redis, port_env, admin_env, "TALLY_HTTP_THREADS=1", "TALLY_SHED_INFLIGHT=2", NULL};
    pid_t pid = tly_test_spawn(argv, envp, logf, true);
    char url[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/readyz", ap); /* health is the admin port's */
    for (int i = 0; i < 100 && get_url(url, NULL) != 200; ++i)
        tly_test_sleep_ms(100);
    assert_int_equal(get_url(url, NULL), 200);
    const char *saved = strdup(tly_test_env("TALLY_URL"));
    setenv("TALLY_URL", base, 1);
    wait_usable(key);
    snprintf(path, sizeof(path), "/v1/jobs/%s", job);
    poll_t polls[2];
    pthread_t tids[2];
    for (int i = 0; i < 2; ++i) {
        polls[i] = (poll_t){.key = key, .path = path};
        assert_int_equal(pthread_create(&tids[i], NULL, poll_main, &polls[i]), 0);
        tly_test_sleep_ms(200);
    }
    /* two long-polls in flight: load 1.0, long-polls are shed, lists and reads are not */
    const char *wait[] = {"Prefer: wait=3", NULL};
    tly_test_response_t r = tly_test_request("GET", path, key, NULL, wait);
    char retry[16];
    assert_int_equal(r.status, 503);
    assert_string_equal(json_string_value(json_object_get(r.json, "code")), "overloaded");
    assert_true(tly_test_header(&r, "retry-after", retry, sizeof(retry)));
    tly_test_response_free(&r);
    r = tly_test_request("GET", "/v1/accounts?limit=1", key, NULL, NULL);
    assert_int_equal(r.status, 200);
    tly_test_response_free(&r);
    r = tly_test_request("GET", path, key, NULL, NULL);
    assert_int_equal(r.status, 200);
    tly_test_response_free(&r);
    for (int i = 0; i < 2; ++i) {
        pthread_join(tids[i], NULL);
        assert_int_equal(polls[i].status, 200);
    }
    /* the load gone, long-polls pass again */
    const char *short_wait[] = {"Prefer: wait=1", NULL};
    r = tly_test_request("GET", path, key, NULL, short_wait);
    assert_int_equal(r.status, 200);
    tly_test_response_free(&r);
    setenv("TALLY_URL", saved, 1);
    free((void *)saved);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

int
main(void)
{
    static const char *const vars[] = {"TALLY_BIN", "TALLY_VAR", "TALLY_PG_DSN"};
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); ++i) {
        const char *v = tly_test_env(vars[i]);
        if (v == NULL) {
            fprintf(stderr, "%s is not set\n", vars[i]);
            return 1;
        }
        setenv(vars[i], v, 1); /* for tallyctl, run through the shell */
    }
    curl_global_init(CURL_GLOBAL_ALL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_key_across_instances), cmocka_unit_test(test_tenant_budget_shared),
        cmocka_unit_test(test_long_poll_limit),          cmocka_unit_test(test_shedding_order),
        cmocka_unit_test(test_redis_killed_under_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
