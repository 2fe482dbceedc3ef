/*
 * The webhook subscription API over HTTP (through the gateway unless said
 * otherwise): create (201, the secret shown once), list and get (never a
 * secret, pagination, ETags), patch, soft delete, secret rotation (checked in
 * PostgreSQL too), SSRF refusals (on command API instances of this test's
 * own, started with TALLY_WEBHOOK_ALLOW_PRIVATE false and true, so the
 * result does not depend on how the shared stack is configured), replay
 * (deliveries and attempts inserted with libpq the way the webhooks role
 * writes them), the deliveries listing, tenant walls and scopes.
 *
 * Each run makes its own tenants, so counts are exact.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tly_test_http.h"
#include "tly_test_util.h"

#include "tally/secretbox.h"

#include <curl/curl.h>
#include <libpq-fe.h>
#include <openssl/evp.h>
#include <poll.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char key_a[128], key_b[128], key_read[128], key_write_only[128], tenant_a[64], tenant_b[64];
static PGconn *db;

/* --- helpers ----------------------------------------------------------------- */

/* A stored secret of endpoint `id` opened with the stack's TALLY_SECRET_KEYS (a static buffer). */
static const char *
opened(const char *stored, const char *id)
{
    static char plain[TLY_SECRETBOX_SEALED_MAX];
    char err[256];
    if (tly_secretbox_open(stored, id, plain, sizeof(plain), err, sizeof(err)) != 0)
        fail_msg("secret of %s does not open: %s", id, err);
    return plain;
}

