/* Parameterised libpq statements and classification of their failures. */
#include "tally/pgx.h"
#include "tally/log.h"
#include "tally/pg.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* SQLSTATE of the last failed statement on this thread; "" when none. */
static __thread char last_sqlstate[6];
/* The last failure was a deferred statement's (tly_pgx_send), reported by a later call. */
static __thread bool last_deferred;

static void
fail(PGconn *conn, PGresult *res, const char *what, char *err, size_t errcap)
{
    const char *msg = res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(conn);
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        --n;
    snprintf(err, errcap, "could not %s: %.*s", what, (int)n, msg);
    snprintf(last_sqlstate, sizeof(last_sqlstate), "%s", state != NULL ? state : "08000");
    last_deferred = false;
}

/*
 * Statements are prepared once per connection and then only executed: a
 * batch runs the same few statements hundreds of times a second, and parsing
 * and planning them each time (PQexecParams) cost PostgreSQL more than
 * executing some of them. The cache is per thread (a connection is used by
 * one thread at a time) and keyed by the connection, its backend pid (a
 * new connection at the same address is a new backend) and the SQL text.
 */
#define PREPARED_MAX 64

typedef struct st_prepared_t {
    PGconn *conn;
    int pid;
    uint64_t hash;
    char *sql;
    char name[24];
} prepared_t;

static __thread prepared_t prepared[PREPARED_MAX];
static __thread unsigned prepared_seq;
static pthread_key_t prepared_key; /* its destructor frees a thread's SQL copies when the thread ends */
static pthread_once_t prepared_once = PTHREAD_ONCE_INIT;

static void
prepared_forget(void *cache)
{
    prepared_t *p = cache;
    for (int i = 0; i < PREPARED_MAX; ++i) {
        free(p[i].sql);
        p[i].sql = NULL;
    }
}

static void
prepared_key_create(void)
{
    if (pthread_key_create(&prepared_key, prepared_forget) != 0)
        abort();
}

static uint64_t
sql_hash(const char *sql)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const unsigned char *p = (const unsigned char *)sql; *p != '\0'; ++p)
        h = (h ^ *p) * 0x100000001b3ULL;
    return h;
}

/* The cached statement for (conn, sql), or NULL. */
static prepared_t *
prepared_find(PGconn *conn, int pid, uint64_t hash, const char *sql)
{
    for (int i = 0; i < PREPARED_MAX; ++i) {
        prepared_t *p = &prepared[i];
        if (p->sql != NULL && p->conn == conn && p->pid == pid && p->hash == hash && strcmp(p->sql, sql) == 0)
            return p;
    }
    return NULL;
}

static void
prepared_drop(prepared_t *p)
{
    free(p->sql);
    memset(p, 0, sizeof(*p));
}

/*
 * Prepares `sql` on `conn` in a free slot (or one of a connection that is
 * gone). Returns the slot; NULL with *res NULL when no slot is free (the
 * caller then runs the statement unprepared); NULL with *res the error when
 * the statement does not prepare.
 */
static prepared_t *
prepared_add(PGconn *conn, int pid, uint64_t hash, const char *sql, int n, PGresult **res)
{
    prepared_t *slot = NULL;
    for (int i = 0; i < PREPARED_MAX && slot == NULL; ++i)
        if (prepared[i].sql == NULL || prepared[i].pid != pid)
            slot = &prepared[i];
    if (slot == NULL)
        return NULL;
    if (slot->sql != NULL)
        prepared_drop(slot); /* a connection this thread no longer uses */
    snprintf(slot->name, sizeof(slot->name), "tly_%u", ++prepared_seq);
    *res = PQprepare(conn, slot->name, sql, n, NULL);
    if (*res == NULL || PQresultStatus(*res) != PGRES_COMMAND_OK)
        return NULL;
    PQclear(*res);
    *res = NULL;
    slot->conn = conn;
    slot->pid = pid;
    slot->hash = hash;
    slot->sql = strdup(sql);
    if (slot->sql == NULL)
        abort();
    pthread_once(&prepared_once, prepared_key_create);
    if (pthread_getspecific(prepared_key) == NULL && pthread_setspecific(prepared_key, prepared) != 0)
        abort();
    return slot;
}

/*
 * A transaction's BEGIN waits here (tly_pgx_begin) and goes out with the
 * transaction's first statement: both in one pipeline, one round trip
 * instead of two. The BEGIN is explicit, so the pipeline's Sync does not end
 * the transaction; if the BEGIN fails the statement is not run and the
 * caller gets the BEGIN's error.
 */
