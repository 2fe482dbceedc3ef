/*
 * Webhook endpoints (scope write), for the caller's own tenant:
 *
 *   POST   /v1/webhook-endpoints {url, event_types, description?}
 *          → 201 with the endpoint and its signing secret, shown this once
 *   PATCH  /v1/webhook-endpoints/{id} {url?, event_types?, description?, enabled?} → 200
 *   DELETE /v1/webhook-endpoints/{id} → 204 (soft delete: nothing more is sent)
 *   POST   /v1/webhook-endpoints/{id}/rotate-secret
 *          → 200 with the new secret; the old one still signs for 24 h
 *   POST   /v1/webhook-endpoints/{id}/replay {since, until}
 *          → 202 {requeued, already_pending}: the deliveries whose event
 *          occurred in [since, until) are sent again (same delivery ids)
 *
 * Like /v1/api-keys these are direct PostgreSQL writes answered with their
 * outcome, not events: endpoints are configuration of the tenant, not ledger
 * facts, and the webhooks role reads them from the table. Every statement
 * filters by tenant and skips deleted endpoints, so another tenant's endpoint
 * is a 404 exactly like a missing one. Reads are on the query API.
 *
 * Idempotency-Key is not taken here (as on /v1/api-keys): create answers with
 * the signing secret, which an idempotency record would have to keep a second
 * copy of; a client that lost a 201 lists its endpoints and deletes the
 * extra one. Replay is idempotent by effect (re-queueing twice sends the same
 * deliveries, under the same ids), and a repeated rotation only shortens the
 * life of a secret the client never saw.
 */
#include "internal.h"
#include "tally/clock.h"
#include "tally/http.h"
#include "tally/json.h"
#include "tally/log.h"
#include "tally/secretbox.h"
#include "webhook_spec.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum en_wh_action_t { WH_CREATE, WH_PATCH, WH_DELETE, WH_ROTATE, WH_REPLAY } wh_action_t;

typedef struct st_wh_op_t {
    tly_api_req_t api;
    cmd_thread_t *thr;
    wh_action_t action;
    json_t *body;
    char id[TLY_UUID_STR_LEN + 1];
    char tenant[TLY_UUID_STR_LEN + 1];
    char secret[TLY_WEBHOOK_SECRET_LEN + 1];
    char sealed[TLY_SECRETBOX_SEALED_MAX]; /* the secret as stored: AES-256-GCM, bound to the endpoint id */
} wh_op_t;

static const struct {
    const char *route, *method;
} actions[] = {
    [WH_CREATE] = {"/v1/webhook-endpoints", "POST"},
    [WH_PATCH] = {"/v1/webhook-endpoints/{id}", "PATCH"},
    [WH_DELETE] = {"/v1/webhook-endpoints/{id}", "DELETE"},
    [WH_ROTATE] = {"/v1/webhook-endpoints/{id}/rotate-secret", "POST"},
    [WH_REPLAY] = {"/v1/webhook-endpoints/{id}/replay", "POST"},
};

static void
wh_op_destroy(wh_op_t *op)
{
    tly_api_req_finish(&op->api);
    json_decref(op->body);
    OPENSSL_cleanse(op->secret, sizeof(op->secret));
    OPENSSL_cleanse(op->sealed, sizeof(op->sealed));
    free(op);
}

static void
reply_invalid(wh_op_t *op, json_t *errors)
{
    tly_api_problem(&op->api, 422, "validation_failed", "the request has invalid fields; see errors", errors);
}

/* The endpoint's JSON (column 0 of `res`), with the secret added when one was just made. */
static void
send_endpoint(wh_op_t *op, int status, PGresult *res, bool with_secret)
{
    char location[96];
    json_error_t jerr;
    json_t *o = json_loads(PQgetvalue(res, 0, 0), 0, &jerr);
    if (o == NULL) {
        tly_api_unavailable(&op->api, "database_unavailable", "the endpoint could not be read back");
        return;
    }
    if (with_secret)
        json_object_set_new(o, "secret", json_string(op->secret));
    if (status == 201) {
        snprintf(location, sizeof(location), "/v1/webhook-endpoints/%s", json_string_value(json_object_get(o, "id")));
        tly_http_add_header(op->api.req, "location", location);
    }
    char *s = tly_json_dump(o);
    tly_api_send(&op->api, status, "application/json", s, strlen(s));
    OPENSSL_cleanse(s, strlen(s));
    free(s);
    json_decref(o);
}

static void
send_replayed(wh_op_t *op, PGresult *res)
{
    char body[96];
    int n = snprintf(body, sizeof(body), "{\"requeued\":%s,\"already_pending\":%s}", PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1));
    tly_api_send(&op->api, 202, "application/json", body, (size_t)n);
}

