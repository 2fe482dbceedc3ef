/*
 * Command API handlers. A command goes through: authentication, rate limit,
 * syntax (content type, size, strict JSON), validation, idempotency record,
 * Kafka append (acks=all), acceptance record, 202. Every step after the
 * validation is asynchronous and comes back into the thread's h2o loop:
 * PostgreSQL through tly_pgpool, Kafka delivery reports through a pipe that
 * librdkafka writes when its queue becomes non-empty.
 */
#include "command_api.h"
#include "commands.h"
#include "tally/api.h"
#include "tally/clock.h"
#include "tally/envelope.h"
#include "tally/http.h"
#include "tally/json.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/pgasync.h"

#include <openssl/evp.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_BODY (64 * 1024)
#define IDEMPOTENCY_KEY_MAX 255

/* Prepared statements, by index. */
enum { STMT_INSERT, STMT_CLAIM, STMT_ACCEPT, STMT_FAIL, STMT__COUNT };
static const tly_pg_statement_t statements[STMT__COUNT] = {
    [STMT_INSERT] = {"insert_request",
                     "INSERT INTO command_requests (job_id, event_id, tenant_id, idempotency_key, request_hash, state, "
                     "locked_until, resource_type, resource_id) VALUES ($1, $2, $3, $4, decode($5, 'hex'), 'pending', "
                     "now() + interval '15 seconds', $6, $7) ON CONFLICT (tenant_id, idempotency_key) "
                     "WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING job_id",
                     7},
    /* The same key was seen before: take it over when the earlier attempt
       failed or its lease ran out, else report what it is. */
    [STMT_CLAIM] = {"claim_request",
                    "WITH cur AS (SELECT * FROM command_requests WHERE tenant_id = $1 AND idempotency_key = $2 FOR UPDATE), "
                    "upd AS (UPDATE command_requests c SET state = 'pending', "
                    "locked_until = now() + interval '15 seconds' FROM cur WHERE c.job_id = cur.job_id "
                    "AND cur.request_hash = decode($3, 'hex') AND (cur.state = 'failed' OR "
                    "(cur.state = 'pending' AND cur.locked_until < now())) RETURNING c.job_id) "
                    "SELECT cur.job_id, cur.event_id, cur.request_hash = decode($3, 'hex'), cur.state, "
                    "cur.response_body, cur.resource_id, (SELECT count(*) FROM upd) FROM cur",
                    3},
    [STMT_ACCEPT] = {"accept_request",
                     "UPDATE command_requests SET state = 'accepted', response_status = 202, response_body = $2 "
                     "WHERE job_id = $1",
                     2},
    [STMT_FAIL] = {"fail_request", "UPDATE command_requests SET state = 'failed' WHERE job_id = $1 AND state = 'pending'", 1},
};

const tly_config_def_t tly_command_api_settings[] = {
#define OFF(f) offsetof(tly_command_api_config_t, f)
    {"pg-dsn", "TALLY_PG_DSN", TLY_CONFIG_STRING, NULL, 0, 0, OFF(pg_dsn), "libpq connection string"},
    {"kafka-brokers", "TALLY_KAFKA_BROKERS", TLY_CONFIG_STRING, "127.0.0.1:9092", 0, 0, OFF(kafka_brokers),
     "Kafka bootstrap servers"},
    {"topic", "TALLY_KAFKA_TOPIC", TLY_CONFIG_STRING, "tally.events", 0, 0, OFF(topic), "the event log topic"},
    {"host", "TALLY_HTTP_HOST", TLY_CONFIG_STRING, "127.0.0.1", 0, 0, OFF(host), "address to listen on"},
    {"port", "TALLY_HTTP_PORT", TLY_CONFIG_INT, "8081", 1, 65535, OFF(port), "port to listen on"},
    {"threads", "TALLY_HTTP_THREADS", TLY_CONFIG_INT, "2", 1, 64, OFF(threads), "event-loop threads"},
    {"pg-pool", "TALLY_PG_POOL", TLY_CONFIG_INT, "4", 1, 64, OFF(pg_pool), "PostgreSQL connections per thread"},
    {"kafka-timeout-ms", "TALLY_KAFKA_TIMEOUT_MS", TLY_CONFIG_INT, "5000", 100, 60000, OFF(kafka_timeout_ms),
     "how long the broker may take to acknowledge before the answer is 503"},
    {"key-refresh-ms", "TALLY_KEY_REFRESH_MS", TLY_CONFIG_INT, "1000", 100, 5000, OFF(key_refresh_ms),
     "how often API key changes (revocations) are loaded"},
    {"log-level", "TALLY_LOG_LEVEL", TLY_CONFIG_STRING, "info", 0, 0, OFF(log_level), "debug, info, warn or error"},
#undef OFF
};
const size_t tly_command_api_nsettings = sizeof(tly_command_api_settings) / sizeof(tly_command_api_settings[0]);

