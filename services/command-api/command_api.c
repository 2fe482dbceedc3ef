/*
 * Command API: the server, its threads and the dispatch of every request.
 * A single command goes through authentication, rate limit, syntax (content
 * type, size, strict JSON), routing, validation and the Idempotency-Key, then
 * op.c records it, appends it to Kafka and answers 202. Batches and API keys
 * have files of their own.
 */
#include "internal.h"
#include "tally/api_service.h"
#include "tally/consistency.h"
#include "tally/clock.h"
#include "tally/http.h"
#include "tally/json.h"
#include "tally/log.h"
#include "tally/secretbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const tly_config_def_t tly_command_api_settings[] = {
#define OFF(f) offsetof(tly_command_api_config_t, f)
    {"pg-dsn", "TALLY_PG_DSN", TLY_CONFIG_STRING, NULL, 0, 0, OFF(pg_dsn), "libpq connection string"},
    {"kafka-brokers", "TALLY_KAFKA_BROKERS", TLY_CONFIG_STRING, "127.0.0.1:9092", 0, 0, OFF(kafka_brokers),
     "Kafka bootstrap servers"},
    {"kafka-topic", "TALLY_KAFKA_TOPIC", TLY_CONFIG_STRING, "tally.events", 0, 0, OFF(topic), "the event log topic", "topic"},
    {"host", "TALLY_HTTP_HOST", TLY_CONFIG_STRING, "127.0.0.1", 0, 0, OFF(host), "address to listen on"},
    {"port", "TALLY_HTTP_PORT", TLY_CONFIG_INT, "8081", 1, 65535, OFF(port), "port to listen on"},
    {"admin-port", "TALLY_ADMIN_PORT", TLY_CONFIG_INT, "9181", 0, 65535, OFF(admin_port),
     "port of /metrics, /healthz and /readyz (on the same address; 0: none)"},
    {"threads", "TALLY_HTTP_THREADS", TLY_CONFIG_INT, "2", 1, 64, OFF(threads), "event-loop threads"},
    {"pg-pool", "TALLY_PG_POOL", TLY_CONFIG_INT, "4", 1, 64, OFF(pg_pool), "PostgreSQL connections per thread"},
    {"kafka-timeout-ms", "TALLY_KAFKA_TIMEOUT_MS", TLY_CONFIG_INT, "5000", 100, 60000, OFF(kafka_timeout_ms),
     "how long the broker may take to acknowledge before the answer is 503"},
    {"accept-gather-ms", "TALLY_ACCEPT_GATHER_MS", TLY_CONFIG_INT, "20", 0, 1000, OFF(accept_gather_ms),
     "how long acceptances (recorded after their 202s) gather before one statement writes them; a retry with the same "
     "Idempotency-Key meanwhile gets 409"},
    {"key-refresh-ms", "TALLY_KEY_REFRESH_MS", TLY_CONFIG_INT, "1000", 100, 5000, OFF(key_refresh_ms),
     "how often API key changes are loaded at the latest (they are pushed at once; this is the fallback)"},
    TLY_API_ABUSE_SETTINGS(OFF(abuse)),
    {"webhook-allow-private", "TALLY_WEBHOOK_ALLOW_PRIVATE", TLY_CONFIG_BOOL, "false", 0, 0, OFF(webhook_allow_private),
     "accept webhook URLs on loopback and private addresses, and plain http (tests and local stacks only)"},
    TLY_CONSISTENCY_SETTING(OFF(consistency_secret)),
    {"log-level", "TALLY_LOG_LEVEL", TLY_CONFIG_STRING, "info", 0, 0, OFF(log_level), "debug, info, warn or error"},
    TLY_GUARD_SETTINGS(tly_command_api_config_t, guard),
#undef OFF
};
const size_t tly_command_api_nsettings = sizeof(tly_command_api_settings) / sizeof(tly_command_api_settings[0]);

static tly_keycache_t *shared_keys;
static cmd_producer_t *shared_producer; /* one per process (producer.c) */
static uint8_t consistency_key[TLY_CONSISTENCY_KEY_LEN];
static bool has_consistency_key;
static tly_kafka_probe_t *kafka_probe;
static tly_guard_t *shared_guard;

