/*
 * Webhook delivery end to end, against the real stack: events come from the
 * command API (deposits), the worker's webhooks role records and sends them
 * to a loopback receiver of our own (tests/support/tly_test_receiver.c),
 * which checks every signature with its own implementation of the documented
 * algorithm. Endpoints are inserted with SQL (the API writes the same rows).
 *
 * The stack's own worker is restarted without the webhooks role for the
 * duration (it would refuse loopback addresses), and this test runs the
 * webhooks role in workers of its own: private addresses allowed, a 1 s
 * timeout, and time compressed TIME_SCALE times (a simulated day lasts
 * 86400 / TIME_SCALE s: the retry schedule's three days about 5 s, the 5-day
 * disable window about 8.6 s). At the end the stack's worker is restarted as
 * it was.
 *
 * Rules covered: signature and headers; only events after the endpoint
 * exists; fail N times then succeed (same webhook-id); 410 disables and emits
 * endpoint.disabled; 429 + Retry-After; timeout; a never-answering endpoint
 * does not hold up another; a long outage then back (exactly the missing
 * events arrive, each once); failing for 5 days disables; secret rotation
 * (both signatures); SSRF refusals (a worker without allow-private); kill -9
 * of the worker during deliveries (nothing lost); tallyctl replay re-sends
 * nothing.
 *
 * Worker logs: $TALLY_VAR/log/webhooks-worker.log.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tly_test_http.h"
#include "tly_test_receiver.h"
#include "tly_test_sql.h"
#include "tly_test_util.h"

#include "tally/secretbox.h"

#include <fcntl.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define TIME_SCALE 50000
#define SIM_DAY_MS (86400 * 1000 / TIME_SCALE)
#define TIMEOUT_MS 1000
#define SECRET_A "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define SECRET_B "whsec_c2VjcmV0LWtleS1ieXRlcy0yNC1sb25nISE="

extern char **environ;

static const char *bin_dir, *var_dir;
static PGconn *db;
static char tenant_id[64], api_key[320], account[64];
static tly_test_receiver_t *rx;
static char **stack_argv, **stack_envp;
static pid_t hooks_pid;     /* our webhooks worker */
static int hooks_admin;     /* its admin port (/metrics) */
static char watcher_id[64]; /* endpoint subscribed to WebhookEndpointDisabled */

/* --- SQL ------------------------------------------------------------------------ */

#define sql(q, n, vals) tly_test_sql(db, (q), (n), (vals))

static long long
sql_ll(const char *q, int n, const char *const *vals)
{
    PGresult *res = sql(q, n, vals);
    assert_int_equal(PQntuples(res), 1);
    long long v = PQgetisnull(res, 0, 0) ? -1 : strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return v;
}

static void
sql_text(char *out, size_t cap, const char *q, int n, const char *const *vals)
{
    PGresult *res = sql(q, n, vals);
    assert_int_equal(PQntuples(res), 1);
    snprintf(out, cap, "%s", PQgetisnull(res, 0, 0) ? "" : PQgetvalue(res, 0, 0));
    PQclear(res);
}

/* Inserts an endpoint of our tenant at http://127.0.0.1:<receiver><path> (or `url` when not NULL); its id into `id`. */
static void
add_endpoint(const char *path, const char *url, const char *types, const char *secret, const char *previous,
             const char *previous_expires, char *id)
{
    char full[512];
    if (url == NULL)
        snprintf(full, sizeof(full), "http://127.0.0.1:%d%s", tly_test_receiver_port(rx), path);
    else
        snprintf(full, sizeof(full), "%s", url);
    /* stored as the command API stores them: sealed with the stack's key, bound to the endpoint id */
    char sealed[TLY_SECRETBOX_SEALED_MAX], sealed_prev[TLY_SECRETBOX_SEALED_MAX];
    sql_text(id, 64, "SELECT gen_random_uuid()", 0, NULL);
    assert_int_equal(tly_secretbox_seal(secret, id, sealed, sizeof(sealed)), 0);
    if (previous != NULL)
        assert_int_equal(tly_secretbox_seal(previous, id, sealed_prev, sizeof(sealed_prev)), 0);
    const char *vals[] = {id, tenant_id, full, types, sealed, previous != NULL ? sealed_prev : NULL, previous_expires};
    PQclear(sql("INSERT INTO webhook_endpoints (id, tenant_id, url, event_types, secret, previous_secret, "
                "previous_secret_expires_at) VALUES ($1::uuid, $2, $3, $4::text[], $5, $6, now() + $7::interval)",
                7, vals));
}

static void
delete_endpoint(const char *id)
{
    const char *vals[] = {id};
    PQclear(sql("UPDATE webhook_endpoints SET deleted_at = now() WHERE id = $1", 1, vals));
}

/* --- events through the command API ---------------------------------------------------- */