static __thread PGconn *pending_begin;

/* Deferred statements (below, before run()). */
#define PIPE_MAX 16

static __thread PGconn *defer_conn;
static __thread struct {
    PGconn *conn; /* in pipeline mode with statements not read yet */
    bool begin;   /* the first result is a BEGIN's */
    int n;
    char what[PIPE_MAX][64];
} pipe_q;
static __thread char deferred_what[64]; /* the failing deferred statement, for `checked` */

/* Forgets the pipeline state of a connection that is going away. */
static void
pipe_forget(void)
{
    pipe_q.conn = NULL;
    pipe_q.n = 0;
    pipe_q.begin = false;
    defer_conn = NULL;
}

void
tly_pgx_begin(PGconn *conn)
{
    pending_begin = conn;
    if (conn == NULL)
        pipe_forget();
}

/* Sends a waiting BEGIN on its own (before statements that cannot share its pipeline, e.g. COPY). */
static PGresult *pipe_finish(PGconn *conn, bool last);

static PGresult *
flush_begin(PGconn *conn)
{
    if (conn != NULL && pipe_q.conn == conn)
        return pipe_finish(conn, false);
    if (pending_begin != conn || conn == NULL)
        return NULL;
    pending_begin = NULL;
    PGresult *res = PQexec(conn, "BEGIN");
    if (res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK) {
        PQclear(res);
        return NULL;
    }
    return res != NULL ? res : PQmakeEmptyPGresult(conn, PGRES_FATAL_ERROR);
}

/* The next result of the pipeline, then the NULL that ends it; NULL when the connection has nothing more. */
static PGresult *
pipeline_result(PGconn *conn)
{
    PGresult *res = PQgetResult(conn), *extra;
    if (res != NULL && PQresultStatus(res) != PGRES_PIPELINE_SYNC)
        while ((extra = PQgetResult(conn)) != NULL)
            PQclear(extra);
    return res;
}

/* BEGIN and one statement (prepared as `name`, or `sql` unprepared when NULL) in one round trip. */
static PGresult *
begin_with(PGconn *conn, const char *name, const char *sql, int n, const char *const *vals, const int *lens, const int *formats)
{
    pending_begin = NULL;
    if (PQenterPipelineMode(conn) != 1) {
        PGresult *res = PQexec(conn, "BEGIN");
        if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK)
            return res;
        PQclear(res);
        return name != NULL ? PQexecPrepared(conn, name, n, vals, lens, formats, 0)
                            : PQexecParams(conn, sql, n, NULL, vals, lens, formats, 0);
    }
    bool sent = PQsendQueryParams(conn, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) == 1 &&
                (name != NULL ? PQsendQueryPrepared(conn, name, n, vals, lens, formats, 0)
                              : PQsendQueryParams(conn, sql, n, NULL, vals, lens, formats, 0)) == 1 &&
                PQpipelineSync(conn) == 1;
    PGresult *begin = NULL, *res = NULL, *sync = NULL;
    if (sent) {
        begin = pipeline_result(conn);
        res = pipeline_result(conn);
        sync = PQgetResult(conn); /* PGRES_PIPELINE_SYNC */
    }
    PQclear(sync);
    if (PQexitPipelineMode(conn) != 1 || !sent) {
        /* results left unread: the connection is in no state to go on */
        PQclear(begin);
        PQclear(res);
        return PQmakeEmptyPGresult(conn, PGRES_FATAL_ERROR);
    }
    if (begin == NULL || PQresultStatus(begin) != PGRES_COMMAND_OK) {
        PQclear(res);
        return begin;
    }
    PQclear(begin);
    return res;
}

/*
 * Deferred statements (tly_pgx_defer, tly_pgx_send): while deferring is on
 * for a connection, statements whose result is only success or failure go
 * out in one libpq pipeline without waiting, together with a waiting BEGIN;
 * the next statement whose result is needed (tly_pgx_query), tly_pgx_sync or
 * tly_pgx_end sends a Sync and reads them all. Each round trip saved is a
 * wake-up of the backend and of this thread: a set-based projector batch
 * makes 4 instead of 7. The first failure among them is the one reported,
 * under its own statement's name; those after it were not run.
 */

void
tly_pgx_defer(PGconn *conn)
{
    defer_conn = conn;
}

