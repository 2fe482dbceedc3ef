/*
 * One command on its way to a 202: idempotency record, Kafka append (acks=all),
 * the 202, then the acceptance record (record.c batches the records and the
 * acceptances). Every step is asynchronous and comes back into the thread's
 * h2o loop. An op ends exactly once, through op_end, which answers
 * the client (or fills the batch item) and frees the op.
 */
#include "internal.h"
#include "tally/clock.h"
#include "tally/consistency.h"
#include "tally/http.h"
#include "tally/json.h"
#include "tally/ledger/job.h"
#include "tally/log.h"
#include "tally/metrics.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The webhook endpoint as both APIs show it (services/query-api/query_api.c); never the secrets. */
/* clang-format off */
#define WH_TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
#define WH_ENDPOINT_JSON                                                                                                           \
    "json_build_object('id', id, 'url', url, 'description', description, 'event_types', event_types, "                          \
    "'enabled', enabled, 'disabled_reason', disabled_reason, 'failing_since', " WH_TS("failing_since") ", "                      \
    "'previous_secret_expires_at', " WH_TS("previous_secret_expires_at") ", 'version', version, "                                \
    "'created_at', " WH_TS("created_at") ", 'updated_at', " WH_TS("updated_at") ")::text"
/* The audit event of a webhook endpoint change `w` (a CTE returning id), by key `actor` in request `rid`. */
#define WH_AUDIT(action, actor, rid, changes)                                                                                      \
    "a AS (INSERT INTO audit_events (tenant_id, actor_type, actor_id, request_id, action, resource_type, resource_id, "          \
    "changes) SELECT $2, 'api_key', " actor ", " rid ", '" action "', 'webhook_endpoint', w.id::text, " changes " FROM w)"
/* clang-format on */

