/* The webhook sender: recording attempts, rescheduling, an endpoint's health. See webhook_sender_internal.h. */
#include "webhook_sender_internal.h"

/* --- recording attempts ---------------------------------------------------- */

typedef struct st_outcome_t {
    bool ok, gone, final;
    int64_t delay_us;
} outcome_t;

static outcome_t
judge(sender_t *s, const flight_t *f)
{
    outcome_t o = {.ok = f->status >= 200 && f->status <= 299 && f->error[0] == '\0'};
    if (o.ok)
        return o;
    o.gone = f->status == 410;
    o.delay_us = tly_webhook_retry_delay_us(f->attempt, tly_webhook_sender__rnd01(s), s->cfg->time_scale);
    if (o.delay_us >= 0 && (f->status == 429 || f->status == 503) && f->has_retry_after && f->retry_after_us > o.delay_us)
        o.delay_us = f->retry_after_us; /* never earlier than the receiver asked */
    o.final = o.gone || o.delay_us < 0;
    return o;
}

/* A growing PostgreSQL array literal: {"a","b",NULL}. */
typedef struct st_arr_t {
    char *p;
    size_t n, cap;
} arr_t;

static void
arr_put(arr_t *a, const char *s, size_t len)
{
    if (a->n + len + 3 > a->cap) {
        a->cap = (a->n + len + 3) * 2;
        a->p = realloc(a->p, a->cap);
        if (a->p == NULL)
            abort();
    }
    memcpy(a->p + a->n, s, len);
    a->n += len;
    a->p[a->n] = '\0';
}

/* Appends one element (NULL: SQL NULL), quoted and escaped. */
static void
arr_add(arr_t *a, const char *v)
{
    arr_put(a, a->n == 0 ? "{" : ",", 1);
    if (v == NULL) {
        arr_put(a, "NULL", 4);
        return;
    }
    arr_put(a, "\"", 1);
    for (const char *c = v; *c != '\0'; ++c) {
        if (*c == '"' || *c == '\\')
            arr_put(a, "\\", 1);
        arr_put(a, c, 1);
    }
    arr_put(a, "\"", 1);
}

static const char *
arr_done(arr_t *a)
{
    arr_put(a, a->n == 0 ? "{}" : "}", a->n == 0 ? 2 : 1);
    return a->p;
}

/*
 * Records every attempt of the batch with one statement: each delivery's new
 * state WHERE its lease is still ours, and an attempt row for each one that
 * matched. `recorded[i]` tells which (a lost lease records nothing).
 */