/* Leaves a pipeline that cannot be read to its end: the connection is reset (a new backend; prepared statements follow it). */
static void
pipe_abandon(PGconn *conn)
{
    pipe_q.conn = NULL;
    pipe_q.n = 0;
    pipe_q.begin = false;
    if (PQexitPipelineMode(conn) != 1)
        PQreset(conn);
}

/* Enters pipeline mode for `conn` (sending a waiting BEGIN); false when it cannot. */
static bool
pipe_open(PGconn *conn)
{
    if (pipe_q.conn == conn)
        return true;
    if (PQenterPipelineMode(conn) != 1)
        return false;
    pipe_q.conn = conn;
    pipe_q.n = 0;
    pipe_q.begin = false;
    if (pending_begin == conn) {
        pending_begin = NULL;
        if (PQsendQueryParams(conn, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) != 1) {
            pipe_abandon(conn);
            return false;
        }
        pipe_q.begin = true;
    }
    return true;
}

/*
 * Sends a Sync and reads the pipeline to its end. `last` true: one more
 * statement was sent after the deferred ones; its result is returned when
 * everything before it succeeded. Otherwise the first failure is returned
 * (deferred_what names a deferred one), or NULL when all succeeded.
 */
static PGresult *
pipe_finish(PGconn *conn, bool last)
{
    PGresult *failure = NULL, *mine = NULL;
    int expect = (pipe_q.begin ? 1 : 0) + pipe_q.n + (last ? 1 : 0);
    deferred_what[0] = '\0';
    if (PQpipelineSync(conn) != 1) {
        pipe_abandon(conn);
        return PQmakeEmptyPGresult(conn, PGRES_FATAL_ERROR);
    }
    for (int i = 0; i < expect; ++i) {
        PGresult *res = pipeline_result(conn);
        if (res == NULL) { /* the connection went away */
            PQclear(failure);
            PQclear(mine);
            pipe_abandon(conn);
            return PQmakeEmptyPGresult(conn, PGRES_FATAL_ERROR);
        }
        ExecStatusType st = PQresultStatus(res);
        bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
        if (last && i == expect - 1 && failure == NULL) {
            mine = res;
            continue;
        }
        if (!ok && failure == NULL && st != PGRES_PIPELINE_ABORTED) {
            failure = res;
            int k = i - (pipe_q.begin ? 1 : 0); /* which deferred statement (-1: the BEGIN) */
            snprintf(deferred_what, sizeof(deferred_what), "%s", k >= 0 && k < pipe_q.n ? pipe_q.what[k] : "begin");
            continue;
        }
        PQclear(res);
    }
    PQclear(PQgetResult(conn)); /* PGRES_PIPELINE_SYNC */
    pipe_q.conn = NULL;
    pipe_q.n = 0;
    pipe_q.begin = false;
    if (PQexitPipelineMode(conn) != 1) {
        PQclear(failure);
        PQclear(mine);
        PQreset(conn);
        return PQmakeEmptyPGresult(conn, PGRES_FATAL_ERROR);
    }
    if (failure != NULL) {
        PQclear(mine);
        return failure;
    }
    return mine;
}

/* Runs `sql` prepared (or unprepared when no slot is free); `lens` and `formats` NULL: text parameters. */
static PGresult *
run(PGconn *conn, const char *sql, int n, const char *const *vals, const int *lens, const int *formats)
{
    int pid = PQbackendPID(conn);
    uint64_t hash = sql_hash(sql);
    PGresult *res = NULL;
    prepared_t *p = prepared_find(conn, pid, hash, sql);
    if (p == NULL && pid != 0 && pipe_q.conn != conn) { /* (in a pipeline it runs unprepared this once) */
        p = prepared_add(conn, pid, hash, sql, n, &res);
        if (res != NULL)
            return res; /* the statement does not prepare: its error */
    }
    if (pipe_q.conn == conn) {
        bool sent = (p != NULL ? PQsendQueryPrepared(conn, p->name, n, vals, lens, formats, 0)
                               : PQsendQueryParams(conn, sql, n, NULL, vals, lens, formats, 0)) == 1;
        if (!sent) {
            pipe_abandon(conn);
            return PQmakeEmptyPGresult(conn, PGRES_FATAL_ERROR);
        }
        res = pipe_finish(conn, true);
        if (deferred_what[0] != '\0')
            return res; /* a deferred statement failed: this one was not run */
    } else if (pending_begin == conn)
        res = begin_with(conn, p != NULL ? p->name : NULL, sql, n, vals, lens, formats);
    else if (p == NULL)
        return PQexecParams(conn, sql, n, NULL, vals, lens, formats, 0);
    else
        res = PQexecPrepared(conn, p->name, n, vals, lens, formats, 0);
    if (p == NULL)
        return res;
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (state != NULL && (strcmp(state, "26000") == 0 || strcmp(state, "0A000") == 0)) {
        /* gone (DISCARD ALL) or its result type changed under it (0A000 aborts
           the transaction): forget it; the caller's retry prepares it again */
        prepared_drop(p);
    }
    return res;
}

