/* tallyctl webhooks listen: a temporary endpoint that prints, checks and
   forwards each delivery. See webhooks_listen.h. */
#include "webhooks_listen.h"

#include "tally/clock.h"
#include "tally/webhook_sign.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ERR_MAX 1024
#define HEAD_MAX (16 * 1024)
/* Tally's bodies are at most TLY_WEBHOOK_BODY_MAX; a little room for a foreign sender. */
#define BODY_MAX (4 * TLY_WEBHOOK_BODY_MAX)
#define READ_TIMEOUT_MS 10000
#define FORWARD_TIMEOUT_MS 14000 /* under the sender's 15 s, so Tally hears the forward's answer */
/* The receiver's side of the documented rule: timestamps more than 5 minutes away are replays. */
#define TIMESTAMP_TOLERANCE_S 300
#define DEFAULT_API "http://127.0.0.1:8080"

static volatile sig_atomic_t stop_requested;

static void
on_stop(int sig)
{
    (void)sig;
    stop_requested = 1;
}

typedef struct st_buf_t {
    char *data;
    size_t len;
} buf_t;

static size_t
on_data(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    buf_t *b = userdata;
    size_t n = size * nmemb;
    char *grown = realloc(b->data, b->len + n + 1);
    if (grown == NULL)
        return 0;
    b->data = grown;
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

/* One HTTP request with libcurl; `status` gets the answer's code. */
static int
http_call(const char *method, const char *url, struct curl_slist *headers, const char *body, size_t len, long timeout_ms,
          long *status, buf_t *out, char *err, size_t errcap)
{
    CURL *c = curl_easy_init();
    if (c == NULL) {
        snprintf(err, errcap, "could not start an http client");
        return -1;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    else
        snprintf(err, errcap, "%s %s: %s", method, url, curl_easy_strerror(rc));
    curl_easy_cleanup(c);
    return rc == CURLE_OK ? 0 : -1;
}

/* A call of the command API with the key; JSON in and out. */
static int
api_call(const char *method, const char *url, const char *key, const char *json, long *status, buf_t *out, char *err, size_t errcap)
{
    char auth[512];
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", key);
    struct curl_slist *h = curl_slist_append(NULL, auth);
    h = curl_slist_append(h, "Content-Type: application/json");
    int rc = http_call(method, url, h, json, json != NULL ? strlen(json) : 0, 10000, status, out, err, errcap);
    curl_slist_free_all(h);
    explicit_bzero(auth, sizeof(auth));
    return rc;
}

/* The problem+json detail of an answer, or its raw text. */
static void
problem_detail(const buf_t *b, char *out, size_t cap)
{
    json_t *j = b->data != NULL ? json_loads(b->data, 0, NULL) : NULL;
    const char *detail = json_string_value(json_object_get(j, "detail"));
    snprintf(out, cap, "%s", detail != NULL ? detail : b->data != NULL ? b->data : "no body");
    json_decref(j);
}

typedef struct st_endpoint_t {
    char id[64];
    char secret[128];
} endpoint_t;

/* The "a,b" list of --events as a JSON array. */
static json_t *
event_types(const char *list)
{
    json_t *a = json_array();
    const char *p = list;
    while (*p != '\0') {
        size_t n = strcspn(p, ",");
        if (n > 0)
            json_array_append_new(a, json_stringn(p, n));
        p += n + (p[n] == ',');
    }
    return a;
}

static int
register_endpoint(const char *api, const char *key, const char *url, const char *events, endpoint_t *ep, char *err, size_t errcap)
{
    char target[1024], detail[256];
    buf_t out = {0};
    long status = 0;
    int ret = -1;
    json_t *req = json_pack("{s:s, s:o, s:s}", "url", url, "event_types", event_types(events), "description",
                            "tallyctl webhooks listen (temporary)");
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    snprintf(target, sizeof(target), "%s/v1/webhook-endpoints", api);
    if (api_call("POST", target, key, body, &status, &out, err, errcap) != 0)
        goto cleanup;
    if (status != 201) {
        problem_detail(&out, detail, sizeof(detail));
        snprintf(err, errcap, "could not register the endpoint %.200s: %ld %s%s", url, status, detail,
                 status == 422 ? " (a local receiver needs the stack's command API and worker started with "
                                 "TALLY_WEBHOOK_ALLOW_PRIVATE=true, as deploy/local/up.sh does)"
                               : "");
        goto cleanup;
    }
    json_t *j = json_loads(out.data, 0, NULL);
    const char *id = json_string_value(json_object_get(j, "id")), *secret = json_string_value(json_object_get(j, "secret"));
    if (id != NULL && secret != NULL) {
        snprintf(ep->id, sizeof(ep->id), "%s", id);
        snprintf(ep->secret, sizeof(ep->secret), "%s", secret);
        ret = 0;
    } else {
        snprintf(err, errcap, "could not register the endpoint: the answer has no id and secret");
    }
    json_decref(j);
cleanup:
    if (out.data != NULL)
        explicit_bzero(out.data, out.len);
    free(out.data);
    free(body);
    return ret;
}

static int
delete_endpoint(const char *api, const char *key, const endpoint_t *ep, char *err, size_t errcap)
{
    char target[1024], detail[512];
    buf_t out = {0};
    long status = 0;
    snprintf(target, sizeof(target), "%s/v1/webhook-endpoints/%s", api, ep->id);
    int rc = api_call("DELETE", target, key, NULL, &status, &out, err, errcap);
    if (rc == 0 && status != 204) {
        problem_detail(&out, detail, sizeof(detail));
        snprintf(err, errcap, "could not delete endpoint %s: %ld %s", ep->id, status, detail);
        rc = -1;
    }
    free(out.data);
    return rc;
}

/* --listen HOST:PORT (IPv4; PORT 0: any free one). */
static int
listen_on(const char *spec, int *port, char *err, size_t errcap)
{
    char host[64];
    const char *colon = strrchr(spec, ':');
    struct sockaddr_in a = {.sin_family = AF_INET};
    char *end;
    long p = colon != NULL ? strtol(colon + 1, &end, 10) : -1;
    if (colon == NULL || (size_t)(colon - spec) >= sizeof(host) || *end != '\0' || p < 0 || p > 65535) {
        snprintf(err, errcap, "invalid value for --listen: \"%s\" (expected ADDRESS:PORT, e.g. 127.0.0.1:0)", spec);
        return -1;
    }
    snprintf(host, sizeof(host), "%.*s", (int)(colon - spec), spec);
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        snprintf(err, errcap, "invalid value for --listen: \"%s\" is not an IPv4 address", host);
        return -1;
    }
    a.sin_port = htons((uint16_t)p);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    socklen_t alen = sizeof(a);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 16) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) != 0) {
        snprintf(err, errcap, "could not listen on %s: %s", spec, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

typedef struct st_request_t {
    char method[16];
    char path[512];
    char id[128];
    char timestamp[32];
    char signature[1024];
    char content_type[128];
    char *body;
    size_t len;
} request_t;

/* Waits for `fd` to be readable, up to READ_TIMEOUT_MS in all since `t0_ms`. */
static bool
readable(int fd, int64_t t0_ms)
{
    int left = (int)(READ_TIMEOUT_MS - (tly_clock_mono_us() / 1000 - t0_ms));
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return left > 0 && poll(&p, 1, left) == 1;
}

/* Copies header `name`'s value from the head (lines after the request line) into `out`. */
static void
header(const char *head, const char *name, char *out, size_t cap)
{
    size_t n = strlen(name);
    out[0] = '\0';
    for (const char *line = strstr(head, "\r\n"); line != NULL && line[2] != '\r'; line = strstr(line + 2, "\r\n")) {
        const char *l = line + 2;
        if (strncasecmp(l, name, n) == 0 && l[n] == ':') {
            const char *v = l + n + 1, *e = strstr(v, "\r\n");
            while (*v == ' ' || *v == '\t')
                ++v;
            snprintf(out, cap, "%.*s", (int)(e - v), v);
            return;
        }
    }
}

/* Reads one request (Content-Length bodies only). Returns the HTTP status to
   answer with when it is malformed, 0 when it is whole, -1 on a dead connection. */
static int
read_request(int fd, request_t *r)
{
    char head[HEAD_MAX + 1], clen[32], chunked[32];
    size_t have = 0;
    int64_t t0 = tly_clock_mono_us() / 1000;
    char *end = NULL;
    while (end == NULL) {
        if (have == HEAD_MAX)
            return 431;
        if (!readable(fd, t0))
            return -1;
        ssize_t n = read(fd, head + have, HEAD_MAX - have);
        if (n <= 0)
            return -1;
        have += (size_t)n;
        head[have] = '\0';
        end = strstr(head, "\r\n\r\n");
    }
    size_t head_len = (size_t)(end - head) + 4;
    if (sscanf(head, "%15s %511s", r->method, r->path) != 2)
        return 400;
    header(head, "webhook-id", r->id, sizeof(r->id));
    header(head, "webhook-timestamp", r->timestamp, sizeof(r->timestamp));
    header(head, "webhook-signature", r->signature, sizeof(r->signature));
    header(head, "content-type", r->content_type, sizeof(r->content_type));
    header(head, "content-length", clen, sizeof(clen));
    header(head, "transfer-encoding", chunked, sizeof(chunked));
    if (chunked[0] != '\0')
        return 411;
    char *cend;
    long long len = clen[0] != '\0' ? strtoll(clen, &cend, 10) : 0;
    if (len < 0 || (clen[0] != '\0' && *cend != '\0'))
        return 400;
    if (len > BODY_MAX)
        return 413;
    r->len = (size_t)len;
    r->body = malloc(r->len + 1);
    size_t got = have - head_len < r->len ? have - head_len : r->len;
    memcpy(r->body, head + head_len, got);
    while (got < r->len) {
        if (!readable(fd, t0))
            return -1;
        ssize_t n = read(fd, r->body + got, r->len - got);
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    r->body[r->len] = '\0';
    return 0;
}

static const char *
reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 431:
        return "Request Header Fields Too Large";
    case 502:
        return "Bad Gateway";
    default:
        return "Status";
    }
}

static void
answer(int fd, int status)
{
    char out[256];
    int n = snprintf(out, sizeof(out), "HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status, reason(status));
    if (write(fd, out, (size_t)n) != n) {
        /* the sender gave up already; it retries */
    }
}

/* "ok", or why the signature does not hold (the documented receiver check). */
static const char *
check_signature(const endpoint_t *ep, const request_t *r)
{
    char expected[128], *endp;
    if (r->id[0] == '\0' || r->timestamp[0] == '\0' || r->signature[0] == '\0')
        return "missing webhook-id, webhook-timestamp or webhook-signature";
    long long ts = strtoll(r->timestamp, &endp, 10);
    if (*endp != '\0')
        return "webhook-timestamp is not a number";
    if (tly_webhook_sign(ep->secret, r->id, ts, r->body, r->len, expected, sizeof(expected)) != 0)
        return "could not sign with the endpoint's secret";
    size_t elen = strlen(expected);
    bool match = false;
    for (const char *p = r->signature; *p != '\0';) {
        size_t n = strcspn(p, " ");
        if (n == elen && CRYPTO_memcmp(p, expected, elen) == 0)
            match = true;
        p += n + (p[n] == ' ');
    }
    if (!match)
        return "INVALID (no v1 signature matches the endpoint's secret)";
    long long now = (long long)(tly_clock_now_us() / 1000000);
    if (ts < now - TIMESTAMP_TOLERANCE_S || ts > now + TIMESTAMP_TOLERANCE_S)
        return "INVALID (timestamp more than 5 minutes away)";
    return "ok";
}

/* POSTs the delivery to `to` as it came; the status it got, or 502. */
static int
forward(const char *to, const request_t *r, char *err, size_t errcap)
{
    char line[1200];
    struct curl_slist *h = NULL;
    const char *names[] = {"webhook-id", "webhook-timestamp", "webhook-signature", "Content-Type"};
    const char *values[] = {r->id, r->timestamp, r->signature, r->content_type[0] != '\0' ? r->content_type : "application/json"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); ++i) {
        snprintf(line, sizeof(line), "%s: %s", names[i], values[i]);
        h = curl_slist_append(h, line);
    }
    h = curl_slist_append(h, "Expect:");
    buf_t out = {0};
    long status = 0;
    int rc = http_call("POST", to, h, r->body, r->len, FORWARD_TIMEOUT_MS, &status, &out, err, errcap);
    curl_slist_free_all(h);
    free(out.data);
    return rc == 0 ? (int)status : 502;
}

static void
print_delivery(const request_t *r, const char *sig, const char *to, int status, const char *err)
{
    char when[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *j = json_loadb(r->body, r->len, 0, NULL);
    const char *type = json_string_value(json_object_get(j, "type"));
    printf("%s  %s %s  webhook-id %s  type %s  signature %s", when, r->method, r->path, r->id[0] != '\0' ? r->id : "-",
           type != NULL ? type : "-", sig);
    if (to != NULL)
        printf("  -> %s %d%s%s", to, status, err[0] != '\0' ? " " : "", err);
    else
        printf("  -> answered %d", status);
    printf("\n  %.*s\n", (int)r->len, r->body);
    fflush(stdout);
    json_decref(j);
}

/* Serves one connection: one request, answered, closed. */
static void
serve(int fd, const endpoint_t *ep, const char *to)
{
    request_t r = {0};
    char err[ERR_MAX] = "";
    int status = read_request(fd, &r);
    if (status == 0 && strcmp(r.method, "POST") != 0)
        status = 404;
    if (status == 0) {
        const char *sig = check_signature(ep, &r);
        status = to != NULL ? forward(to, &r, err, sizeof(err)) : 200;
        print_delivery(&r, sig, to, status, err);
    } else if (status > 0) {
        fprintf(stderr, "tallyctl: a request could not be read: answered %d\n", status);
    }
    if (status > 0)
        answer(fd, status);
    free(r.body);
}

static int
serve_until_stopped(int lfd, const endpoint_t *ep, const char *to)
{
    while (!stop_requested) {
        struct pollfd p = {.fd = lfd, .events = POLLIN};
        int n = poll(&p, 1, 1000);
        if (n < 0 && errno != EINTR)
            return -1;
        if (n <= 0)
            continue;
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        serve(fd, ep, to);
        close(fd);
    }
    return 0;
}

int
tly_ctl_webhooks_listen(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    (void)settings;
    char err[ERR_MAX], url[512];
    const char *key = getenv("TALLY_API_KEY"), *api = getenv("TALLY_URL");
    const char *listen_spec = tly_ctl_arg(cmd, args, "listen") != NULL ? tly_ctl_arg(cmd, args, "listen") : "127.0.0.1:0";
    const char *events = tly_ctl_arg(cmd, args, "events") != NULL ? tly_ctl_arg(cmd, args, "events") : "*";
    const char *to = tly_ctl_arg(cmd, args, "forward-to"), *given_url = tly_ctl_arg(cmd, args, "url");
    endpoint_t ep = {{0}};
    int port = 0, lfd = -1, ret = TLY_CTL_FAIL;
    if (key == NULL || key[0] == '\0') {
        tly_ctl_error("TALLY_API_KEY is not set (a key of the tenant to receive events of, with the write scope)");
        return TLY_CTL_USAGE;
    }
    if (api == NULL || api[0] == '\0')
        api = DEFAULT_API;
    if (to != NULL && strncmp(to, "http://", 7) != 0 && strncmp(to, "https://", 8) != 0) {
        tly_ctl_error("invalid value for --forward-to: \"%s\" (an http:// or https:// URL)", to);
        return TLY_CTL_USAGE;
    }
    if ((lfd = listen_on(listen_spec, &port, err, sizeof(err))) < 0) {
        tly_ctl_error("%s", err);
        return TLY_CTL_USAGE;
    }
    if (given_url != NULL)
        snprintf(url, sizeof(url), "%s", given_url);
    else
        snprintf(url, sizeof(url), "http://%.*s:%d/", (int)(strrchr(listen_spec, ':') - listen_spec), listen_spec, port);
    struct sigaction sa = {.sa_handler = on_stop}; /* no SA_RESTART: poll returns */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (register_endpoint(api, key, url, events, &ep, err, sizeof(err)) != 0) {
        tly_ctl_error("%s", err);
        goto cleanup;
    }
    fprintf(stderr, "tallyctl: endpoint %s registered for %s (events %s) through %s; %s; Ctrl-C deletes it\n", ep.id, url, events,
            api, to != NULL ? "deliveries are forwarded" : "deliveries are answered 200");
    if (to != NULL)
        fprintf(stderr, "tallyctl: forwarding to %s\n", to);
    int served = serve_until_stopped(lfd, &ep, to);
    if (delete_endpoint(api, key, &ep, err, sizeof(err)) != 0) {
        tly_ctl_error("%s (delete it with DELETE /v1/webhook-endpoints/%s)", err, ep.id);
        goto cleanup;
    }
    fprintf(stderr, "tallyctl: endpoint %s deleted\n", ep.id);
    ret = served == 0 ? TLY_CTL_OK : TLY_CTL_FAIL;
cleanup:
    explicit_bzero(&ep, sizeof(ep));
    close(lfd);
    curl_global_cleanup();
    return ret;
}
