/*
 * API keys over HTTP (scope admin), for the caller's own tenant:
 *   POST /v1/api-keys {scopes: [...], tier?, label?} → 201 with the key, shown
 *   this once; DELETE /v1/api-keys/{id} → 204 (revoked; 404 for an unknown or
 *   another tenant's key). This instance learns the change at once; the others
 *   within their key refresh period.
 */
#include "internal.h"
#include "tally/http.h"
#include "tally/json.h"
#include "tally/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct st_key_op_t {
    tly_api_req_t api;
    cmd_thread_t *thr;
    char key[TLY_KEY_LEN + 1];
    tly_key_parts_t parts;
    uint8_t hash[TLY_KEY_HASH_LEN];
    int scopes;
    int64_t rate, burst;
    char tier[16];
    json_t *body;
} key_op_t;

static void
key_op_destroy(key_op_t *op)
{
    tly_api_req_finish(&op->api);
    json_decref(op->body);
    free(op);
}

/* Reads {scopes, tier?, label?}; replies 422 and returns false when invalid. */
static bool
parse_create(key_op_t *op)
{
    json_t *errors = json_array(), *scopes = json_object_get(op->body, "scopes");
    const char *key;
    json_t *v;
    json_object_foreach(op->body, key, v)
    {
        if (strcmp(key, "scopes") != 0 && strcmp(key, "tier") != 0 && strcmp(key, "label") != 0)
            tly_http_field_error(errors, key, "unknown field");
    }
    op->scopes = 0;
    size_t i;
    json_array_foreach(scopes, i, v)
    {
        int bit = json_is_string(v) ? tly_scopes_parse(json_string_value(v)) : -1;
        if (bit <= 0 || strchr(json_string_value(v), ',') != NULL) {
            tly_http_field_error(errors, "scopes", "each scope is one of read, write, admin");
            break;
        }
        op->scopes |= bit;
    }
    if (!json_is_array(scopes) || json_array_size(scopes) == 0)
        tly_http_field_error(errors, "scopes", "must be a non-empty array of read, write, admin");
    const char *tier = json_object_get(op->body, "tier") != NULL ? tly_json_str(op->body, "tier") : "standard";
    if (tier == NULL || !tly_rate_tier(tier, &op->rate, &op->burst))
        tly_http_field_error(errors, "tier", "must be free or standard");
    else
        snprintf(op->tier, sizeof(op->tier), "%s", tier);
    json_t *label = json_object_get(op->body, "label");
    if (label != NULL && (!json_is_string(label) || tly_utf8_chars(json_string_value(label)) > TLY_LABEL_MAX_CHARS))
        tly_http_field_error(errors, "label", "must be a string of at most 200 characters");
    bool ok = json_array_size(errors) == 0;
    if (!ok)
        tly_api_problem(&op->api, 422, "validation_failed", "the request has invalid fields; see errors", errors);
    json_decref(errors);
    return ok;
}

static void
on_created(void *data, PGresult *res, const char *err)
{
    key_op_t *op = data;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        tly_log(TLY_LOG_WARN, "could not create api key", "request_id", op->api.request_id, "error",
                err != NULL ? err : PQresultErrorMessage(res), NULL);
        tly_api_unavailable(&op->api, "database_unavailable", "the key could not be stored");
        key_op_destroy(op);
        return;
    }
    tly_keycache_put(op->thr->keys, op->parts.id, &op->api.principal.tenant_id, op->hash, op->scopes, op->rate, op->burst, false);
    json_t *scopes = json_array();
    static const char *names[] = {"read", "write", "admin"};
    for (int i = 0; i < 3; ++i)
        if (op->scopes & (1 << i))
            json_array_append_new(scopes, json_string(names[i]));
    const char *label = tly_json_str(op->body, "label");
    json_t *o = json_pack("{s:s, s:s, s:o, s:s, s:s, s:s}", "id", op->parts.id, "key", op->key, "scopes", scopes, "tier", op->tier,
                          "label", label != NULL ? label : "", "created_at", PQgetvalue(res, 0, 0));
    char *s = tly_json_dump(o);
    tly_api_send(&op->api, 201, "application/json", s, strlen(s));
    free(s);
    json_decref(o);
    key_op_destroy(op);
}