static PGresult *
checked(PGconn *conn, PGresult *res, const char *what, char *err, size_t errcap)
{
    ExecStatusType st = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return res;
    bool deferred = deferred_what[0] != '\0';
    fail(conn, res, deferred ? deferred_what : what, err, errcap);
    last_deferred = deferred;
    deferred_what[0] = '\0';
    PQclear(res);
    return NULL;
}

PGresult *
tly_pgx_query(PGconn *conn, const char *what, const char *sql, int n, const char *const *vals, char *err, size_t errcap)
{
    return checked(conn, run(conn, sql, n, vals, NULL, NULL), what, err, errcap);
}

PGresult *
tly_pgx_query_params(PGconn *conn, const char *what, const char *sql, int n, const char *const *vals, const int *lens,
                     const int *formats, char *err, size_t errcap)
{
    return checked(conn, run(conn, sql, n, vals, lens, formats), what, err, errcap);
}

int
tly_pgx_exec(PGconn *conn, const char *what, const char *sql, int n, const char *const *vals, long *affected, char *err,
             size_t errcap)
{
    PGresult *res = tly_pgx_query(conn, what, sql, n, vals, err, errcap);
    if (res == NULL)
        return -1;
    if (affected != NULL)
        *affected = strtol(PQcmdTuples(res), NULL, 10);
    PQclear(res);
    return 0;
}

/* pg_stat_activity's application_name: tally-worker/<role>, unless the operator set one (PGAPPNAME or the DSN). */
static bool
name_connection(PGconn *conn, const char *who, char *err, size_t errcap)
{
    char name[64];
    snprintf(name, sizeof(name), "tally-worker/%s", who);
    const char *vals[1] = {name};
    PGresult *res =
        PQexecParams(conn, "SELECT set_config('application_name', $1, false) WHERE current_setting('application_name') = ''", 1,
                     NULL, vals, NULL, NULL, 0);
    bool ok = tly_pg_ok(conn, res, "could not set application_name", err, errcap);
    PQclear(res);
    return ok;
}

int
tly_pgx_send(PGconn *conn, const char *what, const char *sql, int n, const char *const *vals, const int *lens, const int *formats,
             char *err, size_t errcap)
{
    if (defer_conn != conn || conn == NULL) {
        PGresult *res = checked(conn, run(conn, sql, n, vals, lens, formats), what, err, errcap);
        PQclear(res);
        return res != NULL ? 0 : -1;
    }
    int pid = PQbackendPID(conn);
    uint64_t hash = sql_hash(sql);
    prepared_t *p = prepared_find(conn, pid, hash, sql);
    if (p == NULL && pipe_q.conn != conn && pid != 0) { /* the first run on this connection: prepare it now */
        PGresult *res = NULL;
        p = prepared_add(conn, pid, hash, sql, n, &res);
        if (res != NULL) {
            fail(conn, res, what, err, errcap);
            PQclear(res);
            return -1;
        }
    }
    if (!pipe_open(conn) || (p != NULL ? PQsendQueryPrepared(conn, p->name, n, vals, lens, formats, 0)
                                       : PQsendQueryParams(conn, sql, n, NULL, vals, lens, formats, 0)) != 1) {
        if (pipe_q.conn == conn)
            pipe_abandon(conn);
        fail(conn, NULL, what, err, errcap);
        return -1;
    }
    snprintf(pipe_q.what[pipe_q.n++], sizeof(pipe_q.what[0]), "%s", what);
    return pipe_q.n < PIPE_MAX ? 0 : tly_pgx_sync(conn, err, errcap);
}