static void
on_done(void *data, PGresult *res, const char *err)
{
    wh_op_t *op = data;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        tly_api_db_failed(&op->api, res, err, "the webhook endpoint could not be written; retry");
    } else if (PQntuples(res) == 0) {
        tly_api_problem(&op->api, 404, "not_found", "no such webhook endpoint", NULL);
    } else if (op->action == WH_DELETE) {
        tly_api_send(&op->api, 204, NULL, "", 0);
    } else if (op->action == WH_REPLAY) {
        send_replayed(op, res);
    } else {
        send_endpoint(op, op->action == WH_CREATE ? 201 : 200, res, op->action == WH_CREATE || op->action == WH_ROTATE);
    }
    wh_op_destroy(op);
}

/* A new signing secret for endpoint `id`, and its sealed form; replies 503 and returns false when it cannot be sealed. */
static bool
new_secret_or_reply(wh_op_t *op, const char *id)
{
    tly_webhook_secret_generate(op->secret);
    if (tly_secretbox_seal(op->secret, id, op->sealed, sizeof(op->sealed)) == 0)
        return true;
    tly_log(TLY_LOG_ERROR, "could not seal a webhook secret: check TALLY_SECRET_KEYS", "request_id", op->api.request_id, NULL);
    tly_api_unavailable(&op->api, "secret_store_unavailable", "the webhook secret could not be stored");
    return false;
}

static void
start_create(wh_op_t *op, const tly_webhook_fields_t *f, const char *types)
{
    char id[TLY_UUID_STR_LEN + 1];
    tly_uuid_t uuid = tly_uuid_v4();
    tly_uuid_format(&uuid, id);
    if (!new_secret_or_reply(op, id)) {
        wh_op_destroy(op);
        return;
    }
    const char *params[8] = {id,
                             op->tenant,
                             f->url,
                             f->description != NULL ? f->description : "",
                             types,
                             op->sealed,
                             op->api.principal.key_id,
                             op->api.request_id};
    tly_pgpool_exec(op->thr->pg, STMT_WH_CREATE, params, on_done, op);
}

static void
start_patch(wh_op_t *op, const tly_webhook_fields_t *f, const char *types)
{
    const char *enabled = f->enabled < 0 ? NULL : f->enabled ? "true" : "false";
    const char *params[8] = {op->id,
                             op->tenant,
                             f->url,
                             f->description,
                             f->ntypes > 0 ? types : NULL,
                             enabled,
                             op->api.principal.key_id,
                             op->api.request_id};
    tly_pgpool_exec(op->thr->pg, STMT_WH_UPDATE, params, on_done, op);
}

/* Create and patch: body, validation, then the statement. */
static void
start_write(wh_op_t *op)
{
    char types[TLY_WEBHOOK_TYPES_MAX * 32];
    tly_webhook_fields_t f;
    bool allow_private = op->thr->cfg->webhook_allow_private;
    if ((op->body = cmd_body_or_reply(&op->api)) == NULL)
        goto done;
    json_t *errors = json_array();
    bool ok = op->action == WH_CREATE ? tly_webhook_validate_create(op->body, allow_private, &f, errors)
                                      : tly_webhook_validate_patch(op->body, allow_private, &f, errors);
    if (ok && !tly_webhook_types_pg(&f, types, sizeof(types))) {
        tly_http_field_error(errors, "event_types", "too many event types");
        ok = false;
    }
    if (!ok)
        reply_invalid(op, errors);
    json_decref(errors);
    if (!ok)
        goto done;
    if (op->action == WH_CREATE)
        start_create(op, &f, types);
    else
        start_patch(op, &f, types);
    return;
done:
    wh_op_destroy(op);
}

static void
start_replay(wh_op_t *op)
{
    char since[40], until[40];
    int64_t since_us, until_us;
    if ((op->body = cmd_body_or_reply(&op->api)) == NULL)
        goto done;
    json_t *errors = json_array();
    bool ok = tly_webhook_validate_replay(op->body, &since_us, &until_us, errors);
    if (!ok)
        reply_invalid(op, errors);
    json_decref(errors);
    if (!ok)
        goto done;
    tly_clock_format_rfc3339(since_us, since, sizeof(since));
    tly_clock_format_rfc3339(until_us, until, sizeof(until));
    const char *params[4] = {op->id, op->tenant, since, until};
    tly_pgpool_exec(op->thr->pg, STMT_WH_REPLAY, params, on_done, op);
    return;
done:
    wh_op_destroy(op);
}

