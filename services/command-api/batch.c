/*
 * POST /v1/batch {"requests": [{"path", "body", "idempotency_key"?}, ...]}:
 * up to 100 commands in one call. Each item is routed, validated and accepted
 * on its own, exactly as if it had been posted alone (same idempotency rules,
 * same event), and costs one rate-limit token. The answer is 200 with one
 * result per item, in order: {"status": 202, "job": {...}} or
 * {"status": <4xx/5xx>, "problem": {...}}.
 */
#include "internal.h"
#include "tally/clock.h"
#include "tally/http.h"
#include "tally/json.h"

#include <stdlib.h>
#include <string.h>

#define BATCH_MAX 100

struct st_cmd_batch_t {
    tly_api_req_t api;
    json_t *body;
    json_t *results; /* array, one slot per item */
    size_t pending;  /* items not finished yet, plus one while items are being started */
};

static void
batch_finish(cmd_batch_t *b)
{
    if (b->api.req != NULL) {
        json_t *o = json_pack("{s:O}", "results", b->results);
        char *s = tly_json_dump(o);
        tly_api_send(&b->api, 200, "application/json", s, strlen(s));
        free(s);
        json_decref(o);
    }
    tly_api_req_finish(&b->api);
    json_decref(b->results);
    json_decref(b->body);
    free(b);
}

void
cmd_batch_item_done(cmd_batch_t *b, size_t index, json_t *result)
{
    json_array_set_new(b->results, index, result);
    if (--b->pending == 0)
        batch_finish(b);
}

/* Runs one item through the same steps as a single POST. */
static void
start_item(cmd_thread_t *thr, cmd_batch_t *b, size_t i, json_t *item, const char *traceparent)
{
    cmd_op_t *op = cmd_op_create(thr, NULL, b, i);
    op->api.principal = b->api.principal;
    memcpy(op->traceparent, traceparent, sizeof(op->traceparent));
    const char *path = tly_json_str(item, "path");
    json_t *body = json_object_get(item, "body");
    json_t *key = json_object_get(item, "idempotency_key");
    if (!json_is_object(item) || path == NULL || !json_is_object(body) || (key != NULL && !json_is_string(key))) {
        cmd_op_problem(op, 422, "validation_failed",
                       "each request needs a string path, an object body and optionally a string idempotency_key", NULL);
        return;
    }
    if (i > 0) { /* the batch call itself took the first token */
        if (!tly_api_take_token(&op->api)) {
            cmd_op_problem(op, 429, "rate_limited", "too many requests for this API key", NULL);
            return;
        }
    }
    op->body = json_incref(body);
    if (!cmd_op_route(op, path, strlen(path)) || !cmd_op_validate(op) ||
        !cmd_op_idempotency_key(op, key != NULL ? json_string_value(key) : NULL, key != NULL ? json_string_length(key) : 0))
        return;
    /* the body's canonical form: the same command is recognised whatever its key order */
    char *canonical = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
    cmd_op_start(op, path, strlen(path), canonical, strlen(canonical));
    free(canonical);
}

void
cmd_batch_handle(cmd_thread_t *thr, h2o_req_t *req)
{
    char traceparent[TLY_TRACEPARENT_LEN + 1];
    cmd_batch_t *b = calloc(1, sizeof(*b));
    if (b == NULL)
        abort();
    tly_api_req_init(&b->api, req, &thr->inflight);
    b->api.route = "/v1/batch";
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"))) {
        tly_http_add_header(req, "allow", "POST");
        tly_api_problem(&b->api, 405, "method_not_allowed", "the batch endpoint takes POST", NULL);
        goto fail;
    }
    if (!tly_api_authenticate_or_reply(&b->api, thr->keys, TLY_SCOPE_WRITE) || (b->body = cmd_body_or_reply(&b->api)) == NULL)
        goto fail;
    json_t *requests = json_object_get(b->body, "requests");
    if (!json_is_array(requests) || json_array_size(requests) < 1 || json_array_size(requests) > BATCH_MAX ||
        json_object_size(b->body) != 1) {
        json_t *errors = json_array();
        tly_http_field_error(errors, "requests", "must be an array of 1 to 100 requests, and the only field");
        tly_api_problem(&b->api, 422, "validation_failed", "the batch is malformed", errors);
        json_decref(errors);
        goto fail;
    }
    tly_traceparent_child(b->api.traceparent, traceparent); /* items keep the caller's trace */
    b->results = json_array();
    for (size_t i = 0; i < json_array_size(requests); ++i)
        json_array_append_new(b->results, json_null());
    b->pending = json_array_size(requests) + 1;
    size_t i;
    json_t *item;
    json_array_foreach(requests, i, item) start_item(thr, b, i, item, traceparent);
    if (--b->pending == 0)
        batch_finish(b);
    return;
fail:
    tly_api_req_finish(&b->api);
    json_decref(b->body);
    free(b);
}
