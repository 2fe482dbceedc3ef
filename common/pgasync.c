/*
 * Asynchronous libpq driven by an h2o evloop. See tally/pgasync.h.
 *
 * A connection moves CONNECTING → PREPARING → IDLE ⇄ BUSY, and to BROKEN on
 * any failure, from where a timer re-opens it. The loop watches a dup() of the
 * libpq socket: h2o owns (and closes) the duplicate, libpq keeps the original.
 *
 * Group commit. Once prepared, a connection runs in libpq's pipeline mode: an
 * idle connection takes every query queued (up to BATCH_MAX) and sends them
 * followed by one Sync. The server runs the statements up to a Sync as one
 * implicit transaction, so N concurrent requests cost one round trip and one
 * WAL flush instead of N. Results are held until the Sync arrives (before
 * that nothing is committed); if any statement of a multi-statement batch
 * failed, the transaction rolled back as a whole and every query of the batch
 * is run again alone, so each caller sees exactly the outcome its own
 * statement would have had. Under light load a batch is one query and this
 * is the plain one-statement-per-round-trip protocol.
 */
#include "tally/pgasync.h"
#include "tally/clock.h"
#include "tally/pg.h"
#include "tally/log.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RECONNECT_MS 500
#define QUEUE_MAX 10000
#define BATCH_MAX 64

typedef struct st_pg_query_t {
    struct st_pg_query_t *next;
    size_t stmt;
    tly_pg_cb cb;
    void *data;
    bool solo; /* run in a batch of its own (its batch failed) */
    tly_pgpool_t *pool;
    int64_t queued_us;
    int nparams;
    char *params[]; /* nparams strings, NULL for SQL NULL */
} pg_query_t;

typedef enum en_conn_state_t { CONN_BROKEN, CONN_CONNECTING, CONN_PREPARING, CONN_IDLE, CONN_BUSY } conn_state_t;

typedef struct st_pg_conn_t {
    tly_pgpool_t *pool;
    PGconn *pg;
    h2o_socket_t *sock;
    int watched_fd; /* libpq's fd that `sock` duplicates */
    conn_state_t state;
    size_t prepared; /* statements prepared so far */
    PGresult *last;  /* while preparing */
    /* the batch in flight (BUSY): its queries, each one's last result, how many are complete */
    pg_query_t *batch[BATCH_MAX];
    PGresult *results[BATCH_MAX];
    int nbatch;
    int done;
    bool batch_failed;
    h2o_timeout_entry_t retry;
} pg_conn_t;

struct st_tly_pgpool_t {
    h2o_loop_t *loop;
    char *dsn;
    const tly_pg_statement_t *statements;
    size_t nstatements;
    pg_query_t *head, **tail;
    size_t queued;
    void (*observe)(void *data, double ms);
    void *observe_data;
    h2o_timeout_t retry_timeout;
    size_t nconns;
    pg_conn_t conns[];
};

static void conn_open(pg_conn_t *c);
static void conn_step(pg_conn_t *c);
static void pool_dispatch(tly_pgpool_t *pool);

static void
query_finish(pg_query_t *q, PGresult *res, const char *err)
{
    if (q->pool->observe != NULL && res != NULL)
        q->pool->observe(q->pool->observe_data, (double)(tly_clock_mono_us() - q->queued_us) / 1000.0);
    q->cb(q->data, res, err);
    for (int i = 0; i < q->nparams; ++i)
        free(q->params[i]);
    free(q);
}

/* Empties the connection's batch into `out` (results freed); returns how many queries it held. */
static int
batch_take(pg_conn_t *c, pg_query_t **out)
{
    int n = c->nbatch;
    for (int i = 0; i < n; ++i) {
        out[i] = c->batch[i];
        if (c->results[i] != NULL)
            PQclear(c->results[i]);
        c->results[i] = NULL;
    }
    c->nbatch = c->done = 0;
    c->batch_failed = false;
    return n;
}

static void
conn_unwatch(pg_conn_t *c)
{
    if (c->sock != NULL) {
        h2o_socket_read_stop(c->sock);
        h2o_socket_close(c->sock);
        c->sock = NULL;
    }
    c->watched_fd = -1;
}

