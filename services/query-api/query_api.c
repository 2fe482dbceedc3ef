/*
 * Query API handlers. Each read is one prepared statement that filters by the
 * caller's tenant, so another tenant's resource is indistinguishable from a
 * missing one (404 either way, same body, same single query).
 */
#include "query_api.h"
#include "tally/api.h"
#include "tally/http.h"
#include "tally/json.h"
#include "tally/keycache.h"
#include "tally/log.h"
#include "tally/pgasync.h"
#include "tally/server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { STMT_ACCOUNT, STMT_JOB, STMT__COUNT };
static const tly_pg_statement_t statements[STMT__COUNT] = {
    [STMT_ACCOUNT] = {"get_account",
                      "SELECT json_build_object('id', id, 'currency', currency, 'label', label, 'status', status, "
                      "'balance', balance, 'version', version, 'created_at', "
                      "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), 'updated_at', "
                      "to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))::text, version "
                      "FROM accounts WHERE id = $1 AND tenant_id = $2",
                      2},
    /* The projected job, or, before the projector saw its event, the command
       record of an accepted request: a job that got a 202 is never 404. */
    [STMT_JOB] = {"get_job",
                  "SELECT json_build_object('id', id, 'status', status, 'created_at', "
                  "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), 'updated_at', "
                  "to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), 'resource', "
                  "json_build_object('type', resource_type, 'id', resource_id, 'url', "
                  "'/v1/' || resource_type || 's/' || resource_id), 'error', "
                  "CASE WHEN error_code IS NULL THEN NULL ELSE json_build_object('code', error_code, 'detail', "
                  "error_detail) END)::text, version FROM ("
                  "SELECT id, status, created_at, updated_at, resource_type, resource_id, error_code, error_detail, "
                  "version + 1 AS version FROM jobs WHERE id = $1 AND tenant_id = $2 "
                  "UNION ALL SELECT job_id, 'queued', created_at, created_at, resource_type, resource_id, NULL, NULL, 1 "
                  "FROM command_requests WHERE job_id = $1 AND tenant_id = $2 AND state = 'accepted' "
                  "AND NOT EXISTS (SELECT 1 FROM jobs WHERE id = $1)) j LIMIT 1",
                  2},
};

const tly_config_def_t tly_query_api_settings[] = {
#define OFF(f) offsetof(tly_query_api_config_t, f)
    {"pg-dsn", "TALLY_PG_DSN", TLY_CONFIG_STRING, NULL, 0, 0, OFF(pg_dsn), "libpq connection string"},
    {"host", "TALLY_HTTP_HOST", TLY_CONFIG_STRING, "127.0.0.1", 0, 0, OFF(host), "address to listen on"},
    {"port", "TALLY_HTTP_PORT", TLY_CONFIG_INT, "8082", 1, 65535, OFF(port), "port to listen on"},
    {"threads", "TALLY_HTTP_THREADS", TLY_CONFIG_INT, "2", 1, 64, OFF(threads), "event-loop threads"},
    {"pg-pool", "TALLY_PG_POOL", TLY_CONFIG_INT, "4", 1, 64, OFF(pg_pool), "PostgreSQL connections per thread"},
    {"key-refresh-ms", "TALLY_KEY_REFRESH_MS", TLY_CONFIG_INT, "1000", 100, 5000, OFF(key_refresh_ms),
     "how often API key changes (revocations) are loaded"},
    {"log-level", "TALLY_LOG_LEVEL", TLY_CONFIG_STRING, "info", 0, 0, OFF(log_level), "debug, info, warn or error"},
#undef OFF
};
const size_t tly_query_api_nsettings = sizeof(tly_query_api_settings) / sizeof(tly_query_api_settings[0]);

typedef struct st_query_thread_t {
    tly_keycache_t *keys;
    tly_pgpool_t *pg;
    size_t inflight;
} query_thread_t;

typedef struct st_query_op_t {
    tly_api_req_t api;
    query_thread_t *thr;
    const char *what; /* "account" or "job", for the 404 detail */
} query_op_t;

static tly_keycache_t *shared_keys;

static void
op_destroy(query_op_t *op)
{
    tly_api_req_finish(&op->api);
    free(op);
}

/* True when If-None-Match lists `etag` or is "*". */
static bool
etag_matches(h2o_req_t *req, const char *etag)
{
    h2o_iovec_t inm = tly_http_header(req, "if-none-match");
    if (inm.base == NULL)
        return false;
    size_t elen = strlen(etag);
    const char *p = inm.base, *end = inm.base + inm.len;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == ','))
            ++p;
        const char *start = p;
        while (p < end && *p != ',')
            ++p;
        const char *stop = p;
        while (stop > start && stop[-1] == ' ')
            --stop;
        size_t n = (size_t)(stop - start);
        if ((n == 1 && *start == '*') || (n == elen && memcmp(start, etag, n) == 0) ||
            (n == elen + 2 && memcmp(start, "W/", 2) == 0 && memcmp(start + 2, etag, elen) == 0))
            return true;
    }
    return false;
}

