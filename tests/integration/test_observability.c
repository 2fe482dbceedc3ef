/*
 * Observability of the running stack: each service's admin port
 * (/metrics, /healthz, /readyz), metrics that move with requests, JSON log
 * lines carrying the trace id of a request from the API to the worker, no API
 * key or secret in any log, and /readyz following PostgreSQL down and up.
 *
 * Needs the local stack (reads TALLY_VAR: its logs, and it restarts the
 * stack's PostgreSQL with pg_ctl for the readiness flip).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tly_test_http.h"
#include "tly_test_util.h"

#include <curl/curl.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* tly_live_<16 base32 id>_<43 base64url secret>: the secret may itself hold '_' */
#define SECRET_AT (sizeof("tly_live_") - 1 + 16 + 1)

static const char *key, *var_dir;
static const char *admin_url[3]; /* command, query, worker */
static const char *admin_name[3] = {"command-api", "query-api", "worker"};
static char created_keys[4][160]; /* keys created over HTTP by this test: they must not be logged either */
static int ncreated;

/* ---- small helpers --------------------------------------------------------- */

typedef struct st_text_t {
    char *p;
    size_t len;
} text_t;

static size_t
on_data(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    text_t *t = userdata;
    size_t n = size * nmemb;
    t->p = realloc(t->p, t->len + n + 1);
    assert_non_null(t->p);
    memcpy(t->p + t->len, ptr, n);
    t->len += n;
    t->p[t->len] = '\0';
    return n;
}

/* GET (or `method`) base + path on an admin port; returns the status, body in *body (caller frees). */
static long
admin_call(const char *method, const char *base, const char *path, char **body, char *ctype, size_t ctcap)
{
    char url[512];
    text_t t = {NULL, 0};
    long status = 0;
    char *ct = NULL;
    snprintf(url, sizeof(url), "%s%s", base, path);
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    CURLcode rc = curl_easy_perform(c);
    if (rc != CURLE_OK)
        fail_msg("%s %s: %s", method, url, curl_easy_strerror(rc));
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
    if (ctype != NULL)
        snprintf(ctype, ctcap, "%s", ct != NULL ? ct : "");
    curl_easy_cleanup(c);
    if (body != NULL)
        *body = t.p != NULL ? t.p : strdup("");
    else
        free(t.p);
    return status;
}

/* The value of sample `series` (e.g. `name{a="b"}`) in exposition text, 0 when absent. */
static double
sample(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; (p = strstr(p, series)) != NULL; p += n)
        if ((p == text || p[-1] == '\n') && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return 0;
}

static char *
scrape(int which)
{
    char *body, ct[128];
    assert_int_equal(admin_call("GET", admin_url[which], "/metrics", &body, ct, sizeof(ct)), 200);
    assert_true(strncmp(ct, "text/plain; version=0.0.4", 25) == 0);
    return body;
}

/* Polls /readyz of `which` until its status is `want` or `timeout_ms`; returns the last status and body. */
static long
wait_ready(int which, long want, int timeout_ms, char **body_out)
{
    long status = 0;
    char *body = NULL;
    for (int waited = 0;; waited += 250) {
        free(body);
        status = admin_call("GET", admin_url[which], "/readyz", &body, NULL, 0);
        if (status == want || waited >= timeout_ms)
            break;
        tly_test_sleep_ms(250);
    }
    if (body_out != NULL)
        *body_out = body;
    else
        free(body);
    return status;
}

static const char *
jstr(json_t *o, const char *k1, const char *k2)
{
    json_t *v = json_object_get(o, k1);
    if (k2 != NULL)
        v = json_object_get(v, k2);
    return json_string_value(v);
}

/* Opens an account with `headers`; waits for the job; writes the account id. */
static void
open_account(const char *const *headers, char *id_out, size_t cap)
{
    tly_test_response_t r = tly_test_request("POST", "/v1/accounts", key, "{\"currency\":\"EUR\",\"label\":\"obs\"}", headers);
    assert_int_equal(r.status, 202);
    snprintf(id_out, cap, "%s", jstr(json_object_get(r.json, "job"), "resource", "id"));
    json_t *job = tly_test_wait_job(jstr(r.json, "job", "url"), key, 20000);
    assert_non_null(job);
    assert_string_equal(jstr(job, "status", NULL), "succeeded");
    json_decref(job);
    tly_test_response_free(&r);
}