static void
conn_fail(pg_conn_t *c, const char *why)
{
    conn_unwatch(c);
    if (c->last != NULL) {
        PQclear(c->last);
        c->last = NULL;
    }
    pg_query_t *batch[BATCH_MAX];
    int n = batch_take(c, batch);
    if (c->pg != NULL) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    c->state = CONN_BROKEN;
    for (int i = 0; i < n; ++i)
        query_finish(batch[i], NULL, why);
    if (!h2o_timeout_is_linked(&c->retry))
        h2o_timeout_link(c->pool->loop, &c->pool->retry_timeout, &c->retry);
    /* with no connection left, queued queries fail now rather than wait */
    if (!tly_pgpool_ready(c->pool)) {
        tly_pgpool_t *pool = c->pool;
        while (pool->head != NULL) {
            pg_query_t *q = pool->head;
            pool->head = q->next;
            --pool->queued;
            query_finish(q, NULL, "postgresql is unavailable");
        }
        pool->tail = &pool->head;
    }
}

static void
on_readable(h2o_socket_t *sock, const char *err)
{
    pg_conn_t *c = sock->data;
    if (err != NULL) {
        conn_fail(c, "connection to postgresql lost");
        return;
    }
    conn_step(c);
}

static void
on_writable(h2o_socket_t *sock, const char *err)
{
    pg_conn_t *c = sock->data;
    if (err != NULL) {
        conn_fail(c, "connection to postgresql lost");
        return;
    }
    conn_step(c);
}

/* (Re)registers the libpq socket with the loop when libpq changed it. */
static bool
conn_watch(pg_conn_t *c)
{
    int fd = PQsocket(c->pg);
    if (fd < 0)
        return false;
    if (c->sock != NULL && fd == c->watched_fd)
        return true;
    conn_unwatch(c);
    int dupfd = dup(fd);
    if (dupfd < 0)
        return false;
    c->sock = h2o_evloop_socket_create(c->pool->loop, dupfd, H2O_SOCKET_FLAG_DONT_READ);
    c->sock->data = c;
    c->watched_fd = fd;
    h2o_socket_read_start(c->sock, on_readable);
    return true;
}

static void
conn_send_next_prepare(pg_conn_t *c)
{
    const tly_pg_statement_t *s = &c->pool->statements[c->prepared];
    if (!PQsendPrepare(c->pg, s->name, s->sql, s->nparams, NULL)) {
        conn_fail(c, PQerrorMessage(c->pg));
        return;
    }
    if (PQflush(c->pg) == 1)
        h2o_socket_notify_write(c->sock, on_writable);
}

static void
conn_become_idle(pg_conn_t *c)
{
    c->state = CONN_IDLE;
    pool_dispatch(c->pool);
}

/* A PREPARE finished: `res` is its last result. */
static void
conn_on_prepared(pg_conn_t *c, PGresult *res)
{
    bool ok = res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    if (!ok) {
        conn_fail(c, "could not prepare statement");
        return;
    }
    if (++c->prepared < c->pool->nstatements) {
        conn_send_next_prepare(c);
    } else if (PQenterPipelineMode(c->pg) != 1) {
        conn_fail(c, "could not enter pipeline mode");
    } else {
        conn_become_idle(c);
    }
}

/* The batch's Sync arrived: everything before it is committed (or, on a failure, rolled back). */
static void
conn_on_synced(pg_conn_t *c)
{
    tly_pgpool_t *pool = c->pool;
    pg_query_t *batch[BATCH_MAX];
    PGresult *results[BATCH_MAX];
    int n = c->nbatch;
    bool failed = c->batch_failed && n > 1;
    for (int i = 0; i < n; ++i) {
        batch[i] = c->batch[i];
        results[i] = c->results[i];
        c->results[i] = NULL;
    }
    c->nbatch = c->done = 0;
    c->batch_failed = false;
    c->state = CONN_IDLE;
    if (failed) {
        /* one statement's failure rolled back the others: run each alone, in order, ahead of the queue */
        for (int i = n - 1; i >= 0; --i) {
            if (results[i] != NULL)
                PQclear(results[i]);
            batch[i]->solo = true;
            batch[i]->next = pool->head;
            pool->head = batch[i];
            if (pool->tail == &pool->head)
                pool->tail = &batch[i]->next;
            ++pool->queued;
        }
    } else {
        for (int i = 0; i < n; ++i) {
            query_finish(batch[i], results[i], results[i] == NULL ? "no result from postgresql" : NULL);
            if (results[i] != NULL)
                PQclear(results[i]);
        }
    }
    if (c->state == CONN_IDLE)
        pool_dispatch(pool);
}