const tly_pg_statement_t cmd_statements[STMT__COUNT] = {
    /* Every command of a loop iteration in one statement (op.c, "batched
       statements"); the rows returned are the ones recorded, a row missing
       is a key seen before. */
    [STMT_INSERT] = {"insert_requests",
                     "INSERT INTO command_requests (job_id, event_id, tenant_id, idempotency_key, request_hash, state, "
                     "locked_until, resource_type, resource_id) SELECT u.job_id, u.event_id, u.tenant_id, u.idem, "
                     "decode(u.hash, 'hex'), 'pending', now() + interval '15 seconds', u.rtype, u.res "
                     "FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::uuid[]) "
                     "AS u(job_id, event_id, tenant_id, idem, hash, rtype, res) ON CONFLICT (tenant_id, idempotency_key) "
                     "WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING job_id",
                     7},
    /* The same key was seen before: take it over when the earlier attempt
       failed or its lease ran out, else report what it is. */
    [STMT_CLAIM] = {"claim_request",
                    "WITH cur AS (SELECT * FROM command_requests WHERE tenant_id = $1 AND idempotency_key = $2 FOR UPDATE), "
                    "upd AS (UPDATE command_requests c SET state = 'pending', attempt = cur.attempt + 1, "
                    "locked_until = now() + interval '15 seconds' FROM cur WHERE c.job_id = cur.job_id "
                    "AND cur.request_hash = decode($3, 'hex') AND (cur.state = 'failed' OR "
                    "(cur.state = 'pending' AND cur.locked_until < now())) RETURNING c.attempt) "
                    "SELECT cur.job_id, cur.event_id, cur.request_hash = decode($3, 'hex'), cur.state, "
                    "cur.response_body, cur.resource_id, (SELECT attempt FROM upd) FROM cur",
                    3},
    /* The acceptances of a loop iteration's delivery reports, in one statement. */
    [STMT_ACCEPT] = {"accept_requests",
                     "UPDATE command_requests c SET state = 'accepted', response_status = 202, response_body = u.body "
                     "FROM unnest($1::uuid[], $2::text[]) AS u(job_id, body) WHERE c.job_id = u.job_id",
                     2},
    /* Fenced by the attempt: a late delivery report of an attempt that a retry
       has since taken over leaves the retry's record alone (0009). */
    [STMT_FAIL] = {"fail_request",
                   "UPDATE command_requests SET state = 'failed' WHERE job_id = $1 AND state = 'pending' AND attempt = $2", 2},
    /* API keys and webhook endpoints (api_keys.c, webhooks.c): each change
       and its audit event are one statement. The actor's key id and the
       request id are the last two parameters. */
    [STMT_KEY_CREATE] = {"create_key",
                         "WITH k AS (INSERT INTO api_keys (id, tenant_id, secret_hash, scopes, tier, rate_per_sec, burst, label, "
                         "expires_at, created_by) VALUES ($1, $2, decode($3, 'hex'), $4::text[], $5, $6::integer, $7::integer, $8, "
                         "$9::timestamptz, $10) RETURNING id, created_at), "
                         "a AS (INSERT INTO audit_events (tenant_id, actor_type, actor_id, request_id, action, resource_type, "
                         "resource_id, changes) SELECT $2, 'api_key', $10, $11, 'api_key.created', 'api_key', k.id, "
                         "jsonb_build_object('scopes', $4::text[], 'tier', $5, 'rate_per_sec', $6::integer, 'burst', $7::integer, "
                         "'label', $8, 'expires_at', $9::timestamptz) FROM k) "
                         "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM k",
                         11},
    /* Revoking twice answers 204 both times; only the first is audited. */
    [STMT_KEY_REVOKE] = {"revoke_key",
                         "WITH r AS (UPDATE api_keys SET revoked_at = now(), updated_at = now() "
                         "WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL RETURNING id), "
                         "a AS (INSERT INTO audit_events (tenant_id, actor_type, actor_id, request_id, action, resource_type, "
                         "resource_id) SELECT $2, 'api_key', $3, $4, 'api_key.revoked', 'api_key', r.id FROM r) "
                         "SELECT id FROM api_keys WHERE id = $1 AND tenant_id = $2",
                         4},
    /* Webhook endpoints (webhooks.c). Each statement filters by tenant and
       skips deleted endpoints: no row is a 404. The endpoint's JSON is the
       same as the query API's GET (tests compare them). */
    [STMT_WH_CREATE] = {"wh_create",
                        "WITH w AS (INSERT INTO webhook_endpoints (id, tenant_id, url, description, event_types, secret) "
                        "VALUES ($1, $2, $3, $4, $5::text[], $6) RETURNING id, " WH_ENDPOINT_JSON " AS j), " WH_AUDIT(
                            "webhook_endpoint.created", "$7", "$8",
                            "jsonb_build_object('url', $3, 'description', $4, 'event_types', $5::text[])") " SELECT j FROM w",
                        8},
    /* $3 url, $4 description, $5 event types, $6 enabled: NULL keeps the
       value. Disabling records 'manual' (keeping the sender's 'gone' or
       'failing'); enabling a disabled endpoint clears the reason and the
       failing clock, so the sender starts afresh with it. */
    [STMT_WH_UPDATE] = {"wh_update",
                        "WITH w AS (UPDATE webhook_endpoints SET url = coalesce($3, url), "
                        "description = coalesce($4, description), "
                        "event_types = coalesce($5::text[], event_types), enabled = coalesce($6::boolean, enabled), "
                        "disabled_reason = CASE WHEN $6::boolean IS NULL THEN disabled_reason WHEN $6::boolean THEN NULL "
                        "WHEN enabled THEN 'manual' ELSE disabled_reason END, "
                        "failing_since = CASE WHEN $6::boolean AND NOT enabled THEN NULL ELSE failing_since END, "
                        "version = version + 1, updated_at = now() "
                        "WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL RETURNING id, " WH_ENDPOINT_JSON
                        " AS j), " WH_AUDIT("webhook_endpoint.updated", "$7", "$8",
                                            "jsonb_strip_nulls(jsonb_build_object('url', $3, 'description', $4, "
                                            "'event_types', $5::text[], 'enabled', $6::boolean))") " SELECT j FROM w",
                        8},
    [STMT_WH_DELETE] = {"wh_delete",
                        "WITH w AS (UPDATE webhook_endpoints SET deleted_at = now(), updated_at = now(), version = version + 1 "
                        "WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL RETURNING id), " WH_AUDIT(
                            "webhook_endpoint.deleted", "$3", "$4", "'{}'::jsonb") " SELECT id FROM w",
                        4},
    /* The current secret keeps signing beside the new one for 24 h. */
    [STMT_WH_ROTATE] = {"wh_rotate",
                        "WITH w AS (UPDATE webhook_endpoints SET previous_secret = secret, "
                        "previous_secret_expires_at = now() + interval '24 hours', secret = $3, version = version + 1, "
                        "updated_at = now() WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL RETURNING id, " WH_ENDPOINT_JSON
                        " AS j), " WH_AUDIT("webhook_endpoint.secret_rotated", "$4", "$5", "'{}'::jsonb") " SELECT j FROM w",
                        5},
    /* Replay [$3, $4): settled deliveries go back to pending, due now, with
       their ids and attempt history kept (the attempt counter goes on, so
       attempt numbers stay unique). Pending ones are left alone: their
       next_attempt_at may be the lease of an attempt in flight. The NOTIFY
       wakes the sender; it is delivered at commit. */
    [STMT_WH_REPLAY] = {"wh_replay",
                        "WITH ep AS (SELECT id FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL), "
                        "upd AS (UPDATE webhook_deliveries d SET status = 'pending', next_attempt_at = now(), "
                        "updated_at = now() FROM ep WHERE d.endpoint_id = ep.id AND d.occurred_at >= $3::timestamptz "
                        "AND d.occurred_at < $4::timestamptz AND d.status <> 'pending' RETURNING d.id) "
                        "SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM webhook_deliveries d WHERE "
                        "d.endpoint_id = ep.id AND d.occurred_at >= $3::timestamptz AND d.occurred_at < $4::timestamptz "
                        "AND d.status = 'pending'), pg_notify('tally_webhooks', ep.id::text) FROM ep",
                        4},
};