static json_t *
run(const char *path, const char *body, bool idem)
{
    char idem_h[128];
    tly_test_idem_header(idem_h, sizeof(idem_h));
    const char *hdrs[] = {idem_h, NULL};
    tly_test_response_t r = tly_test_request("POST", path, api_key, body, idem ? hdrs : NULL);
    if (r.status != 202)
        fprintf(stderr, "POST %s: %ld %s\n", path, r.status, r.body);
    assert_int_equal(r.status, 202);
    json_t *done = tly_test_wait_job(json_string_value(json_object_get(json_object_get(r.json, "job"), "url")), api_key, 30000);
    assert_non_null(done);
    assert_string_equal(json_string_value(json_object_get(done, "status")), "succeeded");
    tly_test_response_free(&r);
    return done;
}

/* A deposit; its FundsDeposited event id into `event` (when not NULL). */
static void
deposit(int amount, char *event)
{
    char path[128], body[128];
    snprintf(path, sizeof(path), "/v1/accounts/%s/deposits", account);
    snprintf(body, sizeof(body), "{\"amount\":%d,\"currency\":\"EUR\"}", amount);
    json_t *job = run(path, body, true);
    if (event != NULL) {
        const char *vals[] = {json_string_value(json_object_get(job, "id"))};
        /* the ledger entry of the job's deposit has its event's id */
        for (int i = 0; i < 100; ++i) {
            PGresult *res = sql("SELECT id FROM ledger_entries WHERE job_id = $1 LIMIT 1", 1, vals); /* id = the event's */
            bool found = PQntuples(res) == 1;
            if (found)
                snprintf(event, 64, "%s", PQgetvalue(res, 0, 0));
            PQclear(res);
            if (found)
                break;
            tly_test_sleep_ms(50);
        }
        assert_true(event[0] != '\0');
    }
    json_decref(job);
}

/* --- waiting ------------------------------------------------------------------------- */

static bool
wait_hits(const char *path, int n, int timeout_ms)
{
    int64_t end = tly_test_now_ms() + timeout_ms;
    while (tly_test_now_ms() < end) {
        if (tly_test_receiver_count(rx, path) >= n)
            return true;
        tly_test_sleep_ms(20);
    }
    return tly_test_receiver_count(rx, path) >= n;
}

static void
expect_hits(const char *path, int n, int timeout_ms)
{
    if (!wait_hits(path, n, timeout_ms))
        fail_msg("%s: %d requests after %d ms, expected %d", path, tly_test_receiver_count(rx, path), timeout_ms, n);
}

static bool
wait_sql(const char *q, int n, const char *const *vals, long long want, int timeout_ms)
{
    int64_t end = tly_test_now_ms() + timeout_ms;
    do {
        if (sql_ll(q, n, vals) == want)
            return true;
        tly_test_sleep_ms(50);
    } while (tly_test_now_ms() < end);
    return false;
}

/* Distinct webhook-ids answered 2xx on `path`. */
static int
distinct_ok(const char *path)
{
    int n, distinct = 0;
    tly_test_hit_t *h = tly_test_receiver_hits(rx, path, &n);
    for (int i = 0; i < n; ++i) {
        if (h[i].answered < 200 || h[i].answered > 299)
            continue;
        bool seen = false;
        for (int k = 0; k < i && !seen; ++k)
            seen = h[k].answered >= 200 && h[k].answered <= 299 && strcmp(h[k].id, h[i].id) == 0;
        distinct += !seen;
    }
    tly_test_hits_free(h, n);
    return distinct;
}

/* --- worker processes ----------------------------------------------------------------- */

static char **
env_with(char *const *base, const char *const *extra)
{
    size_t nb = 0, ne = 0;
    while (base != NULL && base[nb] != NULL)
        nb++;
    while (extra[ne] != NULL)
        ne++;
    char **env = calloc(nb + ne + 1, sizeof(*env));
    size_t k = 0;
    for (size_t i = 0; i < nb; ++i) {
        bool replaced = false;
        for (size_t j = 0; j < ne && !replaced; ++j)
            replaced = strncmp(base[i], extra[j], strcspn(extra[j], "=") + 1) == 0;
        if (!replaced)
            env[k++] = base[i];
    }
    for (size_t j = 0; j < ne; ++j)
        env[k++] = (char *)extra[j];
    return env;
}

static void
wait_gone(pid_t pid, int timeout_ms)
{
    for (int waited = 0; waited < timeout_ms; waited += 20) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid || kill(pid, 0) != 0)
            return;
        tly_test_sleep_ms(20);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* Restarts the stack's worker with `extra` settings over its own environment (none: as it was). */
static void
restart_stack_worker(const char *const *extra)
{
    char log[1024];
    pid_t old = tly_test_read_pid("tally-worker");
    if (old > 0) {
        kill(old, SIGTERM);
        wait_gone(old, 30000);
    }
    snprintf(log, sizeof(log), "%s/log/tally-worker.log", var_dir);
    char **env = env_with(stack_envp, extra);
    tly_test_write_pid("tally-worker", tly_test_spawn(stack_argv, env, log, false));
    free(env);
}

