/*
 * LISTEN connection driven by an h2o evloop. See tally/pglisten.h.
 *
 * States: BROKEN → CONNECTING → SUBSCRIBING (LISTEN sent) → LISTENING, and
 * back to BROKEN on any failure, from where a timer re-opens the connection.
 */
#include "tally/pglisten.h"
#include "tally/pg.h"
#include "tally/log.h"

#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RECONNECT_MS 500

typedef enum en_listen_state_t { LISTEN_BROKEN, LISTEN_CONNECTING, LISTEN_SUBSCRIBING, LISTEN_LISTENING } listen_state_t;

struct st_tly_pglisten_t {
    h2o_loop_t *loop;
    char *dsn;
    char *channel;
    tly_pglisten_notify_cb on_notify;
    tly_pglisten_ready_cb on_listening;
    void *data;
    PGconn *pg;
    h2o_socket_t *sock;
    int watched_fd;
    listen_state_t state;
    h2o_timeout_t retry_timeout;
    h2o_timeout_entry_t retry;
};

static void listen_step(tly_pglisten_t *l);

static void
listen_unwatch(tly_pglisten_t *l)
{
    if (l->sock != NULL) {
        h2o_socket_read_stop(l->sock);
        h2o_socket_close(l->sock);
        l->sock = NULL;
    }
    l->watched_fd = -1;
}

static void
listen_fail(tly_pglisten_t *l)
{
    listen_unwatch(l);
    if (l->pg != NULL) {
        PQfinish(l->pg);
        l->pg = NULL;
    }
    l->state = LISTEN_BROKEN;
    if (!h2o_timeout_is_linked(&l->retry))
        h2o_timeout_link(l->loop, &l->retry_timeout, &l->retry);
}

static void
on_io(h2o_socket_t *sock, const char *err)
{
    tly_pglisten_t *l = sock->data;
    if (err != NULL) {
        listen_fail(l);
        return;
    }
    listen_step(l);
}

static bool
listen_watch(tly_pglisten_t *l)
{
    int fd = PQsocket(l->pg);
    if (fd < 0)
        return false;
    if (l->sock != NULL && fd == l->watched_fd)
        return true;
    listen_unwatch(l);
    int dupfd = dup(fd);
    if (dupfd < 0)
        return false;
    l->sock = h2o_evloop_socket_create(l->loop, dupfd, H2O_SOCKET_FLAG_DONT_READ);
    l->sock->data = l;
    l->watched_fd = fd;
    h2o_socket_read_start(l->sock, on_io);
    return true;
}

static void
listen_subscribe(tly_pglisten_t *l)
{
    char *ident = PQescapeIdentifier(l->pg, l->channel, strlen(l->channel));
    bool sent = false;
    if (ident != NULL) {
        size_t n = strlen(ident) + sizeof("LISTEN ");
        char *sql = malloc(n);
        if (sql == NULL)
            abort();
        memcpy(sql, "LISTEN ", 7);
        memcpy(sql + 7, ident, strlen(ident) + 1);
        sent = PQsendQuery(l->pg, sql) == 1;
        free(sql);
        PQfreemem(ident);
    }
    if (!sent) {
        listen_fail(l);
        return;
    }
    l->state = LISTEN_SUBSCRIBING;
    if (PQflush(l->pg) == 1)
        h2o_socket_notify_write(l->sock, on_io);
}

static void
listen_step_connecting(tly_pglisten_t *l)
{
    switch (PQconnectPoll(l->pg)) {
    case PGRES_POLLING_OK:
        if (!listen_watch(l))
            listen_fail(l);
        else
            listen_subscribe(l);
        return;
    case PGRES_POLLING_READING:
        if (!listen_watch(l))
            listen_fail(l);
        return;
    case PGRES_POLLING_WRITING:
        if (!listen_watch(l))
            listen_fail(l);
        else
            h2o_socket_notify_write(l->sock, on_io);
        return;
    default:
        listen_fail(l);
        return;
    }
}