static void
create_key(key_op_t *op)
{
    static const char hex[] = "0123456789abcdef";
    char tenant[TLY_UUID_STR_LEN + 1], hash_hex[2 * TLY_KEY_HASH_LEN + 1], scopes[40];
    if ((op->body = cmd_body_or_reply(&op->api)) == NULL || !parse_create(op)) {
        key_op_destroy(op);
        return;
    }
    tly_key_generate(&op->parts, op->key);
    tly_key_hash(op->parts.secret, op->hash);
    for (size_t i = 0; i < TLY_KEY_HASH_LEN; ++i) {
        hash_hex[2 * i] = hex[op->hash[i] >> 4];
        hash_hex[2 * i + 1] = hex[op->hash[i] & 0xf];
    }
    hash_hex[2 * TLY_KEY_HASH_LEN] = '\0';
    tly_uuid_format(&op->api.principal.tenant_id, tenant);
    tly_scopes_format_pg(op->scopes, scopes, sizeof(scopes));
    const char *label = tly_json_str(op->body, "label");
    const char *params[8] = {op->parts.id, tenant, hash_hex, scopes, op->tier, NULL, NULL, label != NULL ? label : ""};
    tly_pgpool_exec(op->thr->pg, STMT_KEY_CREATE, params, on_created, op);
}

static void
on_revoked(void *data, PGresult *res, const char *err)
{
    key_op_t *op = data;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        tly_api_unavailable(&op->api, "database_unavailable", "the key could not be revoked");
    } else if (PQntuples(res) == 0) {
        tly_api_problem(&op->api, 404, "not_found", "no such API key", NULL);
    } else {
        /* this instance refuses the key at once; the others when their
           refresher reads the row */
        tly_keycache_revoke(op->thr->keys, op->parts.id);
        tly_api_send(&op->api, 204, NULL, "", 0);
    }
    key_op_destroy(op);
}

void
cmd_keys_handle(cmd_thread_t *thr, h2o_req_t *req, const h2o_iovec_t *segs, int nsegs)
{
    char tenant[TLY_UUID_STR_LEN + 1];
    key_op_t *op = calloc(1, sizeof(*op));
    if (op == NULL)
        abort();
    op->thr = thr;
    tly_api_req_init(&op->api, req, &thr->inflight);
    bool post = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"));
    bool del = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("DELETE"));
    op->api.route = nsegs == 1 ? "/v1/api-keys" : "/v1/api-keys/{id}";
    if (!((post && nsegs == 1) || (del && nsegs == 2))) {
        tly_http_add_header(req, "allow", nsegs == 1 ? "POST" : "DELETE");
        tly_api_problem(&op->api, nsegs <= 2 ? 405 : 404, nsegs <= 2 ? "method_not_allowed" : "not_found",
                        "keys are created with POST /v1/api-keys and revoked with DELETE /v1/api-keys/{id}", NULL);
        key_op_destroy(op);
        return;
    }
    if (!tly_api_authenticate_or_reply(&op->api, thr->keys, TLY_SCOPE_ADMIN)) {
        key_op_destroy(op);
        return;
    }
    if (post) {
        create_key(op);
        return;
    }
    snprintf(op->parts.id, sizeof(op->parts.id), "%.*s", (int)(segs[1].len < TLY_KEY_ID_LEN ? segs[1].len : TLY_KEY_ID_LEN),
             segs[1].base);
    tly_uuid_format(&op->api.principal.tenant_id, tenant);
    const char *params[2] = {op->parts.id, tenant};
    if (segs[1].len != TLY_KEY_ID_LEN) {
        tly_api_problem(&op->api, 404, "not_found", "no such API key", NULL);
        key_op_destroy(op);
        return;
    }
    tly_pgpool_exec(thr->pg, STMT_KEY_REVOKE, params, on_revoked, op);
}
