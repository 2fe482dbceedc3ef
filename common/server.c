/* Multi-threaded h2o server with graceful shutdown. See tally/server.h. */
#include "tally/server.h"
#include "tally/clock.h"
#include "tally/log.h"

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

static int
open_listener(const char *host, uint16_t port, char *err, size_t errcap)
{
    struct sockaddr_in addr;
    int fd = -1, on = 1;
    const char *what = "socket";
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        snprintf(err, errcap, "invalid listen address \"%s\"", host);
        return -1;
    }
    if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        goto Error;
    what = "setsockopt";
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0)
        goto Error;
    what = "bind";
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0)
        goto Error;
    what = "listen";
    if (listen(fd, SOMAXCONN) != 0)
        goto Error;
    return fd;
Error:
    snprintf(err, errcap, "could not %s on %s:%u: %s", what, host, port, strerror(errno));
    if (fd >= 0)
        close(fd);
    return -1;
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
stop_accepting(tly_server_thread_t *t)
{
    if (t->listener == NULL)
        return;
    h2o_socket_read_stop(t->listener);
    h2o_socket_close(t->listener);
    t->listener = NULL;
    h2o_context_request_shutdown(&t->ctx);
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
    h2o_socket_read_start(t->listener, on_accept);
    t->app = cfg->thread_init(t, cfg->arg);
    if (t->app == NULL) {
        tly_logf(TLY_LOG_ERROR, "could not initialise thread %zu", t->index);
        return false;
    }
    return true;
}

static void *
thread_main(void *arg)
{
    tly_server_thread_t *t = arg;
    tly_server_config_t *cfg = t->config;
    int64_t deadline = 0;
    if (!thread_setup(t)) {
        t->failed = true;
        atomic_store(&stopping, true);
        return NULL;
    }
    while (1) {
        h2o_evloop_run(t->loop, 50);
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
    if ((t->listen_fd = open_listener(cfg->host, cfg->port, err, errcap)) < 0)
        return -1;
    if (pthread_create(&t->tid, NULL, thread_main, t) != 0) {
        snprintf(err, errcap, "could not start thread %zu", t->index);
        close(t->listen_fd);
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
    globalconf.max_request_entity_size = cfg->max_body;
    globalconf.server_name = h2o_iovec_init(H2O_STRLIT("tally"));
    h2o_hostconf_t *hostconf = h2o_config_register_host(&globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *pathconf = h2o_config_register_path(hostconf, "/", 0);
    h2o_handler_t *handler = h2o_create_handler(pathconf, sizeof(*handler));
    handler->on_req = cfg->on_req;

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
    if (started == cfg->threads)
        tly_logf(TLY_LOG_INFO, "%s listening on %s:%u with %zu threads", cfg->name, cfg->host, cfg->port, cfg->threads);
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