static int
record_attempts(sender_t *s, const outcome_t *o, bool *recorded, char *err, size_t errcap)
{
    arr_t a[9];
    char num[32];
    memset(a, 0, sizeof(a));
    for (int i = 0; i < s->ndone; ++i) {
        const flight_t *f = s->done[i];
        arr_add(&a[0], f->id);
        arr_add(&a[1], f->lease);
        arr_add(&a[2], o[i].ok ? "succeeded" : o[i].final ? "failed" : "pending");
        snprintf(num, sizeof(num), "%" PRId64, o[i].delay_us < 0 ? 0 : o[i].delay_us);
        arr_add(&a[3], num);
        snprintf(num, sizeof(num), "%ld", f->status);
        arr_add(&a[4], f->status > 0 ? num : NULL);
        arr_add(&a[5], f->error[0] != '\0' ? f->error : NULL);
        snprintf(num, sizeof(num), "%d", f->attempt);
        arr_add(&a[6], num);
        snprintf(num, sizeof(num), "%" PRId64, f->started_us);
        arr_add(&a[7], num);
        snprintf(num, sizeof(num), "%" PRId64, f->latency_ms);
        arr_add(&a[8], num);
    }
    const char *vals[9];
    for (int k = 0; k < 9; ++k)
        vals[k] = arr_done(&a[k]);
    PGresult *res = tly_pgx_query(
        s->conn, "record webhook attempts",
        "WITH r AS (SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bigint[], $5::int[], $6::text[], $7::int[], "
        "  $8::bigint[], $9::int[]) AS r(id, lease, status, delay_us, code, error, attempt, started_us, latency_ms)), "
        "u AS (UPDATE webhook_deliveries d SET status = r.status, attempts = d.attempts + 1, "
        "  next_attempt_at = CASE WHEN r.status = 'pending' THEN now() + r.delay_us * interval '1 microsecond' END, "
        "  last_status_code = r.code, last_error = r.error, updated_at = now() FROM r "
        "  WHERE d.id = r.id AND d.status = 'pending' AND d.next_attempt_at = 'epoch'::timestamptz + r.lease * interval "
        "'1 microsecond' RETURNING d.id) "
        "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, status_code, latency_ms, error) "
        "SELECT r.id, r.attempt, 'epoch'::timestamptz + r.started_us * interval '1 microsecond', r.code, r.latency_ms, r.error "
        "FROM r JOIN u ON u.id = r.id ON CONFLICT DO NOTHING RETURNING delivery_id",
        9, vals, err, errcap);
    for (int k = 0; k < 9; ++k)
        free(a[k].p);
    if (res == NULL)
        return -1;
    for (int i = 0; i < s->ndone; ++i) {
        recorded[i] = false;
        for (int r = 0; r < PQntuples(res) && !recorded[i]; ++r)
            recorded[i] = strcmp(PQgetvalue(res, r, 0), s->done[i]->id) == 0;
    }
    PQclear(res);
    return 0;
}

/* Endpoints that answered 2xx are healthy again: one statement. */
static int
mark_healthy(sender_t *s, const outcome_t *o, const bool *recorded, char *err, size_t errcap)
{
    arr_t ids;
    memset(&ids, 0, sizeof(ids));
    for (int i = 0; i < s->ndone; ++i)
        if (o[i].ok && recorded[i] && s->done[i]->was_failing)
            arr_add(&ids, s->done[i]->endpoint); /* repeats are harmless */
    if (ids.n == 0)
        return 0;
    const char *vals[] = {arr_done(&ids)};
    int ret = tly_pgx_exec(s->conn, "mark webhook endpoints healthy",
                           "UPDATE webhook_endpoints SET failing_since = NULL, version = version + 1, updated_at = now() "
                           "WHERE id = ANY($1::uuid[]) AND failing_since IS NOT NULL",
                           1, vals, NULL, err, errcap);
    free(ids.p);
    return ret;
}

/* A failed attempt: 410 disables the endpoint; otherwise it is failing since then, and disabled once that is too long. */
static int
mark_failing(sender_t *s, const flight_t *f, const outcome_t *o, bool *disabled, char *err, size_t errcap)
{
    char started_s[24], window_s[24];
    *disabled = false;
    if (o->gone)
        return tly_webhook_sender__disable_endpoint(s, f->endpoint, "gone", disabled, err, errcap);
    snprintf(started_s, sizeof(started_s), "%" PRId64, f->started_us);
    snprintf(window_s, sizeof(window_s), "%" PRId64, s->window_ms);
    const char *vals[] = {f->endpoint, started_s, window_s};
    PGresult *res = tly_pgx_query(s->conn, "mark webhook endpoint failing",
                                  "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, " TS_OF(
                                      2) "), "
                                         /* the query API's ETag is the version: a change readers see bumps it */
                                         "version = version + (failing_since IS NULL)::int, "
                                         "updated_at = CASE WHEN failing_since IS NULL THEN now() ELSE updated_at END "
                                         "WHERE id = $1 AND enabled AND deleted_at IS NULL AND (failing_since IS NULL OR "
                                         "failing_since <= now() - $3::bigint * interval '1 millisecond') "
                                         "RETURNING failing_since <= now() - $3::bigint * interval '1 millisecond'",
                                  3, vals, err, errcap);
    if (res == NULL)
        return -1;
    bool too_long = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return too_long ? tly_webhook_sender__disable_endpoint(s, f->endpoint, "failing", disabled, err, errcap) : 0;
}

