/*
 * Open-loop HTTP/1.1 load generator for POST deposits (no coordinated
 * omission): request i is due at t0 + i/rate whatever happened before; it is
 * sent on the first idle keep-alive connection, or waits in a queue until one
 * is free, and its latency is measured from the time it was DUE, so server
 * stalls show up as latency instead of silently lowering the offered load.
 *
 * With --listen-dsn it also measures end to end: a second thread LISTENs on
 * PostgreSQL channel tally_jobs (the projector NOTIFYs '<job id>' in the
 * transaction that makes a job terminal; delivered at commit) and records
 * when each job's notification arrived. e2e = notification arrival - 202
 * arrival, on this process's monotonic clock.
 *
 *   openloop --host=127.0.0.1 --port=N --key=KEY --accounts=FILE --rate=R --duration=S
 *            [--conns=64] [--listen-dsn=DSN] [--tag=STR] [--drain=10]
 * Prints one JSON object on stdout.
 */
#include <errno.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int64_t
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

typedef struct {
    char job[37];
    int64_t t_us;
} stamp_t;

/* ---- the LISTEN thread --------------------------------------------------- */

static pthread_mutex_t notes_mu = PTHREAD_MUTEX_INITIALIZER;
static stamp_t *notes;
static size_t nnotes, capnotes;
static volatile int listen_stop, listen_ready;
static const char *listen_dsn;

static void *
listen_main(void *arg)
{
    PGconn *c = PQconnectdb(listen_dsn);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "openloop: listen: %s", PQerrorMessage(c));
        exit(1);
    }
    PQclear(PQexec(c, "LISTEN tally_jobs"));
    listen_ready = 1;
    int fd = PQsocket(c);
    while (!listen_stop) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        poll(&p, 1, 50);
        if (!PQconsumeInput(c)) {
            fprintf(stderr, "openloop: listen: %s", PQerrorMessage(c));
            break;
        }
        PGnotify *n;
        int64_t t = now_us();
        while ((n = PQnotifies(c)) != NULL) {
            pthread_mutex_lock(&notes_mu);
            if (nnotes == capnotes) {
                capnotes = capnotes ? capnotes * 2 : 65536;
                notes = realloc(notes, capnotes * sizeof(*notes));
            }
            snprintf(notes[nnotes].job, sizeof(notes[nnotes].job), "%s", n->extra);
            notes[nnotes++].t_us = t;
            pthread_mutex_unlock(&notes_mu);
            PQfreemem(n);
        }
    }
    PQfinish(c);
    return NULL;
}

/* ---- HTTP connections ------------------------------------------------------ */

typedef struct {
    int fd;
    int busy;
    int64_t due_us; /* when the request in flight was due */
    char in[16384];
    size_t inlen;
    char out[2048];
    size_t outlen, outoff;
} conn_t;

static struct sockaddr_in addr;
static int epfd;
static char **accounts;
static size_t naccounts;
static const char *api_key, *tag = "ol";

static int64_t *lat; /* per completed request, us */
static size_t nlat;
static stamp_t *accepted; /* job id and 202 arrival */
static size_t naccepted;
static long status_count[600], errors, reconnects;

static void
conn_open(conn_t *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int on = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 && errno != EINPROGRESS) {
        perror("connect");
        exit(1);
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    c->busy = 0;
    c->inlen = 0;
}

static void
conn_reset(conn_t *c)
{
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    ++reconnects;
    conn_open(c);
}