int
tly_pgx_sync(PGconn *conn, char *err, size_t errcap)
{
    if (pipe_q.conn != conn || conn == NULL)
        return 0;
    PGresult *res = pipe_finish(conn, false);
    if (res == NULL)
        return 0;
    fail(conn, res, deferred_what[0] != '\0' ? deferred_what : "read deferred statements", err, errcap);
    last_deferred = true;
    deferred_what[0] = '\0';
    PQclear(res);
    return -1;
}

int
tly_pgx_ensure(PGconn **conn, bool *up, const char *dsn, const char *setup, const char *who)
{
    char err[512];
    if (!tly_pg_broken(*conn))
        return 0;
    if (*conn != NULL) {
        if (pipe_q.conn == *conn || defer_conn == *conn)
            pipe_forget();
        if (pending_begin == *conn)
            pending_begin = NULL;
        PQfinish(*conn);
    }
    *conn = tly_pg_connect(dsn, err, sizeof(err));
    if (*conn != NULL && !name_connection(*conn, who, err, sizeof(err))) {
        PQfinish(*conn);
        *conn = NULL;
    }
    if (*conn != NULL && setup != NULL && tly_pg_exec(*conn, setup, err, sizeof(err)) != 0) {
        PQfinish(*conn);
        *conn = NULL;
    }
    if (*conn == NULL) {
        if (*up)
            tly_log(TLY_LOG_ERROR, "postgresql unavailable, retrying", "consumer", who, "error", err, NULL);
        *up = false;
        return -1;
    }
    if (!*up)
        tly_log(TLY_LOG_INFO, "connected to postgresql", "consumer", who, NULL);
    *up = true;
    return 1;
}

int
tly_pgx_end(PGconn *conn, bool commit, char *err, size_t errcap)
{
    if (defer_conn == conn)
        defer_conn = NULL;
    if (pending_begin == conn) { /* nothing was run: there is no transaction to end */
        pending_begin = NULL;
        return 0;
    }
    if (pipe_q.conn == conn) {
        char ignored[256];
        if (tly_pgx_sync(conn, commit ? err : ignored, commit ? errcap : sizeof(ignored)) != 0) {
            if (tly_pg_broken(conn))
                return -1;
            (void)!tly_pg_exec(conn, "ROLLBACK", ignored, sizeof(ignored));
            return commit ? -1 : 0;
        }
    }
    return tly_pg_exec(conn, commit ? "COMMIT" : "ROLLBACK", err, errcap);
}

int
tly_pgx_copy(PGconn *conn, const char *what, const char *sql, const char *data, size_t len, char *err, size_t errcap)
{
    PGresult *res = flush_begin(conn);
    if (res != NULL) {
        fail(conn, res, what, err, errcap);
        PQclear(res);
        return -1;
    }
    res = PQexec(conn, sql);
    if (res == NULL || PQresultStatus(res) != PGRES_COPY_IN) {
        fail(conn, res, what, err, errcap);
        PQclear(res);
        return -1;
    }
    PQclear(res);
    int ok = 1;
    for (size_t off = 0; off < len && ok == 1; off += 1 << 20) /* libpq sends each call's bytes whole: bounded chunks */
        ok = PQputCopyData(conn, data + off, (int)(len - off < (1 << 20) ? len - off : 1 << 20));
    int ret = 0;
    if (PQputCopyEnd(conn, ok == 1 ? NULL : "could not send the rows") != 1 || ok != 1) {
        fail(conn, NULL, what, err, errcap);
        ret = -1;
    }
    while ((res = PQgetResult(conn)) != NULL) {
        ExecStatusType st = PQresultStatus(res);
        if (st != PGRES_COMMAND_OK && ret == 0) {
            fail(conn, res, what, err, errcap);
            ret = -1;
        }
        PQclear(res);
        if (st == PGRES_COPY_IN) /* the end could not be sent: the connection is gone */
            break;
    }
    return ret;
}

bool
tly_pgx_last_transient(PGconn *conn)
{
    static const char *transient_classes[] = {"08", "40", "53", "57", "58"};
    if (conn == NULL || PQstatus(conn) != CONNECTION_OK)
        return true;
    for (size_t i = 0; i < sizeof(transient_classes) / sizeof(transient_classes[0]); ++i)
        if (strncmp(last_sqlstate, transient_classes[i], 2) == 0)
            return true;
    return false;
}

void
tly_pgx_reset_last(void)
{
    last_sqlstate[0] = '\0';
    last_deferred = false;
}

bool
tly_pgx_last_deferred(void)
{
    return last_deferred;
}