static const char *
jstr(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static PGresult *
sql(const char *fmt, ...)
{
    char q[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q, sizeof(q), fmt, ap);
    va_end(ap);
    PGresult *res = PQexec(db, q);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
        fail_msg("%s: %s", q, PQresultErrorMessage(res));
    return res;
}

/* The first column of the first row of a query, copied into `out`. */
static void
sql_value(char *out, size_t cap, const char *fmt, const char *arg)
{
    PGresult *res = sql(fmt, arg);
    assert_int_equal(PQntuples(res), 1);
    snprintf(out, cap, "%s", PQgetisnull(res, 0, 0) ? "(null)" : PQgetvalue(res, 0, 0));
    PQclear(res);
}

static tly_test_response_t
call(const char *method, const char *path, const char *key, const char *body)
{
    return tly_test_request(method, path, key, body, NULL);
}

/* Asserts `status` and, for errors, a problem+json with `code`; frees the response. */
static void
expect(const char *method, const char *path, const char *key, const char *body, long status, const char *code)
{
    char ct[128];
    tly_test_response_t r = call(method, path, key, body);
    if (r.status != status)
        fail_msg("%s %s: %ld, expected %ld: %s", method, path, r.status, status, r.body);
    if (code != NULL) {
        assert_true(tly_test_header(&r, "content-type", ct, sizeof(ct)));
        assert_string_equal(ct, "application/problem+json");
        assert_string_equal(jstr(r.json, "code"), code);
    }
    tly_test_response_free(&r);
}

/* POST /v1/webhook-endpoints; the 201's body (caller decrefs). */
static json_t *
create_endpoint(const char *key, const char *url, const char *types, const char *description)
{
    char body[1024], location[128], want[128];
    if (description != NULL)
        snprintf(body, sizeof(body), "{\"url\":\"%s\",\"event_types\":%s,\"description\":\"%s\"}", url, types, description);
    else
        snprintf(body, sizeof(body), "{\"url\":\"%s\",\"event_types\":%s}", url, types);
    tly_test_response_t r = call("POST", "/v1/webhook-endpoints", key, body);
    if (r.status != 201)
        fail_msg("create %s: %ld %s", body, r.status, r.body);
    assert_true(tly_test_header(&r, "location", location, sizeof(location)));
    snprintf(want, sizeof(want), "/v1/webhook-endpoints/%s", jstr(r.json, "id"));
    assert_string_equal(location, want);
    json_t *o = json_incref(r.json);
    tly_test_response_free(&r);
    return o;
}

static bool
secret_well_formed(const char *s)
{
    unsigned char raw[64];
    if (s == NULL || strncmp(s, "whsec_", 6) != 0 || strlen(s) != 6 + 44)
        return false;
    /* standard base64 of 32 bytes: 43 characters and one '=' */
    for (size_t i = 6; i < 6 + 43; ++i)
        if (strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", s[i]) == NULL)
            return false;
    return s[49] == '=' && EVP_DecodeBlock(raw, (const unsigned char *)s + 6, 44) == 33;
}

/* GET `path` with `key`: 200 and its JSON (caller decrefs). */
static json_t *
get_json(const char *path, const char *key)
{
    tly_test_response_t r = call("GET", path, key, NULL);
    if (r.status != 200)
        fail_msg("GET %s: %ld %s", path, r.status, r.body);
    assert_null(strstr(r.body, "whsec_")); /* no read ever shows a secret */
    assert_null(strstr(r.body, "secret\""));
    json_t *o = json_incref(r.json);
    tly_test_response_free(&r);
    return o;
}

/* The endpoint without the fields only a write answer has. */
static json_t *
without_secret(const json_t *o)
{
    json_t *c = json_deep_copy(o);
    json_object_del(c, "secret");
    return c;
}

/* --- create, get, list --------------------------------------------------------- */

static void
test_create_shows_secret_once(void **state)
{
    char path[128], etag[64], hdr[160], db_secret[128];
    json_t *ep = create_endpoint(key_a, "https://hooks.example.com/tally?src=test",
                                 "[\"FundsDeposited\",\"TransferCompleted\",\"FundsDeposited\"]", "ops channel");
    assert_true(secret_well_formed(jstr(ep, "secret")));
    assert_string_equal(jstr(ep, "url"), "https://hooks.example.com/tally?src=test");
    assert_string_equal(jstr(ep, "description"), "ops channel");
    json_t *types = json_object_get(ep, "event_types");
    assert_int_equal(json_array_size(types), 2); /* deduplicated */
    assert_string_equal(json_string_value(json_array_get(types, 0)), "FundsDeposited");
    assert_string_equal(json_string_value(json_array_get(types, 1)), "TransferCompleted");
    assert_true(json_is_true(json_object_get(ep, "enabled")));
    assert_true(json_is_null(json_object_get(ep, "disabled_reason")));
    assert_true(json_is_null(json_object_get(ep, "previous_secret_expires_at")));
    assert_int_equal(json_integer_value(json_object_get(ep, "version")), 1);

    /* what is stored is what was shown, sealed (never the plaintext), and the endpoint belongs to the caller's tenant */
    sql_value(db_secret, sizeof(db_secret), "SELECT secret FROM webhook_endpoints WHERE id = '%s'", jstr(ep, "id"));
    assert_int_equal(strncmp(db_secret, TLY_SECRETBOX_PREFIX, strlen(TLY_SECRETBOX_PREFIX)), 0);
    assert_string_equal(opened(db_secret, jstr(ep, "id")), jstr(ep, "secret"));
    sql_value(db_secret, sizeof(db_secret), "SELECT tenant_id FROM webhook_endpoints WHERE id = '%s'", jstr(ep, "id"));
    assert_string_equal(db_secret, tenant_a);

    /* GET: the same object without the secret, a strong ETag, 304 on a match */
    snprintf(path, sizeof(path), "/v1/webhook-endpoints/%s", jstr(ep, "id"));
    tly_test_response_t r = call("GET", path, key_a, NULL);
    assert_int_equal(r.status, 200);
    assert_null(strstr(r.body, "whsec_"));
    json_t *want = without_secret(ep);
    assert_true(json_equal(r.json, want));
    assert_true(tly_test_header(&r, "etag", etag, sizeof(etag)));
    assert_string_equal(etag, "\"webhook-endpoint-v1\"");
    assert_true(tly_test_header(&r, "ratelimit", hdr, sizeof(hdr)));
    assert_true(tly_test_header(&r, "ratelimit-policy", hdr, sizeof(hdr)));
    tly_test_response_free(&r);
    snprintf(hdr, sizeof(hdr), "If-None-Match: %s", etag);
    const char *inm[] = {hdr, NULL};
    r = tly_test_request("GET", path, key_a, NULL, inm);
    assert_int_equal(r.status, 304);
    assert_int_equal(r.body_len, 0);
    tly_test_response_free(&r);

    /* every new endpoint gets its own secret */
    json_t *other = create_endpoint(key_a, "https://hooks.example.com/other", "[\"*\"]", NULL);
    assert_true(secret_well_formed(jstr(other, "secret")));
    assert_string_not_equal(jstr(other, "secret"), jstr(ep, "secret"));
    assert_string_equal(jstr(other, "description"), "");
    json_decref(other);
    json_decref(want);
    json_decref(ep);
}

static void
test_list_pagination(void **state)
{
    char ids[5][40], path[512], link[600], want_link[600];
    json_t *eps[5];
    /* tenant B has no endpoint yet: the list is exactly these five, oldest first */
    for (int i = 0; i < 5; ++i) {
        char url[64];
        snprintf(url, sizeof(url), "https://hooks.example.com/b%d", i);
        eps[i] = create_endpoint(key_b, url, "[\"*\"]", NULL);
        snprintf(ids[i], sizeof(ids[i]), "%s", jstr(eps[i], "id"));
    }
    int seen = 0, pages = 0;
    snprintf(path, sizeof(path), "/v1/webhook-endpoints?limit=2");
    for (;;) {
        tly_test_response_t r = call("GET", path, key_b, NULL);
        assert_int_equal(r.status, 200);
        assert_null(strstr(r.body, "whsec_"));
        json_t *data = json_object_get(r.json, "data"), *item;
        size_t i;
        json_array_foreach(data, i, item)
        {
            assert_true(seen < 5);
            assert_string_equal(jstr(item, "id"), ids[seen]);
            json_t *want = without_secret(eps[seen]);
            assert_true(json_equal(item, want));
            json_decref(want);
            ++seen;
        }
        ++pages;
        if (!json_is_true(json_object_get(r.json, "has_more"))) {
            assert_true(json_is_null(json_object_get(r.json, "next_cursor")));
            assert_false(tly_test_header(&r, "link", link, sizeof(link)));
            tly_test_response_free(&r);
            break;
        }
        assert_int_equal(json_array_size(data), 2);
        snprintf(path, sizeof(path), "/v1/webhook-endpoints?limit=2&cursor=%s", jstr(r.json, "next_cursor"));
        assert_true(tly_test_header(&r, "link", link, sizeof(link)));
        snprintf(want_link, sizeof(want_link), "<%s>; rel=\"next\"", path);
        assert_string_equal(link, want_link);
        tly_test_response_free(&r);
        /* a cursor is bound to its tenant */
        expect("GET", path, key_a, NULL, 400, "invalid_cursor");
    }
    assert_int_equal(seen, 5);
    assert_int_equal(pages, 3);
    for (int i = 0; i < 5; ++i)
        json_decref(eps[i]);

    expect("GET", "/v1/webhook-endpoints?limit=0", key_b, NULL, 422, "validation_failed");
    expect("GET", "/v1/webhook-endpoints?status=pending", key_b, NULL, 422, "validation_failed");
    expect("GET", "/v1/webhook-endpoints?cursor=AAAA", key_b, NULL, 400, "invalid_cursor");
}

/* --- patch, delete, rotate -------------------------------------------------------- */

static void
test_patch(void **state)
{
    char path[128], value[128];
    json_t *ep = create_endpoint(key_a, "https://hooks.example.com/p", "[\"FundsDeposited\"]", "before");
    const char *id = jstr(ep, "id");
    snprintf(path, sizeof(path), "/v1/webhook-endpoints/%s", id);
    /* read it on every query API thread first: a change must show at once on each of them */
    for (int i = 0; i < 8; ++i)
        json_decref(get_json(path, key_a));

    tly_test_response_t r = call("PATCH", path, key_a,
                                 "{\"url\":\"https://hooks2.example.com/p\",\"event_types\":[\"TransferFailed\","
                                 "\"TransferCompleted\"],\"description\":\"after\"}");
    assert_int_equal(r.status, 200);
    assert_null(strstr(r.body, "whsec_"));
    assert_string_equal(jstr(r.json, "url"), "https://hooks2.example.com/p");
    assert_string_equal(jstr(r.json, "description"), "after");
    assert_int_equal(json_array_size(json_object_get(r.json, "event_types")), 2);
    assert_int_equal(json_integer_value(json_object_get(r.json, "version")), 2);
    for (int i = 0; i < 8; ++i) {
        json_t *got = get_json(path, key_a);
        assert_true(json_equal(got, r.json)); /* the write answer is what reads show */
        json_decref(got);
    }
    tly_test_response_free(&r);

    /* only what is given changes */
    r = call("PATCH", path, key_a, "{\"description\":\"only this\"}");
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "url"), "https://hooks2.example.com/p");
    assert_string_equal(jstr(r.json, "description"), "only this");
    tly_test_response_free(&r);

    /* disabling by hand says so; re-enabling clears the sender's failure state */
    r = call("PATCH", path, key_a, "{\"enabled\":false}");
    assert_int_equal(r.status, 200);
    assert_true(json_is_false(json_object_get(r.json, "enabled")));
    assert_string_equal(jstr(r.json, "disabled_reason"), "manual");
    tly_test_response_free(&r);
    PQclear(sql("UPDATE webhook_endpoints SET disabled_reason = 'failing', failing_since = now() - interval '3 days' "
                "WHERE id = '%s'",
                id));
    r = call("PATCH", path, key_a, "{\"enabled\":false}"); /* disabling again keeps the sender's reason */
    assert_string_equal(jstr(r.json, "disabled_reason"), "failing");
    tly_test_response_free(&r);
    r = call("PATCH", path, key_a, "{\"enabled\":true}");
    assert_int_equal(r.status, 200);
    assert_true(json_is_true(json_object_get(r.json, "enabled")));
    assert_true(json_is_null(json_object_get(r.json, "disabled_reason")));
    assert_true(json_is_null(json_object_get(r.json, "failing_since")));
    tly_test_response_free(&r);
    sql_value(value, sizeof(value), "SELECT coalesce(failing_since::text, 'none') FROM webhook_endpoints WHERE id = '%s'", id);
    assert_string_equal(value, "none");

    /* an enabled endpoint that is failing keeps its failing clock when PATCHed enabled */
    PQclear(sql("UPDATE webhook_endpoints SET failing_since = now() - interval '1 hour' WHERE id = '%s'", id));
    r = call("PATCH", path, key_a, "{\"enabled\":true}");
    assert_false(json_is_null(json_object_get(r.json, "failing_since")));
    tly_test_response_free(&r);

    /* invalid patches, with the field that is wrong */
    r = call("PATCH", path, key_a, "{}");
    assert_int_equal(r.status, 422);
    tly_test_response_free(&r);
    r = call("PATCH", path, key_a, "{\"event_types\":[\"NoSuchEvent\"],\"enabled\":1}");
    assert_int_equal(r.status, 422);
    json_t *errors = json_object_get(r.json, "errors");
    assert_int_equal(json_array_size(errors), 2);
    assert_string_equal(jstr(json_array_get(errors, 0), "field"), "event_types");
    assert_string_equal(jstr(json_array_get(errors, 1), "field"), "enabled");
    tly_test_response_free(&r);
    expect("PATCH", path, key_a, "{\"secret\":\"whsec_mine\"}", 422, "validation_failed");
    expect("PATCH", "/v1/webhook-endpoints/6b1f2e51-8c0d-4a3e-9f27-440b5da193c8", key_a, "{\"description\":\"x\"}", 404,
           "not_found");
    expect("PATCH", "/v1/webhook-endpoints/not-a-uuid", key_a, "{\"description\":\"x\"}", 422, "validation_failed");
    json_decref(ep);
}