cmd_op_t *
cmd_op_create(cmd_thread_t *thr, h2o_req_t *req, cmd_batch_t *batch, size_t index)
{
    cmd_op_t *op = calloc(1, sizeof(*op));
    if (op == NULL)
        abort();
    op->thr = thr;
    op->batch = batch;
    op->batch_index = index;
    op->log_partition = -1;
    if (req != NULL) {
        tly_api_req_init(&op->api, req, &thr->inflight);
    } else {
        op->api.inflight = &thr->inflight;
        op->api.route = "/v1/batch item";
        ++thr->inflight;
    }
    return op;
}

void
cmd_op_destroy(cmd_op_t *op)
{
    if (h2o_timeout_is_linked(&op->reclaim))
        h2o_timeout_unlink(&op->reclaim);
    if (h2o_timeout_is_linked(&op->deadline))
        h2o_timeout_unlink(&op->deadline);
    tly_api_req_finish(&op->api);
    json_decref(op->body);
    free(op->response);
    free(op);
}

/* Tally-Consistency-Token of a 202: the tenant, the job and the request event's log position, signed. */
static void
add_consistency_token(cmd_op_t *op)
{
    char token[TLY_CONSISTENCY_TEXT_CAP];
    if (op->thr->consistency_key == NULL)
        return;
    tly_consistency_t t = {
        .tenant = op->api.principal.tenant_id, .job = op->job_id, .partition = op->log_partition, .offset = op->log_offset};
    tly_consistency_encode(&t, op->thr->consistency_key, token);
    tly_http_add_header(op->api.req, TLY_CONSISTENCY_HEADER, token);
}