/* Starts our webhooks worker; `allow_private` false for the SSRF test. */
static pid_t
start_hooks(bool allow_private)
{
    char path[1024], log[1024];
    static char admin_env[64];
    hooks_admin = tly_test_free_port();
    snprintf(admin_env, sizeof(admin_env), "TALLY_ADMIN_PORT=%d", hooks_admin);
    const char *extra[] = {"TALLY_WORKER_ROLES=webhooks",
                           admin_env,
                           allow_private ? "TALLY_WEBHOOK_ALLOW_PRIVATE=true" : "TALLY_WEBHOOK_ALLOW_PRIVATE=false",
                           "TALLY_WEBHOOK_TIMEOUT_MS=1000",
                           "TALLY_WEBHOOK_TIME_SCALE=50000",
                           NULL};
    snprintf(path, sizeof(path), "%s/tally-worker", bin_dir);
    snprintf(log, sizeof(log), "%s/log/webhooks-worker.log", var_dir);
    char *argv[] = {path, NULL};
    char **env = env_with(environ, extra);
    pid_t pid = tly_test_spawn(argv, env, log, true);
    free(env);
    return pid;
}

static void
stop_hooks(int sig)
{
    if (hooks_pid > 0) {
        kill(hooks_pid, sig);
        wait_gone(hooks_pid, 30000);
    }
    hooks_pid = 0;
}

/* Waits until the webhooks consumer records and the sender sends: an endpoint for AccountOpened gets the next one. */
static void
wait_pipeline(const char *probe_path)
{
    char ep[64];
    add_endpoint(probe_path, NULL, "{AccountOpened}", SECRET_A, NULL, "0 s", ep);
    int before = tly_test_receiver_count(rx, probe_path);
    json_t *job = run("/v1/accounts", "{\"currency\":\"EUR\",\"label\":\"probe\"}", false);
    json_decref(job);
    expect_hits(probe_path, before + 1, 90000);
    delete_endpoint(ep);
}

/* --- setup ----------------------------------------------------------------------------- */

static int
setup(void **state)
{
    char tenant[320], path[128];
    bin_dir = tly_test_env("TALLY_BIN");
    var_dir = tly_test_env("TALLY_VAR");
    static const char *const pass[] = {"TALLY_BIN", "TALLY_PG_DSN", "TALLY_KAFKA_BROKERS", "TALLY_KAFKA_TOPIC",
                                       "TALLY_SECRET_KEYS"};
    for (size_t i = 0; i < sizeof(pass) / sizeof(pass[0]); ++i) /* for tallyctl and our workers */
        setenv(pass[i], tly_test_env(pass[i]), 1);
    db = PQconnectdb(tly_test_env("TALLY_PG_DSN"));
    assert_int_equal(PQstatus(db), CONNECTION_OK);
    tly_test_make_tenant("webhooks", 1000, tenant, sizeof(tenant), api_key, sizeof(api_key));
    const char *tv[] = {tenant};
    sql_text(tenant_id, sizeof(tenant_id), "SELECT id FROM tenants WHERE id::text = $1 OR name = $1", 1, tv);

    pid_t pid = tly_test_read_pid("tally-worker");
    assert_true(pid > 0);
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    stack_argv = tly_test_read_nul_vector(path);
    snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
    stack_envp = tly_test_read_nul_vector(path);
    char err[256];
    const char *keys = tly_test_env("TALLY_SECRET_KEYS");
    if (keys == NULL || tly_secretbox_configure(keys, err, sizeof(err)) != 1)
        return -1;
    assert_non_null(stack_argv);
    const char *no_hooks[] = {"TALLY_WORKER_ROLES=decider,saga,projector", NULL};
    restart_stack_worker(no_hooks);

    rx = tly_test_receiver_start();
    tly_test_script_t ok = {.secrets = {SECRET_A}};
    tly_test_receiver_script(rx, "/probe", &ok);
    tly_test_receiver_script(rx, "/watcher", &ok);
    hooks_pid = start_hooks(true);
    json_t *job = run("/v1/accounts", "{\"currency\":\"EUR\",\"label\":\"webhooks\"}", false);
    snprintf(account, sizeof(account), "%s", json_string_value(json_object_get(json_object_get(job, "resource"), "id")));
    json_decref(job);
    add_endpoint("/watcher", NULL, "{WebhookEndpointDisabled}", SECRET_A, NULL, "0 s", watcher_id);
    wait_pipeline("/probe");
    return 0;
}

static int
teardown(void **state)
{
    stop_hooks(SIGTERM);
    const char *none[] = {NULL};
    if (stack_argv != NULL)
        restart_stack_worker(none); /* as the stack started it */
    if (rx != NULL)
        tly_test_receiver_stop(rx);
    PQfinish(db);
    return 0;
}

/* --- the rules ----------------------------------------------------------------------------- */