static void
test_delete(void **state)
{
    char path[128], sub[160], value[64];
    json_t *ep = create_endpoint(key_a, "https://hooks.example.com/d", "[\"*\"]", NULL);
    const char *id = jstr(ep, "id");
    snprintf(path, sizeof(path), "/v1/webhook-endpoints/%s", id);
    tly_test_response_t r = call("DELETE", path, key_a, NULL);
    assert_int_equal(r.status, 204);
    assert_int_equal(r.body_len, 0);
    tly_test_response_free(&r);
    /* soft: the row stays, marked deleted */
    sql_value(value, sizeof(value), "SELECT deleted_at IS NOT NULL FROM webhook_endpoints WHERE id = '%s'", id);
    assert_string_equal(value, "t");
    /* gone for every operation */
    expect("GET", path, key_a, NULL, 404, "not_found");
    expect("DELETE", path, key_a, NULL, 404, "not_found");
    expect("PATCH", path, key_a, "{\"enabled\":true}", 404, "not_found");
    snprintf(sub, sizeof(sub), "%s/rotate-secret", path);
    expect("POST", sub, key_a, "{}", 404, "not_found");
    snprintf(sub, sizeof(sub), "%s/replay", path);
    expect("POST", sub, key_a, "{\"since\":\"2026-01-01T00:00:00Z\",\"until\":\"2026-01-02T00:00:00Z\"}", 404, "not_found");
    snprintf(sub, sizeof(sub), "%s/deliveries", path);
    expect("GET", sub, key_a, NULL, 404, "not_found");
    json_t *list = get_json("/v1/webhook-endpoints?limit=100", key_a);
    size_t i;
    json_t *item;
    json_array_foreach(json_object_get(list, "data"), i, item) assert_string_not_equal(jstr(item, "id"), id);
    json_decref(list);
    json_decref(ep);
}