static char *
read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    text_t t = {NULL, 0};
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
        on_data(buf, 1, n, &t);
    fclose(f);
    if (len != NULL)
        *len = t.len;
    return t.p != NULL ? t.p : strdup("");
}

static char *
service_log(const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/log/tally-%s.log", var_dir, name);
    char *text = read_file(path, NULL);
    assert_non_null(text);
    return text;
}

/* ---- the admin endpoints ------------------------------------------------------ */

static void
test_admin_endpoints(void **state)
{
    for (int i = 0; i < 3; ++i) {
        char *body, ct[128];
        assert_int_equal(admin_call("GET", admin_url[i], "/healthz", &body, ct, sizeof(ct)), 200);
        assert_string_equal(ct, "application/json");
        assert_string_equal(body, "{\"status\":\"ok\"}");
        free(body);
        long st = wait_ready(i, 200, 30000, &body);
        if (st != 200)
            fail_msg("%s /readyz: %ld %s", admin_name[i], st, body);
        json_error_t jerr;
        json_t *o = json_loads(body, 0, &jerr);
        assert_non_null(o);
        assert_string_equal(jstr(o, "status", NULL), "ok");
        json_t *reasons = json_object_get(o, "reasons");
        assert_true(json_is_true(json_object_get(reasons, "postgresql")));
        if (i != 1)
            assert_true(json_is_true(json_object_get(reasons, "kafka")));
        if (i == 2) {
            assert_true(json_is_true(json_object_get(reasons, "consumer_decider_assigned")));
            assert_true(json_is_true(json_object_get(reasons, "consumer_projector_assigned")));
        } else {
            assert_true(json_is_true(json_object_get(reasons, "api_keys")));
        }
        json_decref(o);
        free(body);

        char *metrics = scrape(i);
        assert_non_null(strstr(metrics, "# TYPE tally_http_requests_total counter\n"));
        assert_non_null(strstr(metrics, "# TYPE tally_http_request_duration_seconds histogram\n"));
        assert_non_null(strstr(metrics, "# TYPE tally_consumer_lag gauge\n"));
        assert_non_null(strstr(metrics, "# TYPE tally_saga_states gauge\n"));
        free(metrics);

        assert_int_equal(admin_call("GET", admin_url[i], "/nothing", &body, NULL, 0), 404);
        free(body);
        assert_int_equal(admin_call("POST", admin_url[i], "/metrics", &body, NULL, 0), 405);
        free(body);
    }
    /* the admin port is not the API: an API route there is 404 */
    char *body;
    assert_int_equal(admin_call("GET", admin_url[0], "/v1/accounts", &body, NULL, 0), 404);
    free(body);
}

/* ---- metrics move with requests -------------------------------------------------- */

