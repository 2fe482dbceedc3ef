/* The tests' webhook receiver. See tly_test_receiver.h. */
#include "tly_test_receiver.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PATHS 64
#define MAX_CONNS 1024
#define HEAD_MAX 8192
#define BODY_MAX (1 << 20)

typedef struct st_path_t {
    char path[128];
    tly_test_script_t script;
    char retry_after[64];
    char secrets[TLY_TEST_RECEIVER_MAX_SECRETS][128];
    int seen;
} path_t;

struct st_tly_test_receiver_t {
    pthread_mutex_t lock;
    int port;
    int listen_fd;
    atomic_bool down, stopping;
    pthread_t acceptor;
    bool acceptor_running;
    path_t paths[MAX_PATHS];
    int npaths;
    int conns[MAX_CONNS]; /* open connection fds, -1 free */
    atomic_int nthreads;
    tly_test_hit_t *hits;
    int nhits, caphits;
};

typedef struct st_conn_t {
    tly_test_receiver_t *r;
    int fd;
    int slot;
} conn_t;

static int64_t
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* --- the signature, written from the documented algorithm ------------------- */

static int
b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* Standard base64 with padding; returns the decoded length or -1. */
static int
b64_decode(const char *in, unsigned char *out, size_t cap)
{
    size_t len = strlen(in), n = 0;
    if (len % 4 != 0)
        return -1;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        for (int k = 0; k < 4; ++k)
            v[k] = in[i + k] == '=' ? 0 : b64_value(in[i + k]);
        if (v[0] < 0 || v[1] < 0 || v[2] < 0 || v[3] < 0)
            return -1;
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        int bytes = in[i + 2] == '=' ? 1 : in[i + 3] == '=' ? 2 : 3;
        if (n + (size_t)bytes > cap)
            return -1;
        out[n++] = (unsigned char)(w >> 16);
        if (bytes > 1)
            out[n++] = (unsigned char)(w >> 8);
        if (bytes > 2)
            out[n++] = (unsigned char)w;
    }
    return (int)n;
}

static void
b64_encode(const unsigned char *in, size_t len, char *out)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t w = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < len ? in[i + 2] : 0);
        out[o++] = t[(w >> 18) & 63];
        out[o++] = t[(w >> 12) & 63];
        out[o++] = i + 1 < len ? t[(w >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? t[w & 63] : '=';
    }
    out[o] = '\0';
}

bool
tly_test_webhook_sign(const char *secret, const char *id, int64_t timestamp, const char *body, size_t len, char *out, size_t cap)
{
    unsigned char key[256], mac[32];
    unsigned int maclen = 0;
    if (strncmp(secret, "whsec_", 6) != 0)
        return false;
    int keylen = b64_decode(secret + 6, key, sizeof(key));
    if (keylen <= 0)
        return false;
    size_t hn = (size_t)snprintf(NULL, 0, "%s.%lld.", id, (long long)timestamp);
    char *msg = malloc(hn + len + 1);
    snprintf(msg, hn + 1, "%s.%lld.", id, (long long)timestamp);
    memcpy(msg + hn, body, len);
    bool ok = HMAC(EVP_sha256(), key, keylen, (unsigned char *)msg, hn + len, mac, &maclen) != NULL && maclen == 32;
    free(msg);
    if (!ok || cap < 3 + 45)
        return false;
    memcpy(out, "v1,", 3);
    b64_encode(mac, maclen, out + 3);
    return true;
}

/* --- requests --------------------------------------------------------------- */

static path_t *
path_find(tly_test_receiver_t *r, const char *path)
{
    for (int i = 0; i < r->npaths; ++i)
        if (strcmp(r->paths[i].path, path) == 0)
            return &r->paths[i];
    return NULL;
}

/* The value of header `name` in the head block (copied into `out`); false when absent. */
static bool
header(const char *head, const char *name, char *out, size_t cap)
{
    size_t n = strlen(name);
    for (const char *p = strstr(head, "\r\n"); p != NULL; p = strstr(p, "\r\n")) {
        p += 2;
        if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
            const char *v = p + n + 1;
            while (*v == ' ')
                ++v;
            size_t len = strcspn(v, "\r\n");
            if (len >= cap)
                len = cap - 1;
            memcpy(out, v, len);
            out[len] = '\0';
            return true;
        }
    }
    return false;
}

