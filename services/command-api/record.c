/*
 * Batched statements: the command records and the acceptances of one loop
 * iteration each go to PostgreSQL as one statement with array parameters
 * (`unnest`), not one statement per command.
 *
 * Under load a loop iteration reads many requests and serves many delivery
 * reports; a statement per command cost the database about as much again in
 * per-statement work (parse-free but still bind, plan, executor start-up and
 * result) as in the row itself. The queues are flushed by a zero-delay
 * timeout, which h2o runs at the end of the iteration that linked it, so a
 * lone request waits for nothing.
 *
 * Records: rows are sorted by (tenant, idempotency key), so two statements
 * that share keys (concurrent retries) take their locks in one order and
 * cannot deadlock. The rows returned are the ones inserted; an op whose row
 * is missing has a key that was seen before and goes on to the claim.
 *
 * Acceptances are recorded after the 202 is sent (the reasoning is in
 * docs/design.md, "A 202 is a promise"): the record exists from before the append,
 * so the job is readable at once, and an acceptance that is lost (a crash, a
 * database outage) leaves a record that a retry with the same key takes over
 * when its lease ends and appends again with the same event id. A failed
 * acceptance batch is retried a few times, a second apart. Queued and
 * in-flight acceptances count as in flight, so SIGTERM waits for them.
 */
#include "internal.h"
#include "tally/log.h"
#include "tally/metrics.h"
#include "tally/pgarray.h"

#include <stdlib.h>
#include <string.h>

#define RECORD_BATCH_MAX 256
#define ACCEPT_BATCH_MAX 512
#define ACCEPT_ATTEMPTS 5
#define ACCEPT_RETRY_MS 1000

typedef struct st_record_batch_t {
    cmd_thread_t *thr;
    size_t n;
    cmd_op_t *ops[];
} record_batch_t;

typedef struct st_accept_batch_t {
    cmd_thread_t *thr;
    cmd_accept_t *entries;
    size_t n;
} accept_batch_t;

static void
schedule(cmd_thread_t *thr)
{
    if (!h2o_timeout_is_linked(&thr->flush_entry))
        h2o_timeout_link(thr->loop, &thr->flush_now, &thr->flush_entry);
}

static void
schedule_accepts(cmd_thread_t *thr)
{
    if (!h2o_timeout_is_linked(&thr->gather_entry) && !h2o_timeout_is_linked(&thr->retry_entry))
        h2o_timeout_link(thr->loop, &thr->accept_gather, &thr->gather_entry);
}

/* ---- records -------------------------------------------------------------- */

static int
cmp_record(const void *a, const void *b)
{
    const cmd_op_t *x = *(cmd_op_t *const *)a, *y = *(cmd_op_t *const *)b;
    int c = memcmp(&x->api.principal.tenant_id, &y->api.principal.tenant_id, sizeof(tly_uuid_t));
    if (c != 0)
        return c;
    if (x->has_idem != y->has_idem)
        return x->has_idem ? -1 : 1;
    return x->has_idem ? strcmp(x->idem_key, y->idem_key) : 0;
}

static void
on_records(void *data, PGresult *res, const char *err)
{
    record_batch_t *b = data;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        const char *why = err != NULL ? err : PQresultErrorMessage(res);
        for (size_t i = 0; i < b->n; ++i)
            cmd_op_record_failed(b->ops[i], why);
        free(b);
        return;
    }
    /* Rows come back in insertion order (the ops' order): match from where the last one was found. */
    bool *inserted = calloc(b->n, sizeof(*inserted));
    if (inserted == NULL)
        abort();
    size_t at = 0;
    for (int r = 0; r < PQntuples(res); ++r) {
        tly_uuid_t id;
        if (!tly_uuid_parse(PQgetvalue(res, r, 0), &id))
            continue;
        for (size_t k = 0; k < b->n; ++k) {
            size_t i = (at + k) % b->n;
            if (memcmp(&b->ops[i]->job_id, &id, sizeof(id)) == 0) {
                inserted[i] = true;
                at = i + 1;
                break;
            }
        }
    }
    for (size_t i = 0; i < b->n; ++i)
        cmd_op_recorded(b->ops[i], inserted[i]);
    free(inserted);
    free(b);
}

static void
add_uuid(tly_pg_array_t *a, const tly_uuid_t *u)
{
    char s[TLY_UUID_STR_LEN + 1];
    tly_uuid_format(u, s);
    tly_pg_array_add(a, s);
}