json_t *
cmd_body_or_reply(tly_api_req_t *api)
{
    char detail[256];
    h2o_iovec_t ct = tly_http_header(api->req, "content-type");
    /* "application/json", any case, optionally followed by parameters */
    bool is_json = ct.base != NULL && ct.len >= 16 && strncasecmp(ct.base, "application/json", 16) == 0 &&
                   (ct.len == 16 || ct.base[16] == ';' || ct.base[16] == ' ');
    if (!is_json) {
        tly_api_problem(api, 415, "unsupported_media_type", "the body must be JSON: Content-Type: application/json", NULL);
        return NULL;
    }
    if (api->req->entity.len > CMD_MAX_BODY) {
        tly_api_problem(api, 413, "body_too_large", "the body is larger than 64 KiB", NULL);
        return NULL;
    }
    const char *buf = api->req->entity.base != NULL ? api->req->entity.base : "";
    json_t *v = NULL;
    switch (tly_json_parse_strict(buf, api->req->entity.len, &v, detail, sizeof(detail))) {
    case TLY_JSON_OK:
        return v;
    case TLY_JSON_DUPLICATE:
        tly_api_problem(api, 400, "duplicate_key", detail, NULL);
        return NULL;
    case TLY_JSON_TOO_DEEP:
        tly_api_problem(api, 400, "too_deep", detail, NULL);
        return NULL;
    default:
        tly_api_problem(api, 400, "malformed_json", detail, NULL);
        return NULL;
    }
}

/* The next hop of the request's trace (the caller's traceparent, or the one the frame started). */
static void
take_traceparent(cmd_op_t *op)
{
    tly_traceparent_child(op->api.traceparent, op->traceparent);
}

static void
handle_command(cmd_thread_t *thr, h2o_req_t *req)
{
    cmd_op_t *op = cmd_op_create(thr, req, NULL, 0);
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"))) {
        tly_http_add_header(req, "allow", tly_http_allow(req, "POST"));
        cmd_op_problem(op, 405, "method_not_allowed", "the command API takes POST; reads go to GET on the same URL", NULL);
        return;
    }
    if (!tly_api_authenticate_or_reply(&op->api, thr->keys, TLY_SCOPE_WRITE)) {
        cmd_op_destroy(op);
        return;
    }
    if (!cmd_op_route(op, req->path_normalized.base, req->path_normalized.len))
        return;
    if ((op->body = cmd_body_or_reply(&op->api)) == NULL) {
        cmd_op_destroy(op);
        return;
    }
    h2o_iovec_t key = tly_http_header(req, "idempotency-key");
    if (!cmd_op_validate(op) || !cmd_op_idempotency_key(op, key.base, key.len))
        return;
    take_traceparent(op);
    cmd_op_start(op, req->path_normalized.base, req->path_normalized.len, req->entity.base != NULL ? req->entity.base : "",
                 req->entity.len);
}

/* PostgreSQL reachable, API keys loaded, the broker answering. */
static bool
thread_ready(void *app, json_t *reasons)
{
    cmd_thread_t *thr = app;
    bool api = tly_api_service_ready(thr->pg, thr->keys, reasons), kafka = tly_kafka_probe_ok(kafka_probe);
    json_object_set_new(reasons, "kafka", json_boolean(kafka));
    tly_guard_ready(thr->guard, reasons);
    return api && kafka;
}

/* The first request may come in: the pool has a connection and the API keys are loaded (tly_server_config_t). */
static bool
thread_serving(void *app)
{
    cmd_thread_t *thr = app;
    return tly_api_service_serving(thr->pg, thr->keys);
}

static int
on_req(h2o_handler_t *self, h2o_req_t *req)
{
    cmd_thread_t *thr = tly_server_thread_of(req)->app;
    /* health is the admin port's (/healthz, /readyz): never public through the gateway */
    if (tly_guard_shed_or_pass(thr->guard, req, &thr->inflight))
        return 0;

    h2o_iovec_t segs[4];
    int n = tly_http_path_segments(req, segs, 3);
    if (n >= 1 && tly_http_seg_is(segs[0], "api-keys"))
        cmd_keys_handle(thr, req, segs, n);
    else if (n >= 1 && tly_http_seg_is(segs[0], "webhook-endpoints"))
        cmd_webhooks_handle(thr, req, segs, n);
    else if (n == 1 && tly_http_seg_is(segs[0], "batch"))
        cmd_batch_handle(thr, req);
    else
        handle_command(thr, req);
    return 0;
}

/* ---- threads ------------------------------------------------------------ */