/*
 * Answers the client (or fills the batch item) with `status` and a JSON body
 * (problem or 202), once: an op answered at its Kafka deadline stays alive
 * until its delivery report, and answers nothing more.
 */
static void
op_answer(cmd_op_t *op, int status, const char *body, bool replayed)
{
    if (op->answered)
        return;
    op->answered = true;
    if (replayed)
        tly_metrics_idempotency_replay();
    if (op->batch != NULL) {
        json_error_t jerr;
        json_t *item = json_pack("{s:i}", "status", status);
        json_object_set_new(item, status == 202 ? "job" : "problem", json_loads(body, 0, &jerr));
        if (status == 202) {
            json_t *job = json_object_get(item, "job");
            json_object_set(item, "job", json_object_get(job, "job")); /* unwrap {"job":{...}} */
        }
        cmd_batch_item_done(op->batch, op->batch_index, item);
        op->batch = NULL; /* the batch may be answered and gone */
    } else if (op->api.req != NULL) {
        if (status == 202) {
            char location[64], job[TLY_UUID_STR_LEN + 1];
            tly_uuid_format(&op->job_id, job);
            snprintf(location, sizeof(location), "/v1/jobs/%s", job);
            tly_http_add_header(op->api.req, "location", location);
            if (replayed)
                tly_http_add_header(op->api.req, "idempotent-replayed", "true");
            add_consistency_token(op);
            op->api.job_id = op->job_id;
        }
        tly_api_send(&op->api, status, status == 202 ? "application/json" : "application/problem+json", body, strlen(body));
    }
}

/* Answers, then frees the op. */
static void
op_end(cmd_op_t *op, int status, const char *body, bool replayed)
{
    op_answer(op, status, body, replayed);
    cmd_op_destroy(op);
}

static void
op_answer_problem(cmd_op_t *op, int status, const char *code, const char *detail, const json_t *errors)
{
    if (op->answered)
        return;
    if (status == 503 && op->api.req != NULL)
        tly_http_add_header(op->api.req, "retry-after", "1");
    char *body = tly_http_problem_body(status, code, detail, errors);
    op_answer(op, status, body, false);
    free(body);
}

void
cmd_op_problem(cmd_op_t *op, int status, const char *code, const char *detail, const json_t *errors)
{
    op_answer_problem(op, status, code, detail, errors);
    cmd_op_destroy(op);
}

/* ---- route and validation ---------------------------------------------- */

bool
cmd_op_route(cmd_op_t *op, const char *path, size_t len)
{
    char collection[32] = "", sub[32] = "", id[64] = "";
    const char *p = path + 4, *end = path + len; /* after "/v1/" */
    const char *parts[3];
    size_t plen[3];
    int n = 0;
    if (len < 5 || memcmp(path, "/v1/", 4) != 0)
        goto not_found;
    while (p <= end && n < 4) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *stop = slash != NULL ? slash : end;
        if (n == 3)
            goto not_found;
        parts[n] = p;
        plen[n++] = (size_t)(stop - p);
        if (slash == NULL)
            break;
        p = slash + 1;
    }
    if (n != 1 && n != 3)
        goto not_found;
    snprintf(collection, sizeof(collection), "%.*s", (int)plen[0], parts[0]);
    if (n == 3) {
        snprintf(id, sizeof(id), "%.*s", (int)plen[1], parts[1]);
        snprintf(sub, sizeof(sub), "%.*s", (int)plen[2], parts[2]);
    }
    if (!tly_command_route(collection, n == 3 ? sub : NULL, &op->cmd.kind))
        goto not_found;
    op->api.route = n == 3 ? "/v1/accounts/{id}/action" : op->cmd.kind == TLY_CMD_TRANSFER ? "/v1/transfers" : "/v1/accounts";
    if (n == 1) {
        op->resource_id = tly_uuid_v4(); /* a new account or transfer */
        return true;
    }
    if (plen[1] != TLY_UUID_STR_LEN || !tly_uuid_parse(id, &op->resource_id)) {
        json_t *errors = json_array();
        tly_http_field_error(errors, "id", "must be an account id (uuid)");
        cmd_op_problem(op, 422, "validation_failed", "the account id in the path is malformed", errors);
        json_decref(errors);
        return false;
    }
    op->cmd.account_id = op->resource_id;
    return true;