static void
test_metrics_move(void **state)
{
    static const char *posts = "tally_http_requests_total{route=\"/v1/accounts\",method=\"POST\",status=\"202\"}";
    static const char *post_latency = "tally_http_request_duration_seconds_count{route=\"/v1/accounts\",method=\"POST\"}";
    static const char *reads = "tally_http_requests_total{route=\"/v1/accounts/{id}\",method=\"GET\",status=\"200\"}";
    static const char *produced = "tally_kafka_produce_duration_seconds_count";
    static const char *replays = "tally_idempotency_replays_total";
    static const char *limited = "tally_rate_limited_total";
    static const char *applied = "tally_events_applied_total{consumer=\"projector\"}";
    static const char *decided = "tally_events_applied_total{consumer=\"decider\"}";
    char *cmd0 = scrape(0), *qry0 = scrape(1), *wrk0 = scrape(2);

    char account[64], path[160], idem[128];
    open_account(NULL, account, sizeof(account));
    snprintf(path, sizeof(path), "/v1/accounts/%s/deposits", account);
    tly_test_idem_header(idem, sizeof(idem));
    const char *hdrs[] = {idem, NULL};
    for (int i = 0; i < 2; ++i) { /* the second is a replay */
        tly_test_response_t r = tly_test_request("POST", path, key, "{\"amount\":700,\"currency\":\"EUR\"}", hdrs);
        assert_int_equal(r.status, 202);
        if (i == 1) {
            json_t *job = tly_test_wait_job(jstr(r.json, "job", "url"), key, 20000);
            json_decref(job);
        }
        tly_test_response_free(&r);
    }
    snprintf(path, sizeof(path), "/v1/accounts/%s", account);
    tly_test_response_t r = tly_test_request("GET", path, key, NULL, NULL);
    assert_int_equal(r.status, 200);
    tly_test_response_free(&r);

    /* rate limit: a key of tier free (burst 20) asked 40 times at once */
    r = tly_test_request("POST", "/v1/api-keys", key, "{\"scopes\":[\"read\"],\"tier\":\"free\",\"label\":\"obs-limit\"}", NULL);
    assert_int_equal(r.status, 201);
    const char *limited_key = jstr(r.json, "key", NULL);
    assert_non_null(limited_key);
    snprintf(created_keys[ncreated++], sizeof(created_keys[0]), "%s", limited_key);
    tly_test_response_free(&r);
    tly_test_sleep_ms(1500); /* the other API instance loads new keys within 1 s */
    int refused = 0;
    for (int i = 0; i < 40; ++i) {
        r = tly_test_request("GET", path, created_keys[ncreated - 1], NULL, NULL);
        refused += r.status == 429;
        tly_test_response_free(&r);
    }
    assert_true(refused > 0);

    /* the projector commits positions in batches: give it a moment */
    char *cmd1 = scrape(0), *qry1 = scrape(1), *wrk1 = NULL;
    for (int i = 0; i < 40; ++i) {
        free(wrk1);
        wrk1 = scrape(2);
        if (sample(wrk1, applied) >= sample(wrk0, applied) + 3 && sample(wrk1, decided) >= sample(wrk0, decided) + 2)
            break;
        tly_test_sleep_ms(250);
    }
    assert_true(sample(cmd1, posts) >= sample(cmd0, posts) + 1);
    assert_true(sample(cmd1, post_latency) >= sample(cmd0, post_latency) + 1);
    assert_true(sample(cmd1, produced) >= sample(cmd0, produced) + 2); /* account and deposit acknowledged */
    assert_true(sample(cmd1, replays) >= sample(cmd0, replays) + 1);
    assert_true(sample(qry1, reads) >= sample(qry0, reads) + 1);
    assert_true(sample(qry1, limited) >= sample(qry0, limited) + (double)refused);
    /* open + deposit requests and their outcomes: at least 4 for the projector, the 2 requests for the decider */
    assert_true(sample(wrk1, applied) >= sample(wrk0, applied) + 4);
    assert_true(sample(wrk1, decided) >= sample(wrk0, decided) + 2);
    assert_non_null(strstr(wrk1, "tally_consumer_lag{consumer=\"projector\",partition=\""));
    assert_true(sample(wrk1, "tally_consumer_assigned{consumer=\"projector\"}") == 1);
    free(cmd0), free(qry0), free(wrk0), free(cmd1), free(qry1), free(wrk1);
}

/* ---- the command API batches its statements -------------------------------------- */

/*
 * A /v1/batch of 50 deposits, two of them with one Idempotency-Key: the
 * records of all 50 go to PostgreSQL in one statement (one loop iteration),
 * the acceptances in a few; of the two items that share a key, one is
 * accepted and the other finds it in flight (409) or replays its 202.
 */
