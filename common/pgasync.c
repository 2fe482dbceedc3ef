/*
 * Asynchronous libpq driven by an h2o evloop. See tally/pgasync.h.
 *
 * A connection moves CONNECTING → PREPARING → IDLE ⇄ BUSY, and to BROKEN on
 * any failure, from where a timer re-opens it. The loop watches a dup() of the
 * libpq socket: h2o owns (and closes) the duplicate, libpq keeps the original.
 */
#include "tally/pgasync.h"
#include "tally/log.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RECONNECT_MS 500
#define QUEUE_MAX 10000

typedef struct st_pg_query_t {
    struct st_pg_query_t *next;
    size_t stmt;
    tly_pg_cb cb;
    void *data;
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
    size_t prepared;   /* statements prepared so far */
    pg_query_t *query; /* in flight */
    PGresult *last;
    h2o_timeout_entry_t retry;
} pg_conn_t;

struct st_tly_pgpool_t {
    h2o_loop_t *loop;
    char *dsn;
    const tly_pg_statement_t *statements;
    size_t nstatements;
    pg_query_t *head, **tail;
    size_t queued;
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
    q->cb(q->data, res, err);
    for (int i = 0; i < q->nparams; ++i)
        free(q->params[i]);
    free(q);
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
    if (c->query != NULL) {
        pg_query_t *q = c->query;
        c->query = NULL;
        query_finish(q, NULL, why);
    }
    if (c->pg != NULL) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    c->state = CONN_BROKEN;
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

/* One statement finished (prepare or query): `res` is its last result. */
static void
conn_on_result(pg_conn_t *c, PGresult *res)
{
    if (c->state == CONN_PREPARING) {
        bool ok = res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK;
        PQclear(res);
        if (!ok) {
            conn_fail(c, "could not prepare statement");
            return;
        }
        if (++c->prepared < c->pool->nstatements)
            conn_send_next_prepare(c);
        else
            conn_become_idle(c);
        return;
    }
    pg_query_t *q = c->query;
    c->query = NULL;
    c->state = CONN_IDLE;
    if (q != NULL)
        query_finish(q, res, res == NULL ? "no result from postgresql" : NULL);
    PQclear(res);
    if (c->state == CONN_IDLE)
        pool_dispatch(c->pool);
}

static void
conn_read_results(pg_conn_t *c)
{
    if (!PQconsumeInput(c->pg)) {
        conn_fail(c, "connection to postgresql lost");
        return;
    }
    while (c->pg != NULL && !PQisBusy(c->pg)) {
        PGresult *res = PQgetResult(c->pg);
        if (res == NULL) {
            PGresult *last = c->last;
            c->last = NULL;
            conn_on_result(c, last);
            return;
        }
        if (c->last != NULL)
            PQclear(c->last);
        c->last = res;
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
    c->pg = PQconnectStart(c->pool->dsn);
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

static void
conn_send_query(pg_conn_t *c, pg_query_t *q)
{
    const tly_pg_statement_t *s = &c->pool->statements[q->stmt];
    c->query = q;
    c->state = CONN_BUSY;
    if (!PQsendQueryPrepared(c->pg, s->name, q->nparams, (const char *const *)q->params, NULL, NULL, 0)) {
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
        if (c->state != CONN_IDLE)
            continue;
        pg_query_t *q = pool->head;
        pool->head = q->next;
        if (pool->head == NULL)
            pool->tail = &pool->head;
        --pool->queued;
        conn_send_query(c, q);
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
        if (c->query != NULL)
            query_finish(c->query, NULL, "shutting down");
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