static void
test_rotate_secret(void **state)
{
    char path[160], value[256];
    json_t *ep = create_endpoint(key_a, "https://hooks.example.com/r", "[\"*\"]", NULL);
    const char *id = jstr(ep, "id");
    snprintf(path, sizeof(path), "/v1/webhook-endpoints/%s/rotate-secret", id);
    /* no body at all is fine, and so is {} */
    tly_test_response_t r = tly_test_request("POST", path, key_a, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_true(secret_well_formed(jstr(r.json, "secret")));
    assert_string_not_equal(jstr(r.json, "secret"), jstr(ep, "secret"));
    assert_int_equal(json_integer_value(json_object_get(r.json, "version")), 2);
    assert_non_null(jstr(r.json, "previous_secret_expires_at"));
    char *first_rotation = strdup(jstr(r.json, "secret"));
    tly_test_response_free(&r);

    /* the old secret still signs, for 24 h from now */
    sql_value(value, sizeof(value), "SELECT previous_secret FROM webhook_endpoints WHERE id = '%s'", id);
    assert_string_equal(opened(value, id), jstr(ep, "secret"));
    sql_value(value, sizeof(value), "SELECT secret FROM webhook_endpoints WHERE id = '%s'", id);
    assert_string_equal(opened(value, id), first_rotation);
    sql_value(value, sizeof(value),
              "SELECT previous_secret_expires_at - now() BETWEEN interval '23 hours 59 minutes' AND interval '24 hours' "
              "FROM webhook_endpoints WHERE id = '%s'",
              id);
    assert_string_equal(value, "t");

    /* reads never show either secret */
    snprintf(path, sizeof(path), "/v1/webhook-endpoints/%s", id);
    json_t *got = get_json(path, key_a);
    assert_non_null(jstr(got, "previous_secret_expires_at"));
    json_decref(got);

    snprintf(path, sizeof(path), "/v1/webhook-endpoints/%s/rotate-secret", id);
    r = call("POST", path, key_a, "{}");
    assert_int_equal(r.status, 200);
    assert_string_not_equal(jstr(r.json, "secret"), first_rotation);
    tly_test_response_free(&r);
    sql_value(value, sizeof(value), "SELECT previous_secret FROM webhook_endpoints WHERE id = '%s'", id);
    assert_string_equal(opened(value, id), first_rotation);
    expect("POST", path, key_a, "{\"secret\":\"whsec_mine\"}", 422, "validation_failed");
    free(first_rotation);
    json_decref(ep);
}

/* --- SSRF at the API, on instances of our own ---------------------------------------- */

static size_t
discard(char *p, size_t size, size_t n, void *ud)
{
    return size * n;
}

/* A command API on a free port with TALLY_WEBHOOK_ALLOW_PRIVATE=`allow`; `base` gets its URL. */
static pid_t
start_api(const char *allow, char *base, size_t cap)
{
    char bin[512], port[16], admin[16], log_path[512];
    int p = tly_test_free_port(), a = tly_test_free_port();
    snprintf(admin, sizeof(admin), "%d", a);
    snprintf(bin, sizeof(bin), "%s/tally-command-api", tly_test_env("TALLY_BIN"));
    snprintf(port, sizeof(port), "%d", p);
    tly_test_log_path("webhook-test-command-api.log", log_path, sizeof(log_path));
    snprintf(base, cap, "http://127.0.0.1:%d", p);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (freopen(log_path, "a", stderr) == NULL)
            _exit(126);
        setenv("TALLY_PG_DSN", tly_test_env("TALLY_PG_DSN"), 1);
        setenv("TALLY_KAFKA_BROKERS", tly_test_env("TALLY_KAFKA_BROKERS"), 1);
        setenv("TALLY_HTTP_PORT", port, 1);
        setenv("TALLY_ADMIN_PORT", admin, 1); /* /readyz is on the admin port only */
        setenv("TALLY_WEBHOOK_ALLOW_PRIVATE", allow, 1);
        setenv("TALLY_SECRET_KEYS", tly_test_env("TALLY_SECRET_KEYS"), 1);
        execl(bin, bin, (char *)NULL);
        _exit(127);
    }
    /* ready once it answers an authenticated request (keys loaded) */
    const char *saved = strdup(tly_test_env("TALLY_URL"));
    setenv("TALLY_URL", base, 1);
    for (int i = 0; i < 150; ++i) {
        CURL *c = curl_easy_init();
        char url[256];
        long status = 0;
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/readyz", a);
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
        if (curl_easy_perform(c) == CURLE_OK)
            curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(c);
        if (status == 200)
            break;
        tly_test_sleep_ms(100);
        if (i == 149) {
            kill(pid, SIGKILL); /* never left running past the test */
            waitpid(pid, NULL, 0);
            fail_msg("the command API at %s never became ready; see %s", base, log_path);
        }
    }
    setenv("TALLY_URL", saved, 1);
    free((void *)saved);
    return pid;
}

static void
stop_api(pid_t pid)
{
    int st;
    kill(pid, SIGTERM);
    assert_int_equal(waitpid(pid, &st, 0), pid);
}

/* POST a create to the instance at `base`; returns the status, and the url error message into `msg`. */
static long
create_at(const char *base, const char *url, char *msg, size_t cap)
{
    char body[512];
    const char *saved = strdup(tly_test_env("TALLY_URL"));
    setenv("TALLY_URL", base, 1);
    snprintf(body, sizeof(body), "{\"url\":\"%s\",\"event_types\":[\"*\"]}", url);
    tly_test_response_t r = call("POST", "/v1/webhook-endpoints", key_a, body);
    setenv("TALLY_URL", saved, 1);
    free((void *)saved);
    long status = r.status;
    msg[0] = '\0';
    if (status == 422) {
        json_t *e = json_array_get(json_object_get(r.json, "errors"), 0);
        assert_string_equal(jstr(r.json, "code"), "validation_failed");
        assert_int_equal(json_array_size(json_object_get(r.json, "errors")), 1);
        assert_string_equal(jstr(e, "field"), "url");
        snprintf(msg, cap, "%s", jstr(e, "message"));
    }
    tly_test_response_free(&r);
    return status;
}

