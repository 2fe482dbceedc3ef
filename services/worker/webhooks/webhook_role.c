/*
 * Recording webhook deliveries: a tly_consumer_handler_t that runs in the
 * fenced batch transaction. The endpoints of a tenant are read once per batch
 * transaction (the first event of that tenant in the batch), inside it, so a
 * retried batch sees what the database says now and an endpoint created or
 * disabled takes effect from the next batch on.
 *
 * Which events an endpoint gets: its tenant's, whose type it lists (or "*"),
 * that occurred at or after the endpoint was created (an endpoint never gets
 * the past, so a worker catching up on a backlog after the endpoint was
 * created does not send it events from before). The row's id is derived from
 * (endpoint, event), and (endpoint_id, event_id) is unique: recording the same
 * event twice (a redelivery, a retried batch) inserts nothing, which is why
 * this handler is `idempotent` (no consumer_dedup rows).
 */
#include "webhook_role.h"
#include "tally/pgx.h"
#include "tally/json.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define US_OF(col) "COALESCE((extract(epoch FROM " col ") * 1000000)::bigint, 0)"

static tly_verdict_t
webhook_classify(void *ctx, const tly_envelope_t *env)
{
    /* every event may be subscribed to; its data is copied, never interpreted, so no version is too new */
    return tly_uuid_is_nil(&env->tenant_id) ? TLY_VERDICT_IGNORE : TLY_VERDICT_APPLY;
}

static void
cache_clear(tly_webhook_role_t *r)
{
    for (int i = 0; i < r->ntenants; ++i) {
        for (int k = 0; k < r->tenants[i].n; ++k)
            json_decref(r->tenants[i].endpoints[k].types);
        free(r->tenants[i].endpoints);
    }
    r->ntenants = 0;
}

static void
webhook_begin(void *ctx)
{
    tly_webhook_role_t *r = ctx;
    cache_clear(r); /* a retried transaction must re-read what the rolled-back one saw */
    r->recorded = 0;
}

/* Reads the tenant's live endpoints into the cache. */
static tly_webhook_tenant_t *
load_tenant(tly_webhook_role_t *r, PGconn *conn, const tly_uuid_t *tenant, char *err, size_t errcap)
{
    char tenant_s[TLY_UUID_STR_LEN + 1];
    tly_uuid_format(tenant, tenant_s);
    const char *vals[] = {tenant_s};
    PGresult *res = tly_pgx_query(conn, "read webhook endpoints",
                                  "SELECT id, " US_OF("created_at") ", array_to_json(event_types)::text FROM webhook_endpoints "
                                                                    "WHERE tenant_id = $1 AND enabled AND deleted_at IS NULL",
                                  1, vals, err, errcap);
    if (res == NULL)
        return NULL;
    if (r->ntenants == r->cap) {
        r->cap = r->cap == 0 ? 16 : r->cap * 2;
        r->tenants = realloc(r->tenants, sizeof(*r->tenants) * (size_t)r->cap);
        if (r->tenants == NULL)
            abort();
    }
    tly_webhook_tenant_t *t = &r->tenants[r->ntenants++];
    t->tenant = *tenant;
    t->n = 0;
    t->endpoints = calloc((size_t)PQntuples(res) + 1, sizeof(*t->endpoints));
    if (t->endpoints == NULL)
        abort();
    for (int i = 0; i < PQntuples(res); ++i) {
        tly_webhook_endpoint_t *e = &t->endpoints[t->n];
        json_error_t jerr;
        if (!tly_uuid_parse(PQgetvalue(res, i, 0), &e->id))
            continue;
        e->created_us = strtoll(PQgetvalue(res, i, 1), NULL, 10);
        e->types = json_loads(PQgetvalue(res, i, 2), 0, &jerr);
        if (e->types != NULL)
            t->n++;
    }
    PQclear(res);
    return t;
}

static tly_webhook_tenant_t *
tenant_endpoints(tly_webhook_role_t *r, PGconn *conn, const tly_uuid_t *tenant, char *err, size_t errcap)
{
    for (int i = 0; i < r->ntenants; ++i)
        if (memcmp(&r->tenants[i].tenant, tenant, sizeof(*tenant)) == 0)
            return &r->tenants[i];
    return load_tenant(r, conn, tenant, err, errcap);
}

/* Inserts the event's deliveries to `ids`/`endpoints` (PostgreSQL array literals) with one statement. */
static int
insert_deliveries(tly_webhook_role_t *r, PGconn *conn, const char *ids, const char *endpoints, const tly_envelope_t *env,
                  const char *body, char *err, size_t errcap)
{
    char tenant[TLY_UUID_STR_LEN + 1], event[TLY_UUID_STR_LEN + 1], occurred[24];
    long affected = 0;
    tly_uuid_format(&env->tenant_id, tenant);
    tly_uuid_format(&env->id, event);
    snprintf(occurred, sizeof(occurred), "%" PRId64, env->occurred_at_us);
    const char *vals[] = {ids, endpoints, tenant, event, env->type, occurred, body};
    if (tly_pgx_exec(conn, "record webhook deliveries",
                     "INSERT INTO webhook_deliveries (id, endpoint_id, tenant_id, event_id, event_type, occurred_at, payload, "
                     "status, next_attempt_at) SELECT u.id, u.endpoint_id, $3, $4, $5, 'epoch'::timestamptz + $6::bigint * "
                     "interval '1 microsecond', $7, 'pending', now() FROM unnest($1::uuid[], $2::uuid[]) AS u(id, endpoint_id) "
                     "ON CONFLICT DO NOTHING",
                     7, vals, &affected, err, errcap) != 0)
        return -1;
    r->recorded += affected;
    return 0;
}