typedef struct st_cmd_thread_t {
    tly_command_api_config_t *cfg;
    tly_keycache_t *keys;
    tly_pgpool_t *pg;
    rd_kafka_t *producer;
    h2o_socket_t *kafka_wakeup;
    int wakeup_fds[2];
    size_t inflight;
} cmd_thread_t;

typedef struct st_cmd_op_t {
    tly_api_req_t api; /* request frame: id, route, principal, guard */
    cmd_thread_t *thr;
    json_t *body; /* owns the strings that cmd borrows */
    tly_command_t cmd;
    tly_uuid_t job_id, event_id, resource_id;
    char idem_key[IDEMPOTENCY_KEY_MAX + 1];
    bool has_idem;
    char hash_hex[65];
    char traceparent[TLY_TRACEPARENT_LEN + 1];
    char *response; /* the 202 body */
} cmd_op_t;

static tly_keycache_t *shared_keys;

/* ---- op lifetime ------------------------------------------------------- */

static cmd_op_t *
op_create(cmd_thread_t *thr, h2o_req_t *req)
{
    cmd_op_t *op = calloc(1, sizeof(*op));
    if (op == NULL)
        abort();
    op->thr = thr;
    tly_api_req_init(&op->api, req, &thr->inflight);
    return op;
}

static void
op_destroy(cmd_op_t *op)
{
    tly_api_req_finish(&op->api);
    json_decref(op->body);
    free(op->response);
    free(op);
}

static void
op_accepted(cmd_op_t *op, const char *body, bool replayed)
{
    char location[64], job[TLY_UUID_STR_LEN + 1];
    if (op->api.req == NULL)
        return;
    tly_uuid_format(&op->job_id, job);
    snprintf(location, sizeof(location), "/v1/jobs/%s", job);
    tly_http_add_header(op->api.req, "location", location);
    if (replayed)
        tly_http_add_header(op->api.req, "idempotent-replayed", "true");
    op->api.job_id = op->job_id;
    tly_api_send(&op->api, 202, "application/json", body, strlen(body));
}

/* ---- the asynchronous steps -------------------------------------------- */

static void op_produce(cmd_op_t *op);

static void
on_failed_recorded(void *data, PGresult *res, const char *err)
{
    op_destroy(data);
}

static void
op_give_up(cmd_op_t *op, const char *detail)
{
    char job[TLY_UUID_STR_LEN + 1];
    const char *params[1] = {job};
    tly_api_unavailable(&op->api, "event_log_unavailable", detail);
    tly_uuid_format(&op->job_id, job);
    tly_pgpool_exec(op->thr->pg, STMT_FAIL, params, on_failed_recorded, op);
}

static void
on_accepted_recorded(void *data, PGresult *res, const char *err)
{
    cmd_op_t *op = data;
    if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
        /* the event is in the log and will be processed, but the job could not
           be made visible yet: the client must not hold a 202 that 404s */
        tly_log(TLY_LOG_ERROR, "could not record accepted command", "request_id", op->api.request_id, "error",
                err != NULL ? err : PQresultErrorMessage(res), NULL);
        tly_api_unavailable(&op->api, "database_unavailable", "the command could not be recorded; retry with the same Idempotency-Key");
    } else {
        op_accepted(op, op->response, false);
    }
    op_destroy(op);
}