static void
test_command_statements_batched(void **state)
{
    static const char *rec_st = "tally_command_statements_total{statement=\"record\"}";
    static const char *rec_rows = "tally_command_statement_rows_total{statement=\"record\"}";
    static const char *acc_st = "tally_command_statements_total{statement=\"accept\"}";
    static const char *acc_rows = "tally_command_statement_rows_total{statement=\"accept\"}";
    char account[64], body[16384], tag[64];
    size_t len = 0;
    open_account(NULL, account, sizeof(account));
    snprintf(tag, sizeof(tag), "obs-batch-%lld", (long long)tly_test_now_ms());
    len += (size_t)snprintf(body + len, sizeof(body) - len, "{\"requests\":[");
    for (int i = 0; i < 50; ++i)
        len += (size_t)snprintf(body + len, sizeof(body) - len,
                                "%s{\"path\":\"/v1/accounts/%s/deposits\",\"idempotency_key\":\"%s-%d\","
                                "\"body\":{\"amount\":1,\"currency\":\"EUR\"}}",
                                i > 0 ? "," : "", account, tag, i == 49 ? 48 : i);
    snprintf(body + len, sizeof(body) - len, "]}");

    char *cmd0 = scrape(0);
    tly_test_response_t r = tly_test_request("POST", "/v1/batch", key, body, NULL);
    assert_int_equal(r.status, 200);
    json_t *results = json_object_get(r.json, "results");
    assert_int_equal(json_array_size(results), 50);
    /* items 48 and 49 share a key: one is recorded, the other finds it in flight (409) or, if its claim comes after
       the first's acceptance, replays the same 202 */
    int accepted = 0;
    for (size_t i = 0; i < 48; ++i)
        accepted += json_integer_value(json_object_get(json_array_get(results, i), "status")) == 202;
    assert_int_equal(accepted, 48);
    json_t *twin[2] = {json_array_get(results, 48), json_array_get(results, 49)};
    long st[2] = {(long)json_integer_value(json_object_get(twin[0], "status")),
                  (long)json_integer_value(json_object_get(twin[1], "status"))};
    assert_true(st[0] == 202 || st[1] == 202);
    int other = st[0] == 202 ? 1 : 0;
    if (st[other] == 409)
        assert_string_equal(jstr(json_object_get(twin[other], "problem"), "code", NULL), "idempotency_key_in_use");
    else {
        assert_int_equal(st[other], 202);
        assert_string_equal(jstr(twin[0], "job", "id"), jstr(twin[1], "job", "id"));
    }
    tly_test_response_free(&r);

    /* acceptances are recorded after their 202s, gathered for TALLY_ACCEPT_GATHER_MS (20 ms by default) */
    char *cmd1 = NULL;
    for (int i = 0; i < 40; ++i) {
        free(cmd1);
        cmd1 = scrape(0);
        if (sample(cmd1, acc_rows) - sample(cmd0, acc_rows) >= 49)
            break;
        tly_test_sleep_ms(50);
    }
    /* the open account's own record and acceptance came before cmd0 */
    assert_true(sample(cmd1, rec_rows) - sample(cmd0, rec_rows) == 50);
    assert_true(sample(cmd1, rec_st) - sample(cmd0, rec_st) == 1);
    assert_true(sample(cmd1, acc_rows) - sample(cmd0, acc_rows) == 49);
    assert_true(sample(cmd1, acc_st) - sample(cmd0, acc_st) <= 10);
    free(cmd0), free(cmd1);

    /* every accepted deposit is applied once */
    char path[160];
    snprintf(path, sizeof(path), "/v1/accounts/%s", account);
    long long balance = -1;
    for (int i = 0; i < 80 && balance != 49; ++i) {
        r = tly_test_request("GET", path, key, NULL, NULL);
        balance = (long long)json_integer_value(json_object_get(r.json, "balance"));
        tly_test_response_free(&r);
        if (balance != 49)
            tly_test_sleep_ms(250);
    }
    assert_int_equal(balance, 49);
}

/* ---- logs --------------------------------------------------------------------------- */

/* Every line of each service's log is a JSON object with time, level, service and msg. */
static void
test_logs_are_json(void **state)
{
    for (int i = 0; i < 3; ++i) {
        char *text = service_log(admin_name[i]);
        size_t lines = 0;
        for (char *line = text, *nl; *line != '\0'; line = nl + 1) {
            nl = strchr(line, '\n');
            assert_non_null(nl); /* every line ends */
            *nl = '\0';
            json_error_t jerr;
            json_t *o = json_loads(line, JSON_REJECT_DUPLICATES, &jerr);
            if (o == NULL || !json_is_object(o))
                fail_msg("tally-%s.log line %zu is not a JSON object (%s): %.300s", admin_name[i], lines + 1, jerr.text, line);
            assert_non_null(jstr(o, "time", NULL));
            assert_non_null(jstr(o, "level", NULL));
            assert_non_null(jstr(o, "service", NULL));
            assert_non_null(jstr(o, "msg", NULL));
            json_decref(o);
            ++lines;
        }
        assert_true(lines > 0);
        free(text);
    }
}

