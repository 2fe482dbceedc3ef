/*
 * HTTP ceiling: a bare h2o 2.2 evloop server with the API's shape (N threads,
 * one evloop and one SO_REUSEPORT listener each) that answers from memory:
 *   POST anything      -> 202, Location, the body of a real 202 (--post-body FILE)
 *   GET  anything      -> 200, strong ETag, the body of a real account (--get-body FILE)
 *   GET + If-None-Match matching the ETag -> 304, no body
 * No auth, no database, no Kafka, no logging: what the API's request path
 * costs on top of h2o is the difference.
 *
 *   ceiling_h2o --port=N [--threads=2] --post-body=FILE --get-body=FILE [--etag='"account-v2"']
 * Runs until SIGTERM/SIGINT.
 */
#define H2O_USE_LIBUV 0
#include <h2o.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static h2o_globalconf_t config;
static h2o_iovec_t post_body, get_body, etag;
static volatile sig_atomic_t stopping;
static int port = 0, nthreads = 2;

static h2o_iovec_t
slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        exit(2);
    }
    char *buf = malloc(1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    fclose(f);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        --n; /* files written by shell tools end in a newline */
    buf[n] = '\0';
    return h2o_iovec_init(buf, n);
}

static void
send_body(h2o_req_t *req, int status, const char *reason, h2o_iovec_t body)
{
    req->res.status = status;
    req->res.reason = reason;
    /* h2o_send_inline leaves content_length unset (chunked); the API sets it */
    req->res.content_length = body.len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("private, no-cache"));
    if (body.len != 0)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    h2o_send_inline(req, body.base, body.len);
}

static int
on_req(h2o_handler_t *self, h2o_req_t *req)
{
    if (h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"))) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_LOCATION, NULL,
                       H2O_STRLIT("/v1/jobs/00000000-0000-4000-8000-000000000000"));
        send_body(req, 202, "Accepted", post_body);
        return 0;
    }
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ETAG, NULL, etag.base, etag.len);
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_IF_NONE_MATCH, -1);
    if (i >= 0 && h2o_memis(req->headers.entries[i].value.base, req->headers.entries[i].value.len, etag.base, etag.len)) {
        send_body(req, 304, "Not Modified", h2o_iovec_init("", 0));
        return 0;
    }
    send_body(req, 200, "OK", get_body);
    return 0;
}

typedef struct {
    h2o_evloop_t *loop;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    pthread_t tid;
} thread_t;

static void
on_accept(h2o_socket_t *listener, const char *err)
{
    thread_t *t = listener->data;
    h2o_socket_t *sock;
    if (err != NULL || (sock = h2o_evloop_socket_accept(listener)) == NULL)
        return;
    h2o_accept(&t->accept_ctx, sock);
}

static int
listener_fd(void)
{
    struct sockaddr_in addr;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), on = 1;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
        listen(fd, SOMAXCONN) != 0) {
        perror("listen");
        exit(1);
    }
    return fd;
}

static void *
thread_main(void *arg)
{
    thread_t *t = arg;
    while (!stopping)
        h2o_evloop_run(t->loop, 100);
    return NULL;
}

static void
on_signal(int sig)
{
    stopping = 1;
}

int
main(int argc, char **argv)
{
    const char *post_file = NULL, *get_file = NULL, *etag_s = "\"account-v2\"";
    for (int i = 1; i < argc; ++i) {
        if (strncmp(argv[i], "--port=", 7) == 0)
            port = atoi(argv[i] + 7);
        else if (strncmp(argv[i], "--threads=", 10) == 0)
            nthreads = atoi(argv[i] + 10);
        else if (strncmp(argv[i], "--post-body=", 12) == 0)
            post_file = argv[i] + 12;
        else if (strncmp(argv[i], "--get-body=", 11) == 0)
            get_file = argv[i] + 11;
        else if (strncmp(argv[i], "--etag=", 7) == 0)
            etag_s = argv[i] + 7;
        else {
            fprintf(stderr, "usage: ceiling_h2o --port=N [--threads=N] --post-body=FILE --get-body=FILE [--etag=E]\n");
            return 2;
        }
    }
    if (port <= 0 || nthreads <= 0 || post_file == NULL || get_file == NULL) {
        fprintf(stderr, "ceiling_h2o: --port, --post-body and --get-body are required\n");
        return 2;
    }
    post_body = slurp(post_file);
    get_body = slurp(get_file);
    etag = h2o_iovec_init(etag_s, strlen(etag_s));

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    h2o_config_init(&config);
    config.server_name = h2o_iovec_init(H2O_STRLIT("tally"));
    h2o_hostconf_t *host = h2o_config_register_host(&config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    h2o_handler_t *handler = h2o_create_handler(path, sizeof(*handler));
    handler->on_req = on_req;

    thread_t *threads = calloc((size_t)nthreads, sizeof(*threads));
    for (int i = 0; i < nthreads; ++i) {
        thread_t *t = &threads[i];
        t->loop = h2o_evloop_create();
        h2o_context_init(&t->ctx, t->loop, &config);
        t->accept_ctx.ctx = &t->ctx;
        t->accept_ctx.hosts = config.hosts;
        h2o_socket_t *l = h2o_evloop_socket_create(t->loop, listener_fd(), H2O_SOCKET_FLAG_DONT_READ);
        l->data = t;
        h2o_socket_read_start(l, on_accept);
        pthread_create(&t->tid, NULL, thread_main, t);
    }
    fprintf(stderr, "ceiling_h2o listening on 127.0.0.1:%d with %d threads\n", port, nthreads);
    for (int i = 0; i < nthreads; ++i)
        pthread_join(threads[i].tid, NULL);
    return 0;
}