static void
on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
    cmd_op_t *op = msg->_private;
    char job[TLY_UUID_STR_LEN + 1];
    if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        tly_log(TLY_LOG_WARN, "could not append event", "request_id", op->api.request_id, "error", rd_kafka_err2str(msg->err), NULL);
        op_give_up(op, "the event log did not acknowledge the command in time; retry with the same Idempotency-Key");
        return;
    }
    tly_uuid_format(&op->job_id, job);
    const char *params[2] = {job, op->response};
    tly_pgpool_exec(op->thr->pg, STMT_ACCEPT, params, on_accepted_recorded, op);
}

static char *
build_response(cmd_op_t *op)
{
    char job[TLY_UUID_STR_LEN + 1], res[TLY_UUID_STR_LEN + 1], url[64], rurl[80];
    tly_uuid_format(&op->job_id, job);
    tly_uuid_format(&op->resource_id, res);
    snprintf(url, sizeof(url), "/v1/jobs/%s", job);
    const char *rtype = tly_command_spec(op->cmd.kind)->aggregate_type;
    snprintf(rurl, sizeof(rurl), "/v1/%ss/%s", rtype, res);
    json_t *resource = json_pack("{s:s, s:s, s:s}", "type", rtype, "id", res, "url", rurl);
    json_t *o = json_pack("{s:{s:s, s:s, s:s, s:o}}", "job", "id", job, "status", "queued", "url", url, "resource", resource);
    char *s = tly_json_dump(o);
    json_decref(o);
    return s;
}

static void
op_produce(cmd_op_t *op)
{
    tly_envelope_t env;
    const tly_command_spec_t *spec = tly_command_spec(op->cmd.kind);
    memset(&env, 0, sizeof(env));
    env.id = op->event_id;
    snprintf(env.type, sizeof(env.type), "%s", spec->request_event);
    env.version = 1;
    snprintf(env.aggregate_type, sizeof(env.aggregate_type), "%s", spec->aggregate_type);
    env.aggregate_id = op->resource_id;
    env.tenant_id = op->api.principal.tenant_id;
    env.job_id = op->job_id;
    env.correlation_id = op->event_id;
    env.occurred_at_us = tly_clock_now_us();
    env.data = tly_command_event_data(&op->cmd);
    op->response = build_response(op);
    rd_kafka_resp_err_t err = tly_kafka_produce_envelope(op->thr->producer, op->thr->cfg->topic, &env, op->traceparent, op);
    json_decref(env.data);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        tly_log(TLY_LOG_WARN, "could not enqueue event", "request_id", op->api.request_id, "error", rd_kafka_err2str(err), NULL);
        op_give_up(op, "the event log is not accepting commands right now");
    }
}

static void
on_claimed(void *data, PGresult *res, const char *err)
{
    cmd_op_t *op = data;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        tly_api_unavailable(&op->api, "database_unavailable", "the command could not be recorded");
        op_destroy(op);
        return;
    }
    bool same = strcmp(PQgetvalue(res, 0, 2), "t") == 0, claimed = strcmp(PQgetvalue(res, 0, 6), "1") == 0;
    const char *state = PQgetvalue(res, 0, 3);
    if (!tly_uuid_parse(PQgetvalue(res, 0, 0), &op->job_id) || !tly_uuid_parse(PQgetvalue(res, 0, 1), &op->event_id) ||
        !tly_uuid_parse(PQgetvalue(res, 0, 5), &op->resource_id)) {
        tly_api_unavailable(&op->api, "database_unavailable", "the command record is unreadable");
    } else if (!same) {
        tly_api_problem(&op->api, 422, "idempotency_key_reused",
                   "this Idempotency-Key was used with a different request; use a new key for a new request", NULL);
    } else if (claimed) {
        /* an earlier attempt failed or was abandoned: append again with the
           same event id, so a copy that did reach the log is applied once */
        op_produce(op);
        return;
    } else if (strcmp(state, "accepted") == 0) {
        op_accepted(op, PQgetvalue(res, 0, 4), true);
    } else {
        tly_api_problem(&op->api, 409, "idempotency_key_in_use", "a request with this Idempotency-Key is still being processed", NULL);
    }
    op_destroy(op);
}