/* Lines of `text` (a service log) whose trace_id is `trace` and, when given, whose msg is `msg`. */
static int
count_traced(const char *text, const char *trace, const char *msg)
{
    int n = 0;
    char needle[64];
    snprintf(needle, sizeof(needle), "\"trace_id\":\"%s\"", trace);
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle)) {
        const char *start = p, *end = strchr(p, '\n');
        while (start > text && start[-1] != '\n')
            --start;
        char *line = strndup(start, end != NULL ? (size_t)(end - start) : strlen(start));
        json_error_t jerr;
        json_t *o = json_loads(line, 0, &jerr);
        assert_non_null(o);
        if (strcmp(jstr(o, "trace_id", NULL), trace) == 0 && (msg == NULL || strcmp(jstr(o, "msg", NULL), msg) == 0))
            ++n;
        json_decref(o);
        free(line);
    }
    return n;
}

static void
test_trace_id_end_to_end(void **state)
{
    static const char hex[] = "0123456789abcdef";
    char trace[33], tp[128], account[64], path[160];
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    for (int i = 0; i < 32; ++i)
        trace[i] = hex[rand() % 16];
    trace[0] = 'a'; /* never all zero */
    trace[32] = '\0';
    snprintf(tp, sizeof(tp), "traceparent: 00-%s-00f067aa0ba902b7-01", trace);
    const char *hdrs[] = {tp, "X-Request-Id: obs-trace-request", NULL};
    open_account(hdrs, account, sizeof(account));
    snprintf(path, sizeof(path), "/v1/accounts/%s", account);
    tly_test_response_t r = tly_test_request("GET", path, key, NULL, hdrs);
    assert_int_equal(r.status, 200);
    char rid[64];
    assert_true(tly_test_header(&r, "x-request-id", rid, sizeof(rid)));
    assert_string_equal(rid, "obs-trace-request"); /* accepted and echoed */
    tly_test_response_free(&r);

    /* the command API's request line and the query API's carry the caller's trace id */
    char *cmd = service_log("command-api"), *qry = service_log("query-api"), *wrk = NULL;
    assert_int_equal(count_traced(cmd, trace, "request"), 1);
    assert_true(count_traced(qry, trace, "request") >= 1);
    /* the worker: the request event (decider, projector) and its outcome (projector) */
    for (int i = 0; i < 40; ++i) {
        free(wrk);
        wrk = service_log("worker");
        if (count_traced(wrk, trace, "event applied") >= 3)
            break;
        tly_test_sleep_ms(250);
    }
    if (count_traced(wrk, trace, "event applied") < 3)
        fail_msg("the worker log has %d 'event applied' lines with trace_id %s, want >= 3",
                 count_traced(wrk, trace, "event applied"), trace);
    free(cmd), free(qry), free(wrk);

    /* without a traceparent every request still gets a trace id */
    r = tly_test_request("GET", path, key, NULL, NULL);
    tly_test_response_free(&r);
    qry = service_log("query-api");
    const char *last = qry + strlen(qry) - 1;
    while (last > qry && last[-1] != '\n')
        --last;
    json_error_t jerr;
    json_t *o = json_loads(last, 0, &jerr);
    assert_non_null(o);
    const char *t = jstr(o, "trace_id", NULL);
    assert_non_null(t);
    assert_int_equal(strlen(t), 32);
    json_decref(o);
    free(qry);
}