static void
test_ssrf_refused(void **state)
{
    static const char *refused[] = {
        "http://10.0.0.1/hook",                      /* private, and plain http */
        "https://10.0.0.1/hook",                     /* private */
        "https://169.254.169.254/latest/meta-data/", /* cloud metadata */
        "https://[::1]/hook",                        /* loopback */
        "https://127.0.0.1/hook",                    /* loopback */
        "https://[fe80::1]/hook",                    /* link-local */
        "https://[::ffff:192.168.0.1]/hook",         /* private, IPv4-mapped */
        "https://2130706433/hook",                   /* 127.0.0.1 in decimal */
        "https://localhost/hook",                    /* a loopback name */
        "http://hooks.example.com/hook",             /* public, but not https */
        "https://user:pass@hooks.example.com/hook",  /* userinfo */
        "ftp://hooks.example.com/hook",
        "file:///etc/passwd",
        "gopher://hooks.example.com/",
        "javascript:alert(1)",
        "//hooks.example.com/hook",
    };
    char base[64], msg[256];
    pid_t pid = start_api("false", base, sizeof(base));
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); ++i) {
        long status = create_at(base, refused[i], msg, sizeof(msg));
        if (status != 422)
            fail_msg("%s: %ld, expected 422", refused[i], status);
        assert_true(strlen(msg) > 0);
    }
    assert_int_equal(create_at(base, "https://hooks.example.com/ok", msg, sizeof(msg)), 201);
    stop_api(pid);

    /* with the setting on (tests, local stacks): loopback and plain http pass, userinfo still does not */
    pid = start_api("true", base, sizeof(base));
    assert_int_equal(create_at(base, "http://127.0.0.1:9/hook", msg, sizeof(msg)), 201);
    assert_int_equal(create_at(base, "http://10.0.0.1/hook", msg, sizeof(msg)), 201);
    assert_int_equal(create_at(base, "http://user@127.0.0.1:9/hook", msg, sizeof(msg)), 422);
    assert_int_equal(create_at(base, "ftp://127.0.0.1/hook", msg, sizeof(msg)), 422);
    stop_api(pid);
}

/* --- replay and deliveries ------------------------------------------------------------- */

/* Inserts a delivery as the webhooks role would, with `attempts` attempt rows. */
static void
insert_delivery(const char *endpoint, const char *tenant, const char *id, const char *occurred, const char *status, int attempts,
                int minute)
{
    PQclear(sql("INSERT INTO webhook_deliveries (id, endpoint_id, tenant_id, event_id, event_type, occurred_at, payload, "
                "status, attempts, next_attempt_at, last_status_code, last_error, created_at, updated_at) VALUES "
                "('%s', '%s', '%s', gen_random_uuid(), 'FundsDeposited', '%s', '{}', '%s', %d, "
                "CASE WHEN '%s' = 'pending' THEN now() + interval '1 hour' END, %s, %s, "
                "'2026-11-01T00:%02d:00Z', '2026-11-01T00:%02d:00Z')",
                id, endpoint, tenant, occurred, status, attempts, status, attempts > 0 ? "500" : "NULL",
                attempts > 0 ? "'server error'" : "NULL", minute, minute));
    for (int a = 1; a <= attempts; ++a)
        PQclear(sql("INSERT INTO webhook_attempts (delivery_id, attempt, started_at, status_code, latency_ms, error) VALUES "
                    "('%s', %d, '2026-11-01T00:%02d:%02dZ', %s, %d, %s)",
                    id, a, minute, a, a == 1 ? "NULL" : "500", 10 * a, a == 1 ? "'connection refused'" : "NULL"));
}

/* Delivery ids of this run: random, ending in d1..d4 so that failures name them. */
static char D_OK[40], D_FAILED[40], D_OUTSIDE[40], D_PENDING[40];

static void
make_delivery_ids(void)
{
    char prefix[35];
    sql_value(prefix, sizeof(prefix), "SELECT left(gen_random_uuid()::text, 34)%s", "");
    snprintf(D_OK, sizeof(D_OK), "%sd1", prefix);
    snprintf(D_FAILED, sizeof(D_FAILED), "%sd2", prefix);
    snprintf(D_OUTSIDE, sizeof(D_OUTSIDE), "%sd3", prefix);
    snprintf(D_PENDING, sizeof(D_PENDING), "%sd4", prefix);
}