static void
conn_flush(conn_t *c)
{
    while (c->outoff < c->outlen) {
        ssize_t n = write(c->fd, c->out + c->outoff, c->outlen - c->outoff);
        if (n > 0) {
            c->outoff += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOTCONN)) {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
            epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
            return;
        } else {
            ++errors;
            c->busy = 0;
            conn_reset(c);
            return;
        }
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void
conn_send(conn_t *c, uint64_t seq, int64_t due)
{
    static const char body_fmt[] = "{\"amount\":1,\"currency\":\"EUR\",\"reference\":\"bench %s %llu\"}";
    char body[160];
    int blen = snprintf(body, sizeof(body), body_fmt, tag, (unsigned long long)seq);
    const char *acct = accounts[seq % naccounts];
    c->outlen = (size_t)snprintf(c->out, sizeof(c->out),
                                 "POST /v1/accounts/%s/deposits HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                                 "Idempotency-Key: %s-%llu\r\nContent-Length: %d\r\n\r\n%s",
                                 acct, api_key, tag, (unsigned long long)seq, blen, body);
    c->outoff = 0;
    c->busy = 1;
    c->due_us = due;
    conn_flush(c);
}

static const char *
find_header(const char *head, size_t len, const char *name, size_t *vlen)
{
    size_t nl = strlen(name);
    const char *p = head, *end = head + len;
    while (p < end) {
        const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (eol == NULL)
            eol = end;
        if ((size_t)(eol - p) > nl + 1 && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (v < eol && *v == ' ')
                ++v;
            *vlen = (size_t)(eol - v);
            return v;
        }
        p = eol + 2;
    }
    return NULL;
}

/* Returns 1 when a whole response was consumed. */
static int
conn_parse(conn_t *c, int64_t t)
{
    char *hend = memmem(c->in, c->inlen, "\r\n\r\n", 4);
    if (hend == NULL)
        return 0;
    size_t hlen = (size_t)(hend - c->in) + 4, vlen = 0, clen = 0;
    const char *v = find_header(c->in, hlen, "content-length", &vlen);
    if (v != NULL)
        clen = strtoul(v, NULL, 10);
    if (c->inlen < hlen + clen)
        return 0;
    int status = 0;
    if (c->inlen > 12)
        status = atoi(c->in + 9);
    if (status > 0 && status < 600)
        ++status_count[status];
    lat[nlat++] = t - c->due_us;
    if (status == 202 && (v = find_header(c->in, hlen, "location", &vlen)) != NULL && vlen >= 36) {
        memcpy(accepted[naccepted].job, v + vlen - 36, 36);
        accepted[naccepted].job[36] = '\0';
        accepted[naccepted++].t_us = t;
    }
    memmove(c->in, c->in + hlen + clen, c->inlen - hlen - clen);
    c->inlen -= hlen + clen;
    c->busy = 0;
    return 1;
}

static int
cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int
cmp_stamp(const void *a, const void *b)
{
    return strcmp(((const stamp_t *)a)->job, ((const stamp_t *)b)->job);
}

static double
pct(const int64_t *v, size_t n, double p)
{
    if (n == 0)
        return -1;
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return (double)v[i] / 1000.0;
}

int
main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *accounts_file = NULL;
    int port = 0, conns = 64;
    double rate = 0, duration = 0, drain = 10;
    for (int i = 1; i < argc; ++i) {
        char *a = argv[i];
        if (!strncmp(a, "--host=", 7))
            host = a + 7;
        else if (!strncmp(a, "--port=", 7))
            port = atoi(a + 7);
        else if (!strncmp(a, "--key=", 6))
            api_key = a + 6;
        else if (!strncmp(a, "--accounts=", 11))
            accounts_file = a + 11;
        else if (!strncmp(a, "--rate=", 7))
            rate = atof(a + 7);
        else if (!strncmp(a, "--duration=", 11))
            duration = atof(a + 11);
        else if (!strncmp(a, "--conns=", 8))
            conns = atoi(a + 8);
        else if (!strncmp(a, "--listen-dsn=", 13))
            listen_dsn = a + 13;
        else if (!strncmp(a, "--tag=", 6))
            tag = a + 6;
        else if (!strncmp(a, "--drain=", 8))
            drain = atof(a + 8);
        else {
            fprintf(stderr, "openloop: unknown argument %s\n", a);
            return 2;
        }
    }
    if (port <= 0 || api_key == NULL || accounts_file == NULL || rate <= 0 || duration <= 0 || conns <= 0) {
        fprintf(stderr, "usage: openloop --port=N --key=K --accounts=FILE --rate=R --duration=S [--conns=N] "
                        "[--listen-dsn=DSN] [--tag=S] [--drain=S]\n");
        return 2;
    }
    FILE *f = fopen(accounts_file, "r");
    char line[128];
    if (f == NULL) {
        perror(accounts_file);
        return 2;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        line[strcspn(line, "\r\n")] = '\0';
        if (strlen(line) != 36)
            continue;
        accounts = realloc(accounts, (naccounts + 1) * sizeof(*accounts));
        accounts[naccounts++] = strdup(line);
    }
    fclose(f);
    if (naccounts == 0) {
        fprintf(stderr, "openloop: no account ids in %s\n", accounts_file);
        return 2;
    }
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, host, &addr.sin_addr);

    uint64_t total = (uint64_t)(rate * duration);
    lat = calloc(total + 1, sizeof(*lat));
    accepted = calloc(total + 1, sizeof(*accepted));
    uint64_t *queue = calloc(total + 1, sizeof(*queue)); /* due but not yet sent: seq numbers (FIFO) */
    size_t qhead = 0, qtail = 0, maxq = 0;

    pthread_t lt;
    if (listen_dsn != NULL) {
        pthread_create(&lt, NULL, listen_main, NULL);
        while (!listen_ready)
            usleep(1000);
    }

    epfd = epoll_create1(EPOLL_CLOEXEC);
    conn_t *cs = calloc((size_t)conns, sizeof(*cs));
    for (int i = 0; i < conns; ++i)
        conn_open(&cs[i]);
    usleep(100000); /* let connects finish */

    struct epoll_event evs[256];
    int64_t t0 = now_us(), interval_ns = (int64_t)(1e9 / rate);
    int64_t hard_end = t0 + (int64_t)((duration + 30) * 1e6);
    uint64_t next = 0, done = 0;
    while (done < total) {
        int64_t t = now_us();
        if (t > hard_end)
            break;
        /* everything due by now goes to the queue */
        while (next < total && t0 + (int64_t)(next * interval_ns / 1000) <= t)
            queue[qtail++] = next++;
        if (qtail - qhead > maxq)
            maxq = qtail - qhead;
        for (int i = 0; i < conns && qhead < qtail; ++i) {
            if (!cs[i].busy) {
                uint64_t s = queue[qhead++];
                conn_send(&cs[i], s, t0 + (int64_t)(s * interval_ns / 1000));
            }
        }
        /* sleep until the next request is due (microsecond timeout: a
           millisecond one would spin at 1,000/s and steal the CPU we measure) */
        int64_t wait_us = 0;
        if (qhead == qtail && next < total)
            wait_us = t0 + (int64_t)(next * interval_ns / 1000) - now_us();
        else if (next >= total)
            wait_us = 5000;
        struct timespec tmo = {.tv_sec = wait_us > 0 ? wait_us / 1000000 : 0,
                               .tv_nsec = wait_us > 0 ? (wait_us % 1000000) * 1000 : 0};
        int n = epoll_pwait2(epfd, evs, 256, &tmo, NULL);
        t = now_us();
        for (int i = 0; i < n; ++i) {
            conn_t *c = evs[i].data.ptr;
            if (evs[i].events & EPOLLOUT)
                conn_flush(c);
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                ssize_t r = read(c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen);
                if (r <= 0) {
                    if (r < 0 && errno == EAGAIN)
                        continue;
                    if (c->busy) {
                        ++errors;
                        ++done;
                    }
                    conn_reset(c);
                    continue;
                }
                c->inlen += (size_t)r;
                if (c->busy && conn_parse(c, t))
                    ++done;
            }
        }
    }
    int64_t t_end = now_us();
    double elapsed = (double)(t_end - t0) / 1e6;
    for (int i = 0; i < conns; ++i)
        close(cs[i].fd);

    /* e2e: wait for the notifications of every accepted job (bounded) */
    size_t matched = 0, early = 0;
    int64_t *e2e = calloc(naccepted + 1, sizeof(*e2e));
    if (listen_dsn != NULL) {
        int64_t until = now_us() + (int64_t)(drain * 1e6);
        while (now_us() < until) {
            pthread_mutex_lock(&notes_mu);
            size_t have = nnotes;
            pthread_mutex_unlock(&notes_mu);
            if (have >= naccepted)
                break;
            usleep(20000);
        }
        listen_stop = 1;
        pthread_join(lt, NULL);
        qsort(notes, nnotes, sizeof(*notes), cmp_stamp);
        qsort(accepted, naccepted, sizeof(*accepted), cmp_stamp);
        size_t i = 0, j = 0;
        while (i < naccepted && j < nnotes) {
            int c = strcmp(accepted[i].job, notes[j].job);
            if (c == 0) {
                int64_t d = notes[j].t_us - accepted[i].t_us;
                if (d < 0) {
                    ++early;
                    d = 0;
                }
                e2e[matched++] = d;
                ++i;
                ++j;
            } else if (c < 0) {
                ++i;
            } else {
                ++j;
            }
        }
        qsort(e2e, matched, sizeof(*e2e), cmp_i64);
    }
    qsort(lat, nlat, sizeof(*lat), cmp_i64);
    long non202 = 0;
    for (int s = 0; s < 600; ++s)
        if (s != 202)
            non202 += status_count[s];
    printf("{\"offered_rate\":%.1f,\"duration_s\":%.2f,\"scheduled\":%llu,\"completed\":%zu,\"achieved_rate\":%.1f,"
           "\"accepted\":%ld,\"non202\":%ld,\"errors\":%ld,\"reconnects\":%ld,\"max_queue\":%zu,"
           "\"lat_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f}",
           rate, elapsed, (unsigned long long)total, nlat, (double)nlat / elapsed, status_count[202], non202, errors, reconnects,
           maxq, pct(lat, nlat, 0.5), pct(lat, nlat, 0.9), pct(lat, nlat, 0.99), pct(lat, nlat, 0.999),
           nlat ? (double)lat[nlat - 1] / 1000.0 : -1.0);
    if (listen_dsn != NULL)
        printf(",\"e2e_ms\":{\"jobs\":%zu,\"matched\":%zu,\"notify_before_202\":%zu,\"p50\":%.3f,\"p90\":%.3f,"
               "\"p99\":%.3f,\"max\":%.3f}",
               naccepted, matched, early, pct(e2e, matched, 0.5), pct(e2e, matched, 0.9), pct(e2e, matched, 0.99),
               matched ? (double)e2e[matched - 1] / 1000.0 : -1.0);
    printf("}\n");
    return 0;
}