static void
flush_records(cmd_thread_t *thr)
{
    while (thr->records != NULL) {
        size_t n = thr->nrecords < RECORD_BATCH_MAX ? thr->nrecords : RECORD_BATCH_MAX;
        record_batch_t *b = malloc(sizeof(*b) + n * sizeof(cmd_op_t *));
        if (b == NULL)
            abort();
        b->thr = thr;
        b->n = n;
        for (size_t i = 0; i < n; ++i) {
            b->ops[i] = thr->records;
            thr->records = thr->records->next;
        }
        thr->nrecords -= n;
        if (thr->records == NULL)
            thr->records_tail = &thr->records;
        qsort(b->ops, n, sizeof(b->ops[0]), cmp_record);

        tly_pg_array_t a[7] = {{0}};
        for (size_t i = 0; i < n; ++i) {
            const cmd_op_t *op = b->ops[i];
            add_uuid(&a[0], &op->job_id);
            add_uuid(&a[1], &op->event_id);
            add_uuid(&a[2], &op->api.principal.tenant_id);
            tly_pg_array_add(&a[3], op->has_idem ? op->idem_key : NULL);
            tly_pg_array_add(&a[4], op->hash_hex);
            tly_pg_array_add(&a[5], tly_command_spec(op->cmd.kind)->aggregate_type);
            add_uuid(&a[6], &op->resource_id);
        }
        const char *params[7];
        for (int i = 0; i < 7; ++i)
            params[i] = tly_pg_array_text(&a[i]);
        tly_metrics_command_statement("record", n);
        tly_pgpool_exec(thr->pg, STMT_INSERT, params, on_records, b); /* copies the parameters */
        for (int i = 0; i < 7; ++i)
            tly_pg_array_free(&a[i]);
    }
}

void
cmd_record_enqueue(cmd_op_t *op)
{
    cmd_thread_t *thr = op->thr;
    op->next = NULL;
    *thr->records_tail = op;
    thr->records_tail = &op->next;
    ++thr->nrecords;
    schedule(thr);
}

/* ---- acceptances ------------------------------------------------------------ */

static void
accept_free(cmd_thread_t *thr, cmd_accept_t *e)
{
    free(e->body);
    free(e);
    --thr->inflight;
}

static void
on_accepts(void *data, PGresult *res, const char *err)
{
    accept_batch_t *b = data;
    cmd_thread_t *thr = b->thr;
    bool ok = res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK;
    size_t retried = 0, dropped = 0;
    for (cmd_accept_t *e = b->entries, *next; e != NULL; e = next) {
        next = e->next;
        if (ok || thr->closing || ++e->attempts >= ACCEPT_ATTEMPTS) {
            dropped += ok ? 0 : 1;
            accept_free(thr, e);
            continue;
        }
        e->next = thr->accepts;
        thr->accepts = e;
        ++thr->naccepts;
        ++retried;
    }
    if (!ok) {
        const char *why = err != NULL ? err : PQresultErrorMessage(res);
        if (retried > 0)
            tly_log(TLY_LOG_WARN, "could not record accepted commands; retrying", "error", why, NULL);
        if (dropped > 0)
            tly_log(TLY_LOG_ERROR, "could not record accepted commands; their records stay pending until a retry takes them over",
                    "error", why, NULL);
        if (retried > 0 && !h2o_timeout_is_linked(&thr->retry_entry))
            h2o_timeout_link(thr->loop, &thr->flush_retry, &thr->retry_entry);
    }
    free(b);
}

static int
cmp_accept(const void *a, const void *b)
{
    return memcmp(&(*(cmd_accept_t *const *)a)->job_id, &(*(cmd_accept_t *const *)b)->job_id, sizeof(tly_uuid_t));
}