static void
on_inserted(void *data, PGresult *res, const char *err)
{
    cmd_op_t *op = data;
    char tenant[TLY_UUID_STR_LEN + 1];
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        tly_log(TLY_LOG_WARN, "could not record command", "request_id", op->api.request_id, "error",
                err != NULL ? err : PQresultErrorMessage(res), NULL);
        tly_api_unavailable(&op->api, "database_unavailable", "the command could not be recorded");
        op_destroy(op);
        return;
    }
    if (PQntuples(res) == 1) {
        op_produce(op);
        return;
    }
    tly_uuid_format(&op->api.principal.tenant_id, tenant);
    const char *params[3] = {tenant, op->idem_key, op->hash_hex};
    tly_pgpool_exec(op->thr->pg, STMT_CLAIM, params, on_claimed, op);
}

static void
op_start(cmd_op_t *op)
{
    char job[TLY_UUID_STR_LEN + 1], event[TLY_UUID_STR_LEN + 1], tenant[TLY_UUID_STR_LEN + 1], res[TLY_UUID_STR_LEN + 1];
    op->job_id = tly_uuid_v4();
    op->event_id = tly_uuid_v4();
    tly_uuid_format(&op->job_id, job);
    tly_uuid_format(&op->event_id, event);
    tly_uuid_format(&op->api.principal.tenant_id, tenant);
    tly_uuid_format(&op->resource_id, res);
    const char *params[7] = {job, event, tenant, op->has_idem ? op->idem_key : NULL, op->hash_hex,
                             tly_command_spec(op->cmd.kind)->aggregate_type, res};
    tly_pgpool_exec(op->thr->pg, STMT_INSERT, params, on_inserted, op);
}

/* ---- the synchronous checks (validate-or-reply) ------------------------ */

static bool
header_value_ok(h2o_iovec_t v, size_t max)
{
    if (v.len == 0 || v.len > max)
        return false;
    for (size_t i = 0; i < v.len; ++i)
        if ((unsigned char)v.base[i] < 0x21 || (unsigned char)v.base[i] > 0x7e)
            return false;
    return true;
}

static bool
idempotency_key_or_reply(cmd_op_t *op)
{
    h2o_iovec_t key = tly_http_header(op->api.req, "idempotency-key");
    if (key.base == NULL) {
        if (!tly_command_spec(op->cmd.kind)->needs_idempotency_key)
            return true;
        tly_api_problem(&op->api, 400, "idempotency_key_required", "this request needs an Idempotency-Key header", NULL);
        return false;
    }
    if (!header_value_ok(key, IDEMPOTENCY_KEY_MAX)) {
        tly_api_problem(&op->api, 400, "invalid_idempotency_key", "Idempotency-Key must be 1 to 255 visible ASCII characters", NULL);
        return false;
    }
    memcpy(op->idem_key, key.base, key.len);
    op->idem_key[key.len] = '\0';
    op->has_idem = true;
    return true;
}

static bool
body_or_reply(cmd_op_t *op)
{
    char detail[256];
    h2o_iovec_t ct = tly_http_header(op->api.req, "content-type");
    /* "application/json", any case, optionally followed by parameters */
    bool is_json = ct.base != NULL && ct.len >= 16 && strncasecmp(ct.base, "application/json", 16) == 0 &&
                   (ct.len == 16 || ct.base[16] == ';' || ct.base[16] == ' ');
    if (!is_json) {
        tly_api_problem(&op->api, 415, "unsupported_media_type", "the body must be JSON: Content-Type: application/json", NULL);
        return false;
    }
    if (op->api.req->entity.len > MAX_BODY) {
        tly_api_problem(&op->api, 413, "body_too_large", "the body is larger than 64 KiB", NULL);
        return false;
    }
    const char *buf = op->api.req->entity.base != NULL ? op->api.req->entity.base : "";
    switch (tly_json_parse_strict(buf, op->api.req->entity.len, &op->body, detail, sizeof(detail))) {
    case TLY_JSON_OK:
        return true;
    case TLY_JSON_DUPLICATE:
        tly_api_problem(&op->api, 400, "duplicate_key", detail, NULL);
        return false;
    case TLY_JSON_TOO_DEEP:
        tly_api_problem(&op->api, 400, "too_deep", detail, NULL);
        return false;
    default:
        tly_api_problem(&op->api, 400, "malformed_json", detail, NULL);
        return false;
    }
}

