/*
 * Decider and projector roles. Each runs inside the fenced consumer's batch
 * transaction: the decider's state, its outbox rows and the consumer position
 * commit together, which is what makes its effects exactly once.
 */
#include "roles.h"
#include "tally/pgx.h"
#include "tally/ledger/projection.h"
#include "tally/clock.h"
#include "tally/json.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- decider ------------------------------------------------------------- */

static tly_verdict_t
decider_classify(void *ctx, const tly_envelope_t *env)
{
    if (!tly_decider_is_request(env->type))
        return TLY_VERDICT_IGNORE; /* outcomes and other aggregates' events: not ours */
    return env->version > tly_catalogue_latest_version(env->type) ? TLY_VERDICT_TOO_NEW : TLY_VERDICT_APPLY;
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

void
tly_outbox_rows_add(tly_outbox_rows_t *rows, const char *topic, const char *parent_tp, const tly_envelope_t *ev)
{
    char id[TLY_UUID_STR_LEN + 1], key[TLY_UUID_STR_LEN + 1], tp[TLY_TRACEPARENT_LEN + 1];
    tly_uuid_format(&ev->id, id);
    tly_uuid_format(&ev->aggregate_id, key);
    if (parent_tp != NULL && parent_tp[0] != '\0')
        tly_traceparent_child(parent_tp, tp);
    else
        tly_traceparent_new(tp);
    json_t *h = json_pack("{s:s, s:i, s:s}", "type", ev->type, "version", ev->version, "traceparent", tp);
    char *headers = tly_json_dump(h);
    char *payload = tly_envelope_to_json(ev);
    const char *cols[TLY_OUTBOX_NCOLS] = {id, topic, key, payload, headers};
    for (int c = 0; c < TLY_OUTBOX_NCOLS; ++c)
        tly_pg_array_add(&rows->col[c], cols[c]);
    free(payload);
    free(headers);
    json_decref(h);
}

int
tly_outbox_rows_flush(tly_outbox_rows_t *rows, PGconn *conn, char *err, size_t errcap)
{
    int ret = 0;
    if (rows->col[TLY_OUTBOX_ID].n > 0) {
        const char *vals[TLY_OUTBOX_NCOLS];
        for (int c = 0; c < TLY_OUTBOX_NCOLS; ++c)
            vals[c] = tly_pg_array_text(&rows->col[c]);
        /* seq follows the array order (WITH ORDINALITY): the relay publishes each key's events in the order decided.
           The same statement wakes the relay (NOTIFY tally_outbox, delivered at commit; PostgreSQL folds repeats
           within a transaction into one) when it inserted a row: no round trip of its own */
        ret = tly_pgx_send(conn, "insert outbox rows",
                           "WITH ins AS (INSERT INTO outbox (event_id, topic, msg_key, payload, headers) "
                           "SELECT id, topic, msg_key, payload, headers::jsonb FROM unnest($1::uuid[], $2::text[], $3::text[], "
                           "$4::text[], $5::text[]) WITH ORDINALITY AS r(id, topic, msg_key, payload, headers, ord) "
                           "ORDER BY ord ON CONFLICT (event_id) DO NOTHING RETURNING 1) "
                           "SELECT pg_notify('tally_outbox', '') WHERE EXISTS (SELECT 1 FROM ins)",
                           5, vals, NULL, NULL, err, errcap);
    }
    tly_outbox_rows_reset(rows);
    return ret;
}

void
tly_outbox_rows_reset(tly_outbox_rows_t *rows)
{
    for (int c = 0; c < TLY_OUTBOX_NCOLS; ++c)
        tly_pg_array_reset(&rows->col[c]);
}

void
tly_outbox_rows_free(tly_outbox_rows_t *rows)
{
    for (int c = 0; c < TLY_OUTBOX_NCOLS; ++c)
        tly_pg_array_free(&rows->col[c]);
}

int
tly_outbox_insert(PGconn *conn, const char *topic, const char *parent_tp, const tly_envelope_t *ev, char *err, size_t errcap)
{
    tly_outbox_rows_t rows;
    memset(&rows, 0, sizeof(rows));
    tly_outbox_rows_add(&rows, topic, parent_tp, ev);
    int ret = tly_outbox_rows_flush(&rows, conn, err, errcap);
    tly_outbox_rows_free(&rows);
    return ret;
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

/* --- saga ---------------------------------------------------------------- */

#define US_OF(col) "COALESCE((extract(epoch FROM " col ") * 1000000)::bigint, 0)"
#define TS_OF(n) "('epoch'::timestamptz + $" #n "::bigint * interval '1 microsecond')"

int
tly_saga_load(PGconn *conn, const tly_uuid_t *transfer, tly_saga_state_t *out, char *err, size_t errcap)
{
    char id_s[TLY_UUID_STR_LEN + 1];
    tly_uuid_format(transfer, id_s);
    const char *vals[] = {id_s};
    PGresult *res = tly_pgx_query(
        conn, "load saga",
        "SELECT tenant_id, job_id, request_event_id, from_account, to_account, amount, currency, state, "
        "COALESCE(error_code, ''), COALESCE(error_detail, ''), attempt, sends, step_cause_id, " US_OF("step_at") ", " US_OF(
            "deadline_at") ", " US_OF("stuck_at") ", " US_OF("created_at") ", version FROM transfer_sagas WHERE transfer_id = $1 "
                                                                           "FOR UPDATE",
        1, vals, err, errcap);
    if (res == NULL)
        return -1;
    memset(out, 0, sizeof(*out));
    out->transfer_id = *transfer;
    if (PQntuples(res) == 1) {
        out->exists = true;
        bool ok = tly_uuid_parse(PQgetvalue(res, 0, 0), &out->tenant_id) &&
                  (PQgetisnull(res, 0, 1) || tly_uuid_parse(PQgetvalue(res, 0, 1), &out->job_id)) &&
                  tly_uuid_parse(PQgetvalue(res, 0, 2), &out->request_event_id) &&
                  tly_uuid_parse(PQgetvalue(res, 0, 3), &out->from_account) &&
                  tly_uuid_parse(PQgetvalue(res, 0, 4), &out->to_account) &&
                  tly_saga_status_parse(PQgetvalue(res, 0, 7), &out->status) &&
                  (PQgetisnull(res, 0, 12) || tly_uuid_parse(PQgetvalue(res, 0, 12), &out->step_cause_id));
        out->amount = strtoll(PQgetvalue(res, 0, 5), NULL, 10);
        snprintf(out->currency, sizeof(out->currency), "%.3s", PQgetvalue(res, 0, 6));
        snprintf(out->error_code, sizeof(out->error_code), "%s", PQgetvalue(res, 0, 8));
        snprintf(out->error_detail, sizeof(out->error_detail), "%s", PQgetvalue(res, 0, 9));
        out->attempt = atoi(PQgetvalue(res, 0, 10));
        out->sends = atoi(PQgetvalue(res, 0, 11));
        out->step_at_us = strtoll(PQgetvalue(res, 0, 13), NULL, 10);
        out->deadline_us = strtoll(PQgetvalue(res, 0, 14), NULL, 10);
        out->stuck_at_us = strtoll(PQgetvalue(res, 0, 15), NULL, 10);
        out->created_us = strtoll(PQgetvalue(res, 0, 16), NULL, 10);
        out->version = strtoll(PQgetvalue(res, 0, 17), NULL, 10);
        if (!ok) {
            snprintf(err, errcap, "could not load saga: row %s is corrupt", id_s);
            PQclear(res);
            return -1;
        }
    }
    PQclear(res);
    return 0;
}

int
tly_saga_store(PGconn *conn, const tly_saga_state_t *s, char *err, size_t errcap)
{
    char id[TLY_UUID_STR_LEN + 1], tenant[TLY_UUID_STR_LEN + 1], job[TLY_UUID_STR_LEN + 1], req[TLY_UUID_STR_LEN + 1];
    char from[TLY_UUID_STR_LEN + 1], to[TLY_UUID_STR_LEN + 1], cause[TLY_UUID_STR_LEN + 1];
    char amount[24], attempt[16], sends[16], step_at[24], deadline[24], stuck[24], created[24], version[24];
    tly_uuid_format(&s->transfer_id, id);
    tly_uuid_format(&s->tenant_id, tenant);
    tly_uuid_format(&s->job_id, job);
    tly_uuid_format(&s->request_event_id, req);
    tly_uuid_format(&s->from_account, from);
    tly_uuid_format(&s->to_account, to);
    tly_uuid_format(&s->step_cause_id, cause);
    snprintf(amount, sizeof(amount), "%" PRId64, s->amount);
    snprintf(attempt, sizeof(attempt), "%d", s->attempt);
    snprintf(sends, sizeof(sends), "%d", s->sends);
    snprintf(step_at, sizeof(step_at), "%" PRId64, s->step_at_us);
    snprintf(deadline, sizeof(deadline), "%" PRId64, s->deadline_us);
    snprintf(stuck, sizeof(stuck), "%" PRId64, s->stuck_at_us);
    snprintf(created, sizeof(created), "%" PRId64, s->created_us);
    snprintf(version, sizeof(version), "%" PRId64, s->version);
    const char *vals[] = {id,
                          tenant,
                          tly_uuid_is_nil(&s->job_id) ? NULL : job,
                          req,
                          from,
                          to,
                          amount,
                          s->currency,
                          tly_saga_status_name(s->status),
                          s->error_code[0] != '\0' ? s->error_code : NULL,
                          s->error_code[0] != '\0' ? s->error_detail : NULL,
                          attempt,
                          sends,
                          tly_uuid_is_nil(&s->step_cause_id) ? NULL : cause,
                          s->step_at_us != 0 ? step_at : NULL,
                          s->deadline_us != 0 ? deadline : NULL,
                          s->stuck_at_us != 0 ? stuck : NULL,
                          created,
                          version};
    return tly_pgx_exec(conn, "store saga",
                        "INSERT INTO transfer_sagas (transfer_id, tenant_id, job_id, request_event_id, from_account, to_account, "
                        "amount, currency, state, error_code, error_detail, attempt, sends, step_cause_id, step_at, deadline_at, "
                        "stuck_at, created_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, "
                        "$14, " TS_OF(15) ", " TS_OF(16) ", " TS_OF(17) ", " TS_OF(
                            18) ", $19) "
                                "ON CONFLICT (transfer_id) DO UPDATE SET state = EXCLUDED.state, error_code = EXCLUDED.error_code, "
                                "error_detail = EXCLUDED.error_detail, attempt = EXCLUDED.attempt, sends = EXCLUDED.sends, "
                                "step_cause_id = EXCLUDED.step_cause_id, step_at = EXCLUDED.step_at, deadline_at = "
                                "EXCLUDED.deadline_at, "
                                "stuck_at = EXCLUDED.stuck_at, version = EXCLUDED.version, updated_at = now()",
                        19, vals, NULL, err, errcap);
}

static tly_verdict_t
saga_classify(void *ctx, const tly_envelope_t *env)
{
    if (!tly_saga_handles(env->type))
        return TLY_VERDICT_IGNORE;
    return env->version > TLY_SAGA_EVENT_VERSION ? TLY_VERDICT_TOO_NEW : TLY_VERDICT_APPLY;
}

/* Advances the event's saga once (the consumer dedups by event id; saga.c ignores what does not fit the state). */
static int
saga_apply(void *ctx, PGconn *conn, const tly_consumer_msg_t *msg, char *err, size_t errcap)
{
    tly_saga_role_t *r = ctx;
    tly_uuid_t transfer;
    tly_saga_state_t state;
    tly_saga_step_t step;
    int ret = -1;
    if (!tly_saga_transfer_of(&msg->env, &transfer))
        return 0; /* an account event of no transfer (cannot happen for these types): nothing to advance */
    if (tly_saga_load(conn, &transfer, &state, err, errcap) != 0)
        return -1;
    if (tly_saga_on_event(&state, &msg->env, &r->cfg, tly_clock_now_us(), &step) != 0) {
        snprintf(err, errcap, "could not advance the saga with %s", msg->env.type);
        return -1;
    }
    if (step.changed && tly_saga_store(conn, &step.next, err, errcap) != 0)
        goto cleanup;
    for (int i = 0; i < step.nevents; ++i) {
        if (tly_outbox_insert(conn, r->topic, msg->traceparent, &step.events[i], err, errcap) != 0)
            goto cleanup;
    }
    ret = 0;
cleanup:
    tly_saga_step_clear(&step);
    return ret;
}

/*
 * A parked saga event: a TransferRequested that could not start its saga still
 * ends its job (the projector fails it on TransferRejected). A parked outcome
 * leaves its saga where it is; the deadline re-sends the step, whose outcome
 * (deduplicated by the decider) then comes again only if it was never
 * decided: the saga is reported stuck and needs an operator.
 */
static int
saga_park(void *ctx, PGconn *conn, const tly_consumer_msg_t *msg, const char *why, char *err, size_t errcap)
{
    tly_saga_role_t *r = ctx;
    if (strcmp(msg->env.type, "TransferRequested") != 0)
        return 0;
    tly_envelope_t ev;
    tly_envelope_derive(&ev, &msg->env, "TransferRejected", TLY_SAGA_EVENT_VERSION,
                        json_pack("{s:s, s:s}", "code", TLY_CODE_DEAD_LETTERED, "detail", why), NULL);
    int ret = tly_outbox_insert(conn, r->topic, msg->traceparent, &ev, err, errcap);
    tly_envelope_clear(&ev);
    return ret;
}

void
tly_saga_role_init(tly_consumer_handler_t *h, tly_saga_role_t *role, const char *topic, const tly_saga_config_t *cfg)
{
    memset(role, 0, sizeof(*role));
    role->topic = topic;
    role->cfg = *cfg;
    *h = (tly_consumer_handler_t){
        .name = "saga",
        .ctx = role,
        .classify = saga_classify,
        .apply = saga_apply,
        .park = saga_park,
    };
}

/* --- projector ----------------------------------------------------------- */

static tly_verdict_t
projector_classify(void *ctx, const tly_envelope_t *env)
{
    if (!tly_projection_knows(env->type))
        return TLY_VERDICT_IGNORE;
    return env->version > tly_projection_max_version(env->type) ? TLY_VERDICT_TOO_NEW : TLY_VERDICT_APPLY;
}

static int
projector_apply(void *ctx, PGconn *conn, const tly_consumer_msg_t *msg, char *err, size_t errcap)
{
    return tly_projection_apply(conn, &msg->env, TLY_MODEL_ALL, err, errcap);
}

/* The whole batch folded per key and written with one statement per read model (projection.h). */
static int
projector_apply_batch(void *ctx, PGconn *conn, const tly_consumer_msg_t *const *msgs, int n, char *err, size_t errcap)
{
    tly_projection_batch_t *b = tly_projection_batch_create(TLY_MODEL_ALL);
    int ret = -1;
    for (int i = 0; i < n; ++i) {
        int r = tly_projection_batch_add(b, &msgs[i]->env, err, errcap);
        if (r == 1) { /* cannot be folded after what the batch holds: write that first */
            if (tly_projection_batch_flush(b, conn, err, errcap) != 0)
                goto out;
            r = tly_projection_batch_add(b, &msgs[i]->env, err, errcap);
        }
        if (r != 0)
            goto out;
    }
    ret = tly_projection_batch_flush(b, conn, err, errcap);
out:
    tly_projection_batch_destroy(b);
    return ret;
}

static int
projector_park(void *ctx, PGconn *conn, const tly_consumer_msg_t *msg, const char *why, char *err, size_t errcap)
{
    return tly_projection_job_dead_lettered(conn, &msg->env, why, err, errcap);
}

void
tly_projector_role_init(tly_consumer_handler_t *h)
{
    *h = (tly_consumer_handler_t){
        .name = "projector",
        .classify = projector_classify,
        .apply = projector_apply,
        .park = projector_park,
        .apply_batch = projector_apply_batch,
    };
}