static void *
thread_init(tly_server_thread_t *t, void *arg)
{
    tly_command_api_config_t *cfg = arg;
    cmd_thread_t *thr = calloc(1, sizeof(*thr));
    if (thr == NULL)
        abort();
    thr->cfg = cfg;
    thr->loop = t->loop;
    thr->keys = shared_keys;
    thr->consistency_key = has_consistency_key ? consistency_key : NULL;
    thr->producer = shared_producer;
    thr->mailbox = cmd_mailbox_open(shared_producer, t->loop);
    thr->pg = tly_pgpool_create(t->loop, cfg->pg_dsn, (size_t)cfg->pg_pool, cmd_statements, STMT__COUNT);
    h2o_timeout_init(t->loop, &thr->deadline, (uint64_t)cfg->kafka_timeout_ms);
    cmd_records_init(thr);
    thr->guard = tly_guard_thread_create(shared_guard, t->loop, &thr->inflight, thr->pg, t->index == 0);
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
    /* in-flight ops are done or past the grace period: reports already here are served, later ones dropped
       (the producer flushes what is queued once every thread is gone) */
    cmd_mailbox_close(thr->mailbox, thr->loop);
    /* appends still without a report are answered (503) and their ops outlive the loop: leave them to the lease */
    while (!h2o_linklist_is_empty(&thr->deadline._entries))
        h2o_timeout_unlink(H2O_STRUCT_FROM_MEMBER(h2o_timeout_entry_t, _link, thr->deadline._entries.next));
    h2o_timeout_dispose(thr->loop, &thr->deadline);
    cmd_records_dispose(thr);
    tly_guard_thread_destroy(thr->guard);
    tly_pgpool_destroy(thr->pg);
    free(thr);
}

/* The keys webhook secrets are sealed with (TALLY_SECRET_KEYS); false when malformed, a warning when unset. */
static bool
secrets_ready(char *err, size_t errcap)
{
    int keys = tly_secretbox_init(err, errcap);
    if (keys == 0)
        tly_log(TLY_LOG_WARN, "TALLY_SECRET_KEYS is not set: webhook signing secrets are stored in plaintext", NULL);
    return keys >= 0;
}

int
tly_command_api_run(tly_command_api_config_t *cfg)
{
    char err[512];
    if (!secrets_ready(err, sizeof(err))) { /* the abuse settings are checked by tly_api_service_run */
        tly_log(TLY_LOG_ERROR, err, NULL);
        return 1;
    }
    has_consistency_key = tly_consistency_key(cfg->consistency_secret, consistency_key);
    if (!has_consistency_key)
        tly_log(TLY_LOG_WARN,
                "consistency secret is not set: 202s carry no Tally-Consistency-Token; set TALLY_CONSISTENCY_SECRET to the "
                "same value on every command and query API instance",
                NULL);
    /* the one producer of the process; the readiness probe asks it for metadata too. It outlives every thread */
    if ((shared_producer = cmd_producer_create(cfg, err, sizeof(err))) == NULL) {
        tly_log(TLY_LOG_ERROR, "could not start kafka producer", "error", err, NULL);
        return 1;
    }
    kafka_probe = tly_kafka_probe_start(cmd_producer_kafka(shared_producer), 1000);
    shared_guard = tly_guard_create(&cfg->guard, cfg->pg_dsn);
    tly_api_service_t svc = {
        .server =
            {
                .name = "command-api",
                .host = cfg->host,
                .port = (uint16_t)cfg->port,
                .threads = (size_t)cfg->threads,
                .max_body = CMD_MAX_BODY, /* h2o refuses a larger body before buffering it */
                .on_req = on_req,
                .thread_init = thread_init,
                .thread_inflight = thread_inflight,
                .thread_dispose = thread_dispose,
                .arg = cfg,
                .shutdown_grace_ms = 8000,
                .admin_port = (uint16_t)cfg->admin_port,
                .thread_ready = thread_ready,
                .thread_serving = thread_serving,
            },
        .abuse = &cfg->abuse,
        .pg_dsn = cfg->pg_dsn,
        .key_refresh_ms = cfg->key_refresh_ms,
    };
    int ret = tly_api_service_run(&svc, &shared_keys);
    tly_guard_destroy(shared_guard);
    tly_kafka_probe_stop(kafka_probe);
    cmd_producer_destroy(shared_producer);
    return ret;
}
