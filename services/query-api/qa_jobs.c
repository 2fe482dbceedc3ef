/*
 * GET /v1/jobs/{id}, and its long-poll: Prefer: wait=N (N ≤ 30).
 *
 * A waiting request holds no thread and no database connection: it is an
 * entry in this thread's map (job id → waiting requests) and in the h2o
 * timeout list of its N seconds. One LISTEN connection per thread receives
 * the projector's `NOTIFY tally_jobs, '<job id>'`; a notification re-reads
 * the job for each of its waiters (one pooled query each), and a terminal job
 * is answered at once. The waiter is linked *before* the first read, so a
 * notification that arrives while that read is in flight is not lost (it
 * marks the waiter dirty and the job is read again). When the LISTEN
 * connection (re)starts, every waiter is re-read, since notifications sent
 * while it was down are gone. When N seconds pass the job is read a last time
 * and answered as it is. At shutdown every waiter is answered at once.
 */
#include "query_internal.h"
#include "tally/http.h"
#include "tally/ledger/job.h"
#include "tally/server.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TICK_MS 250

/*
 * The tenant quota of concurrent long-polls (tenants.max_long_polls, carried
 * by the key cache), counted for this process across its threads. Over it,
 * 429 with Retry-After: unlike a stored-object quota, a place frees itself
 * as soon as one of the tenant's waits ends.
 */
#define TENANT_BUCKETS 1024

typedef struct st_tenant_waits_t {
    struct st_tenant_waits_t *next;
    tly_uuid_t tenant;
    int count;
} tenant_waits_t;

static tenant_waits_t *tenant_waits[TENANT_BUCKETS];
static pthread_mutex_t tenant_waits_lock = PTHREAD_MUTEX_INITIALIZER;

static tenant_waits_t **
tenant_slot(const tly_uuid_t *t)
{
    tenant_waits_t **p = &tenant_waits[((size_t)t->b[14] << 8 | t->b[15]) % TENANT_BUCKETS];
    while (*p != NULL && memcmp((*p)->tenant.b, t->b, sizeof(t->b)) != 0)
        p = &(*p)->next;
    return p;
}

/* Takes one of the tenant's places; false when all `max` are taken. */
static bool
tenant_wait_take(const tly_uuid_t *t, int max)
{
    bool ok = false;
    pthread_mutex_lock(&tenant_waits_lock);
    tenant_waits_t **p = tenant_slot(t);
    if (*p == NULL && max > 0) {
        if ((*p = calloc(1, sizeof(**p))) == NULL)
            abort();
        (*p)->tenant = *t;
    }
    if (*p != NULL && (*p)->count < max) {
        ++(*p)->count;
        ok = true;
    }
    pthread_mutex_unlock(&tenant_waits_lock);
    return ok;
}

static void
tenant_wait_give(const tly_uuid_t *t)
{
    pthread_mutex_lock(&tenant_waits_lock);
    tenant_waits_t **p = tenant_slot(t), *e = *p;
    if (e != NULL && --e->count == 0) {
        *p = e->next;
        free(e);
    }
    pthread_mutex_unlock(&tenant_waits_lock);
}

static void job_read(query_op_t *op);

static size_t
bucket_of(const tly_uuid_t *id)
{
    return ((size_t)id->b[14] << 8 | id->b[15]) % QA_WAITER_BUCKETS;
}

static void
waiter_link(query_op_t *op)
{
    query_thread_t *thr = op->thr;
    query_op_t **head = &thr->waiters[bucket_of(&op->id)];
    op->next_waiter = *head;
    *head = op;
    op->waiting = true;
    ++thr->nwaiters;
    h2o_timeout_link(thr->loop, &thr->wait_timeouts[op->wait_s], &op->timer);
}

static void
waiter_unlink(query_op_t *op)
{
    query_thread_t *thr = op->thr;
    if (!op->waiting)
        return;
    for (query_op_t **p = &thr->waiters[bucket_of(&op->id)]; *p != NULL; p = &(*p)->next_waiter) {
        if (*p == op) {
            *p = op->next_waiter;
            break;
        }
    }
    if (h2o_timeout_is_linked(&op->timer))
        h2o_timeout_unlink(&op->timer);
    op->waiting = false;
    --thr->nwaiters;
    tenant_wait_give(&op->api.principal.tenant_id);
}

static void
waiter_finish(query_op_t *op)
{
    waiter_unlink(op);
    qa_op_destroy(op);
}

/* Something may have changed: read the job now, or again after the read in flight. */
static void
waiter_kick(query_op_t *op)
{
    if (op->querying)
        op->dirty = true;
    else
        job_read(op);
}

static void
answer(query_op_t *op, PGresult *res)
{
    char etag[48], applied[16];
    if (op->api.req == NULL)
        return;
    if (op->wait_s >= 0) {
        snprintf(applied, sizeof(applied), "wait=%d", op->wait_s);
        tly_http_add_header(op->api.req, "preference-applied", applied);
    }
    snprintf(etag, sizeof(etag), "\"job-v%s\"", PQgetvalue(res, 0, 1));
    qa_send_json(op, PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0), etag);
}