/* Reads the LISTEN command's results; true once it succeeded. */
static bool
listen_read_subscription(tly_pglisten_t *l, bool *failed)
{
    bool ok = true;
    while (!PQisBusy(l->pg)) {
        PGresult *res = PQgetResult(l->pg);
        if (res == NULL)
            break;
        ok = ok && PQresultStatus(res) == PGRES_COMMAND_OK;
        PQclear(res);
    }
    if (PQisBusy(l->pg))
        return false;
    *failed = !ok;
    return ok;
}

static void
listen_deliver(tly_pglisten_t *l)
{
    PGnotify *n;
    while (l->pg != NULL && (n = PQnotifies(l->pg)) != NULL) {
        l->on_notify(l->data, n->extra != NULL ? n->extra : "");
        PQfreemem(n);
    }
}

static void
listen_step(tly_pglisten_t *l)
{
    bool failed = false;
    switch (l->state) {
    case LISTEN_CONNECTING:
        listen_step_connecting(l);
        return;
    case LISTEN_SUBSCRIBING:
        if (PQflush(l->pg) == 1) {
            h2o_socket_notify_write(l->sock, on_io);
            return;
        }
        if (!PQconsumeInput(l->pg)) {
            listen_fail(l);
            return;
        }
        if (listen_read_subscription(l, &failed)) {
            l->state = LISTEN_LISTENING;
            l->on_listening(l->data);
        } else if (failed) {
            listen_fail(l);
            return;
        }
        listen_deliver(l);
        return;
    case LISTEN_LISTENING:
        if (!PQconsumeInput(l->pg)) {
            listen_fail(l);
            return;
        }
        listen_deliver(l);
        return;
    case LISTEN_BROKEN:
        return;
    }
}

static void
listen_open(tly_pglisten_t *l)
{
    l->pg = tly_pg_connect_start(l->dsn);
    if (l->pg != NULL)
        PQsetNoticeProcessor(l->pg, tly_log_pq_notice, NULL);
    if (l->pg == NULL || PQstatus(l->pg) == CONNECTION_BAD || PQsetnonblocking(l->pg, 1) != 0) {
        listen_fail(l);
        return;
    }
    l->state = LISTEN_CONNECTING;
    if (!listen_watch(l)) {
        listen_fail(l);
        return;
    }
    h2o_socket_notify_write(l->sock, on_io);
}

static void
on_retry(h2o_timeout_entry_t *entry)
{
    tly_pglisten_t *l = H2O_STRUCT_FROM_MEMBER(tly_pglisten_t, retry, entry);
    if (l->state == LISTEN_BROKEN)
        listen_open(l);
}

tly_pglisten_t *
tly_pglisten_create(h2o_loop_t *loop, const char *dsn, const char *channel, tly_pglisten_notify_cb on_notify,
                    tly_pglisten_ready_cb on_listening, void *data)
{
    tly_pglisten_t *l = calloc(1, sizeof(*l));
    if (l == NULL || (l->dsn = strdup(dsn)) == NULL || (l->channel = strdup(channel)) == NULL)
        abort();
    l->loop = loop;
    l->on_notify = on_notify;
    l->on_listening = on_listening;
    l->data = data;
    l->watched_fd = -1;
    l->retry.cb = on_retry;
    h2o_timeout_init(loop, &l->retry_timeout, RECONNECT_MS);
    listen_open(l);
    return l;
}

void
tly_pglisten_destroy(tly_pglisten_t *l)
{
    if (l == NULL)
        return;
    if (h2o_timeout_is_linked(&l->retry))
        h2o_timeout_unlink(&l->retry);
    listen_unwatch(l);
    if (l->pg != NULL)
        PQfinish(l->pg);
    h2o_timeout_dispose(l->loop, &l->retry_timeout);
    free(l->dsn);
    free(l->channel);
    free(l);
}

bool
tly_pglisten_ready(tly_pglisten_t *l)
{
    return l->state == LISTEN_LISTENING;
}
