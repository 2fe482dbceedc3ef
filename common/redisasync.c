/*
 * hiredis's asynchronous API driven by an h2o evloop. See tally/redisasync.h.
 *
 * hiredis asks for read and write interest through its ev hooks; the loop
 * watches a dup() of its socket (h2o owns and closes the duplicate, hiredis
 * the original) and hands readiness back to redisAsyncHandleRead/Write. A
 * connection is down (no context), connecting, or connected; losing it, a
 * failed connect, a connect slower than a second or three commands in a row
 * past their deadline drop the context, and a timer opens a new one.
 */
#include "tally/redisasync.h"
#include "tally/clock.h"

#include <hiredis/async.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RECONNECT_MS 250
#define CONNECT_TIMEOUT_MS 1000
#define TIMEOUTS_BEFORE_DROP 3

typedef struct st_redis_call_t {
    tly_redis_t *r;
    tly_redis_cb cb;
    void *data;
    bool answered;
    h2o_timeout_entry_t deadline;
} redis_call_t;

struct st_tly_redis_t {
    h2o_loop_t *loop;
    char host[256];
    int port;
    redisAsyncContext *ac;
    h2o_socket_t *sock;
    bool connected, writing, destroying;
    int timeouts_in_row;
    int64_t last_reply_us, last_timeout_us;
    uint64_t sent;
    h2o_timeout_t call_timeout, retry_timeout, connect_timeout;
    h2o_timeout_entry_t retry_entry, connect_entry;
};

static void conn_open(tly_redis_t *r);

bool
tly_redis_url_parse(const char *url, char *host, size_t hostcap, int *port)
{
    static const char scheme[] = "redis://";
    if (url == NULL || strncmp(url, scheme, sizeof(scheme) - 1) != 0)
        return false;
    const char *h = url + sizeof(scheme) - 1, *end = h + strcspn(h, ":/");
    size_t hlen = (size_t)(end - h);
    if (hlen == 0 || hlen >= hostcap)
        return false;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = 6379;
    if (*end == ':') {
        char *after;
        long p = strtol(end + 1, &after, 10);
        if (after == end + 1 || p < 1 || p > 65535)
            return false;
        *port = (int)p;
        end = after;
    }
    return *end == '\0' || strcmp(end, "/") == 0;
}

static void
schedule_reconnect(tly_redis_t *r)
{
    if (!r->destroying && !h2o_timeout_is_linked(&r->retry_entry))
        h2o_timeout_link(r->loop, &r->retry_timeout, &r->retry_entry);
}

/* Frees the context (pending callbacks get NULL replies) and plans a new one. */
static void
conn_drop(tly_redis_t *r)
{
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    r->connected = false;
    if (h2o_timeout_is_linked(&r->connect_entry))
        h2o_timeout_unlink(&r->connect_entry);
    if (ac != NULL)
        redisAsyncFree(ac);
    schedule_reconnect(r);
}

/* ---- hiredis's ev hooks -------------------------------------------------- */

static void
on_readable(h2o_socket_t *sock, const char *err)
{
    tly_redis_t *r = sock->data;
    if (r->ac != NULL)
        redisAsyncHandleRead(r->ac);
}

static void
on_writable(h2o_socket_t *sock, const char *err)
{
    tly_redis_t *r = sock->data;
    r->writing = false;
    if (r->ac != NULL)
        redisAsyncHandleWrite(r->ac);
}

static void
ev_add_read(void *p)
{
    tly_redis_t *r = p;
    if (r->sock != NULL && !h2o_socket_is_reading(r->sock))
        h2o_socket_read_start(r->sock, on_readable);
}

static void
ev_del_read(void *p)
{
    tly_redis_t *r = p;
    if (r->sock != NULL && h2o_socket_is_reading(r->sock))
        h2o_socket_read_stop(r->sock);
}

static void
ev_add_write(void *p)
{
    tly_redis_t *r = p;
    if (r->sock != NULL && !r->writing) {
        r->writing = true;
        h2o_socket_notify_write(r->sock, on_writable);
    }
}

/* A pending write notification is one-shot and harmless: hiredis finds nothing to write. */
static void
ev_del_write(void *p)
{
}

static void
ev_cleanup(void *p)
{
    tly_redis_t *r = p;
    if (r->sock != NULL) {
        h2o_socket_read_stop(r->sock);
        h2o_socket_close(r->sock);
        r->sock = NULL;
    }
    r->writing = false;
}

/* ---- connection ---------------------------------------------------------- */

static void
on_connect(const redisAsyncContext *ac, int status)
{
    tly_redis_t *r = ac->data;
    if (h2o_timeout_is_linked(&r->connect_entry))
        h2o_timeout_unlink(&r->connect_entry);
    if (status != REDIS_OK) {
        /* hiredis frees the context itself after a failed connect */
        r->ac = NULL;
        schedule_reconnect(r);
        return;
    }
    r->connected = true;
    r->timeouts_in_row = 0;
    r->last_reply_us = tly_clock_mono_us();
}