static void
request_hash(cmd_op_t *op)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t digest[32];
    unsigned int n = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, op->api.req->path_normalized.base, op->api.req->path_normalized.len) != 1 ||
        EVP_DigestUpdate(ctx, "\n", 1) != 1 || EVP_DigestUpdate(ctx, op->api.req->entity.base, op->api.req->entity.len) != 1 ||
        EVP_DigestFinal_ex(ctx, digest, &n) != 1)
        abort();
    EVP_MD_CTX_free(ctx);
    for (size_t i = 0; i < 32; ++i) {
        op->hash_hex[2 * i] = hex[digest[i] >> 4];
        op->hash_hex[2 * i + 1] = hex[digest[i] & 0xf];
    }
    op->hash_hex[64] = '\0';
}

static void
take_traceparent(cmd_op_t *op)
{
    h2o_iovec_t tp = tly_http_header(op->api.req, "traceparent");
    char parent[TLY_TRACEPARENT_LEN + 1];
    if (tp.base != NULL && tly_traceparent_valid(tp.base, tp.len)) {
        memcpy(parent, tp.base, TLY_TRACEPARENT_LEN);
        parent[TLY_TRACEPARENT_LEN] = '\0';
        tly_traceparent_child(parent, op->traceparent);
    } else {
        tly_traceparent_new(op->traceparent);
    }
}

/* Resolves the route into op->cmd.kind and the path id; replies when it cannot. */
static bool
route_or_reply(cmd_op_t *op)
{
    h2o_iovec_t segs[4];
    char collection[32] = "", sub[32] = "", id[64] = "";
    int n = tly_http_path_segments(op->api.req, segs, 3);
    if (n == 1 || n == 3) {
        snprintf(collection, sizeof(collection), "%.*s", (int)segs[0].len, segs[0].base);
        if (n == 3) {
            snprintf(id, sizeof(id), "%.*s", (int)segs[1].len, segs[1].base);
            snprintf(sub, sizeof(sub), "%.*s", (int)segs[2].len, segs[2].base);
        }
    }
    if (n < 1 || !tly_command_route(collection, n == 3 ? sub : NULL, &op->cmd.kind)) {
        op->api.route = "unknown";
        tly_api_problem(&op->api, 404, "not_found", "no such endpoint", NULL);
        return false;
    }
    op->api.route = n == 3 ? "/v1/accounts/{id}/action" : collection[0] == 'a' ? "/v1/accounts" : "/v1/transfers";
    if (n == 3 && (segs[1].len != TLY_UUID_STR_LEN || !tly_uuid_parse(id, &op->resource_id))) {
        json_t *errors = json_array();
        tly_http_field_error(errors, "id", "must be an account id (uuid)");
        tly_api_problem(&op->api, 422, "validation_failed", "the account id in the path is malformed", errors);
        json_decref(errors);
        return false;
    }
    if (n == 1)
        op->resource_id = tly_uuid_v4(); /* a new account or transfer */
    return true;
}

static bool
validate_or_reply(cmd_op_t *op)
{
    json_t *errors = json_array();
    bool ok = tly_command_validate(op->cmd.kind, op->body, &op->cmd, errors);
    if (!ok)
        tly_api_problem(&op->api, 422, "validation_failed", "the request has invalid fields; see errors", errors);
    json_decref(errors);
    return ok;
}

