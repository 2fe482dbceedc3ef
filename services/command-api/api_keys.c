/*
 * API keys over HTTP (scope admin), for the caller's own tenant:
 *   POST /v1/api-keys {scopes: [...], tier?, label?, expires_at?} → 201 with
 *   the key, shown this once; DELETE /v1/api-keys/{id} → 204 (revoked; 404
 *   for an unknown or another tenant's key). This instance learns the change
 *   at once, the others by the NOTIFY of the api_keys trigger (0006).
 *
 * A key grants only what it has (403 otherwise): a subset of its own scopes,
 * a rate and burst no better than its own (without a tier, the new key gets
 * the caller's tier, or its contract rate), and an expiry no later than its
 * own (without one, the caller's). The tenant's live-key quota is the
 * database's rule (a trigger of 0006): over it, 422 quota_exceeded.
 * Every change is written to audit_events by the same statement.
 */
#include "internal.h"
#include "tally/clock.h"
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
    bool contract; /* rate and burst are the caller's contract */
    char tier[TLY_TIER_NAME_MAX];
    int64_t expires_us; /* 0: never */
    json_t *body;
} key_op_t;

static void
key_op_destroy(key_op_t *op)
{
    tly_api_req_finish(&op->api);
    json_decref(op->body);
    free(op);
}

static bool
known_field(const char *key)
{
    static const char *const fields[] = {"scopes", "tier", "label", "expires_at"};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); ++i)
        if (strcmp(key, fields[i]) == 0)
            return true;
    return false;
}

/* scopes: exact names only, never the database's array syntax ("{admin}"). */
static void
parse_scopes(key_op_t *op, json_t *errors)
{
    json_t *scopes = json_object_get(op->body, "scopes"), *v;
    size_t i;
    op->scopes = 0;
    if (!json_is_array(scopes) || json_array_size(scopes) == 0) {
        tly_http_field_error(errors, "scopes", "must be a non-empty array of read, write, admin");
        return;
    }
    json_array_foreach(scopes, i, v)
    {
        int bit = json_is_string(v) ? tly_scope_bit(json_string_value(v), json_string_length(v)) : 0;
        if (bit == 0) {
            tly_http_field_error(errors, "scopes", "each scope is one of read, write, admin");
            return;
        }
        op->scopes |= bit;
    }
}

/* tier: a known tier; none given is the caller's own (with its contract rate). */
static void
parse_tier(key_op_t *op, json_t *errors)
{
    const tly_principal_t *p = &op->api.principal;
    if (json_object_get(op->body, "tier") == NULL) {
        snprintf(op->tier, sizeof(op->tier), "%s", p->tier);
        op->rate = p->rate;
        op->burst = p->burst;
        op->contract = p->contract;
        return;
    }
    const char *tier = tly_json_str(op->body, "tier");
    if (tier == NULL || strlen(tier) >= sizeof(op->tier) || !tly_rate_tier(tier, &op->rate, &op->burst))
        tly_http_field_error(errors, "tier", "must be free or standard");
    else
        snprintf(op->tier, sizeof(op->tier), "%s", tier);
}

static void
parse_expiry(key_op_t *op, json_t *errors)
{
    json_t *v = json_object_get(op->body, "expires_at");
    op->expires_us = op->api.principal.expires_us;
    if (v == NULL)
        return;
    if (!json_is_string(v) || !tly_clock_parse_rfc3339(json_string_value(v), &op->expires_us))
        tly_http_field_error(errors, "expires_at", "must be an RFC 3339 time in years 1 to 9999");
    else if (op->expires_us <= tly_clock_now_us())
        tly_http_field_error(errors, "expires_at", "must be in the future");
}

/* Reads {scopes, tier?, label?, expires_at?}; replies 422 and returns false when invalid. */
static bool
parse_create(key_op_t *op)
{
    json_t *errors = json_array();
    const char *key;
    json_t *v;
    json_object_foreach(op->body, key, v)
    {
        if (!known_field(key))
            tly_http_field_error(errors, key, "unknown field");
    }
    parse_scopes(op, errors);
    parse_tier(op, errors);
    parse_expiry(op, errors);
    json_t *label = json_object_get(op->body, "label");
    if (label != NULL && (!json_is_string(label) || tly_utf8_chars(json_string_value(label)) > TLY_LABEL_MAX_CHARS))
        tly_http_field_error(errors, "label", "must be a string of at most 200 characters");
    bool ok = json_array_size(errors) == 0;
    if (!ok)
        tly_api_problem(&op->api, 422, "validation_failed", "the request has invalid fields; see errors", errors);
    json_decref(errors);
    return ok;
}