/* Rotation takes no fields: no body at all, or a JSON {}. */
static void
start_rotate(wh_op_t *op)
{
    if (op->api.req->entity.len > 0) {
        if ((op->body = cmd_body_or_reply(&op->api)) == NULL)
            goto done;
        if (!json_is_object(op->body) || json_object_size(op->body) != 0) {
            json_t *errors = json_array();
            tly_http_field_error(errors, "", "rotate-secret takes no fields: send no body or {}");
            reply_invalid(op, errors);
            json_decref(errors);
            goto done;
        }
    }
    if (!new_secret_or_reply(op, op->id))
        goto done;
    const char *params[5] = {op->id, op->tenant, op->sealed, op->api.principal.key_id, op->api.request_id};
    tly_pgpool_exec(op->thr->pg, STMT_WH_ROTATE, params, on_done, op);
    return;
done:
    wh_op_destroy(op);
}

/* Which action the path and method name; replies 404 or 405 and returns false when none. */
static bool
route_or_reply(wh_op_t *op, const h2o_iovec_t *segs, int nsegs)
{
    h2o_req_t *req = op->api.req;
    const char *own = NULL;
    if (nsegs == 1) {
        op->action = WH_CREATE;
        own = "POST";
    } else if (nsegs == 2) {
        op->action = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("DELETE")) ? WH_DELETE : WH_PATCH;
        own = "PATCH, DELETE";
    } else if (nsegs == 3 && tly_http_seg_is(segs[2], "rotate-secret")) {
        op->action = WH_ROTATE;
        own = "POST";
    } else if (nsegs == 3 && tly_http_seg_is(segs[2], "replay")) {
        op->action = WH_REPLAY;
        own = "POST";
    } else if (nsegs == 3 && tly_http_seg_is(segs[2], "deliveries")) {
        op->api.route = "/v1/webhook-endpoints/{id}/deliveries";
        tly_http_add_header(req, "allow", "GET, HEAD");
        tly_api_problem(&op->api, 405, "method_not_allowed", "deliveries are read with GET on the query API", NULL);
        return false;
    } else {
        tly_api_problem(&op->api, 404, "not_found", "no such endpoint", NULL);
        return false;
    }
    op->api.route = actions[op->action].route;
    const char *m = actions[op->action].method;
    if (!h2o_memis(req->method.base, req->method.len, m, strlen(m))) {
        tly_http_add_header(req, "allow", tly_http_allow(req, own));
        tly_api_problem(&op->api, 405, "method_not_allowed", "this method is not served on this URL; see Allow", NULL);
        return false;
    }
    return true;
}

/* Parses the {id} segment; replies 422 itself when it is not a uuid. */
static bool
id_or_reply(wh_op_t *op, h2o_iovec_t seg)
{
    tly_uuid_t id;
    char text[TLY_UUID_STR_LEN + 1];
    snprintf(text, sizeof(text), "%.*s", (int)(seg.len < TLY_UUID_STR_LEN ? seg.len : TLY_UUID_STR_LEN), seg.base);
    if (seg.len != TLY_UUID_STR_LEN || !tly_uuid_parse(text, &id)) {
        json_t *errors = json_array();
        tly_http_field_error(errors, "id", "must be a webhook endpoint id (uuid)");
        tly_api_problem(&op->api, 422, "validation_failed", "the id in the path is malformed", errors);
        json_decref(errors);
        return false;
    }
    tly_uuid_format(&id, op->id); /* canonical lower case */
    return true;
}

void
cmd_webhooks_handle(cmd_thread_t *thr, h2o_req_t *req, const h2o_iovec_t *segs, int nsegs)
{
    wh_op_t *op = calloc(1, sizeof(*op));
    if (op == NULL)
        abort();
    op->thr = thr;
    tly_api_req_init(&op->api, req, &thr->inflight);
    op->api.route = "/v1/webhook-endpoints";
    if (!route_or_reply(op, segs, nsegs) || !tly_api_authenticate_or_reply(&op->api, thr->keys, TLY_SCOPE_WRITE) ||
        (nsegs >= 2 && !id_or_reply(op, segs[1]))) {
        wh_op_destroy(op);
        return;
    }
    tly_uuid_format(&op->api.principal.tenant_id, op->tenant);
    switch (op->action) {
    case WH_CREATE:
    case WH_PATCH:
        start_write(op);
        break;
    case WH_DELETE: {
        const char *params[4] = {op->id, op->tenant, op->api.principal.key_id, op->api.request_id};
        tly_pgpool_exec(thr->pg, STMT_WH_DELETE, params, on_done, op);
        break;
    }
    case WH_ROTATE:
        start_rotate(op);
        break;
    case WH_REPLAY:
        start_replay(op);
        break;
    }
}