static void
verify(tly_test_hit_t *h, const char *sigs, const path_t *p)
{
    char copy[1024], expect[64];
    snprintf(copy, sizeof(copy), "%s", sigs);
    int64_t now_s = now_us() / 1000000;
    h->timestamp_ok = h->timestamp > now_s - 300 && h->timestamp < now_s + 300;
    char *save = NULL;
    for (char *tok = strtok_r(copy, " ", &save); tok != NULL; tok = strtok_r(NULL, " ", &save)) {
        h->nsigs++;
        for (int i = 0; p != NULL && i < TLY_TEST_RECEIVER_MAX_SECRETS; ++i)
            if (p->secrets[i][0] != '\0' &&
                tly_test_webhook_sign(p->secrets[i], h->id, h->timestamp, h->body, strlen(h->body), expect, sizeof(expect)) &&
                strcmp(expect, tok) == 0)
                h->sig_ok |= 1u << i;
    }
}

/* Records the request; returns its index and what to do with it (status, or 0 = hang `*hang_ms`). */
static int
record(tly_test_receiver_t *r, const char *path, const char *head, const char *body, int *status, int *hang_ms, char *retry_after,
       size_t ra_cap)
{
    char v[1024];
    tly_test_hit_t h;
    memset(&h, 0, sizeof(h));
    snprintf(h.path, sizeof(h.path), "%s", path);
    h.at_us = now_us();
    h.body = strdup(body);
    if (header(head, "webhook-id", v, sizeof(v)))
        snprintf(h.id, sizeof(h.id), "%.79s", v);
    if (header(head, "webhook-timestamp", v, sizeof(v)))
        h.timestamp = strtoll(v, NULL, 10);
    pthread_mutex_lock(&r->lock);
    path_t *p = path_find(r, path);
    if (header(head, "webhook-signature", v, sizeof(v)))
        verify(&h, v, p);
    *status = 200;
    *hang_ms = 0;
    retry_after[0] = '\0';
    if (p != NULL) {
        int seen = p->seen++;
        if (seen < p->script.fail_first) {
            *status = p->script.fail_status;
            *hang_ms = p->script.hang_ms;
            snprintf(retry_after, ra_cap, "%s", p->retry_after);
        } else {
            if (p->script.status != 0)
                *status = p->script.status;
            *hang_ms = p->script.delay_ms; /* with a status: a delay, not a hang */
        }
    }
    if (r->nhits == r->caphits) {
        r->caphits = r->caphits == 0 ? 1024 : r->caphits * 2;
        r->hits = realloc(r->hits, sizeof(*r->hits) * (size_t)r->caphits);
    }
    int idx = r->nhits++;
    r->hits[idx] = h;
    pthread_mutex_unlock(&r->lock);
    return idx;
}

/* Waits `ms` or until the peer closes or the receiver goes down. */
static void
hang(tly_test_receiver_t *r, int fd, int ms)
{
    for (int waited = 0; waited < ms && !atomic_load(&r->down) && !atomic_load(&r->stopping); waited += 50) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 50) > 0) {
            char c;
            if (recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) <= 0)
                return;
        }
    }
}

/* Reads until `buf` holds `want` bytes; false on EOF or error. */
static bool
read_more(int fd, char *buf, size_t *have, size_t want)
{
    while (*have < want) {
        ssize_t n = recv(fd, buf + *have, want - *have, 0);
        if (n <= 0)
            return false;
        *have += (size_t)n;
    }
    return true;
}