/* A flow that touches every kind of secret, then no log file holds one. */
static void
test_no_secrets_in_logs(void **state)
{
    char account[64], path[200], idem[128];
    /* a full flow: account, deposit, withdrawal, batch, a key created and revoked, bad keys */
    open_account(NULL, account, sizeof(account));
    snprintf(path, sizeof(path), "/v1/accounts/%s/deposits", account);
    tly_test_idem_header(idem, sizeof(idem));
    const char *hdrs[] = {idem, NULL};
    tly_test_response_t r = tly_test_request("POST", path, key, "{\"amount\":100,\"currency\":\"EUR\"}", hdrs);
    assert_int_equal(r.status, 202);
    tly_test_response_free(&r);
    snprintf(path, sizeof(path), "/v1/accounts/%s/withdrawals", account);
    tly_test_idem_header(idem, sizeof(idem));
    r = tly_test_request("POST", path, key, "{\"amount\":50,\"currency\":\"EUR\"}", hdrs);
    assert_int_equal(r.status, 202);
    json_t *job = tly_test_wait_job(jstr(r.json, "job", "url"), key, 20000);
    json_decref(job);
    tly_test_response_free(&r);
    r = tly_test_request("POST", "/v1/batch", key, "{\"requests\":[{\"path\":\"/v1/accounts\",\"body\":{\"currency\":\"USD\"}}]}",
                         NULL);
    assert_int_equal(r.status, 200);
    tly_test_response_free(&r);
    r = tly_test_request("POST", "/v1/api-keys", key, "{\"scopes\":[\"read\",\"write\"],\"label\":\"obs-secret\"}", NULL);
    assert_int_equal(r.status, 201);
    snprintf(created_keys[ncreated++], sizeof(created_keys[0]), "%s", jstr(r.json, "key", NULL));
    char key_path[200];
    snprintf(key_path, sizeof(key_path), "/v1/api-keys/%s", jstr(r.json, "id", NULL));
    tly_test_response_free(&r);
    tly_test_sleep_ms(1200);
    r = tly_test_request("GET", "/v1/accounts", created_keys[ncreated - 1], NULL, NULL); /* the new key in use */
    assert_int_equal(r.status, 200);
    tly_test_response_free(&r);
    r = tly_test_request("DELETE", key_path, key, NULL, NULL);
    assert_true(r.status == 200 || r.status == 204);
    tly_test_response_free(&r);
    /* a wrong secret for a real key id, and the revoked key */
    char wrong[200];
    snprintf(wrong, sizeof(wrong), "%s", key);
    assert_true(strlen(wrong) > SECRET_AT);
    wrong[SECRET_AT] = wrong[SECRET_AT] == 'A' ? 'B' : 'A';
    r = tly_test_request("GET", "/v1/accounts", wrong, NULL, NULL);
    assert_int_equal(r.status, 401);
    tly_test_response_free(&r);
    tly_test_sleep_ms(1200);
    r = tly_test_request("GET", "/v1/accounts", created_keys[ncreated - 1], NULL, NULL);
    assert_int_equal(r.status, 401);
    tly_test_response_free(&r);
    tly_test_sleep_ms(500); /* let the last lines reach the files */

    /* what must never be written: every key, its secret part alone, webhook secrets */
    const char *needles[16];
    char secrets[8][128];
    size_t nneedles = 0;
    const char *keys[6] = {key, wrong};
    size_t nkeys = 2;
    for (int i = 0; i < ncreated; ++i)
        keys[nkeys++] = created_keys[i];
    for (size_t i = 0; i < nkeys; ++i) {
        needles[nneedles++] = keys[i];
        assert_true(strlen(keys[i]) > SECRET_AT + 40);
        snprintf(secrets[i], sizeof(secrets[i]), "%s", keys[i] + SECRET_AT);
        needles[nneedles++] = secrets[i];
    }
    needles[nneedles++] = "whsec_";
    needles[nneedles++] = "Bearer tly_";

    char dir[512];
    snprintf(dir, sizeof(dir), "%s/log", var_dir);
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    int files = 0;
    while ((e = readdir(d)) != NULL) {
        char file[1024];
        struct stat st;
        snprintf(file, sizeof(file), "%s/%s", dir, e->d_name);
        if (stat(file, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        size_t len;
        char *text = read_file(file, &len);
        if (text == NULL)
            continue; /* not ours to read (e.g. postgres.log as another user): nothing we wrote */
        ++files;
        for (size_t k = 0; k < nneedles; ++k)
            if (memmem(text, len, needles[k], strlen(needles[k])) != NULL)
                fail_msg("%s holds a secret (needle %zu of %zu)", file, k + 1, nneedles);
        free(text);
    }
    closedir(d);
    assert_true(files >= 3);
}

/* ---- readiness follows PostgreSQL ----------------------------------------------------- */

static int
pg_ctl(const char *action)
{
    char cmd[2048], data[600];
    const char *bindir = getenv("TALLY_PG_BINDIR") != NULL ? getenv("TALLY_PG_BINDIR") : "/usr/lib/postgresql/15/bin";
    snprintf(data, sizeof(data), "%s/pg/data", var_dir);
    if (strcmp(action, "stop") == 0)
        snprintf(cmd, sizeof(cmd), "%s '%s/pg_ctl' -D '%s' -m fast -w -t 30 stop >/dev/null",
                 geteuid() == 0 ? "runuser -u postgres --" : "", bindir, data);
    else
        snprintf(cmd, sizeof(cmd),
                 "%s '%s/pg_ctl' -D '%s' -l '%s/log/postgres.log' -w -t 60 start >/dev/null && "
                 "head -n 1 '%s/postmaster.pid' > '%s/run/postgres.pid'",
                 geteuid() == 0 ? "runuser -u postgres --" : "", bindir, data, var_dir, data, var_dir);
    return system(cmd);
}

static void
test_readyz_follows_postgresql(void **state)
{
    char data[600], *body = NULL;
    snprintf(data, sizeof(data), "%s/pg/data/postmaster.pid", var_dir);
    if (access(data, F_OK) != 0) {
        fprintf(stderr, "skipped: no local PostgreSQL cluster under %s/pg\n", var_dir);
        skip();
    }
    for (int i = 0; i < 3; ++i)
        assert_int_equal(wait_ready(i, 200, 20000, NULL), 200);
    assert_int_equal(pg_ctl("stop"), 0);
    long st[3];
    for (int i = 0; i < 3; ++i) {
        st[i] = wait_ready(i, 503, 20000, &body);
        if (st[i] == 503) {
            json_error_t jerr;
            json_t *o = json_loads(body, 0, &jerr);
            st[i] = o != NULL && json_is_false(json_object_get(json_object_get(o, "reasons"), "postgresql")) ? 503 : -st[i];
            json_decref(o);
        }
        free(body);
    }
    /* restart before asserting: the stack is shared with the tests after this one */
    int started = pg_ctl("start");
    long back[3];
    for (int i = 0; i < 3; ++i)
        back[i] = wait_ready(i, 200, 60000, NULL);
    assert_int_equal(started, 0);
    for (int i = 0; i < 3; ++i) {
        if (st[i] != 503)
            fail_msg("%s /readyz did not answer 503 with postgresql false while PostgreSQL was down (%ld)", admin_name[i], st[i]);
        if (back[i] != 200)
            fail_msg("%s /readyz did not come back to 200 after PostgreSQL restarted (%ld)", admin_name[i], back[i]);
    }
    /* and the stack works again end to end */
    char account[64];
    open_account(NULL, account, sizeof(account));
}

int
main(void)
{
    key = tly_test_env("TALLY_API_KEY");
    var_dir = tly_test_env("TALLY_VAR");
    admin_url[0] = tly_test_env("TALLY_COMMAND_ADMIN_URL");
    admin_url[1] = tly_test_env("TALLY_QUERY_ADMIN_URL");
    admin_url[2] = tly_test_env("TALLY_WORKER_ADMIN_URL");
    if (key == NULL || var_dir == NULL || admin_url[0] == NULL || admin_url[1] == NULL || admin_url[2] == NULL ||
        tly_test_env("TALLY_URL") == NULL) {
        fprintf(stderr, "TALLY_API_KEY, TALLY_VAR, TALLY_URL and TALLY_{COMMAND,QUERY,WORKER}_ADMIN_URL are needed "
                        "(TALLY_TEST_ENV=<stack dir>/env)\n");
        return 1;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_admin_endpoints),
        cmocka_unit_test(test_metrics_move),
        cmocka_unit_test(test_command_statements_batched),
        cmocka_unit_test(test_trace_id_end_to_end),
        cmocka_unit_test(test_no_secrets_in_logs),
        cmocka_unit_test(test_logs_are_json),
        cmocka_unit_test(test_readyz_follows_postgresql),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