static int
by_endpoint(const void *a, const void *b)
{
    return strcmp((*(flight_t *const *)a)->endpoint, (*(flight_t *const *)b)->endpoint);
}

static void
count(sender_t *s, const flight_t *f, const outcome_t *o)
{
    const char *result = f->status >= 200 && f->status <= 299   ? "2xx"
                         : f->status >= 300 && f->status <= 399 ? "3xx"
                         : f->status >= 400 && f->status <= 499 ? "4xx"
                         : f->status >= 500                     ? "5xx"
                         : f->guard.refused                     ? "refused"
                         : strncmp(f->error, "timeout", 7) == 0 ? "timeout"
                                                                : "error";
    tly_counter_add(tly_metric_s1(s->m_attempts, result), 1);
    if (f->status > 0 || !f->guard.refused)
        tly_histogram_observe(tly_metric_s0(s->m_latency), (double)f->latency_ms / 1000.0);
    if (o->ok || o->final)
        tly_counter_add(tly_metric_s1(s->m_deliveries, o->ok ? "succeeded" : o->gone ? "gone" : "failed"), 1);
}

/*
 * Records every finished attempt in one transaction (three statements when
 * all succeeded), endpoints in order (two workers touching the same
 * endpoints lock them in the same order). Kept for a later try when
 * PostgreSQL fails; the attempts' leases keep other workers away meanwhile.
 */
int
tly_webhook_sender__record_done(sender_t *s, char *err, size_t errcap)
{
    outcome_t *o = calloc((size_t)s->ndone, sizeof(*o));
    bool *disabled = calloc((size_t)s->ndone, sizeof(bool)), *recorded = calloc((size_t)s->ndone, sizeof(bool));
    if (o == NULL || disabled == NULL || recorded == NULL)
        abort();
    qsort(s->done, (size_t)s->ndone, sizeof(*s->done), by_endpoint);
    for (int i = 0; i < s->ndone; ++i)
        o[i] = judge(s, s->done[i]);
    /* all succeeded at endpoints that were healthy: the one statement is the transaction */
    bool simple = true;
    for (int i = 0; i < s->ndone && simple; ++i)
        simple = o[i].ok && !s->done[i]->was_failing;
    int ret = -1;
    tly_pgx_reset_last();
    if ((!simple && tly_pg_exec(s->conn, "BEGIN", err, errcap) != 0) || record_attempts(s, o, recorded, err, errcap) != 0 ||
        mark_healthy(s, o, recorded, err, errcap) != 0)
        goto cleanup;
    for (int i = 0; i < s->ndone; ++i) {
        if (!recorded[i]) {
            tly_log(TLY_LOG_WARN, "webhook attempt not recorded: its lease ended or the delivery was reset meanwhile", "consumer",
                    "webhook-sender", "delivery_id", s->done[i]->id, NULL);
            continue;
        }
        if (!o[i].ok && mark_failing(s, s->done[i], &o[i], &disabled[i], err, errcap) != 0)
            goto cleanup;
    }
    if (!simple && tly_pg_exec(s->conn, "COMMIT", err, errcap) != 0)
        goto cleanup;
    int64_t now = tly_clock_mono_us();
    for (int i = 0; i < s->ndone; ++i) {
        if (!o[i].ok && !o[i].final && now + o[i].delay_us < s->next_claim_mono)
            s->next_claim_mono = now + o[i].delay_us; /* our own retry: we know when it is due */
        count(s, s->done[i], &o[i]);
        if (disabled[i])
            tly_webhook_sender__log_disabled(s->done[i]->endpoint, o[i].gone ? "gone" : "failing");
        tly_webhook_sender__flight_free(s->done[i]);
    }
    s->ndone = 0;
    ret = 0;
cleanup:
    if (ret != 0)
        tly_webhook_sender__rollback(s);
    free(o);
    free(disabled);
    free(recorded);
    return ret;
}