static int
webhook_apply(void *ctx, PGconn *conn, const tly_consumer_msg_t *msg, char *err, size_t errcap)
{
    tly_webhook_role_t *r = ctx;
    const tly_envelope_t *env = &msg->env;
    tly_webhook_tenant_t *t = tenant_endpoints(r, conn, &env->tenant_id, err, errcap);
    if (t == NULL)
        return -1;
    size_t cap = (size_t)t->n * (TLY_UUID_STR_LEN + 1) + 3, n = 0, m = 0;
    char *ids = malloc(cap), *eps = malloc(cap);
    if (ids == NULL || eps == NULL)
        abort();
    ids[n++] = eps[m++] = '{';
    for (int i = 0; i < t->n; ++i) {
        const tly_webhook_endpoint_t *e = &t->endpoints[i];
        if (env->occurred_at_us < e->created_us || !tly_webhook_subscribed(e->types, env->type))
            continue;
        tly_uuid_t did = tly_webhook_delivery_id(&e->id, &env->id);
        if (n > 1)
            ids[n++] = eps[m++] = ',';
        tly_uuid_format(&did, ids + n);
        tly_uuid_format(&e->id, eps + m);
        n += TLY_UUID_STR_LEN;
        m += TLY_UUID_STR_LEN;
    }
    ids[n++] = eps[m++] = '}';
    ids[n] = eps[m] = '\0';
    int ret = 0;
    if (n > 2) {
        bool truncated;
        char *body = tly_webhook_body(env, &truncated);
        ret = insert_deliveries(r, conn, ids, eps, env, body, err, errcap);
        free(body);
    }
    free(ids);
    free(eps);
    return ret;
}

/* Event by event, but without a dedup statement (idempotent) and with each tenant's endpoints read once per batch. */
static int
webhook_apply_batch(void *ctx, PGconn *conn, const tly_consumer_msg_t *const *msgs, int n, char *err, size_t errcap)
{
    for (int i = 0; i < n; ++i)
        if (webhook_apply(ctx, conn, msgs[i], err, errcap) != 0)
            return -1;
    return 0;
}

/*
 * Most events belong to tenants without a live endpoint, and for them the
 * batch transaction would write nothing but the consumer's position: one
 * read-only statement (no transaction, no WAL, no commit to flush) tells the
 * consumer so, and it passes the batch over (consumer.c, skip_ignored). It
 * reads what the transaction would have read first, so the rule stays as
 * documented: an endpoint takes effect from the next batch on.
 */
static int
webhook_nothing_to_do(void *ctx, PGconn *conn, const tly_consumer_msg_t *msgs, int n, bool *nothing, char *err, size_t errcap)
{
    tly_pg_array_t tenants = {0};
    char id[TLY_UUID_STR_LEN + 1];
    for (int i = 0; i < n; ++i) {
        if (tly_uuid_is_nil(&msgs[i].env.tenant_id))
            continue;
        bool seen = false;
        for (int k = 0; k < i && !seen; ++k)
            seen = memcmp(&msgs[k].env.tenant_id, &msgs[i].env.tenant_id, sizeof(tly_uuid_t)) == 0;
        if (!seen) {
            tly_uuid_format(&msgs[i].env.tenant_id, id);
            tly_pg_array_add(&tenants, id);
        }
    }
    *nothing = tenants.n == 0;
    if (tenants.n > 0) {
        const char *vals[] = {tly_pg_array_text(&tenants)};
        PGresult *res = tly_pgx_query(conn, "look for webhook endpoints",
                                      "SELECT NOT EXISTS (SELECT 1 FROM webhook_endpoints WHERE tenant_id = ANY($1::uuid[]) "
                                      "AND enabled AND deleted_at IS NULL)",
                                      1, vals, err, errcap);
        if (res == NULL) {
            tly_pg_array_free(&tenants);
            return -1;
        }
        *nothing = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
        PQclear(res);
    }
    tly_pg_array_free(&tenants);
    return 0;
}

static int
webhook_end(void *ctx, PGconn *conn, char *err, size_t errcap)
{
    tly_webhook_role_t *r = ctx;
    if (r->recorded == 0)
        return 0;
    return tly_pgx_exec(conn, "notify the webhook senders", "NOTIFY tally_webhooks", 0, NULL, NULL, err, errcap);
}

void
tly_webhook_role_init(tly_consumer_handler_t *h, tly_webhook_role_t *role)
{
    memset(role, 0, sizeof(*role));
    *h = (tly_consumer_handler_t){
        .name = "webhooks",
        .ctx = role,
        .classify = webhook_classify,
        .nothing_to_do = webhook_nothing_to_do,
        .begin = webhook_begin,
        .apply = webhook_apply,
        .end = webhook_end,
        .apply_batch = webhook_apply_batch,
        .idempotent = true, /* (endpoint_id, event_id) is unique: recording an event twice inserts nothing */
    };
}

void
tly_webhook_role_clear(tly_webhook_role_t *role)
{
    cache_clear(role);
    free(role->tenants);
    role->tenants = NULL;
    role->cap = 0;
}