not_found:
    cmd_op_problem(op, 404, "not_found", "no such endpoint", NULL);
    return false;
}

bool
cmd_op_validate(cmd_op_t *op)
{
    json_t *errors = json_array();
    bool ok = tly_command_validate(op->cmd.kind, op->body, &op->cmd, errors);
    if (!ok)
        cmd_op_problem(op, 422, "validation_failed", "the request has invalid fields; see errors", errors);
    json_decref(errors);
    return ok;
}

bool
cmd_op_idempotency_key(cmd_op_t *op, const char *key, size_t len)
{
    if (key == NULL) {
        if (!tly_command_spec(op->cmd.kind)->needs_idempotency_key)
            return true;
        cmd_op_problem(op, 400, "idempotency_key_required", "this request needs an Idempotency-Key", NULL);
        return false;
    }
    bool ok = len > 0 && len <= CMD_IDEMPOTENCY_KEY_MAX;
    for (size_t i = 0; ok && i < len; ++i)
        ok = (unsigned char)key[i] >= 0x21 && (unsigned char)key[i] <= 0x7e;
    if (!ok) {
        cmd_op_problem(op, 400, "invalid_idempotency_key", "Idempotency-Key must be 1 to 255 visible ASCII characters", NULL);
        return false;
    }
    memcpy(op->idem_key, key, len);
    op->idem_key[len] = '\0';
    op->has_idem = true;
    return true;
}

/* ---- the asynchronous steps -------------------------------------------- */

/* The trace id of the op's event (batch items have no request frame of their own), for log lines; a static per thread. */
static const char *
trace_of(const cmd_op_t *op)
{
    static __thread char trace[33];
    return tly_log_trace_id_of(op->traceparent, trace) ? trace : NULL;
}

static void
on_failed_recorded(void *data, PGresult *res, const char *err)
{
    cmd_op_t *op = data;
    if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK)
        tly_log(TLY_LOG_WARN, "could not mark command failed; a retry takes it over when its lease ends", "request_id",
                op->api.request_id, "error", err != NULL ? err : PQresultErrorMessage(res), NULL);
    cmd_op_destroy(op);
}

/* The append failed: mark this attempt's record failed, so that a retry with
   the same key appends again (same event id); frees the op, which is
   already answered, once the statement is done. */
static void
op_record_failure(cmd_op_t *op)
{
    char job[TLY_UUID_STR_LEN + 1], attempt[16];
    const char *params[2] = {job, attempt};
    tly_uuid_format(&op->job_id, job);
    snprintf(attempt, sizeof(attempt), "%d", op->attempt);
    tly_pgpool_exec(op->thr->pg, STMT_FAIL, params, on_failed_recorded, op);
}

/* The event may or may not be in the log: answer 503 and mark the record failed. */
static void
op_give_up(cmd_op_t *op, const char *detail)
{
    op_answer_problem(op, 503, "event_log_unavailable", detail, NULL);
    op_record_failure(op);
}

/*
 * The Kafka deadline (TALLY_KAFKA_TIMEOUT_MS after the append) passed with
 * no delivery report: librdkafka may hold a message past message.timeout.ms
 * (one in flight to a broker that stopped answering waits for its request
 * to time out), so the client gets its 503 now, from this timer. The op
 * stays alive, counted in flight, until the report comes (cmd_op_delivered).
 * Meanwhile the record stays pending under its lease: a retry with the same
 * key is 409 (in flight), never a second append of its own.
 */