/* Headers, signature, body; the delivery and its attempt in the database; nothing from before the endpoint existed. */
static void
test_signed_delivery(void **state)
{
    char ep[64], late[64], event[64] = "", event2[64] = "";
    tly_test_script_t s = {.secrets = {SECRET_A}};
    tly_test_receiver_script(rx, "/signed", &s);
    tly_test_receiver_script(rx, "/late", &s);
    add_endpoint("/signed", NULL, "{FundsDeposited}", SECRET_A, NULL, "0 s", ep);
    deposit(150, event);
    expect_hits("/signed", 1, 20000);
    add_endpoint("/late", NULL, "{*}", SECRET_A, NULL, "0 s", late); /* after the first deposit */
    deposit(250, event2);
    expect_hits("/signed", 2, 20000);
    expect_hits("/late", 2, 20000); /* DepositRequested and FundsDeposited of the second deposit */
    tly_test_sleep_ms(500);

    int n;
    tly_test_hit_t *h = tly_test_receiver_hits(rx, "/signed", &n);
    assert_int_equal(n, 2);
    assert_int_equal(h[0].sig_ok, 1);
    assert_int_equal(h[0].nsigs, 1);
    assert_true(h[0].timestamp_ok);
    assert_int_equal(h[0].answered, 200);
    json_error_t jerr;
    json_t *body = json_loads(h[0].body, 0, &jerr);
    assert_non_null(body);
    assert_string_equal(json_string_value(json_object_get(body, "type")), "FundsDeposited");
    json_t *data = json_object_get(body, "data");
    assert_string_equal(json_string_value(json_object_get(data, "event_id")), event);
    assert_string_equal(json_string_value(json_object_get(data, "aggregate_id")), account);
    assert_int_equal(json_integer_value(json_object_get(data, "amount")), 150);
    assert_non_null(json_object_get(body, "timestamp"));
    json_decref(body);
    /* the webhook-id is the delivery row's id; one succeeded attempt */
    const char *vals[] = {h[0].id, ep, event};
    assert_int_equal(sql_ll("SELECT count(*) FROM webhook_deliveries WHERE id = $1 AND endpoint_id = $2 AND event_id = $3 "
                            "AND status = 'succeeded' AND attempts = 1 AND last_status_code = 200",
                            3, vals),
                     1);
    assert_int_equal(
        sql_ll("SELECT count(*) FROM webhook_attempts WHERE delivery_id = $1 AND attempt = 1 AND status_code = 200", 1, vals), 1);
    tly_test_hits_free(h, n);

    /* the late endpoint got only the second deposit's events */
    h = tly_test_receiver_hits(rx, "/late", &n);
    assert_int_equal(n, 2);
    for (int i = 0; i < n; ++i) {
        body = json_loads(h[i].body, 0, &jerr);
        const char *type = json_string_value(json_object_get(body, "type"));
        assert_true(strcmp(type, "DepositRequested") == 0 || strcmp(type, "FundsDeposited") == 0);
        if (strcmp(type, "FundsDeposited") == 0)
            assert_string_equal(json_string_value(json_object_get(json_object_get(body, "data"), "event_id")), event2);
        json_decref(body);
    }
    tly_test_hits_free(h, n);
    delete_endpoint(ep);
    delete_endpoint(late);
}

/* 500 three times, then 200: four attempts with the same webhook-id, then healthy again. */
static void
test_fail_then_succeed(void **state)
{
    char ep[64];
    tly_test_script_t s = {.fail_first = 3, .fail_status = 500, .secrets = {SECRET_A}};
    tly_test_script_t moved = {.fail_first = 1, .fail_status = 307, .secrets = {SECRET_A}};
    char redirect_ep[64], codes[64];
    tly_test_receiver_script(rx, "/flaky", &s);
    tly_test_receiver_script(rx, "/moved", &moved);
    add_endpoint("/flaky", NULL, "{FundsDeposited}", SECRET_A, NULL, "0 s", ep);
    add_endpoint("/moved", NULL, "{FundsDeposited}", SECRET_A, NULL, "0 s", redirect_ep);
    deposit(10, NULL);
    expect_hits("/flaky", 4, 20000);
    /* a redirect is a failure: never followed, retried */
    expect_hits("/moved", 2, 20000);
    const char *rv[] = {redirect_ep};
    assert_true(
        wait_sql("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND status = 'succeeded'", 1, rv, 1, 5000));
    sql_text(codes, sizeof(codes),
             "SELECT string_agg(a.status_code::text, ',' ORDER BY a.attempt) FROM webhook_attempts a "
             "JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.endpoint_id = $1",
             1, rv);
    assert_string_equal(codes, "307,200");
    delete_endpoint(redirect_ep);
    tly_test_sleep_ms(300);
    int n;
    tly_test_hit_t *h = tly_test_receiver_hits(rx, "/flaky", &n);
    assert_int_equal(n, 4);
    for (int i = 0; i < n; ++i) {
        assert_string_equal(h[i].id, h[0].id);
        assert_int_equal(h[i].sig_ok, 1);
        assert_int_equal(h[i].answered, i < 3 ? 500 : 200);
    }
    const char *vals[] = {h[0].id};
    assert_true(wait_sql("SELECT count(*) FROM webhook_deliveries WHERE id = $1 AND status = 'succeeded' AND attempts = 4", 1, vals,
                         1, 5000));
    sql_text(codes, sizeof(codes),
             "SELECT string_agg(status_code::text, ',' ORDER BY attempt) FROM webhook_attempts WHERE delivery_id = $1", 1, vals);
    assert_string_equal(codes, "500,500,500,200");
    const char *ev[] = {ep};
    assert_int_equal(sql_ll("SELECT count(*) FROM webhook_endpoints WHERE id = $1 AND enabled AND failing_since IS NULL", 1, ev),
                     1);
    tly_test_hits_free(h, n);
    delete_endpoint(ep);
}

