/* Multi-threaded h2o server with graceful shutdown. See tally/server.h. */
#include "tally/server.h"
#include "tally/admin.h"
#include "tally/clock.h"
#include "tally/log.h"
#include "tally/metrics.h"

#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static atomic_bool stopping;
static h2o_globalconf_t globalconf;
static h2o_globalconf_t admin_globalconf;

bool
tly_server_stopping(void)
{
    return atomic_load(&stopping);
}

static void
on_signal(int sig)
{
    atomic_store(&stopping, true);
}

tly_server_thread_t *
tly_server_thread_of(h2o_req_t *req)
{
    return H2O_STRUCT_FROM_MEMBER(tly_server_thread_t, ctx, req->conn->ctx);
}

static void
on_accept(h2o_socket_t *listener, const char *err)
{
    tly_server_thread_t *t = listener->data;
    h2o_socket_t *sock;
    if (err != NULL)
        return;
    if ((sock = h2o_evloop_socket_accept(listener)) == NULL)
        return;
    h2o_accept(&t->accept_ctx, sock);
}

static void
on_admin_accept(h2o_socket_t *listener, const char *err)
{
    tly_server_thread_t *t = listener->data;
    h2o_socket_t *sock;
    if (err != NULL || (sock = h2o_evloop_socket_accept(listener)) == NULL)
        return;
    h2o_accept(&t->admin_accept_ctx, sock);
}

static bool
admin_ready(void *arg, json_t *reasons)
{
    tly_server_thread_t *t = arg;
    if (tly_server_stopping()) {
        json_object_set_new(reasons, "stopping", json_true());
        return false;
    }
    return t->config->thread_ready == NULL || t->config->thread_ready(t->app, reasons);
}

static int
on_admin_req(h2o_handler_t *self, h2o_req_t *req)
{
    tly_server_thread_t *t = H2O_STRUCT_FROM_MEMBER(tly_server_thread_t, admin_ctx, req->conn->ctx);
    tly_admin_handle(req, admin_ready, t);
    return 0;
}

static void
stop_accepting(tly_server_thread_t *t)
{
    if (t->listener == NULL)
        return;
    h2o_socket_read_stop(t->listener);
    h2o_socket_close(t->listener);
    t->listener = NULL;
    h2o_context_request_shutdown(&t->ctx);
    if (t->admin_listener != NULL) {
        h2o_socket_read_stop(t->admin_listener);
        h2o_socket_close(t->admin_listener);
        t->admin_listener = NULL;
        h2o_context_request_shutdown(&t->admin_ctx);
    }
}

/*
 * Everything h2o-related for a thread is created on that thread: h2o keeps
 * per-thread (__thread) buffer recycling, and a socket remembers the thread it
 * was created on; a socket made on the main thread and used on a loop thread
 * would share the main thread's recycle list with every other loop thread.
 */
static bool
thread_setup(tly_server_thread_t *t)
{
    tly_server_config_t *cfg = t->config;
    t->loop = h2o_evloop_create();
    h2o_context_init(&t->ctx, t->loop, &globalconf);
    t->accept_ctx.ctx = &t->ctx;
    t->accept_ctx.hosts = globalconf.hosts;
    t->listener = h2o_evloop_socket_create(t->loop, t->listen_fd, H2O_SOCKET_FLAG_DONT_READ);
    t->listener->data = t;
    if (t->admin_fd >= 0) {
        /* a context of its own on the same loop, so the API's handlers never see admin requests */
        h2o_context_init(&t->admin_ctx, t->loop, &admin_globalconf);
        t->admin_accept_ctx.ctx = &t->admin_ctx;
        t->admin_accept_ctx.hosts = admin_globalconf.hosts;
        t->admin_listener = h2o_evloop_socket_create(t->loop, t->admin_fd, H2O_SOCKET_FLAG_DONT_READ);
        t->admin_listener->data = t;
        h2o_socket_read_start(t->admin_listener, on_admin_accept);
    }
    t->app = cfg->thread_init(t, cfg->arg);
    if (t->app == NULL) {
        tly_logf(TLY_LOG_ERROR, "could not initialise thread %zu", t->index);
        return false;
    }
    return true;
}

/* Starts accepting once the application can serve, or once it waited long enough. */
static void
accept_when_serving(tly_server_thread_t *t, int64_t started_us)
{
    tly_server_config_t *cfg = t->config;
    bool serving = cfg->thread_serving == NULL || cfg->thread_serving(t->app);
    bool waited = tly_clock_mono_us() - started_us > (int64_t)TLY_SERVER_READY_WAIT_MS * 1000;
    if (!serving && !waited)
        return;
    if (!serving)
        tly_logf(TLY_LOG_WARN, "%s thread %zu not ready after %d ms, serving anyway", cfg->name, t->index,
                 TLY_SERVER_READY_WAIT_MS);
    h2o_socket_read_start(t->listener, on_accept);
    t->accepting = true;
}