/* Collects results: while preparing, up to the end of the PREPARE; when busy, each query's then the Sync. */
static void
conn_read_results(pg_conn_t *c)
{
    if (!PQconsumeInput(c->pg)) {
        conn_fail(c, "connection to postgresql lost");
        return;
    }
    while (c->pg != NULL && !PQisBusy(c->pg)) {
        PGresult *res = PQgetResult(c->pg);
        if (c->state == CONN_PREPARING) {
            if (res == NULL) {
                PGresult *last = c->last;
                c->last = NULL;
                conn_on_prepared(c, last);
                return;
            }
            if (c->last != NULL)
                PQclear(c->last);
            c->last = res;
            continue;
        }
        if (c->state != CONN_BUSY) {
            if (res != NULL)
                PQclear(res);
            return;
        }
        if (res == NULL) { /* end of one query's results */
            if (c->done < c->nbatch)
                ++c->done;
            continue;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            if (c->done < c->nbatch) /* queries without a result: count as failed */
                c->batch_failed = true;
            conn_on_synced(c);
            return;
        }
        if (c->done >= c->nbatch) { /* nothing expected: a protocol surprise */
            PQclear(res);
            conn_fail(c, "unexpected result from postgresql");
            return;
        }
        if (st == PGRES_FATAL_ERROR || st == PGRES_PIPELINE_ABORTED)
            c->batch_failed = true;
        if (c->results[c->done] != NULL)
            PQclear(c->results[c->done]);
        c->results[c->done] = res;
    }
}

static void
conn_step_connecting(pg_conn_t *c)
{
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_OK:
        if (!conn_watch(c)) {
            conn_fail(c, "could not watch postgresql socket");
            return;
        }
        c->prepared = 0;
        if (c->pool->nstatements == 0) {
            conn_become_idle(c);
        } else {
            c->state = CONN_PREPARING;
            conn_send_next_prepare(c);
        }
        return;
    case PGRES_POLLING_READING:
        if (!conn_watch(c))
            conn_fail(c, "could not watch postgresql socket");
        return;
    case PGRES_POLLING_WRITING:
        if (!conn_watch(c))
            conn_fail(c, "could not watch postgresql socket");
        else
            h2o_socket_notify_write(c->sock, on_writable);
        return;
    default:
        conn_fail(c, "could not connect to postgresql");
        return;
    }
}

static void
conn_step(pg_conn_t *c)
{
    switch (c->state) {
    case CONN_CONNECTING:
        conn_step_connecting(c);
        break;
    case CONN_PREPARING:
    case CONN_BUSY:
        if (PQflush(c->pg) == 1) {
            h2o_socket_notify_write(c->sock, on_writable);
            return;
        }
        conn_read_results(c);
        break;
    case CONN_IDLE:
        /* a notice or a server-side close: consume it so the loop stops waking */
        if (!PQconsumeInput(c->pg))
            conn_fail(c, "connection to postgresql lost");
        break;
    case CONN_BROKEN:
        break;
    }
}

static void
conn_open(pg_conn_t *c)
{
    c->pg = tly_pg_connect_start(c->pool->dsn);
    if (c->pg != NULL)
        PQsetNoticeProcessor(c->pg, tly_log_pq_notice, NULL);
    if (c->pg == NULL || PQstatus(c->pg) == CONNECTION_BAD || PQsetnonblocking(c->pg, 1) != 0) {
        conn_fail(c, "could not connect to postgresql");
        return;
    }
    c->state = CONN_CONNECTING;
    if (!conn_watch(c)) {
        conn_fail(c, "could not watch postgresql socket");
        return;
    }
    h2o_socket_notify_write(c->sock, on_writable);
}

static void
on_retry(h2o_timeout_entry_t *entry)
{
    pg_conn_t *c = H2O_STRUCT_FROM_MEMBER(pg_conn_t, retry, entry);
    if (c->state == CONN_BROKEN)
        conn_open(c);
}