/* Expects a WebhookEndpointDisabled for `ep` with `reason` at the watcher endpoint (through outbox, relay, Kafka, webhooks). */
static void
expect_disabled_event(const char *ep, const char *reason, int timeout_ms)
{
    int64_t end = tly_test_now_ms() + timeout_ms;
    for (;;) {
        int n;
        bool found = false;
        tly_test_hit_t *h = tly_test_receiver_hits(rx, "/watcher", &n);
        for (int i = 0; i < n && !found; ++i) {
            json_error_t jerr;
            json_t *b = json_loads(h[i].body, 0, &jerr);
            json_t *d = json_object_get(b, "data");
            found = strcmp(json_string_value(json_object_get(b, "type")), "WebhookEndpointDisabled") == 0 &&
                    strcmp(json_string_value(json_object_get(d, "endpoint_id")), ep) == 0 &&
                    strcmp(json_string_value(json_object_get(d, "reason")), reason) == 0;
            json_decref(b);
        }
        tly_test_hits_free(h, n);
        if (found)
            return;
        if (tly_test_now_ms() > end)
            fail_msg("no WebhookEndpointDisabled (%s) for %s", reason, ep);
        tly_test_sleep_ms(100);
    }
}

/* 410 Gone: one attempt, the endpoint is disabled at once, endpoint.disabled is recorded, nothing more is sent. */
static void
test_gone(void **state)
{
    char ep[64];
    tly_test_script_t s = {.status = 410, .secrets = {SECRET_A}};
    tly_test_receiver_script(rx, "/gone", &s);
    add_endpoint("/gone", NULL, "{FundsDeposited}", SECRET_A, NULL, "0 s", ep);
    deposit(20, NULL);
    expect_hits("/gone", 1, 20000);
    const char *vals[] = {ep};
    assert_true(wait_sql("SELECT count(*) FROM webhook_endpoints WHERE id = $1 AND NOT enabled AND disabled_reason = 'gone'", 1,
                         vals, 1, 5000));
    assert_int_equal(sql_ll("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND status = 'failed' AND attempts = 1 "
                            "AND last_status_code = 410",
                            1, vals),
                     1);
    expect_disabled_event(ep, "gone", 20000);
    deposit(21, NULL);
    tly_test_sleep_ms(1500);
    assert_int_equal(tly_test_receiver_count(rx, "/gone"), 1);
    assert_int_equal(sql_ll("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1", 1, vals), 1);
}

/* 429 with Retry-After: 2 (the schedule's step would be a fraction of a millisecond): the retry waits 2 s. */
static void
test_retry_after(void **state)
{
    char ep[64];
    tly_test_script_t s = {.fail_first = 1, .fail_status = 429, .retry_after = "2", .secrets = {SECRET_A}};
    tly_test_receiver_script(rx, "/busy", &s);
    add_endpoint("/busy", NULL, "{FundsDeposited}", SECRET_A, NULL, "0 s", ep);
    deposit(30, NULL);
    expect_hits("/busy", 2, 20000);
    int n;
    tly_test_hit_t *h = tly_test_receiver_hits(rx, "/busy", &n);
    int64_t gap_ms = (h[1].at_us - h[0].at_us) / 1000;
    assert_true(gap_ms >= 1950 && gap_ms < 6000);
    assert_int_equal(h[0].answered, 429);
    assert_int_equal(h[1].answered, 200);
    assert_string_equal(h[0].id, h[1].id);
    tly_test_hits_free(h, n);
    delete_endpoint(ep);
}

/* No answer within the timeout: the attempt fails as a timeout and is retried. */
static void
test_timeout(void **state)
{
    char ep[64];
    tly_test_script_t s = {.fail_first = 1, .fail_status = 0, .hang_ms = 5000, .secrets = {SECRET_A}};
    tly_test_receiver_script(rx, "/slow", &s);
    add_endpoint("/slow", NULL, "{FundsDeposited}", SECRET_A, NULL, "0 s", ep);
    deposit(40, NULL);
    expect_hits("/slow", 2, 20000);
    int n;
    tly_test_hit_t *h = tly_test_receiver_hits(rx, "/slow", &n);
    int64_t gap_ms = (h[1].at_us - h[0].at_us) / 1000;
    assert_true(gap_ms >= TIMEOUT_MS - 50);
    const char *vals[] = {h[0].id};
    assert_true(wait_sql("SELECT count(*) FROM webhook_deliveries WHERE id = $1 AND status = 'succeeded' AND attempts = 2", 1, vals,
                         1, 5000));
    assert_int_equal(sql_ll("SELECT count(*) FROM webhook_attempts WHERE delivery_id = $1 AND attempt = 1 AND status_code IS NULL "
                            "AND error LIKE 'timeout%' AND latency_ms >= 900",
                            1, vals),
                     1);
    tly_test_hits_free(h, n);
    delete_endpoint(ep);
}

