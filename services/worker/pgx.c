/* Parameterised libpq statements and classification of their failures. */
#include "pgx.h"
#include "tally/log.h"
#include "tally/pg.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* SQLSTATE of the last failed statement on this thread; "" when none. */
static __thread char last_sqlstate[6];

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
    return slot;
}

static PGresult *
run(PGconn *conn, const char *sql, int n, const char *const *vals)
{
    int pid = PQbackendPID(conn);
    uint64_t hash = sql_hash(sql);
    PGresult *res = NULL;
    prepared_t *p = prepared_find(conn, pid, hash, sql);
    if (p == NULL && pid != 0) {
        p = prepared_add(conn, pid, hash, sql, n, &res);
        if (res != NULL)
            return res; /* the statement does not prepare: its error */
    }
    if (p == NULL)
        return PQexecParams(conn, sql, n, NULL, vals, NULL, NULL, 0);
    res = PQexecPrepared(conn, p->name, n, vals, NULL, NULL, 0);
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (state != NULL && (strcmp(state, "26000") == 0 || strcmp(state, "0A000") == 0)) {
        /* gone (DISCARD ALL) or its result type changed under it (0A000 aborts
           the transaction): forget it; the caller's retry prepares it again */
        prepared_drop(p);
    }
    return res;
}

PGresult *
tly_pgx_query(PGconn *conn, const char *what, const char *sql, int n, const char *const *vals, char *err, size_t errcap)
{
    PGresult *res = run(conn, sql, n, vals);
    ExecStatusType st = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return res;
    fail(conn, res, what, err, errcap);
    PQclear(res);
    return NULL;
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

int
tly_pgx_ensure(PGconn **conn, bool *up, const char *dsn, const char *setup, const char *who)
{
    char err[512];
    if (!tly_pg_broken(*conn))
        return 0;
    if (*conn != NULL)
        PQfinish(*conn);
    *conn = tly_pg_connect(dsn, err, sizeof(err));
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
}

/* --- array literals ------------------------------------------------------ */

static void
array_reserve(tly_pgx_array_t *a, size_t more)
{
    if (a->len + more + 3 <= a->cap) /* room for the closing brace and NUL too */
        return;
    size_t cap = a->cap == 0 ? 4096 : a->cap;
    while (a->len + more + 3 > cap)
        cap *= 2;
    char *buf = realloc(a->buf, cap);
    if (buf == NULL)
        abort();
    a->buf = buf;
    a->cap = cap;
}

void
tly_pgx_array_reset(tly_pgx_array_t *a)
{
    a->len = 0;
    a->n = 0;
}

void
tly_pgx_array_add(tly_pgx_array_t *a, const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;
    array_reserve(a, 2 * n + 4);
    if (a->len == 0)
        a->buf[a->len++] = '{';
    if (a->n++ > 0)
        a->buf[a->len++] = ',';
    if (s == NULL) {
        memcpy(a->buf + a->len, "NULL", 4);
        a->len += 4;
        return;
    }
    a->buf[a->len++] = '"';
    for (size_t i = 0; i < n; ++i) {
        if (s[i] == '"' || s[i] == '\\')
            a->buf[a->len++] = '\\';
        a->buf[a->len++] = s[i];
    }
    a->buf[a->len++] = '"';
}

void
tly_pgx_array_add_i64(tly_pgx_array_t *a, int64_t v)
{
    char s[24];
    snprintf(s, sizeof(s), "%" PRId64, v);
    tly_pgx_array_add(a, s);
}

const char *
tly_pgx_array_text(tly_pgx_array_t *a)
{
    array_reserve(a, 0);
    if (a->len == 0)
        a->buf[a->len++] = '{';
    a->buf[a->len] = '}';
    a->buf[a->len + 1] = '\0';
    return a->buf;
}

void
tly_pgx_array_free(tly_pgx_array_t *a)
{
    free(a->buf);
    *a = (tly_pgx_array_t){0};
}
