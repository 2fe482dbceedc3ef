/*
 * The decider role. It runs inside the fenced consumer's batch transaction:
 * the decider's state, its outbox rows and the consumer position commit
 * together, which is what makes its effects exactly once.
 */
#include "decider_role.h"
#include "tally/clock.h"
#include "tally/json.h"
#include "tally/pgx.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- decider ------------------------------------------------------------- */

static tly_verdict_t
decider_classify(void *ctx, const tly_envelope_t *env)
{
    /* outcomes and other aggregates' events are not ours */
    return tly_consumer_verdict(tly_decider_is_request(env->type), env, tly_catalogue_latest_version(env->type));
}

static void
decider_begin(void *ctx)
{
    tly_decider_role_t *r = ctx;
    tly_outbox_rows_reset(&r->outbox);
}

/* --- the batch's account states: an open-addressing table keyed by id ---- */

static uint64_t
id_hash(const tly_uuid_t *id)
{
    uint64_t a, b;
    memcpy(&a, id->b, 8);
    memcpy(&b, id->b + 8, 8);
    return (a ^ (b * 0x9e3779b97f4a7c15ULL)) * 0xff51afd7ed558ccdULL;
}

/* Empties the table and makes room for `n` accounts at most half full. */
static void
states_reset(tly_decider_role_t *r, int n)
{
    size_t want = 16;
    while (want < (size_t)n * 2)
        want *= 2;
    if (want > r->cap) {
        free(r->slots);
        r->slots = calloc(want, sizeof(*r->slots));
        if (r->slots == NULL)
            abort();
        r->cap = want;
        r->nused = 0;
    }
    for (int i = 0; i < r->nused; ++i)
        r->slots[r->used[i]].used = false;
    r->nused = 0;
    if ((size_t)n > r->used_cap) {
        free(r->used);
        r->used = malloc(sizeof(*r->used) * (size_t)n);
        if (r->used == NULL)
            abort();
        r->used_cap = (size_t)n;
    }
}

/* The slot of `id`; a new one (not found, state absent) when `add`, else NULL when absent. */
static tly_decider_slot_t *
states_get(tly_decider_role_t *r, const tly_uuid_t *id, bool add)
{
    size_t mask = r->cap - 1;
    for (size_t i = id_hash(id) & mask;; i = (i + 1) & mask) {
        tly_decider_slot_t *s = &r->slots[i];
        if (!s->used) {
            if (!add)
                return NULL;
            memset(s, 0, sizeof(*s));
            s->used = true;
            s->state.id = *id;
            r->used[r->nused++] = (int)i;
            return s;
        }
        if (memcmp(&s->state.id, id, sizeof(*id)) == 0)
            return s;
    }
}

static int
cmp_slot_id(const void *a, const void *b)
{
    return memcmp(&(*(tly_decider_slot_t *const *)a)->state.id, &(*(tly_decider_slot_t *const *)b)->state.id, sizeof(tly_uuid_t));
}

/*
 * Loads the state of every account in the table with one statement, FOR
 * UPDATE in id order (two transactions that lock rows in one order cannot
 * deadlock each other). An account without a row stays absent.
 */
static int
load_states(tly_decider_role_t *r, PGconn *conn, char *err, size_t errcap)
{
    tly_decider_slot_t **order = malloc(sizeof(*order) * (size_t)(r->nused > 0 ? r->nused : 1));
    char id[TLY_UUID_STR_LEN + 1];
    if (order == NULL)
        abort();
    for (int i = 0; i < r->nused; ++i)
        order[i] = &r->slots[r->used[i]];
    qsort(order, (size_t)r->nused, sizeof(*order), cmp_slot_id);
    tly_pg_array_reset(&r->arr[0]);
    for (int i = 0; i < r->nused; ++i) {
        tly_uuid_format(&order[i]->state.id, id);
        tly_pg_array_add(&r->arr[0], id);
    }
    free(order);
    const char *vals[] = {tly_pg_array_text(&r->arr[0])};
    PGresult *res = tly_pgx_query(conn, "load decider states",
                                  "SELECT id, tenant_id, currency, status, balance, version FROM decider_accounts "
                                  "WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE",
                                  1, vals, err, errcap);
    if (res == NULL)
        return -1;
    for (int k = 0; k < PQntuples(res); ++k) {
        tly_uuid_t key;
        tly_decider_slot_t *s = tly_uuid_parse(PQgetvalue(res, k, 0), &key) ? states_get(r, &key, false) : NULL;
        if (s == NULL || !tly_uuid_parse(PQgetvalue(res, k, 1), &s->state.tenant_id) ||
            !tly_account_status_parse(PQgetvalue(res, k, 3), &s->state.status)) {
            snprintf(err, errcap, "could not load decider state: row %s is corrupt", PQgetvalue(res, k, 0));
            PQclear(res);
            return -1;
        }
        s->state.exists = true;
        snprintf(s->state.currency, sizeof(s->state.currency), "%s", PQgetvalue(res, k, 2));
        s->state.balance = strtoll(PQgetvalue(res, k, 4), NULL, 10);
        s->state.version = strtoll(PQgetvalue(res, k, 5), NULL, 10);
    }
    PQclear(res);
    return 0;
}