static void
flush_accepts(cmd_thread_t *thr)
{
    while (thr->accepts != NULL) {
        size_t n = thr->naccepts < ACCEPT_BATCH_MAX ? thr->naccepts : ACCEPT_BATCH_MAX;
        cmd_accept_t **sorted = malloc(n * sizeof(*sorted));
        accept_batch_t *b = calloc(1, sizeof(*b));
        if (sorted == NULL || b == NULL)
            abort();
        for (size_t i = 0; i < n; ++i) {
            sorted[i] = thr->accepts;
            thr->accepts = thr->accepts->next;
        }
        thr->naccepts -= n;
        /* rows locked in job id order by every batch */
        qsort(sorted, n, sizeof(*sorted), cmp_accept);
        tly_pg_array_t a[2] = {{0}};
        b->thr = thr;
        b->n = n;
        for (size_t i = n; i-- > 0;) {
            sorted[i]->next = b->entries;
            b->entries = sorted[i];
        }
        for (cmd_accept_t *e = b->entries; e != NULL; e = e->next) {
            add_uuid(&a[0], &e->job_id);
            tly_pg_array_add(&a[1], e->body);
        }
        free(sorted);
        const char *params[2] = {tly_pg_array_text(&a[0]), tly_pg_array_text(&a[1])};
        tly_metrics_command_statement("accept", n);
        tly_pgpool_exec(thr->pg, STMT_ACCEPT, params, on_accepts, b);
        tly_pg_array_free(&a[0]);
        tly_pg_array_free(&a[1]);
    }
}

void
cmd_accept_enqueue(cmd_thread_t *thr, const tly_uuid_t *job_id, char *body)
{
    cmd_accept_t *e = calloc(1, sizeof(*e));
    if (e == NULL)
        abort();
    e->job_id = *job_id;
    e->body = body;
    e->next = thr->accepts;
    thr->accepts = e;
    ++thr->naccepts;
    ++thr->inflight;
    schedule_accepts(thr);
}

/* ---- the flush -------------------------------------------------------------- */

static void
on_flush(h2o_timeout_entry_t *entry)
{
    cmd_thread_t *thr = H2O_STRUCT_FROM_MEMBER(cmd_thread_t, flush_entry, entry);
    flush_records(thr);
}

static void
on_gathered(h2o_timeout_entry_t *entry)
{
    flush_accepts(H2O_STRUCT_FROM_MEMBER(cmd_thread_t, gather_entry, entry));
}

static void
on_retry(h2o_timeout_entry_t *entry)
{
    flush_accepts(H2O_STRUCT_FROM_MEMBER(cmd_thread_t, retry_entry, entry));
}

void
cmd_records_init(cmd_thread_t *thr)
{
    thr->records_tail = &thr->records;
    h2o_timeout_init(thr->loop, &thr->flush_now, 0);
    h2o_timeout_init(thr->loop, &thr->accept_gather, (uint64_t)thr->cfg->accept_gather_ms);
    h2o_timeout_init(thr->loop, &thr->flush_retry, ACCEPT_RETRY_MS);
    h2o_timeout_init(thr->loop, &thr->reclaim, (uint64_t)thr->cfg->accept_gather_ms + CMD_RECLAIM_SLACK_MS);
    thr->flush_entry.cb = on_flush;
    thr->gather_entry.cb = on_gathered;
    thr->retry_entry.cb = on_retry;
}

void
cmd_records_dispose(cmd_thread_t *thr)
{
    thr->closing = true;
    if (h2o_timeout_is_linked(&thr->flush_entry))
        h2o_timeout_unlink(&thr->flush_entry);
    if (h2o_timeout_is_linked(&thr->retry_entry))
        h2o_timeout_unlink(&thr->retry_entry);
    if (h2o_timeout_is_linked(&thr->gather_entry))
        h2o_timeout_unlink(&thr->gather_entry);
    /* past the grace period: what is still queued is given up */
    while (thr->records != NULL) {
        cmd_op_t *op = thr->records;
        thr->records = op->next;
        cmd_op_record_failed(op, "the command API is shutting down");
    }
    thr->records_tail = &thr->records;
    thr->nrecords = 0;
    if (thr->naccepts > 0)
        tly_log(TLY_LOG_WARN,
                "shutting down with acceptances not recorded; their records stay pending until a retry takes "
                "them over",
                NULL);
    while (thr->accepts != NULL) {
        cmd_accept_t *e = thr->accepts;
        thr->accepts = e->next;
        accept_free(thr, e);
    }
    thr->naccepts = 0;
    /* ops still waiting to look at their key again are past the grace period too: their timers go with the loop */
    while (!h2o_linklist_is_empty(&thr->reclaim._entries))
        h2o_timeout_unlink(H2O_STRUCT_FROM_MEMBER(h2o_timeout_entry_t, _link, thr->reclaim._entries.next));
    h2o_timeout_dispose(thr->loop, &thr->flush_now);
    h2o_timeout_dispose(thr->loop, &thr->accept_gather);
    h2o_timeout_dispose(thr->loop, &thr->reclaim);
    h2o_timeout_dispose(thr->loop, &thr->flush_retry);
}