static void
on_job(void *data, PGresult *res, const char *err)
{
    query_op_t *op = data;
    op->querying = false;
    if (op->api.req == NULL)
        goto done; /* the client went away while we read */
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        qa_read_failed(op, res, err);
        goto done;
    }
    if (PQntuples(res) == 0) {
        tly_api_problem(&op->api, 404, "not_found", "no such job", NULL);
        goto done;
    }
    if (!op->waiting || op->expired || tly_job_name_is_terminal(PQgetvalue(res, 0, 2))) {
        answer(op, res);
        goto done;
    }
    if (op->dirty) {
        op->dirty = false;
        job_read(op);
    }
    return;
done:
    waiter_finish(op);
}

static void
job_read(query_op_t *op)
{
    const char *params[2] = {op->id_text, op->tenant};
    op->querying = true;
    tly_pgpool_exec(op->thr->pg, op->expand_resource ? STMT_JOB_EXPANDED : STMT_JOB, params, on_job, op);
}

static void
on_wait_expired(h2o_timeout_entry_t *entry)
{
    query_op_t *op = H2O_STRUCT_FROM_MEMBER(query_op_t, timer, entry);
    op->expired = true;
    waiter_kick(op);
}

/* The request was disposed (client gone) while waiting. */
static void
on_disposed(void *p)
{
    query_op_t *op = *(query_op_t **)p;
    if (op == NULL)
        return;
    op->dispose_guard = NULL;
    if (op->querying)
        return; /* on_job sees api.req == NULL and finishes it */
    waiter_finish(op);
}

void
qa_job_start(query_op_t *op)
{
    h2o_req_t *req = op->api.req;
    h2o_iovec_t prefer = tly_http_header(req, "prefer");
    op->wait_s = prefer.base != NULL ? qa_prefer_wait(prefer.base, prefer.len) : -1;
    if (op->wait_s > QA_WAIT_MAX)
        op->wait_s = QA_WAIT_MAX;
    if (op->wait_s > 0 && !tenant_wait_take(&op->api.principal.tenant_id, op->api.principal.max_long_polls)) {
        tly_http_add_header(req, "retry-after", "1");
        tly_api_problem(&op->api, 429, "too_many_long_polls",
                        "this tenant holds as many Prefer: wait requests as its quota allows; retry, or read without waiting",
                        NULL);
        qa_op_destroy(op);
        return;
    }
    if (op->wait_s > 0 && !tly_api_long_poll_or_reply(&op->api)) { /* the key's long-poll slots, apart from the tenant's quota */
        tenant_wait_give(&op->api.principal.tenant_id);
        qa_op_destroy(op);
        return;
    }
    if (op->wait_s > 0) {
        op->dispose_guard = h2o_mem_alloc_shared(&req->pool, sizeof(*op->dispose_guard), on_disposed);
        *op->dispose_guard = op;
        op->timer.cb = on_wait_expired;
        waiter_link(op);
    }
    job_read(op);
}

/* Calls `fn` on every waiter; `fn` may finish the one it is given. */
static void
each_waiter(query_thread_t *thr, void (*fn)(query_op_t *))
{
    for (size_t b = 0; b < QA_WAITER_BUCKETS; ++b) {
        query_op_t *next;
        for (query_op_t *op = thr->waiters[b]; op != NULL; op = next) {
            next = op->next_waiter;
            fn(op);
        }
    }
}

static void
on_notify(void *data, const char *payload)
{
    query_thread_t *thr = data;
    tly_uuid_t id;
    query_op_t *next;
    if (!tly_uuid_parse(payload, &id))
        return;
    for (query_op_t *op = thr->waiters[bucket_of(&id)]; op != NULL; op = next) {
        next = op->next_waiter;
        if (memcmp(op->id.b, id.b, sizeof(id.b)) == 0)
            waiter_kick(op);
    }
}

static void
on_listening(void *data)
{
    each_waiter(data, waiter_kick);
}

static void
expire(query_op_t *op)
{
    op->expired = true;
    waiter_kick(op);
}

static void
on_tick(h2o_timeout_entry_t *entry)
{
    query_thread_t *thr = H2O_STRUCT_FROM_MEMBER(query_thread_t, tick, entry);
    if (tly_server_stopping())
        each_waiter(thr, expire);
    h2o_timeout_link(thr->loop, &thr->tick_timeout, &thr->tick);
}

void
qa_jobs_thread_init(query_thread_t *thr, const char *dsn)
{
    for (int s = 0; s <= QA_WAIT_MAX; ++s)
        h2o_timeout_init(thr->loop, &thr->wait_timeouts[s], (uint64_t)s * 1000);
    h2o_timeout_init(thr->loop, &thr->tick_timeout, TICK_MS);
    thr->tick.cb = on_tick;
    h2o_timeout_link(thr->loop, &thr->tick_timeout, &thr->tick);
    thr->listen = tly_pglisten_create(thr->loop, dsn, QA_JOBS_CHANNEL, on_notify, on_listening, thr);
}

static void
drop(query_op_t *op)
{
    if (!op->querying)
        waiter_finish(op);
}

void
qa_jobs_thread_dispose(query_thread_t *thr)
{
    tly_pglisten_destroy(thr->listen);
    if (h2o_timeout_is_linked(&thr->tick))
        h2o_timeout_unlink(&thr->tick);
    each_waiter(thr, drop);
    /* reads in flight fail here and finish their waiters */
    tly_pgpool_destroy(thr->pg);
    thr->pg = NULL;
    for (int s = 0; s <= QA_WAIT_MAX; ++s)
        h2o_timeout_dispose(thr->loop, &thr->wait_timeouts[s]);
    h2o_timeout_dispose(thr->loop, &thr->tick_timeout);
}