/* An endpoint that never answers does not hold up another one. */
static void
test_slow_endpoint_isolated(void **state)
{
    char stuck[64], fast[64];
    tly_test_script_t hang = {.fail_first = 1000000, .fail_status = 0, .hang_ms = 60000, .secrets = {SECRET_A}};
    tly_test_script_t ok = {.secrets = {SECRET_A}};
    tly_test_receiver_script(rx, "/stuck", &hang);
    tly_test_receiver_script(rx, "/fast", &ok);
    add_endpoint("/stuck", NULL, "{FundsDeposited}", SECRET_A, NULL, "0 s", stuck);
    add_endpoint("/fast", NULL, "{FundsDeposited}", SECRET_A, NULL, "0 s", fast);
    for (int i = 0; i < 10; ++i) {
        int64_t t0 = tly_test_now_ms();
        deposit(50 + i, NULL);
        expect_hits("/fast", i + 1, 5000);
        int64_t took = tly_test_now_ms() - t0;
        assert_true(took < 3000);
    }
    assert_true(tly_test_receiver_count(rx, "/stuck") >= 4);
    delete_endpoint(stuck);
    delete_endpoint(fast);
    tly_test_sleep_ms(TIMEOUT_MS + 200); /* the hanging attempts end */
}

/* A receiver down for a simulated day and a half (every attempt refused), then back: every missed event arrives, once. */
static void
test_long_outage(void **state)
{
    char ep[64], events[5][64];
    tly_test_script_t ok = {.secrets = {SECRET_A}};
    tly_test_receiver_script(rx, "/outage", &ok);
    add_endpoint("/outage", NULL, "{FundsDeposited}", SECRET_A, NULL, "0 s", ep);
    tly_test_receiver_set_down(rx, true);
    int64_t down_at = tly_test_now_ms();
    for (int i = 0; i < 5; ++i) {
        events[i][0] = '\0';
        deposit(60 + i, events[i]);
    }
    const char *vals[] = {ep};
    /* every delivery failed at least twice while down */
    assert_true(wait_sql("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND attempts >= 2 AND status = 'pending'",
                         1, vals, 5, 10000));
    while (tly_test_now_ms() - down_at < SIM_DAY_MS * 3 / 2)
        tly_test_sleep_ms(50);
    assert_int_equal(
        sql_ll("SELECT count(*) FROM webhook_endpoints WHERE id = $1 AND enabled AND failing_since IS NOT NULL", 1, vals), 1);
    tly_test_receiver_set_down(rx, false);
    expect_hits("/outage", 5, 30000);
    assert_true(
        wait_sql("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND status = 'succeeded'", 1, vals, 5, 10000));
    tly_test_sleep_ms(500);
    int n;
    tly_test_hit_t *h = tly_test_receiver_hits(rx, "/outage", &n);
    assert_int_equal(n, 5); /* each once */
    for (int e = 0; e < 5; ++e) {
        int seen = 0;
        for (int i = 0; i < n; ++i) {
            json_error_t jerr;
            json_t *b = json_loads(h[i].body, 0, &jerr);
            seen += strcmp(json_string_value(json_object_get(json_object_get(b, "data"), "event_id")), events[e]) == 0;
            json_decref(b);
        }
        assert_int_equal(seen, 1);
    }
    tly_test_hits_free(h, n);
    assert_int_equal(sql_ll("SELECT count(*) FROM webhook_endpoints WHERE id = $1 AND enabled AND failing_since IS NULL", 1, vals),
                     1);
    delete_endpoint(ep);
}

/* Every attempt fails for 5 (simulated) days: the endpoint is disabled (failing) and endpoint.disabled recorded. */
static void
test_disabled_after_days(void **state)
{
    char ep[64];
    tly_test_script_t bad = {.fail_first = 1000000, .fail_status = 500, .secrets = {SECRET_A}};
    tly_test_receiver_script(rx, "/broken", &bad);
    add_endpoint("/broken", NULL, "{FundsDeposited}", SECRET_A, NULL, "0 s", ep);
    deposit(70, NULL);
    const char *vals[] = {ep};
    assert_true(wait_sql("SELECT count(*) FROM webhook_endpoints WHERE id = $1 AND NOT enabled AND disabled_reason = 'failing'", 1,
                         vals, 1, SIM_DAY_MS * 5 + 20000));
    /* not before five days of failures */
    assert_int_equal(sql_ll("SELECT count(*) FROM webhook_endpoints WHERE id = $1 AND updated_at - failing_since >= $2::bigint * "
                            "interval '1 millisecond'",
                            2, (const char *const[]){ep, "8500"}),
                     1);
    /* its delivery used the whole schedule: ten attempts */
    assert_int_equal(
        sql_ll("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND status = 'failed' AND attempts = 10", 1, vals),
        1);
    assert_int_equal(tly_test_receiver_count(rx, "/broken"), 10);
    expect_disabled_event(ep, "failing", 20000);
}