/* Writes every changed state with one statement. */
static int
store_states(tly_decider_role_t *r, PGconn *conn, char *err, size_t errcap)
{
    char id[TLY_UUID_STR_LEN + 1], tenant[TLY_UUID_STR_LEN + 1];
    for (int c = 0; c < 6; ++c)
        tly_pg_array_reset(&r->arr[c]);
    for (int i = 0; i < r->nused; ++i) {
        const tly_decider_slot_t *s = &r->slots[r->used[i]];
        if (!s->dirty)
            continue;
        tly_uuid_format(&s->state.id, id);
        tly_uuid_format(&s->state.tenant_id, tenant);
        tly_pg_array_add(&r->arr[0], id);
        tly_pg_array_add(&r->arr[1], tenant);
        tly_pg_array_add(&r->arr[2], s->state.currency);
        tly_pg_array_add(&r->arr[3], tly_account_status_name(s->state.status));
        tly_pg_array_add_i64(&r->arr[4], s->state.balance);
        tly_pg_array_add_i64(&r->arr[5], s->state.version);
    }
    if (r->arr[0].n == 0)
        return 0;
    const char *vals[6];
    for (int c = 0; c < 6; ++c)
        vals[c] = tly_pg_array_text(&r->arr[c]);
    return tly_pgx_send(conn, "store decider states",
                        "INSERT INTO decider_accounts (id, tenant_id, currency, status, balance, version) "
                        "SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::bigint[]) "
                        "ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, balance = EXCLUDED.balance, "
                        "version = EXCLUDED.version",
                        6, vals, NULL, NULL, err, errcap);
}

static int
decider_flush_outbox(tly_decider_role_t *r, PGconn *conn, char *err, size_t errcap)
{
    return tly_outbox_rows_flush(&r->outbox, conn, err, errcap);
}

/*
 * Decides msgs[0, n) (fresh requests, log order) in the batch transaction:
 * one statement loads every account's state, the rules run in memory (each
 * request sees the state its predecessors left), one statement stores the
 * changed states and one inserts every outcome into the outbox. A request the
 * rules cannot decide fails the batch; the consumer then goes one request at
 * a time (this function with n = 1) and isolates it.
 */
static int
decider_apply_batch(void *ctx, PGconn *conn, const tly_consumer_msg_t *const *msgs, int n, char *err, size_t errcap)
{
    tly_decider_role_t *r = ctx;
    states_reset(r, n);
    for (int i = 0; i < n; ++i)
        states_get(r, &msgs[i]->env.aggregate_id, true);
    if (load_states(r, conn, err, errcap) != 0)
        return -1;
    for (int i = 0; i < n; ++i) {
        tly_decider_slot_t *s = states_get(r, &msgs[i]->env.aggregate_id, false);
        tly_decision_t d;
        if (tly_decider_decide(&s->state, &msgs[i]->env, &d) != 0) {
            snprintf(err, errcap, "could not decide %s", msgs[i]->env.type);
            tly_outbox_rows_reset(&r->outbox);
            return -1;
        }
        if (d.state_changed) {
            s->state = d.next;
            s->dirty = true;
        }
        for (int k = 0; k < d.nevents; ++k)
            tly_outbox_rows_add(&r->outbox, r->topic, msgs[i]->traceparent, &d.events[k]);
        tly_decision_clear(&d);
    }
    if (store_states(r, conn, err, errcap) != 0) {
        tly_outbox_rows_reset(&r->outbox);
        return -1;
    }
    return decider_flush_outbox(r, conn, err, errcap);
}

static int
decider_apply(void *ctx, PGconn *conn, const tly_consumer_msg_t *msg, char *err, size_t errcap)
{
    return decider_apply_batch(ctx, conn, &msg, 1, err, errcap);
}

/* A parked request still gets an outcome, so that its job ends (failed, dead_lettered). */
static int
decider_park(void *ctx, PGconn *conn, const tly_consumer_msg_t *msg, const char *why, char *err, size_t errcap)
{
    tly_decider_role_t *r = ctx;
    tly_decision_t d;
    if (tly_decider_reject(&msg->env, TLY_CODE_DEAD_LETTERED, why, tly_clock_now_us(), &d) != 0)
        return 0;
    for (int k = 0; k < d.nevents; ++k)
        tly_outbox_rows_add(&r->outbox, r->topic, msg->traceparent, &d.events[k]);
    tly_decision_clear(&d);
    return decider_flush_outbox(r, conn, err, errcap);
}

void
tly_decider_role_free(tly_decider_role_t *role)
{
    tly_outbox_rows_free(&role->outbox);
    for (int c = 0; c < 6; ++c)
        tly_pg_array_free(&role->arr[c]);
    free(role->slots);
    free(role->used);
    memset(role, 0, sizeof(*role));
}

void
tly_decider_role_init(tly_consumer_handler_t *h, tly_decider_role_t *role, const char *topic)
{
    memset(role, 0, sizeof(*role));
    role->topic = topic;
    *h = (tly_consumer_handler_t){
        .name = "decider",
        .ctx = role,
        .classify = decider_classify,
        .begin = decider_begin,
        .apply = decider_apply,
        .park = decider_park,
        .apply_batch = decider_apply_batch,
    };
}