static void
on_deadline(h2o_timeout_entry_t *entry)
{
    cmd_op_t *op = H2O_STRUCT_FROM_MEMBER(cmd_op_t, deadline, entry);
    tly_metrics_kafka_deadline();
    tly_log(TLY_LOG_WARN, "no acknowledgement from kafka within the deadline, answering 503", "request_id", op->api.request_id,
            "trace_id", trace_of(op), NULL);
    op_answer_problem(op, 503, "event_log_unavailable",
                      "the event log did not acknowledge the command in time; retry with the same Idempotency-Key", NULL);
}

/* A delivery report for an op already answered 503 at its deadline: the record tells a retry what really happened. */
static void
op_settle_late(cmd_op_t *op, rd_kafka_resp_err_t err)
{
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        tly_log(TLY_LOG_INFO, "event not appended, reported after its deadline", "request_id", op->api.request_id, "trace_id",
                trace_of(op), "error", rd_kafka_err2str(err), NULL);
        op_record_failure(op);
        return;
    }
    /* the event is in the log after all: a retry with the same key gets the 202 (the same job), not a second append */
    tly_log(TLY_LOG_INFO, "event acknowledged after its deadline; a retry gets the 202", "request_id", op->api.request_id,
            "trace_id", trace_of(op), NULL);
    cmd_accept_enqueue(op->thr, &op->job_id, op->response);
    op->response = NULL;
    cmd_op_destroy(op);
}

void
cmd_op_delivered(cmd_op_t *op)
{
    rd_kafka_resp_err_t err = op->report_err;
    tly_metrics_kafka_delivery(err == RD_KAFKA_RESP_ERR_NO_ERROR,
                               op->report_latency_us >= 0 ? (double)op->report_latency_us / 1e6 : 0.0);
    tly_guard_note_broker(op->thr->guard, op->report_latency_us >= 0 ? (double)op->report_latency_us / 1000.0 : 0.0);
    if (h2o_timeout_is_linked(&op->deadline))
        h2o_timeout_unlink(&op->deadline);
    if (op->answered) {
        op_settle_late(op, err);
        return;
    }
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        tly_log(TLY_LOG_WARN, "could not append event", "request_id", op->api.request_id, "trace_id", trace_of(op), "error",
                rd_kafka_err2str(err), NULL);
        op_give_up(op, "the event log did not acknowledge the command in time; retry with the same Idempotency-Key");
        return;
    }
    /* the event is in the log and the record exists (the job reads as queued): answer now, record the acceptance after */
    char *body = op->response;
    op->response = NULL;
    cmd_accept_enqueue(op->thr, &op->job_id, body);
    op_end(op, 202, body, false);
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
    json_t *o =
        json_pack("{s:{s:s, s:s, s:s, s:o}}", "job", "id", job, "status", TLY_JOB_QUEUED_NAME, "url", url, "resource", resource);
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
    free(op->response);
    op->response = build_response(op);
    op->mailbox = op->thr->mailbox;
    rd_kafka_resp_err_t err =
        tly_kafka_produce_envelope(cmd_producer_kafka(op->thr->producer), op->thr->cfg->topic, &env, op->traceparent, op);
    json_decref(env.data);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        tly_metrics_kafka_enqueue_error();
        tly_log(TLY_LOG_WARN, "could not enqueue event", "request_id", op->api.request_id, "trace_id", trace_of(op), "error",
                rd_kafka_err2str(err), NULL);
        op_give_up(op, "the event log is not accepting commands right now");
        return;
    }
    op->deadline.cb = on_deadline;
    h2o_timeout_link(op->thr->loop, &op->thr->deadline, &op->deadline);
}

static void on_reclaim(h2o_timeout_entry_t *entry);