static void
on_disconnect(const redisAsyncContext *ac, int status)
{
    tly_redis_t *r = ac->data;
    if (r->ac == ac) {
        r->ac = NULL;
        r->connected = false;
        schedule_reconnect(r);
    }
}

static void
on_connect_timeout(h2o_timeout_entry_t *entry)
{
    tly_redis_t *r = H2O_STRUCT_FROM_MEMBER(tly_redis_t, connect_entry, entry);
    if (!r->connected)
        conn_drop(r);
}

static void
on_retry(h2o_timeout_entry_t *entry)
{
    tly_redis_t *r = H2O_STRUCT_FROM_MEMBER(tly_redis_t, retry_entry, entry);
    if (r->ac == NULL)
        conn_open(r);
}

static void
conn_open(tly_redis_t *r)
{
    redisAsyncContext *ac = redisAsyncConnect(r->host, r->port);
    int fd;
    if (ac == NULL || ac->err != 0 || (fd = dup(ac->c.fd)) < 0) {
        if (ac != NULL)
            redisAsyncFree(ac);
        schedule_reconnect(r);
        return;
    }
    r->ac = ac;
    ac->data = r;
    r->sock = h2o_evloop_socket_create(r->loop, fd, H2O_SOCKET_FLAG_DONT_READ);
    r->sock->data = r;
    ac->ev.data = r;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    redisAsyncSetConnectCallback(ac, on_connect); /* asks for the first write event */
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    h2o_timeout_link(r->loop, &r->connect_timeout, &r->connect_entry);
}

/* ---- commands ------------------------------------------------------------ */

static void
on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    redis_call_t *call = privdata;
    tly_redis_t *r = call->r;
    if (!call->answered) {
        call->answered = true;
        h2o_timeout_unlink(&call->deadline);
        if (reply != NULL) {
            r->timeouts_in_row = 0;
            r->last_reply_us = tly_clock_mono_us();
        }
        call->cb(call->data, reply, reply != NULL ? NULL : "connection to redis lost");
    }
    free(call);
}

static void
on_deadline(h2o_timeout_entry_t *entry)
{
    redis_call_t *call = H2O_STRUCT_FROM_MEMBER(redis_call_t, deadline, entry);
    tly_redis_t *r = call->r;
    call->answered = true; /* hiredis frees it when the reply, or the end of the connection, comes */
    r->last_timeout_us = tly_clock_mono_us();
    call->cb(call->data, NULL, "redis did not answer in time");
    if (++r->timeouts_in_row >= TIMEOUTS_BEFORE_DROP && r->ac != NULL)
        conn_drop(r);
}

void
tly_redis_command(tly_redis_t *r, int argc, const char **argv, const size_t *lens, tly_redis_cb cb, void *data)
{
    if (r->ac == NULL || !r->connected) {
        cb(data, NULL, "redis is unavailable");
        return;
    }
    redis_call_t *call = calloc(1, sizeof(*call));
    if (call == NULL)
        abort();
    call->r = r;
    call->cb = cb;
    call->data = data;
    call->deadline.cb = on_deadline;
    if (redisAsyncCommandArgv(r->ac, on_reply, call, argc, argv, lens) != REDIS_OK) {
        free(call);
        cb(data, NULL, "redis is unavailable");
        return;
    }
    ++r->sent;
    h2o_timeout_link(r->loop, &r->call_timeout, &call->deadline);
}

/* ---- life ---------------------------------------------------------------- */

tly_redis_t *
tly_redis_create(h2o_loop_t *loop, const char *url, int timeout_ms)
{
    char host[256];
    int port;
    if (!tly_redis_url_parse(url, host, sizeof(host), &port))
        return NULL;
    tly_redis_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        abort();
    r->loop = loop;
    snprintf(r->host, sizeof(r->host), "%s", host);
    r->port = port;
    h2o_timeout_init(loop, &r->call_timeout, (uint64_t)timeout_ms);
    h2o_timeout_init(loop, &r->retry_timeout, RECONNECT_MS);
    h2o_timeout_init(loop, &r->connect_timeout, CONNECT_TIMEOUT_MS);
    r->retry_entry.cb = on_retry;
    r->connect_entry.cb = on_connect_timeout;
    conn_open(r);
    return r;
}

void
tly_redis_destroy(tly_redis_t *r)
{
    if (r == NULL)
        return;
    r->destroying = true;
    if (h2o_timeout_is_linked(&r->retry_entry))
        h2o_timeout_unlink(&r->retry_entry);
    conn_drop(r);
    h2o_timeout_dispose(r->loop, &r->call_timeout);
    h2o_timeout_dispose(r->loop, &r->retry_timeout);
    h2o_timeout_dispose(r->loop, &r->connect_timeout);
    free(r);
}

bool
tly_redis_healthy(const tly_redis_t *r)
{
    return r->connected && r->last_reply_us >= r->last_timeout_us;
}

uint64_t
tly_redis_commands_sent(const tly_redis_t *r)
{
    return r->sent;
}