static void
test_replay_and_deliveries(void **state)
{
    char path[600], value[256], dpath[128];
    json_t *ep = create_endpoint(key_a, "https://hooks.example.com/replay", "[\"*\"]", NULL);
    const char *id = jstr(ep, "id");
    make_delivery_ids();
    insert_delivery(id, tenant_a, D_OK, "2026-11-10T10:00:00Z", "succeeded", 1, 1);
    insert_delivery(id, tenant_a, D_FAILED, "2026-11-10T11:00:00Z", "failed", 2, 2);
    insert_delivery(id, tenant_a, D_OUTSIDE, "2026-11-10T12:00:00Z", "succeeded", 1, 3); /* until is exclusive */
    insert_delivery(id, tenant_a, D_PENDING, "2026-11-10T10:30:00Z", "pending", 0, 4);

    /* the listing, oldest first, with every attempt */
    snprintf(dpath, sizeof(dpath), "/v1/webhook-endpoints/%s/deliveries", id);
    json_t *page = get_json(dpath, key_a);
    json_t *data = json_object_get(page, "data");
    assert_int_equal(json_array_size(data), 4);
    const char *order[] = {D_OK, D_FAILED, D_OUTSIDE, D_PENDING};
    for (size_t i = 0; i < 4; ++i)
        assert_string_equal(jstr(json_array_get(data, i), "id"), order[i]);
    json_t *failed = json_array_get(data, 1), *attempts = json_object_get(failed, "attempts");
    assert_string_equal(jstr(failed, "status"), "failed");
    assert_string_equal(jstr(failed, "event_type"), "FundsDeposited");
    assert_string_equal(jstr(failed, "endpoint_id"), id);
    assert_non_null(jstr(failed, "event_id"));
    assert_string_equal(jstr(failed, "occurred_at"), "2026-11-10T11:00:00.000000Z");
    assert_int_equal(json_integer_value(json_object_get(failed, "attempt_count")), 2);
    assert_int_equal(json_integer_value(json_object_get(failed, "last_status_code")), 500);
    assert_string_equal(jstr(failed, "last_error"), "server error");
    assert_true(json_is_null(json_object_get(failed, "next_attempt_at")));
    assert_int_equal(json_array_size(attempts), 2);
    json_t *a1 = json_array_get(attempts, 0), *a2 = json_array_get(attempts, 1);
    assert_int_equal(json_integer_value(json_object_get(a1, "attempt")), 1);
    assert_string_equal(jstr(a1, "started_at"), "2026-11-01T00:02:01.000000Z");
    assert_true(json_is_null(json_object_get(a1, "status_code")));
    assert_int_equal(json_integer_value(json_object_get(a1, "latency_ms")), 10);
    assert_string_equal(jstr(a1, "error"), "connection refused");
    assert_int_equal(json_integer_value(json_object_get(a2, "attempt")), 2);
    assert_int_equal(json_integer_value(json_object_get(a2, "status_code")), 500);
    assert_true(json_is_null(json_object_get(a2, "error")));
    json_t *pending = json_array_get(data, 3);
    assert_int_equal(json_array_size(json_object_get(pending, "attempts")), 0);
    assert_non_null(jstr(pending, "next_attempt_at"));
    json_decref(page);

    /* pages of the deliveries, and the status filter (bound into the cursor) */
    snprintf(path, sizeof(path), "%s?limit=3", dpath);
    page = get_json(path, key_a);
    assert_int_equal(json_array_size(json_object_get(page, "data")), 3);
    assert_true(json_is_true(json_object_get(page, "has_more")));
    snprintf(path, sizeof(path), "%s?limit=3&cursor=%s", dpath, jstr(page, "next_cursor"));
    json_t *next = get_json(path, key_a);
    assert_int_equal(json_array_size(json_object_get(next, "data")), 1);
    assert_string_equal(jstr(json_array_get(json_object_get(next, "data"), 0), "id"), D_PENDING);
    json_decref(next);
    snprintf(path, sizeof(path), "%s?status=succeeded&limit=3&cursor=%s", dpath, jstr(page, "next_cursor"));
    expect("GET", path, key_a, NULL, 400, "invalid_cursor");
    json_decref(page);
    snprintf(path, sizeof(path), "%s?status=succeeded", dpath);
    page = get_json(path, key_a);
    assert_int_equal(json_array_size(json_object_get(page, "data")), 2);
    json_decref(page);
    snprintf(path, sizeof(path), "%s?status=done", dpath);
    expect("GET", path, key_a, NULL, 422, "validation_failed");

    /* the replay: wake-up NOTIFY seen on a listening connection */
    PGconn *listener = PQconnectdb(tly_test_env("TALLY_PG_DSN"));
    assert_int_equal(PQstatus(listener), CONNECTION_OK);
    PQclear(PQexec(listener, "LISTEN tally_webhooks"));
    snprintf(path, sizeof(path), "/v1/webhook-endpoints/%s/replay", id);
    tly_test_response_t r =
        call("POST", path, key_a, "{\"since\":\"2026-11-10T10:00:00Z\",\"until\":\"2026-11-10T13:00:00+01:00\"}");
    assert_int_equal(r.status, 202);
    assert_int_equal(json_integer_value(json_object_get(r.json, "requeued")), 2);
    assert_int_equal(json_integer_value(json_object_get(r.json, "already_pending")), 1);
    tly_test_response_free(&r);
    bool notified = false;
    for (int i = 0; i < 50 && !notified; ++i) {
        struct pollfd pfd = {.fd = PQsocket(listener), .events = POLLIN};
        poll(&pfd, 1, 100);
        PQconsumeInput(listener);
        PGnotify *n;
        while ((n = PQnotifies(listener)) != NULL) {
            notified = notified || (strcmp(n->relname, "tally_webhooks") == 0 && strcmp(n->extra, id) == 0);
            PQfreemem(n);
        }
    }
    PQfinish(listener);
    assert_true(notified);

    /*
     * Settled deliveries in the window are pending again, ids and history
     * kept. The stack's worker runs the webhooks role, so a requeued delivery
     * may already be claimed (due time moved to its lease) or attempted again
     * (hooks.example.com does not answer here) by the time we look: for those
     * two, "due" means it has a due time at all and attempts only grew.
     */
    PGresult *res = sql("SELECT id, status, attempts, next_attempt_at IS NOT NULL, next_attempt_at <= now(), "
                        "(SELECT count(*) FROM webhook_attempts a WHERE a.delivery_id = d.id) "
                        "FROM webhook_deliveries d WHERE endpoint_id = '%s' ORDER BY created_at",
                        id);
    assert_int_equal(PQntuples(res), 4);
    static const struct {
        const char *id, *status;
        int attempts;
        const char *scheduled, *due;
        int rows;
        bool live_sender_may_act;
    } want[4] = {
        {"d1", "pending", 1, "t", NULL, 1, true},
        {"d2", "pending", 2, "t", NULL, 2, true},
        {"d3", "succeeded", 1, "f", "", 1, false}, /* outside [since, until) */
        {"d4", "pending", 0, "t", "f", 0, false},  /* was pending: its schedule (or lease) is left alone */
    };
    for (int i = 0; i < 4; ++i) {
        const char *did = PQgetvalue(res, i, 0) + 34;
        int attempts = atoi(PQgetvalue(res, i, 2)), rows = atoi(PQgetvalue(res, i, 5));
        assert_string_equal(did, want[i].id);
        if (strcmp(PQgetvalue(res, i, 1), want[i].status) != 0 || strcmp(PQgetvalue(res, i, 3), want[i].scheduled) != 0 ||
            (want[i].due != NULL && strcmp(PQgetvalue(res, i, 4), want[i].due) != 0))
            fail_msg("delivery %s: status %s, scheduled %s, due %s", did, PQgetvalue(res, i, 1), PQgetvalue(res, i, 3),
                     PQgetvalue(res, i, 4));
        if (want[i].live_sender_may_act ? attempts < want[i].attempts || rows < want[i].rows
                                        : attempts != want[i].attempts || rows != want[i].rows)
            fail_msg("delivery %s: %d attempts, %d attempt rows", did, attempts, rows);
    }
    PQclear(res);
    page = get_json(dpath, key_a);
    json_t *replayed = json_array_get(json_object_get(page, "data"), 1);
    assert_string_equal(jstr(replayed, "status"), "pending");
    assert_non_null(jstr(replayed, "next_attempt_at"));
    /* its two attempts, plus any the stack's live sender has made since the replay */
    assert_true(json_array_size(json_object_get(replayed, "attempts")) >= 2);
    json_decref(page);

    /* replaying again finds them pending */
    r = call("POST", path, key_a, "{\"since\":\"2026-11-10T10:00:00Z\",\"until\":\"2026-11-10T12:00:00Z\"}");
    assert_int_equal(r.status, 202);
    assert_int_equal(json_integer_value(json_object_get(r.json, "requeued")), 0);
    assert_int_equal(json_integer_value(json_object_get(r.json, "already_pending")), 3);
    tly_test_response_free(&r);

    /* windows: since < until, at most 30 days, RFC 3339 */
    r = call("POST", path, key_a, "{\"since\":\"2026-11-10T10:00:00Z\",\"until\":\"2026-11-10T10:00:00Z\"}");
    assert_int_equal(r.status, 422);
    assert_string_equal(jstr(json_array_get(json_object_get(r.json, "errors"), 0), "field"), "until");
    tly_test_response_free(&r);
    expect("POST", path, key_a, "{\"since\":\"2026-09-01T00:00:00Z\",\"until\":\"2026-11-01T00:00:00Z\"}", 422,
           "validation_failed");
    expect("POST", path, key_a, "{\"since\":\"last week\",\"until\":\"2026-11-01T00:00:00Z\"}", 422, "validation_failed");
    expect("POST", path, key_a, "{\"since\":\"2026-11-10T10:00:00Z\"", 400, "malformed_json");

    /* another tenant can neither replay nor read these deliveries, nor learn that they exist */
    PQclear(sql("UPDATE webhook_deliveries SET status = 'succeeded', next_attempt_at = NULL WHERE id = '%s'", D_OK));
    expect("POST", path, key_b, "{\"since\":\"2026-11-10T00:00:00Z\",\"until\":\"2026-11-11T00:00:00Z\"}", 404, "not_found");
    sql_value(value, sizeof(value), "SELECT status FROM webhook_deliveries WHERE id = '%s'", D_OK);
    assert_string_equal(value, "succeeded");
    expect("GET", dpath, key_b, NULL, 404, "not_found");
    json_decref(ep);
}