static void
on_claimed(void *data, PGresult *res, const char *err)
{
    cmd_op_t *op = data;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        cmd_op_problem(op, 503, "database_unavailable", "the command could not be recorded", NULL);
        return;
    }
    bool same = strcmp(PQgetvalue(res, 0, 2), "t") == 0, claimed = !PQgetisnull(res, 0, 6);
    const char *state = PQgetvalue(res, 0, 3);
    if (!tly_uuid_parse(PQgetvalue(res, 0, 0), &op->job_id) || !tly_uuid_parse(PQgetvalue(res, 0, 1), &op->event_id) ||
        !tly_uuid_parse(PQgetvalue(res, 0, 5), &op->resource_id)) {
        cmd_op_problem(op, 503, "database_unavailable", "the command record is unreadable", NULL);
    } else if (!same) {
        cmd_op_problem(op, 422, "idempotency_key_reused",
                       "this Idempotency-Key was used with a different request; use a new key for a new request", NULL);
    } else if (claimed) {
        /* an earlier attempt failed or was abandoned: append again with the
           same event id, so a copy that did reach the log is applied once */
        if (op->cmd.kind != TLY_CMD_OPEN_ACCOUNT && op->cmd.kind != TLY_CMD_TRANSFER)
            op->cmd.account_id = op->resource_id;
        op->attempt = atoi(PQgetvalue(res, 0, 6));
        op_produce(op);
    } else if (strcmp(state, "accepted") == 0) {
        op_end(op, 202, PQgetvalue(res, 0, 4), true);
    } else if (op->reclaims < CMD_RECLAIMS) {
        /* pending: still in flight, or answered 202 with its acceptance not yet recorded (record.c): look again */
        ++op->reclaims;
        op->reclaim.cb = on_reclaim;
        h2o_timeout_link(op->thr->loop, &op->thr->reclaim, &op->reclaim);
    } else {
        cmd_op_problem(op, 409, "idempotency_key_in_use", "a request with this Idempotency-Key is still being processed", NULL);
    }
}

void
cmd_op_record_failed(cmd_op_t *op, const char *err)
{
    tly_log(TLY_LOG_WARN, "could not record command", "request_id", op->api.request_id, "trace_id", trace_of(op), "error", err,
            NULL);
    cmd_op_problem(op, 503, "database_unavailable", "the command could not be recorded", NULL);
}

static void
claim(cmd_op_t *op)
{
    char tenant[TLY_UUID_STR_LEN + 1];
    tly_uuid_format(&op->api.principal.tenant_id, tenant);
    const char *params[3] = {tenant, op->idem_key, op->hash_hex};
    tly_pgpool_exec(op->thr->pg, STMT_CLAIM, params, on_claimed, op);
}

static void
on_reclaim(h2o_timeout_entry_t *entry)
{
    claim(H2O_STRUCT_FROM_MEMBER(cmd_op_t, reclaim, entry));
}

void
cmd_op_recorded(cmd_op_t *op, bool inserted)
{
    if (inserted)
        op_produce(op);
    else
        claim(op);
}

static void
request_hash(cmd_op_t *op, const char *path, size_t path_len, const char *body, size_t body_len)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t digest[32];
    unsigned int n = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 || EVP_DigestUpdate(ctx, path, path_len) != 1 ||
        EVP_DigestUpdate(ctx, "\n", 1) != 1 || EVP_DigestUpdate(ctx, body, body_len) != 1 ||
        EVP_DigestFinal_ex(ctx, digest, &n) != 1)
        abort();
    EVP_MD_CTX_free(ctx);
    for (size_t i = 0; i < 32; ++i) {
        op->hash_hex[2 * i] = hex[digest[i] >> 4];
        op->hash_hex[2 * i + 1] = hex[digest[i] & 0xf];
    }
    op->hash_hex[64] = '\0';
}

void
cmd_op_start(cmd_op_t *op, const char *path, size_t path_len, const char *body, size_t body_len)
{
    request_hash(op, path, path_len, body, body_len);
    op->job_id = tly_uuid_v4();
    op->event_id = tly_uuid_v4();
    op->attempt = 1; /* the record's default (0009); a claim gives the next */
    cmd_record_enqueue(op);
}