/* A rotation: both secrets sign while the previous one is valid, then only the new one. */
static void
test_rotation(void **state)
{
    char ep[64];
    tly_test_script_t s = {.secrets = {SECRET_B, SECRET_A}}; /* bit 0: the new secret, bit 1: the previous */
    tly_test_receiver_script(rx, "/rotated", &s);
    add_endpoint("/rotated", NULL, "{FundsDeposited}", SECRET_B, SECRET_A, "1 hour", ep);
    deposit(80, NULL);
    expect_hits("/rotated", 1, 20000);
    const char *vals[] = {ep};
    PQclear(sql("UPDATE webhook_endpoints SET previous_secret_expires_at = now() - interval '1 second' WHERE id = $1", 1, vals));
    deposit(81, NULL);
    expect_hits("/rotated", 2, 20000);
    int n;
    tly_test_hit_t *h = tly_test_receiver_hits(rx, "/rotated", &n);
    assert_int_equal(h[0].nsigs, 2);
    assert_int_equal(h[0].sig_ok, 3);
    assert_int_equal(h[1].nsigs, 1);
    assert_int_equal(h[1].sig_ok, 1);
    tly_test_hits_free(h, n);
    delete_endpoint(ep);
}

/* kill -9 of the worker while deliveries are in flight: after a restart every delivery arrives. */
static void
test_kill9(void **state)
{
    char ep[64];
    tly_test_script_t slow = {.delay_ms = 150, .secrets = {SECRET_A}};
    tly_test_receiver_script(rx, "/kill9", &slow);
    add_endpoint("/kill9", NULL, "{FundsDeposited}", SECRET_A, NULL, "0 s", ep);
    for (int i = 0; i < 12; ++i)
        deposit(90 + i, NULL);
    expect_hits("/kill9", 3, 20000);
    stop_hooks(SIGKILL); /* with attempts in flight: 4 per endpoint, 150 ms each */
    int at_kill = distinct_ok("/kill9");
    assert_true(at_kill < 12);
    for (int i = 0; i < 8; ++i) /* recorded by the next worker */
        deposit(110 + i, NULL);
    hooks_pid = start_hooks(true);
    const char *vals[] = {ep};
    assert_true(
        wait_sql("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND status = 'succeeded'", 1, vals, 20, 90000));
    assert_int_equal(distinct_ok("/kill9"), 20);
    assert_int_equal(sql_ll("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1", 1, vals), 20);
    fprintf(stderr, "kill -9: %d of 20 delivered at the kill, %d requests in all (re-sent after the lease: %d)\n", at_kill,
            tly_test_receiver_count(rx, "/kill9"), tly_test_receiver_count(rx, "/kill9") - 20);
    delete_endpoint(ep);
}

/* tallyctl replay rebuilds the read models and sends nothing: no delivery, no attempt, no request. */
static void
test_replay_sends_nothing(void **state)
{
    char ep[64], cmd[1024];
    tly_test_script_t ok = {.secrets = {SECRET_A}};
    tly_test_receiver_script(rx, "/replay", &ok);
    add_endpoint("/replay", NULL, "{*}", SECRET_A, NULL, "0 s", ep);
    deposit(120, NULL);
    expect_hits("/replay", 2, 20000);
    tly_test_sleep_ms(500);
    long long deliveries = sql_ll("SELECT count(*) FROM webhook_deliveries", 0, NULL);
    long long attempts = sql_ll("SELECT count(*) FROM webhook_attempts", 0, NULL);
    int hits = tly_test_receiver_count(rx, NULL);
    snprintf(cmd, sizeof(cmd), "\"$TALLY_BIN/tallyctl\" replay >/dev/null 2>&1 && echo ok");
    char out[64];
    tly_test_sh(cmd, out, sizeof(out));
    assert_string_equal(out, "ok");
    tly_test_sleep_ms(2000);
    assert_int_equal(sql_ll("SELECT count(*) FROM webhook_deliveries", 0, NULL), deliveries);
    assert_int_equal(sql_ll("SELECT count(*) FROM webhook_attempts", 0, NULL), attempts);
    assert_int_equal(tly_test_receiver_count(rx, NULL), hits);
    delete_endpoint(ep);
}

/* A counter of our webhooks worker's /metrics for the webhooks consumer (0 when absent). */
static long long
hooks_metric(const char *name)
{
    char cmd[512], out[64];
    snprintf(cmd, sizeof(cmd),
             "curl -fsS --max-time 5 http://127.0.0.1:%d/metrics | awk '$1 == \"%s{consumer=\\\"webhooks\\\"}\" "
             "{ v = $2 } END { print v + 0 }'",
             hooks_admin, name);
    tly_test_sh(cmd, out, sizeof(out));
    return strtoll(out, NULL, 10);
}

/*
 * A tenant without endpoints costs the recording consumer no transaction: its
 * events are passed over (positions move, written at most once a second), so
 * the transactions counted are at most the seconds the events took, where
 * one per batch would be about one per event (each deposit below waits for
 * its job, so its two events come in batches of their own).
 */