/* --- tenant walls and scopes ----------------------------------------------------------- */

static void
test_tenant_walls(void **state)
{
    char path[160], sub[200], version[16];
    json_t *ep = create_endpoint(key_a, "https://hooks.example.com/walled", "[\"*\"]", NULL);
    const char *id = jstr(ep, "id");
    snprintf(path, sizeof(path), "/v1/webhook-endpoints/%s", id);
    /* tenant B gets exactly what an unknown id gets */
    tly_test_response_t mine = call("GET", "/v1/webhook-endpoints/6b1f2e51-8c0d-4a3e-9f27-440b5da193c8", key_b, NULL);
    tly_test_response_t theirs = call("GET", path, key_b, NULL);
    assert_int_equal(theirs.status, 404);
    assert_string_equal(theirs.body, mine.body);
    assert_string_equal(jstr(theirs.json, "detail"), "no such webhook endpoint");
    tly_test_response_free(&mine);
    tly_test_response_free(&theirs);
    expect("PATCH", path, key_b, "{\"url\":\"https://evil.example.com/\"}", 404, "not_found");
    expect("PATCH", path, key_b, "{\"enabled\":false}", 404, "not_found");
    snprintf(sub, sizeof(sub), "%s/rotate-secret", path);
    expect("POST", sub, key_b, "{}", 404, "not_found");
    snprintf(sub, sizeof(sub), "%s/deliveries", path);
    expect("GET", sub, key_b, NULL, 404, "not_found");
    expect("DELETE", path, key_b, NULL, 404, "not_found");
    /* untouched */
    sql_value(version, sizeof(version), "SELECT version FROM webhook_endpoints WHERE id = '%s' AND deleted_at IS NULL", id);
    assert_string_equal(version, "1");
    json_t *list = get_json("/v1/webhook-endpoints?limit=100", key_b);
    size_t i;
    json_t *item;
    json_array_foreach(json_object_get(list, "data"), i, item) assert_string_not_equal(jstr(item, "id"), id);
    json_decref(list);
    json_decref(ep);
}

