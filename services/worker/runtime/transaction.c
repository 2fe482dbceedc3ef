/* The fenced consumer's batch transaction: dedup by event id, the role's effects, dead letters, ignored events. See
 * consumer_internal.h. */
#include "consumer_internal.h"

/* --- the batch transaction ----------------------------------------------- */

static int
dedup_insert(consumer_t *c, const tly_consumer_msg_t *m, bool *fresh, char *err, size_t errcap)
{
    char id[TLY_UUID_STR_LEN + 1];
    long affected = 0;
    tly_uuid_format(&m->env.id, id);
    const char *vals[] = {c->h->name, id};
    if (tly_pgx_exec(c->conn, "record applied event",
                     "INSERT INTO consumer_dedup (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING", 2, vals, &affected,
                     err, errcap) != 0)
        return -1;
    *fresh = affected == 1;
    return 0;
}

static int
dead_letter(consumer_t *c, const tly_consumer_msg_t *m, const char *why, int attempts, char *err, size_t errcap)
{
    char part_s[16], off_s[24], att_s[16], id[TLY_UUID_STR_LEN + 1];
    snprintf(part_s, sizeof(part_s), "%" PRId32, m->rkm->partition);
    snprintf(off_s, sizeof(off_s), "%" PRId64, m->rkm->offset);
    snprintf(att_s, sizeof(att_s), "%d", attempts);
    if (m->parsed)
        tly_uuid_format(&m->env.id, id);
    char *payload = tly_text_or_hex(m->rkm->payload != NULL ? m->rkm->payload : "", m->rkm->len);
    const char *vals[] = {c->h->name, c->cfg->topic, part_s, off_s, m->parsed ? id : NULL, payload, why, att_s};
    int ret = tly_pgx_exec(c->conn, "insert dead letter",
                           "INSERT INTO dead_letters (consumer, topic, partition, \"offset\", event_id, payload, error, attempts) "
                           "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                           8, vals, NULL, err, errcap);
    free(payload);
    if (ret == 0)
        tly_metrics_dead_letter(c->h->name);
    if (ret == 0)
        tly_log(TLY_LOG_ERROR, "event parked in dead_letters", "consumer", c->h->name, "partition", part_s, "offset", off_s,
                "error", why, NULL);
    return ret;
}

/* Inside the batch transaction: a batch that is rolled back and retried logs its events again. */
void
tly_consumer__log_applied(consumer_t *c, const tly_consumer_msg_t *m)
{
    if (!tly_log_enabled(TLY_LOG_INFO))
        return;
    char id[TLY_UUID_STR_LEN + 1], job[TLY_UUID_STR_LEN + 1], part_s[16], off_s[24];
    tly_log_trace_set(m->traceparent);
    tly_uuid_format(&m->env.id, id);
    if (!tly_uuid_is_nil(&m->env.job_id))
        tly_uuid_format(&m->env.job_id, job);
    snprintf(part_s, sizeof(part_s), "%" PRId32, m->rkm->partition);
    snprintf(off_s, sizeof(off_s), "%" PRId64, m->rkm->offset);
    tly_log(TLY_LOG_INFO, "event applied", "consumer", c->h->name, "type", m->env.type, "event_id", id, "job_id",
            tly_uuid_is_nil(&m->env.job_id) ? NULL : job, "partition", part_s, "offset", off_s, NULL);
}

/* Handles one message inside the transaction. Returns 0, or -1 (the event's own failure) with `err`. */
int
tly_consumer__handle(consumer_t *c, tly_consumer_msg_t *m, partition_t *p, bool park, char *err, size_t errcap)
{
    if (!m->parsed)
        return dead_letter(c, m, m->parse_error, 1, err, errcap);
    switch (c->h->classify(c->h->ctx, &m->env)) {
    case TLY_VERDICT_IGNORE:
        return 0;
    case TLY_VERDICT_TOO_NEW:
        p->stop_pending = true;
        p->too_new_offset = m->rkm->offset;
        p->too_new_version = m->env.version;
        memcpy(p->too_new_type, m->env.type, sizeof(p->too_new_type));
        return 1; /* do not advance */
    case TLY_VERDICT_APPLY:
        break;
    }
    bool fresh = c->h->idempotent;
    if (!fresh && dedup_insert(c, m, &fresh, err, errcap) != 0)
        return -1;
    if (!fresh)
        return 0;
    if (park) {
        if (c->h->park != NULL && c->h->park(c->h->ctx, c->conn, m, c->event_error, err, errcap) != 0)
            return -1;
        return dead_letter(c, m, c->event_error, c->cfg->max_event_tries, err, errcap);
    }
    int r = c->h->apply(c->h->ctx, c->conn, m, err, errcap);
    if (r == 0)
        tly_consumer__log_applied(c, m);
    return r;
}

/* Resets the transaction's per-partition state and opens the transaction. */
static bool
tx_start(consumer_t *c, char *err, size_t errcap)
{
    tly_pgx_reset_last();
    for (int i = 0; i < c->nparts; ++i) {
        c->parts[i].touched = c->parts[i].stop_pending = c->parts[i].fence_pending = false;
        c->parts[i].staged_next = c->parts[i].next_offset;
    }
    if (!tly_consumer__ensure_pg(c))
        return false;
    tly_pgx_begin(c->conn); /* sent with the first statement (pgx.c) */
    if (c->h->begin != NULL)
        c->h->begin(c->h->ctx);
    return true;
}

/* Moves the positions and commits. */
static tx_result_t
tx_finish(consumer_t *c, char *err, size_t errcap)
{
    tx_result_t res = tly_consumer__update_positions(c, err, errcap);
    if (res == TX_OK && c->h->end != NULL && c->h->end(c->h->ctx, c->conn, err, errcap) != 0)
        res = TX_TRANSIENT;
    if (res == TX_OK && tly_pgx_end(c->conn, true, err, errcap) != 0)
        res = TX_TRANSIENT;
    if (res == TX_TRANSIENT && tly_pgx_last_deferred() && !tly_pgx_last_transient(c->conn))
        res = TX_BATCH_FAILED; /* a deferred write of the set-based batch failed for its own reason */
    if (res != TX_OK) {
        tly_consumer__rollback(c);
        if (res == TX_FENCED)
            tly_consumer__on_fenced(c);
        return res;
    }
    tly_metrics_consumer_transaction(c->h->name);
    tly_consumer__after_commit(c);
    c->unsaved_since_us = 0;
    return TX_OK;
}

/* True when `m` is to be handled in this transaction (live partition, not behind what is staged). */
static bool
in_play(consumer_t *c, const tly_consumer_msg_t *m, partition_t **pp)
{
    partition_t *p = tly_consumer__part_of(c, m->rkm->partition);
    *pp = p;
    return p != NULL && p->assigned && !p->stopped && !p->stop_pending && m->rkm->offset >= p->staged_next;
}

/* Applies msgs[start, end) in one transaction, one event at a time; `park` is the index to dead-letter instead of apply, or -1. */
tx_result_t
tly_consumer__run_tx(consumer_t *c, tly_consumer_msg_t *msgs, int start, int end, int park, int *fail_at, char *err, size_t errcap)
{
    if (!tx_start(c, err, errcap))
        return TX_TRANSIENT;
    for (int i = start; i < end; ++i) {
        tly_consumer_msg_t *m = &msgs[i];
        partition_t *p;
        if (!in_play(c, m, &p))
            continue;
        tly_log_trace_set(m->traceparent); /* every line about this event carries its trace id */
        int r = tly_consumer__handle(c, m, p, i == park, err, errcap);
        if (r < 0) {
            tly_consumer__rollback(c);
            *fail_at = i;
            return tly_pgx_last_transient(c->conn) ? TX_TRANSIENT : TX_EVENT_ERROR;
        }
        if (r == 0) {
            p->staged_next = m->rkm->offset + 1;
            p->touched = true;
        }
    }
    return tx_finish(c, err, errcap);
}

static int
cmp_msg_id(const void *a, const void *b)
{
    const tly_consumer_msg_t *x = *(tly_consumer_msg_t *const *)a, *y = *(tly_consumer_msg_t *const *)b;
    int d = memcmp(&x->env.id, &y->env.id, sizeof(x->env.id));
    return d != 0 ? d : (x < y ? -1 : x > y); /* equal ids: log order (the batch array's order) */
}

/*
 * Records the ids of cand[0, n) (log order) in consumer_dedup with one
 * statement and leaves in c->fresh those applied for the first time (an id
 * twice in the batch: its first copy). Returns how many, or -1.
 */
static int
dedup_batch(consumer_t *c, tly_consumer_msg_t *msgs, int n, char *err, size_t errcap)
{
    tly_pgx_barray_t *ids = &c->ids;
    memcpy(c->sorted, c->cand, sizeof(*c->sorted) * (size_t)n);
    qsort(c->sorted, (size_t)n, sizeof(*c->sorted), cmp_msg_id);
    tly_pgx_barray_reset(ids, TLY_PGX_UUID);
    for (int i = 0; i < n; ++i) {
        c->is_fresh[c->cand[i] - msgs] = 0;
        if (i > 0 && memcmp(&c->sorted[i]->env.id, &c->sorted[i - 1]->env.id, sizeof(c->sorted[i]->env.id)) == 0)
            continue;
        tly_pgx_barray_uuid(ids, c->sorted[i]->env.id.b);
    }
    int lens[2] = {0, 0}, formats[2] = {0, 1}; /* the ids in binary (pgx.h) */
    const char *vals[] = {c->h->name, tly_pgx_barray_bytes(ids, &lens[1])};
    PGresult *res = tly_pgx_query_params(c->conn, "record applied events",
                                         "INSERT INTO consumer_dedup (consumer, event_id) SELECT $1, unnest($2::uuid[]) "
                                         "ON CONFLICT DO NOTHING RETURNING event_id",
                                         2, vals, lens, formats, err, errcap);
    if (res == NULL)
        return -1;
    for (int k = 0; k < PQntuples(res); ++k) {
        tly_uuid_t key;
        if (!tly_uuid_parse(PQgetvalue(res, k, 0), &key))
            continue;
        /* the first copy: the lowest index among equal ids */
        int lo = 0, hi = n;
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (memcmp(&c->sorted[mid]->env.id, &key, sizeof(key)) < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < n && memcmp(&c->sorted[lo]->env.id, &key, sizeof(key)) == 0)
            c->is_fresh[c->sorted[lo] - msgs] = 1;
    }
    PQclear(res);
    int nfresh = 0;
    for (int i = 0; i < n; ++i)
        if (c->is_fresh[c->cand[i] - msgs])
            c->fresh[nfresh++] = c->cand[i];
    return nfresh;
}

/*
 * The set-based path: msgs[start, end) in one transaction with one dedup
 * statement and the handler's apply_batch. Anything that is not transient
 * gives TX_BATCH_FAILED (rolled back): the caller then goes one event at a
 * time, which finds the failing event and isolates it.
 */
tx_result_t
tly_consumer__run_tx_batch(consumer_t *c, tly_consumer_msg_t *msgs, int start, int end, char *err, size_t errcap)
{
    int ncand = 0, nfresh = 0;
    if (!tx_start(c, err, errcap))
        return TX_TRANSIENT;
    for (int i = start; i < end; ++i) {
        tly_consumer_msg_t *m = &msgs[i];
        partition_t *p;
        if (!in_play(c, m, &p))
            continue;
        tly_verdict_t v = m->parsed ? c->h->classify(c->h->ctx, &m->env) : TLY_VERDICT_APPLY;
        if (!m->parsed || v == TLY_VERDICT_TOO_NEW) {
            tly_log_trace_set(m->traceparent);
            if (tly_consumer__handle(c, m, p, false, err, errcap) < 0) /* parks it, or stops the partition at it */
                goto failed;
            if (p->stop_pending)
                continue;
        } else if (v == TLY_VERDICT_APPLY) {
            c->cand[ncand++] = m;
        }
        p->staged_next = m->rkm->offset + 1;
        p->touched = true;
    }
    int64_t t_dedup = tly_clock_mono_us();
    if (c->h->idempotent) {
        memcpy(c->fresh, c->cand, sizeof(*c->fresh) * (size_t)ncand);
        nfresh = ncand;
    } else if (ncand > 0 && (nfresh = dedup_batch(c, msgs, ncand, err, errcap)) < 0) {
        goto failed;
    }
    int64_t t_apply = tly_clock_mono_us();
    if (nfresh > 0) {
        /* the batch's writes go out without waiting for each other (pgx.c), and are read with the positions' update in
           tx_finish: a failure of one of them is the batch's (TX_BATCH_FAILED there) */
        tly_pgx_defer(c->conn);
        int r = c->h->apply_batch(c->h->ctx, c->conn, (const tly_consumer_msg_t *const *)c->fresh, nfresh, err, errcap);
        tly_pgx_defer(NULL);
        if (r != 0)
            goto failed;
    }
    int64_t t_log = tly_clock_mono_us();
    for (int i = 0; i < nfresh; ++i)
        tly_consumer__log_applied(c, c->fresh[i]);
    tly_log_trace_set(NULL);
    if (tly_log_enabled(TLY_LOG_DEBUG)) { /* where a batch's time goes, without a profiler */
        char counts[48], times[80];
        snprintf(counts, sizeof(counts), "%d/%d/%d", end - start, ncand, nfresh);
        snprintf(times, sizeof(times), "%lld/%lld/%lld", (long long)(t_apply - t_dedup), (long long)(t_log - t_apply),
                 (long long)(tly_clock_mono_us() - t_log));
        tly_log(TLY_LOG_DEBUG, "batch applied", "consumer", c->h->name, "gathered/to_apply/new", counts, "dedup/apply/log_us",
                times, NULL);
    }
    return tx_finish(c, err, errcap);
failed:
    tly_consumer__rollback(c);
    return tly_pgx_last_transient(c->conn) ? TX_TRANSIENT : TX_BATCH_FAILED;
}

/* The handler's word that a batch of events it would apply writes nothing (handler->nothing_to_do); false when unsure. */
static bool
nothing_to_do(consumer_t *c, tly_consumer_msg_t *msgs, int n)
{
    char err[512];
    bool nothing = false;
    if (c->h->nothing_to_do == NULL)
        return false;
    if (c->h->nothing_to_do(c->h->ctx, c->conn, msgs, n, &nothing, err, sizeof(err)) != 0) {
        tly_log(TLY_LOG_DEBUG, "could not tell whether a batch has work; running its transaction", "consumer", c->h->name, "error",
                err, NULL);
        return false;
    }
    return nothing;
}

/*
 * A batch of nothing but events this handler ignores (the saga's share of a
 * deposit workload, the decider's of outcomes), or of events it would apply
 * without writing anything (the webhooks role's, for tenants without an
 * endpoint), needs no transaction: nothing is written but the position, and
 * a position left behind such events is harmless (after a crash or a
 * rebalance they are read and passed over again). So the position only
 * moves in memory here, and is written with the next transaction, or by
 * flush_unsaved within UNSAVED_MAX_US. Returns false, and changes nothing,
 * when any event of the batch has work to do.
 */
bool
tly_consumer__skip_ignored(consumer_t *c, tly_consumer_msg_t *msgs, int n)
{
    bool all_ignored = true;
    for (int i = 0; i < n; ++i) {
        if (!msgs[i].parsed)
            return false; /* parked in dead_letters */
        tly_verdict_t v = c->h->classify(c->h->ctx, &msgs[i].env);
        if (v == TLY_VERDICT_TOO_NEW)
            return false;
        all_ignored = all_ignored && v == TLY_VERDICT_IGNORE;
    }
    if (!all_ignored && !nothing_to_do(c, msgs, n))
        return false;
    for (int i = 0; i < n; ++i) {
        partition_t *p = tly_consumer__part_of(c, msgs[i].rkm->partition);
        if (p == NULL || !p->assigned || p->stopped || msgs[i].rkm->offset < p->next_offset)
            continue;
        tly_metrics_events_applied(c->h->name, (uint64_t)(msgs[i].rkm->offset + 1 - p->next_offset));
        p->next_offset = msgs[i].rkm->offset + 1;
        p->unsaved = true;
    }
    if (c->unsaved_since_us == 0)
        c->unsaved_since_us = tly_clock_mono_us();
    return true;
}

/* Writes the positions that moved in memory only, once they are UNSAVED_MAX_US old (or `now`), in a transaction of their own. */
void
tly_consumer__flush_unsaved(consumer_t *c, bool now)
{
    char err[512];
    if (c->unsaved_since_us == 0 || (!now && tly_clock_mono_us() - c->unsaved_since_us < UNSAVED_MAX_US))
        return;
    if (tx_start(c, err, sizeof(err)) && tx_finish(c, err, sizeof(err)) == TX_OK)
        return;
    tly_log(TLY_LOG_DEBUG, "could not write positions past ignored events; next batch will", "consumer", c->h->name, "error", err,
            NULL);
}