static void *
serve(void *arg)
{
    conn_t *c = arg;
    tly_test_receiver_t *r = c->r;
    char *buf = malloc(HEAD_MAX + BODY_MAX + 1);
    size_t have = 0;
    for (;;) {
        char *end = NULL;
        while ((end = memmem(buf, have, "\r\n\r\n", 4)) == NULL) {
            if (have >= HEAD_MAX)
                goto out;
            ssize_t n = recv(c->fd, buf + have, HEAD_MAX - have, 0);
            if (n <= 0)
                goto out;
            have += (size_t)n;
        }
        size_t head_len = (size_t)(end - buf) + 4;
        char head[HEAD_MAX + 1], path[128] = "", cl[32] = "0", retry_after[64];
        memcpy(head, buf, head_len);
        head[head_len] = '\0';
        sscanf(head, "%*s %127s", path);
        header(head, "content-length", cl, sizeof(cl));
        size_t body_len = (size_t)strtoul(cl, NULL, 10);
        if (body_len > BODY_MAX || !read_more(c->fd, buf, &have, head_len + body_len))
            goto out;
        char saved = buf[head_len + body_len];
        buf[head_len + body_len] = '\0';
        int status, hang_ms;
        int idx = record(r, path, head, buf + head_len, &status, &hang_ms, retry_after, sizeof(retry_after));
        buf[head_len + body_len] = saved;
        memmove(buf, buf + head_len + body_len, have - head_len - body_len);
        have -= head_len + body_len;
        if (status == 0) {
            hang(r, c->fd, hang_ms);
            goto out;
        }
        if (hang_ms > 0) {
            struct timespec ts = {hang_ms / 1000, (hang_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
        char resp[512];
        int n = snprintf(resp, sizeof(resp), "HTTP/1.1 %d X\r\nContent-Length: 2\r\n%s%s%sConnection: keep-alive\r\n\r\nok", status,
                         retry_after[0] ? "Retry-After: " : "", retry_after, retry_after[0] ? "\r\n" : "");
        pthread_mutex_lock(&r->lock);
        r->hits[idx].answered = status;
        pthread_mutex_unlock(&r->lock);
        if (send(c->fd, resp, (size_t)n, MSG_NOSIGNAL) != n)
            goto out;
    }
out:
    free(buf);
    pthread_mutex_lock(&r->lock);
    if (r->conns[c->slot] == c->fd)
        r->conns[c->slot] = -1;
    pthread_mutex_unlock(&r->lock);
    close(c->fd);
    free(c);
    atomic_fetch_sub(&r->nthreads, 1);
    return NULL;
}

/* --- listening ---------------------------------------------------------------- */

static int
listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 512) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void *
accept_loop(void *arg)
{
    tly_test_receiver_t *r = arg;
    while (!atomic_load(&r->down) && !atomic_load(&r->stopping)) {
        struct pollfd pfd = {.fd = r->listen_fd, .events = POLLIN};
        if (poll(&pfd, 1, 50) <= 0)
            continue;
        int fd = accept4(r->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        conn_t *c = malloc(sizeof(*c));
        c->r = r;
        c->fd = fd;
        c->slot = -1;
        pthread_mutex_lock(&r->lock);
        for (int i = 0; i < MAX_CONNS && c->slot < 0; ++i)
            if (r->conns[i] < 0) {
                r->conns[i] = fd;
                c->slot = i;
            }
        pthread_mutex_unlock(&r->lock);
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        atomic_fetch_add(&r->nthreads, 1);
        if (c->slot < 0 || pthread_create(&t, &attr, serve, c) != 0) {
            atomic_fetch_sub(&r->nthreads, 1);
            if (c->slot >= 0)
                r->conns[c->slot] = -1;
            close(fd);
            free(c);
        }
        pthread_attr_destroy(&attr);
    }
    return NULL;
}

static void
start_accepting(tly_test_receiver_t *r)
{
    if (pthread_create(&r->acceptor, NULL, accept_loop, r) != 0)
        abort();
    r->acceptor_running = true;
}

tly_test_receiver_t *
tly_test_receiver_start(void)
{
    tly_test_receiver_t *r = calloc(1, sizeof(*r));
    pthread_mutex_init(&r->lock, NULL);
    for (int i = 0; i < MAX_CONNS; ++i)
        r->conns[i] = -1;
    r->listen_fd = listen_on(0);
    if (r->listen_fd < 0)
        abort();
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    getsockname(r->listen_fd, (struct sockaddr *)&a, &len);
    r->port = ntohs(a.sin_port);
    start_accepting(r);
    return r;
}

int
tly_test_receiver_port(const tly_test_receiver_t *r)
{
    return r->port;
}

/* Closes the listener and every connection (their threads then exit). */
static void
close_all(tly_test_receiver_t *r)
{
    if (r->acceptor_running) {
        pthread_join(r->acceptor, NULL);
        r->acceptor_running = false;
    }
    if (r->listen_fd >= 0)
        close(r->listen_fd);
    r->listen_fd = -1;
    pthread_mutex_lock(&r->lock);
    for (int i = 0; i < MAX_CONNS; ++i)
        if (r->conns[i] >= 0)
            shutdown(r->conns[i], SHUT_RDWR);
    pthread_mutex_unlock(&r->lock);
}

void
tly_test_receiver_set_down(tly_test_receiver_t *r, bool down)
{
    if (down == atomic_load(&r->down))
        return;
    atomic_store(&r->down, down);
    if (down) {
        close_all(r);
        return;
    }
    for (int i = 0; i < 100 && r->listen_fd < 0; ++i) {
        r->listen_fd = listen_on(r->port);
        if (r->listen_fd < 0) {
            struct timespec ts = {0, 50 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    if (r->listen_fd < 0)
        abort();
    start_accepting(r);
}

void
tly_test_receiver_stop(tly_test_receiver_t *r)
{
    atomic_store(&r->stopping, true);
    close_all(r);
    for (int i = 0; i < 200 && atomic_load(&r->nthreads) > 0; ++i) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (atomic_load(&r->nthreads) > 0)
        return; /* a thread still holds it: leak rather than free under it */
    for (int i = 0; i < r->nhits; ++i)
        free(r->hits[i].body);
    free(r->hits);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

void
tly_test_receiver_script(tly_test_receiver_t *r, const char *path, const tly_test_script_t *s)
{
    pthread_mutex_lock(&r->lock);
    path_t *p = path_find(r, path);
    if (p == NULL) {
        if (r->npaths == MAX_PATHS)
            abort();
        p = &r->paths[r->npaths++];
    }
    memset(p, 0, sizeof(*p));
    snprintf(p->path, sizeof(p->path), "%s", path);
    p->script = *s;
    snprintf(p->retry_after, sizeof(p->retry_after), "%s", s->retry_after != NULL ? s->retry_after : "");
    for (int i = 0; i < TLY_TEST_RECEIVER_MAX_SECRETS; ++i)
        snprintf(p->secrets[i], sizeof(p->secrets[i]), "%s", s->secrets[i] != NULL ? s->secrets[i] : "");
    p->script.retry_after = NULL;
    for (int i = 0; i < TLY_TEST_RECEIVER_MAX_SECRETS; ++i)
        p->script.secrets[i] = NULL;
    pthread_mutex_unlock(&r->lock);
}

int
tly_test_receiver_count(tly_test_receiver_t *r, const char *path)
{
    int n = 0;
    pthread_mutex_lock(&r->lock);
    for (int i = 0; i < r->nhits; ++i)
        if (path == NULL || strcmp(r->hits[i].path, path) == 0)
            n++;
    pthread_mutex_unlock(&r->lock);
    return n;
}

tly_test_hit_t *
tly_test_receiver_hits(tly_test_receiver_t *r, const char *path, int *n)
{
    pthread_mutex_lock(&r->lock);
    tly_test_hit_t *out = calloc((size_t)r->nhits + 1, sizeof(*out));
    *n = 0;
    for (int i = 0; i < r->nhits; ++i)
        if (path == NULL || strcmp(r->hits[i].path, path) == 0) {
            out[*n] = r->hits[i];
            out[*n].body = strdup(r->hits[i].body);
            (*n)++;
        }
    pthread_mutex_unlock(&r->lock);
    return out;
}

void
tly_test_hits_free(tly_test_hit_t *hits, int n)
{
    for (int i = 0; i < n; ++i)
        free(hits[i].body);
    free(hits);
}