static bool
health_or_reply(h2o_req_t *req, cmd_thread_t *thr)
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
    cmd_thread_t *thr = tly_server_thread_of(req)->app;
    if (health_or_reply(req, thr))
        return 0;

    cmd_op_t *op = op_create(thr, req);
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"))) {
        tly_http_add_header(req, "allow", "POST");
        tly_api_problem(&op->api, 405, "method_not_allowed", "the command API takes POST; reads go to GET on the same URL", NULL);
        goto done;
    }
    if (!tly_api_authenticate_or_reply(&op->api, thr->keys, TLY_SCOPE_WRITE) || !route_or_reply(op) || !body_or_reply(op) ||
        !validate_or_reply(op) || !idempotency_key_or_reply(op))
        goto done;
    if (op->cmd.kind != TLY_CMD_OPEN_ACCOUNT && op->cmd.kind != TLY_CMD_TRANSFER)
        op->cmd.account_id = op->resource_id;
    request_hash(op);
    take_traceparent(op);
    op_start(op);
    return 0;
done:
    op_destroy(op);
    return 0;
}

/* ---- threads ------------------------------------------------------------ */

static void
on_kafka_wakeup(h2o_socket_t *sock, const char *err)
{
    cmd_thread_t *thr = sock->data;
    h2o_buffer_consume(&sock->input, sock->input->size);
    while (rd_kafka_poll(thr->producer, 0) > 0)
        ;
}

static void *
thread_init(tly_server_thread_t *t, void *arg)
{
    tly_command_api_config_t *cfg = arg;
    char err[512];
    cmd_thread_t *thr = calloc(1, sizeof(*thr));
    if (thr == NULL)
        abort();
    thr->cfg = cfg;
    thr->keys = shared_keys;
    thr->producer = tly_kafka_producer_create(cfg->kafka_brokers, (int)cfg->kafka_timeout_ms, on_delivery, thr, err, sizeof(err));
    if (thr->producer == NULL || pipe2(thr->wakeup_fds, O_CLOEXEC | O_NONBLOCK) != 0) {
        tly_log(TLY_LOG_ERROR, "could not start kafka producer", "error", err, NULL);
        free(thr);
        return NULL;
    }
    rd_kafka_queue_t *main_queue = rd_kafka_queue_get_main(thr->producer);
    rd_kafka_queue_io_event_enable(main_queue, thr->wakeup_fds[1], "1", 1);
    rd_kafka_queue_destroy(main_queue);
    thr->kafka_wakeup = h2o_evloop_socket_create(t->loop, thr->wakeup_fds[0], 0);
    thr->kafka_wakeup->data = thr;
    h2o_socket_read_start(thr->kafka_wakeup, on_kafka_wakeup);
    thr->pg = tly_pgpool_create(t->loop, cfg->pg_dsn, (size_t)cfg->pg_pool, statements, STMT__COUNT);
    return thr;
}

static size_t
thread_inflight(void *app)
{
    return ((cmd_thread_t *)app)->inflight;
}

static void
thread_dispose(void *app)
{
    cmd_thread_t *thr = app;
    /* in-flight ops are done or past the grace period; deliver what is queued */
    rd_kafka_flush(thr->producer, 2000);
    tly_pgpool_destroy(thr->pg);
    h2o_socket_read_stop(thr->kafka_wakeup);
    h2o_socket_close(thr->kafka_wakeup);
    rd_kafka_destroy(thr->producer);
    close(thr->wakeup_fds[1]);
    free(thr);
}

int
tly_command_api_run(tly_command_api_config_t *cfg)
{
    shared_keys = tly_keycache_create(cfg->pg_dsn, (int)cfg->key_refresh_ms);
    tly_server_config_t server = {
        .name = "command-api",
        .host = cfg->host,
        .port = (uint16_t)cfg->port,
        .threads = (size_t)cfg->threads,
        .max_body = 1024 * 1024,
        .on_req = on_req,
        .thread_init = thread_init,
        .thread_inflight = thread_inflight,
        .thread_dispose = thread_dispose,
        .arg = cfg,
        .shutdown_grace_ms = 8000,
    };
    int ret = tly_server_run(&server);
    tly_keycache_destroy(shared_keys);
    return ret == 0 ? 0 : 1;
}