/* A key grants only what it has; replies 403 and returns false otherwise. */
static bool
grantable_or_reply(key_op_t *op)
{
    const tly_principal_t *p = &op->api.principal;
    char names[40], detail[160];
    int missing = op->scopes & ~p->scopes;
    if (missing != 0) {
        tly_scopes_names(missing, names, sizeof(names));
        snprintf(detail, sizeof(detail), "this API key cannot grant scopes it lacks: %s", names);
        tly_api_problem(&op->api, 403, "insufficient_scope", detail, NULL);
        return false;
    }
    if (op->rate > p->rate || op->burst > p->burst) {
        snprintf(detail, sizeof(detail), "this API key cannot grant a better rate than its own (%lld/s, burst %lld)",
                 (long long)p->rate, (long long)p->burst);
        tly_api_problem(&op->api, 403, "tier_not_grantable", detail, NULL);
        return false;
    }
    if (p->expires_us != 0 && op->expires_us > p->expires_us) {
        tly_api_problem(&op->api, 403, "expiry_not_grantable", "this API key cannot grant a key that outlives it", NULL);
        return false;
    }
    return true;
}

static void
on_created(void *data, PGresult *res, const char *err)
{
    key_op_t *op = data;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        tly_api_db_failed(&op->api, res, err, "the key could not be stored");
        key_op_destroy(op);
        return;
    }
    tly_key_attrs_t attrs = {.tenant_id = op->api.principal.tenant_id,
                             .scopes = op->scopes,
                             .contract = op->contract,
                             .rate = op->rate,
                             .burst = op->burst,
                             .expires_us = op->expires_us,
                             .max_long_polls = op->api.principal.max_long_polls};
    memcpy(attrs.hash, op->hash, sizeof(attrs.hash));
    snprintf(attrs.tier, sizeof(attrs.tier), "%s", op->tier);
    tly_keycache_put(op->thr->keys, op->parts.id, &attrs);
    json_t *scopes = json_array();
    static const int bits[] = {TLY_SCOPE_READ, TLY_SCOPE_WRITE, TLY_SCOPE_ADMIN};
    char name[8];
    for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); ++i)
        if (op->scopes & bits[i]) {
            tly_scopes_names(bits[i], name, sizeof(name));
            json_array_append_new(scopes, json_string(name));
        }
    const char *label = tly_json_str(op->body, "label");
    json_t *o = json_pack("{s:s, s:s, s:o, s:s, s:s, s:s, s:n}", "id", op->parts.id, "key", op->key, "scopes", scopes, "tier",
                          op->tier, "label", label != NULL ? label : "", "created_at", PQgetvalue(res, 0, 0), "expires_at");
    if (op->expires_us != 0) {
        char when[40];
        tly_clock_format_rfc3339(op->expires_us, when, sizeof(when));
        json_object_set_new(o, "expires_at", json_string(when));
    }
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
    char tenant[TLY_UUID_STR_LEN + 1], hash_hex[2 * TLY_KEY_HASH_LEN + 1], scopes[40], rate[24], burst[24], expires[40];
    if ((op->body = cmd_body_or_reply(&op->api)) == NULL || !parse_create(op) || !grantable_or_reply(op)) {
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
    snprintf(rate, sizeof(rate), "%lld", (long long)op->rate);
    snprintf(burst, sizeof(burst), "%lld", (long long)op->burst);
    if (op->expires_us != 0)
        tly_clock_format_rfc3339(op->expires_us, expires, sizeof(expires));
    const char *label = tly_json_str(op->body, "label");
    const char *params[11] = {op->parts.id,
                              tenant,
                              hash_hex,
                              scopes,
                              op->tier,
                              op->contract ? rate : NULL,
                              op->contract ? burst : NULL,
                              label != NULL ? label : "",
                              op->expires_us != 0 ? expires : NULL,
                              op->api.principal.key_id,
                              op->api.request_id};
    tly_pgpool_exec(op->thr->pg, STMT_KEY_CREATE, params, on_created, op);
}

static void
on_revoked(void *data, PGresult *res, const char *err)
{
    key_op_t *op = data;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        tly_api_db_failed(&op->api, res, err, "the key could not be revoked");
    } else if (PQntuples(res) == 0) {
        tly_api_problem(&op->api, 404, "not_found", "no such API key", NULL);
    } else {
        /* this instance refuses the key at once; the others when the
           trigger's NOTIFY reaches their key cache */
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
    const char *params[4] = {op->parts.id, tenant, op->api.principal.key_id, op->api.request_id};
    if (segs[1].len != TLY_KEY_ID_LEN) {
        tly_api_problem(&op->api, 404, "not_found", "no such API key", NULL);
        key_op_destroy(op);
        return;
    }
    tly_pgpool_exec(thr->pg, STMT_KEY_REVOKE, params, on_revoked, op);
}
