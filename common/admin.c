/* /metrics, /healthz and /readyz on an admin port. See tally/admin.h. */
#include "tally/admin.h"
#include "tally/http.h"
#include "tally/log.h"
#include "tally/metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int
tly_admin_listen(const char *host, uint16_t port, bool reuseport, char *err, size_t errcap)
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
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0))
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
send_text(h2o_req_t *req, int status, const char *content_type, const char *body, size_t len)
{
    req->res.status = status;
    req->res.reason = tly_http_reason(status);
    req->res.content_length = len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, content_type, strlen(content_type));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    h2o_send_inline(req, body, len); /* copies the body */
}

void
tly_admin_handle(h2o_req_t *req, tly_admin_ready_cb ready, void *arg)
{
    h2o_iovec_t path = req->path_normalized;
    bool get = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")) ||
               h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"));
    bool metrics = h2o_memis(path.base, path.len, H2O_STRLIT("/metrics"));
    bool healthz = h2o_memis(path.base, path.len, H2O_STRLIT("/healthz"));
    bool readyz = h2o_memis(path.base, path.len, H2O_STRLIT("/readyz"));
    if (!metrics && !healthz && !readyz) {
        tly_http_send_problem(req, 404, "not_found", "the admin port serves /metrics, /healthz and /readyz", NULL);
        return;
    }
    if (!get) {
        tly_http_add_header(req, "allow", "GET, HEAD");
        tly_http_send_problem(req, 405, "method_not_allowed", "the admin port serves GET", NULL);
        return;
    }
    if (metrics) {
        size_t len;
        char *text = tly_metrics_render(tly_metrics_default(), &len);
        send_text(req, 200, TLY_METRICS_CONTENT_TYPE, text, len);
        free(text);
        return;
    }
    if (healthz) {
        send_text(req, 200, "application/json", H2O_STRLIT("{\"status\":\"ok\"}"));
        return;
    }
    json_t *reasons = json_object();
    bool ok = ready == NULL || ready(arg, reasons);
    /* ready with a part degraded (the rate-limit store): 200, and it says so */
    const char *status = !ok ? "unavailable" : json_object_get(reasons, "degraded") != NULL ? "degraded" : "ok";
    json_t *o = json_pack("{s:s, s:o}", "status", status, "reasons", reasons);
    char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    send_text(req, ok ? 200 : 503, "application/json", s, strlen(s));
    free(s);
    json_decref(o);
}

/* ---- a thread of its own ------------------------------------------------- */

typedef struct st_admin_loop_t {
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_evloop_t *loop;
} admin_loop_t;

struct st_tly_admin_t {
    h2o_globalconf_t globalconf;
    admin_loop_t *loop;
    struct st_tly_admin_t *next_stopped;
    tly_admin_ready_cb ready;
    void *arg;
    int fd;
    atomic_bool stop;
    pthread_t tid;
};

typedef struct st_admin_handler_t {
    h2o_handler_t super;
    tly_admin_t *admin;
} admin_handler_t;

static int
on_admin_req(h2o_handler_t *self, h2o_req_t *req)
{
    tly_admin_t *a = ((admin_handler_t *)self)->admin;
    tly_admin_handle(req, a->ready, a->arg);
    return 0;
}

static void
on_accept(h2o_socket_t *listener, const char *err)
{
    admin_loop_t *l = listener->data;
    h2o_socket_t *sock;
    if (err != NULL || (sock = h2o_evloop_socket_accept(listener)) == NULL)
        return;
    h2o_accept(&l->accept_ctx, sock);
}

/* Loop, context and sockets are created here, on the thread that uses them. */
static void *
admin_main(void *arg)
{
    tly_admin_t *a = arg;
    admin_loop_t *l = a->loop;
    h2o_evloop_t *loop = l->loop = h2o_evloop_create();
    h2o_context_init(&l->ctx, loop, &a->globalconf);
    l->accept_ctx.ctx = &l->ctx;
    l->accept_ctx.hosts = a->globalconf.hosts;
    h2o_socket_t *listener = h2o_evloop_socket_create(loop, a->fd, H2O_SOCKET_FLAG_DONT_READ);
    listener->data = l;
    h2o_socket_read_start(listener, on_accept);
    while (!atomic_load(&a->stop))
        h2o_evloop_run(loop, 100);
    h2o_socket_read_stop(listener);
    h2o_socket_close(listener); /* closes a->fd */
    h2o_context_request_shutdown(&l->ctx);
    for (int i = 0; i < 5; ++i)
        h2o_evloop_run(loop, 10);
    /* the context and loop are not disposed: open keep-alive connections may still point at them */
    return NULL;
}

tly_admin_t *
tly_admin_start(const char *host, uint16_t port, tly_admin_ready_cb ready, void *arg, char *err, size_t errcap)
{
    tly_admin_t *a = calloc(1, sizeof(*a));
    if (a == NULL)
        abort();
    a->ready = ready;
    a->arg = arg;
    if ((a->loop = calloc(1, sizeof(*a->loop))) == NULL)
        abort();
    if ((a->fd = tly_admin_listen(host, port, false, err, errcap)) < 0) {
        free(a->loop);
        free(a);
        return NULL;
    }
    h2o_config_init(&a->globalconf);
    a->globalconf.server_name = h2o_iovec_init(H2O_STRLIT("tally-admin"));
    h2o_hostconf_t *host_conf = h2o_config_register_host(&a->globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *pathconf = h2o_config_register_path(host_conf, "/", 0);
    admin_handler_t *handler = (admin_handler_t *)h2o_create_handler(pathconf, sizeof(*handler));
    handler->super.on_req = on_admin_req;
    handler->admin = a;
    if (pthread_create(&a->tid, NULL, admin_main, a) != 0) {
        snprintf(err, errcap, "could not start the admin thread");
        close(a->fd);
        free(a->loop);
        free(a);
        return NULL;
    }
    tly_logf(TLY_LOG_INFO, "admin endpoint on %s:%u (/metrics, /healthz, /readyz)", host, port);
    return a;
}

/* Stopped admins stay allocated (and reachable): connections the loop still
   holds point into their context and configuration; the process is ending. */
static tly_admin_t *stopped;
static pthread_mutex_t stopped_lock = PTHREAD_MUTEX_INITIALIZER;

void
tly_admin_stop(tly_admin_t *a)
{
    if (a == NULL)
        return;
    atomic_store(&a->stop, true);
    pthread_join(a->tid, NULL);
    pthread_mutex_lock(&stopped_lock);
    a->next_stopped = stopped;
    stopped = a;
    pthread_mutex_unlock(&stopped_lock);
}