static void *
thread_main(void *arg)
{
    tly_server_thread_t *t = arg;
    tly_server_config_t *cfg = t->config;
    int64_t deadline = 0, started_us = tly_clock_mono_us();
    if (!thread_setup(t)) {
        t->failed = true;
        atomic_store(&stopping, true);
        return NULL;
    }
    accept_when_serving(t, started_us);
    while (1) {
        /* while waiting to serve, look every 5 ms: the first connection is the start-up's cost */
        h2o_evloop_run(t->loop, t->accepting ? 50 : 5);
        if (!t->accepting && t->listener != NULL && !tly_server_stopping())
            accept_when_serving(t, started_us);
        if (!tly_server_stopping())
            continue;
        if (deadline == 0) {
            stop_accepting(t);
            deadline = tly_clock_mono_us() + (int64_t)cfg->shutdown_grace_ms * 1000;
        }
        if (cfg->thread_inflight(t->app) == 0 || tly_clock_mono_us() > deadline)
            break;
    }
    /* let the last responses leave their sockets */
    for (int i = 0; i < 4; ++i)
        h2o_evloop_run(t->loop, 10);
    cfg->thread_dispose(t->app);
    return NULL;
}

/* Binds here, so that a port in use is reported at once; the rest happens on the thread. */
static int
start_thread(tly_server_thread_t *t, char *err, size_t errcap)
{
    tly_server_config_t *cfg = t->config;
    t->admin_fd = -1;
    if ((t->listen_fd = tly_admin_listen(cfg->host, cfg->port, true, err, errcap)) < 0)
        return -1;
    /* One admin listener, on the first thread, without SO_REUSEPORT. Taken by
       another process: the API still serves, without its admin endpoint
       (an error line says so; e.g. a second instance on one host). */
    if (t->index == 0 && cfg->admin_port != 0 &&
        (t->admin_fd = tly_admin_listen(cfg->host, cfg->admin_port, false, err, errcap)) < 0)
        tly_log(TLY_LOG_ERROR, "admin endpoint unavailable, serving without it", "error", err, NULL);
    if (pthread_create(&t->tid, NULL, thread_main, t) != 0) {
        snprintf(err, errcap, "could not start thread %zu", t->index);
        close(t->listen_fd);
        if (t->admin_fd >= 0)
            close(t->admin_fd);
        return -1;
    }
    return 0;
}

int
tly_server_run(tly_server_config_t *cfg)
{
    char err[256];
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    h2o_config_init(&globalconf);
    /* h2o refuses a body over this (413) before buffering it: it is the API's own limit, not a larger one */
    globalconf.max_request_entity_size = cfg->max_body;
    /* HTTP/1.1 only: no cleartext upgrade to HTTP/2 (h2c) on a port meant for the gateway */
    globalconf.http1.upgrade_to_http2 = 0;
    globalconf.server_name = h2o_iovec_init(H2O_STRLIT("tally"));
    h2o_hostconf_t *hostconf = h2o_config_register_host(&globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *pathconf = h2o_config_register_path(hostconf, "/", 0);
    h2o_handler_t *handler = h2o_create_handler(pathconf, sizeof(*handler));
    handler->on_req = cfg->on_req;
    if (cfg->admin_port != 0) {
        h2o_config_init(&admin_globalconf);
        admin_globalconf.server_name = globalconf.server_name;
        h2o_hostconf_t *admin_host = h2o_config_register_host(&admin_globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
        h2o_handler_t *admin = h2o_create_handler(h2o_config_register_path(admin_host, "/", 0), sizeof(*admin));
        admin->on_req = on_admin_req;
        tly_metrics_register_all();
    }

    tly_server_thread_t *threads = calloc(cfg->threads, sizeof(*threads));
    if (threads == NULL)
        abort();
    size_t started = 0;
    for (; started < cfg->threads; ++started) {
        threads[started].config = cfg;
        threads[started].index = started;
        if (start_thread(&threads[started], err, sizeof(err)) != 0) {
            tly_log(TLY_LOG_ERROR, err, NULL);
            atomic_store(&stopping, true);
            break;
        }
    }
    if (started == cfg->threads) {
        tly_logf(TLY_LOG_INFO, "%s listening on %s:%u with %zu threads", cfg->name, cfg->host, cfg->port, cfg->threads);
        if (threads[0].admin_fd >= 0)
            tly_logf(TLY_LOG_INFO, "%s admin endpoint on %s:%u (/metrics, /healthz, /readyz)", cfg->name, cfg->host,
                     cfg->admin_port);
    }
    bool failed = started != cfg->threads;
    for (size_t i = 0; i < started; ++i) {
        pthread_join(threads[i].tid, NULL);
        failed = failed || threads[i].failed;
    }
    free(threads);
    if (failed)
        return -1;
    tly_logf(TLY_LOG_INFO, "%s stopped", cfg->name);
    return 0;
}