/* Sends the queue's head and, unless it must run alone, the batchable queries after it, then one Sync. */
static void
conn_send_batch(pg_conn_t *c)
{
    tly_pgpool_t *pool = c->pool;
    c->state = CONN_BUSY;
    c->nbatch = c->done = 0;
    c->batch_failed = false;
    while (pool->head != NULL && c->nbatch < BATCH_MAX) {
        pg_query_t *q = pool->head;
        if (c->nbatch > 0 && (q->solo || c->batch[0]->solo))
            break;
        pool->head = q->next;
        if (pool->head == NULL)
            pool->tail = &pool->head;
        --pool->queued;
        c->results[c->nbatch] = NULL;
        c->batch[c->nbatch++] = q;
        const tly_pg_statement_t *s = &pool->statements[q->stmt];
        if (!PQsendQueryPrepared(c->pg, s->name, q->nparams, (const char *const *)q->params, NULL, NULL, 0)) {
            conn_fail(c, "could not send query to postgresql");
            return;
        }
    }
    if (!PQpipelineSync(c->pg)) {
        conn_fail(c, "could not send query to postgresql");
        return;
    }
    if (PQflush(c->pg) == 1)
        h2o_socket_notify_write(c->sock, on_writable);
}

static void
pool_dispatch(tly_pgpool_t *pool)
{
    for (size_t i = 0; i < pool->nconns && pool->head != NULL; ++i) {
        pg_conn_t *c = &pool->conns[i];
        if (c->state == CONN_IDLE)
            conn_send_batch(c);
    }
}

tly_pgpool_t *
tly_pgpool_create(h2o_loop_t *loop, const char *dsn, size_t nconns, const tly_pg_statement_t *statements, size_t nstatements)
{
    tly_pgpool_t *pool = calloc(1, sizeof(*pool) + nconns * sizeof(pg_conn_t));
    if (pool == NULL)
        abort();
    pool->loop = loop;
    pool->dsn = strdup(dsn);
    pool->statements = statements;
    pool->nstatements = nstatements;
    pool->tail = &pool->head;
    pool->nconns = nconns;
    h2o_timeout_init(loop, &pool->retry_timeout, RECONNECT_MS);
    for (size_t i = 0; i < nconns; ++i) {
        pg_conn_t *c = &pool->conns[i];
        c->pool = pool;
        c->watched_fd = -1;
        c->retry.cb = on_retry;
        conn_open(c);
    }
    return pool;
}

void
tly_pgpool_destroy(tly_pgpool_t *pool)
{
    for (size_t i = 0; i < pool->nconns; ++i) {
        pg_conn_t *c = &pool->conns[i];
        if (h2o_timeout_is_linked(&c->retry))
            h2o_timeout_unlink(&c->retry);
        conn_unwatch(c);
        pg_query_t *batch[BATCH_MAX];
        int n = batch_take(c, batch);
        for (int k = 0; k < n; ++k)
            query_finish(batch[k], NULL, "shutting down");
        if (c->last != NULL)
            PQclear(c->last);
        if (c->pg != NULL)
            PQfinish(c->pg);
    }
    while (pool->head != NULL) {
        pg_query_t *q = pool->head;
        pool->head = q->next;
        query_finish(q, NULL, "shutting down");
    }
    h2o_timeout_dispose(pool->loop, &pool->retry_timeout);
    free(pool->dsn);
    free(pool);
}

void
tly_pgpool_observe(tly_pgpool_t *pool, void (*cb)(void *data, double ms), void *data)
{
    pool->observe = cb;
    pool->observe_data = data;
}

bool
tly_pgpool_ready(tly_pgpool_t *pool)
{
    for (size_t i = 0; i < pool->nconns; ++i)
        if (pool->conns[i].state == CONN_IDLE || pool->conns[i].state == CONN_BUSY)
            return true;
    return false;
}

void
tly_pgpool_exec(tly_pgpool_t *pool, size_t stmt, const char *const *values, tly_pg_cb cb, void *data)
{
    int nparams = pool->statements[stmt].nparams;
    if (!tly_pgpool_ready(pool) || pool->queued >= QUEUE_MAX) {
        cb(data, NULL, tly_pgpool_ready(pool) ? "postgresql queue is full" : "postgresql is unavailable");
        return;
    }
    pg_query_t *q = malloc(sizeof(*q) + (size_t)nparams * sizeof(char *));
    if (q == NULL)
        abort();
    q->next = NULL;
    q->stmt = stmt;
    q->cb = cb;
    q->data = data;
    q->solo = false;
    q->pool = pool;
    q->queued_us = pool->observe != NULL ? tly_clock_mono_us() : 0;
    q->nparams = nparams;
    for (int i = 0; i < nparams; ++i) {
        q->params[i] = values[i] != NULL ? strdup(values[i]) : NULL;
        if (values[i] != NULL && q->params[i] == NULL)
            abort();
    }
    *pool->tail = q;
    pool->tail = &q->next;
    ++pool->queued;
    pool_dispatch(pool);
}