static void
test_scopes(void **state)
{
    char path[160], sub[200];
    json_t *ep = create_endpoint(key_a, "https://hooks.example.com/scoped", "[\"*\"]", NULL);
    snprintf(path, sizeof(path), "/v1/webhook-endpoints/%s", jstr(ep, "id"));
    /* a read-only key reads but cannot write */
    expect("POST", "/v1/webhook-endpoints", key_read, "{\"url\":\"https://hooks.example.com/r\",\"event_types\":[\"*\"]}", 403,
           "insufficient_scope");
    expect("PATCH", path, key_read, "{\"enabled\":false}", 403, "insufficient_scope");
    expect("DELETE", path, key_read, NULL, 403, "insufficient_scope");
    snprintf(sub, sizeof(sub), "%s/rotate-secret", path);
    expect("POST", sub, key_read, "{}", 403, "insufficient_scope");
    snprintf(sub, sizeof(sub), "%s/replay", path);
    expect("POST", sub, key_read, "{\"since\":\"2026-11-10T00:00:00Z\",\"until\":\"2026-11-11T00:00:00Z\"}", 403,
           "insufficient_scope");
    json_t *got = get_json(path, key_read);
    assert_string_equal(jstr(got, "id"), jstr(ep, "id"));
    json_decref(got);
    /* a write-only key writes but cannot read */
    expect("GET", path, key_write_only, NULL, 403, "insufficient_scope");
    expect("GET", "/v1/webhook-endpoints", key_write_only, NULL, 403, "insufficient_scope");
    expect("PATCH", path, key_write_only, "{\"description\":\"by the writer\"}", 200, NULL);
    expect("GET", path, NULL, NULL, 401, "unauthenticated");
    expect("POST", "/v1/webhook-endpoints", NULL, "{}", 401, "unauthenticated");
    json_decref(ep);
}

static void
test_bad_requests(void **state)
{
    char allow[64];
    tly_test_response_t r = call("POST", "/v1/webhook-endpoints", key_a, "{\"url\":\"https://a.example.com\",");
    assert_int_equal(r.status, 400);
    tly_test_response_free(&r);
    const char *text[] = {"Content-Type: text/plain", NULL};
    r = tly_test_request("POST", "/v1/webhook-endpoints", key_a, NULL, text);
    assert_int_equal(r.status, 415);
    tly_test_response_free(&r);
    /* every bad field at once (the url has userinfo: refused in the development mode too) */
    r = call("POST", "/v1/webhook-endpoints", key_a,
             "{\"url\":\"http://user@10.0.0.1/\",\"event_types\":[\"FundsDeposited\",\"Bogus\"],\"description\":7,\"extra\":1}");
    assert_int_equal(r.status, 422);
    const char *fields[] = {"extra", "url", "event_types", "description"};
    json_t *errors = json_object_get(r.json, "errors");
    assert_int_equal(json_array_size(errors), 4);
    for (size_t i = 0; i < 4; ++i)
        assert_string_equal(jstr(json_array_get(errors, i), "field"), fields[i]);
    tly_test_response_free(&r);
    /* methods: Allow names what the URL serves across both APIs */
    r = call("PUT", "/v1/webhook-endpoints", key_a, "{}");
    assert_int_equal(r.status, 405);
    assert_true(tly_test_header(&r, "allow", allow, sizeof(allow)));
    assert_string_equal(allow, "GET, HEAD, POST");
    tly_test_response_free(&r);
    r = call("PUT", "/v1/webhook-endpoints/6b1f2e51-8c0d-4a3e-9f27-440b5da193c8", key_a, "{}");
    assert_int_equal(r.status, 405);
    assert_true(tly_test_header(&r, "allow", allow, sizeof(allow)));
    assert_string_equal(allow, "GET, HEAD, PATCH, DELETE");
    tly_test_response_free(&r);
    expect("POST", "/v1/webhook-endpoints/6b1f2e51-8c0d-4a3e-9f27-440b5da193c8/nothing", key_a, "{}", 404, "not_found");
}

/* --- setup ------------------------------------------------------------------------------ */

/* A key of `tenant` with `scopes`, usable on both APIs. */
static void
make_key(const char *tenant, const char *scopes, char *key, size_t cap)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "\"$TALLY_BIN/tallyctl\" keys create --tenant %s --scopes %s 2>/dev/null", tenant, scopes);
    tly_test_sh(cmd, key, cap);
}

static int
setup(void **state)
{
    if (tly_test_env("TALLY_PG_DSN") == NULL || tly_test_env("TALLY_BIN") == NULL)
        return -1;
    setenv("TALLY_PG_DSN", tly_test_env("TALLY_PG_DSN"), 1);
    setenv("TALLY_BIN", tly_test_env("TALLY_BIN"), 1);
    setenv("TALLY_URL", tly_test_env("TALLY_URL"), 1); /* start_api swaps it */
    const char *keys = tly_test_env("TALLY_SECRET_KEYS");
    char err[256];
    if (keys == NULL || tly_secretbox_configure(keys, err, sizeof(err)) != 1)
        return -1;
    curl_global_init(CURL_GLOBAL_ALL);
    db = PQconnectdb(tly_test_env("TALLY_PG_DSN"));
    if (PQstatus(db) != CONNECTION_OK)
        return -1;
    tly_test_make_tenant("wh-a", 1000, tenant_a, sizeof(tenant_a), key_a, sizeof(key_a));
    tly_test_make_tenant("wh-b", 1000, tenant_b, sizeof(tenant_b), key_b, sizeof(key_b));
    make_key(tenant_a, "read", key_read, sizeof(key_read));
    make_key(tenant_a, "write", key_write_only, sizeof(key_write_only));
    /* the APIs load new keys within a second */
    for (int i = 0; i < 50; ++i) {
        tly_test_response_t r = call("GET", "/v1/webhook-endpoints?limit=1", key_read, NULL);
        long status = r.status;
        tly_test_response_free(&r);
        if (status == 200)
            break;
        tly_test_sleep_ms(100);
    }
    tly_test_sleep_ms(1200); /* ... on every instance */
    return 0;
}

static int
teardown(void **state)
{
    PQfinish(db);
    return 0;
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_shows_secret_once),
        cmocka_unit_test(test_list_pagination),
        cmocka_unit_test(test_patch),
        cmocka_unit_test(test_delete),
        cmocka_unit_test(test_rotate_secret),
        cmocka_unit_test(test_ssrf_refused),
        cmocka_unit_test(test_replay_and_deliveries),
        cmocka_unit_test(test_tenant_walls),
        cmocka_unit_test(test_scopes),
        cmocka_unit_test(test_bad_requests),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