static void
on_resource(void *data, PGresult *res, const char *err)
{
    query_op_t *op = data;
    char etag[48], detail[64];
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        tly_log(TLY_LOG_WARN, "could not read", "request_id", op->api.request_id, "error",
                err != NULL ? err : PQresultErrorMessage(res), NULL);
        tly_api_unavailable(&op->api, "database_unavailable", "the read models cannot be reached right now");
    } else if (PQntuples(res) == 0) {
        snprintf(detail, sizeof(detail), "no such %s", op->what);
        tly_api_problem(&op->api, 404, "not_found", detail, NULL);
    } else if (op->api.req != NULL) {
        snprintf(etag, sizeof(etag), "\"%s-v%s\"", op->what, PQgetvalue(res, 0, 1));
        tly_http_add_header(op->api.req, "etag", etag);
        const char *body = PQgetvalue(res, 0, 0);
        tly_api_send(&op->api, etag_matches(op->api.req, etag) ? 304 : 200, "application/json", body, strlen(body));
    }
    op_destroy(op);
}

/* Routes GET /v1/accounts/{id} and /v1/jobs/{id}; replies itself when it cannot. */
static bool
route_or_reply(query_op_t *op, size_t *stmt, tly_uuid_t *id)
{
    h2o_iovec_t segs[3];
    char text[64];
    int n = tly_http_path_segments(op->api.req, segs, 2);
    if (n == 2 && tly_http_seg_is(segs[0], "accounts")) {
        *stmt = STMT_ACCOUNT;
        op->what = "account";
        op->api.route = "/v1/accounts/{id}";
    } else if (n == 2 && tly_http_seg_is(segs[0], "jobs")) {
        *stmt = STMT_JOB;
        op->what = "job";
        op->api.route = "/v1/jobs/{id}";
    } else {
        tly_api_problem(&op->api, 404, "not_found", "no such endpoint", NULL);
        return false;
    }
    snprintf(text, sizeof(text), "%.*s", (int)segs[1].len, segs[1].base);
    if (segs[1].len != TLY_UUID_STR_LEN || !tly_uuid_parse(text, id)) {
        json_t *errors = json_array();
        tly_http_field_error(errors, "id", "must be a uuid");
        tly_api_problem(&op->api, 422, "validation_failed", "the id in the path is malformed", errors);
        json_decref(errors);
        return false;
    }
    return true;
}

static bool
health_or_reply(h2o_req_t *req, query_thread_t *thr)
{
    bool pg = tly_pgpool_ready(thr->pg), keys = tly_keycache_ready(thr->keys);
    json_t *reasons = json_pack("{s:b, s:b}", "postgresql", pg, "api_keys", keys);
    bool answered = tly_api_health(req, pg && keys, reasons);
    json_decref(reasons);
    return answered;
}

static int
on_req(h2o_handler_t *self, h2o_req_t *req)
{
    query_thread_t *thr = tly_server_thread_of(req)->app;
    char id_text[TLY_UUID_STR_LEN + 1], tenant[TLY_UUID_STR_LEN + 1];
    size_t stmt;
    tly_uuid_t id;
    if (health_or_reply(req, thr))
        return 0;
    query_op_t *op = calloc(1, sizeof(*op));
    if (op == NULL)
        abort();
    op->thr = thr;
    tly_api_req_init(&op->api, req, &thr->inflight);
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")) &&
        !h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"))) {
        tly_http_add_header(req, "allow", "GET, HEAD");
        tly_api_problem(&op->api, 405, "method_not_allowed", "the query API serves GET and HEAD", NULL);
        goto done;
    }
    if (!tly_api_authenticate_or_reply(&op->api, thr->keys, TLY_SCOPE_READ) || !route_or_reply(op, &stmt, &id))
        goto done;
    tly_uuid_format(&id, id_text);
    tly_uuid_format(&op->api.principal.tenant_id, tenant);
    const char *params[2] = {id_text, tenant};
    tly_pgpool_exec(thr->pg, stmt, params, on_resource, op);
    return 0;
done:
    op_destroy(op);
    return 0;
}

static void *
thread_init(tly_server_thread_t *t, void *arg)
{
    tly_query_api_config_t *cfg = arg;
    query_thread_t *thr = calloc(1, sizeof(*thr));
    if (thr == NULL)
        abort();
    thr->keys = shared_keys;
    thr->pg = tly_pgpool_create(t->loop, cfg->pg_dsn, (size_t)cfg->pg_pool, statements, STMT__COUNT);
    return thr;
}

static size_t
thread_inflight(void *app)
{
    return ((query_thread_t *)app)->inflight;
}

static void
thread_dispose(void *app)
{
    query_thread_t *thr = app;
    tly_pgpool_destroy(thr->pg);
    free(thr);
}

int
tly_query_api_run(tly_query_api_config_t *cfg)
{
    shared_keys = tly_keycache_create(cfg->pg_dsn, (int)cfg->key_refresh_ms);
    tly_server_config_t server = {
        .name = "query-api",
        .host = cfg->host,
        .port = (uint16_t)cfg->port,
        .threads = (size_t)cfg->threads,
        .max_body = 64 * 1024,
        .on_req = on_req,
        .thread_init = thread_init,
        .thread_inflight = thread_inflight,
        .thread_dispose = thread_dispose,
        .arg = cfg,
        .shutdown_grace_ms = 5000,
    };
    int ret = tly_server_run(&server);
    tly_keycache_destroy(shared_keys);
    return ret == 0 ? 0 : 1;
}