static void
test_quiet_tenant_costs_no_transactions(void **state)
{
    char tenant[320], key[320], saved[320], quiet[64], path[128];
    tly_test_make_tenant("quiet", 1000, tenant, sizeof(tenant), key, sizeof(key));
    snprintf(saved, sizeof(saved), "%s", api_key);
    snprintf(api_key, sizeof(api_key), "%s", key);
    json_t *job = run("/v1/accounts", "{\"currency\":\"EUR\",\"label\":\"quiet\"}", false);
    snprintf(quiet, sizeof(quiet), "%s", json_string_value(json_object_get(json_object_get(job, "resource"), "id")));
    json_decref(job);
    long long applied0 = hooks_metric("tally_events_applied_total");
    long long tx0 = hooks_metric("tally_consumer_transactions_total");
    int64_t t0 = tly_test_now_ms();
    snprintf(path, sizeof(path), "/v1/accounts/%s/deposits", quiet);
    for (int i = 0; i < 20; ++i)
        json_decref(run(path, "{\"amount\":5,\"currency\":\"EUR\"}", true));
    snprintf(api_key, sizeof(api_key), "%s", saved);
    int64_t end = tly_test_now_ms() + 30000;
    while (hooks_metric("tally_events_applied_total") < applied0 + 40 && tly_test_now_ms() < end)
        tly_test_sleep_ms(100);
    long long applied = hooks_metric("tally_events_applied_total") - applied0;
    long long txs = hooks_metric("tally_consumer_transactions_total") - tx0;
    double secs = (double)(tly_test_now_ms() - t0) / 1000.0;
    fprintf(stderr, "quiet tenant: %lld events passed over in %.1f s with %lld transactions\n", applied, secs, txs);
    assert_true(applied >= 40);
    assert_true(txs <= (long long)secs + 2);
    /* and the positions past them are written, by the once-a-second flush */
    assert_true(wait_sql("SELECT (max(updated_at) > now() - interval '3 seconds')::int FROM consumer_positions "
                         "WHERE consumer = 'webhooks'",
                         0, NULL, 1, 5000));
}

/* Without allow-private: plain http, a name resolving to loopback, the metadata address: refused, never connected. */
static void
test_ssrf(void **state)
{
    char http_ep[64], dns_ep[64], meta_ep[64], url[256];
    tly_test_script_t ok = {.secrets = {SECRET_A}};
    tly_test_receiver_script(rx, "/ssrf", &ok);
    stop_hooks(SIGTERM);
    hooks_pid = start_hooks(false);
    add_endpoint("/ssrf", NULL, "{FundsDeposited}", SECRET_A, NULL, "0 s", http_ep);
    /* a name for loopback (the refusal of a name that DNS resolves to a private address at connect time is in
     * tests/unit/worker/test_webhook_connect.c: no DNS here can give a public-looking name a private address) */
    const char *host = "localhost";
    snprintf(url, sizeof(url), "https://%s:%d/ssrf", host, tly_test_receiver_port(rx));
    add_endpoint(NULL, url, "{FundsDeposited}", SECRET_A, NULL, "0 s", dns_ep);
    add_endpoint(NULL, "https://169.254.169.254/latest/meta-data", "{FundsDeposited}", SECRET_A, NULL, "0 s", meta_ep);
    deposit(130, NULL);
    const char *ids[] = {http_ep, dns_ep, meta_ep};
    for (int i = 0; i < 3; ++i) {
        const char *vals[] = {ids[i]};
        /* refused and retried: at least two attempts, none reached a server */
        if (!wait_sql("SELECT (count(*) >= 2 AND count(a.status_code) = 0)::int FROM webhook_attempts a "
                      "JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.endpoint_id = $1",
                      1, vals, 1, 90000))
            fail_msg("endpoint %d: fewer than two refused attempts", i);
        char err[512];
        sql_text(err, sizeof(err),
                 "SELECT a.error FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id "
                 "WHERE d.endpoint_id = $1 ORDER BY a.attempt LIMIT 1",
                 1, vals);
        static const char *const expect[] = {"must use https", "must name a public host", "private, loopback"};
        fprintf(stderr, "ssrf %d: %s\n", i, err);
        assert_non_null(strstr(err, expect[i]));
    }
    assert_int_equal(tly_test_receiver_count(rx, "/ssrf"), 0);
    delete_endpoint(http_ep);
    delete_endpoint(dns_ep);
    delete_endpoint(meta_ep);
    stop_hooks(SIGTERM);
    hooks_pid = start_hooks(true);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signed_delivery),
        cmocka_unit_test(test_fail_then_succeed),
        cmocka_unit_test(test_gone),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_slow_endpoint_isolated),
        cmocka_unit_test(test_long_outage),
        cmocka_unit_test(test_disabled_after_days),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_replay_sends_nothing),
        cmocka_unit_test(test_quiet_tenant_costs_no_transactions),
        cmocka_unit_test(test_kill9),
        cmocka_unit_test(test_ssrf),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
