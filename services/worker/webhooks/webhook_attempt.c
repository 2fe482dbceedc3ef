/* The webhook sender: one attempt with libcurl (transport options, headers, body, its end). See webhook_sender_internal.h. */
#include "webhook_sender_internal.h"
#include "tally/secretbox.h"

#include <openssl/crypto.h>

/* --- one attempt ----------------------------------------------------------- */

/* Every address curl is about to connect to passes the SSRF rules first (after DNS: rebinding cannot get around it). */
static curl_socket_t
on_open_socket(void *data, curlsocktype purpose, struct curl_sockaddr *a)
{
    tly_webhook_guard_t *g = data;
    if (!tly_webhook_addr_allowed(&a->addr, a->addrlen, g->allow_private)) {
        g->refused = true;
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

void
tly_webhook_curl_options(CURL *e, tly_webhook_guard_t *guard, int64_t timeout_ms)
{
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L); /* a 3xx is a failure, never followed */
    curl_easy_setopt(e, CURLOPT_PROXY, "");          /* never a proxy from the environment: it would bypass the address check */
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, guard->allow_private ? "http,https" : "https");
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, guard);
}

static size_t
on_header(char *buf, size_t size, size_t n, void *data)
{
    flight_t *f = data;
    size_t len = size * n;
    static const char name[] = "retry-after:";
    if (len > sizeof(name) - 1 && len < 128 && strncasecmp(buf, name, sizeof(name) - 1) == 0) {
        char v[128];
        memcpy(v, buf + sizeof(name) - 1, len - (sizeof(name) - 1));
        v[len - (sizeof(name) - 1)] = '\0';
        f->has_retry_after = tly_webhook_parse_retry_after(v, tly_clock_now_us(), &f->retry_after_us);
    }
    return len;
}

static size_t
on_body(char *buf, size_t size, size_t n, void *data)
{
    return size * n; /* the answer's body is not kept */
}

static void
finish_now(sender_t *s, flight_t *f, const char *error)
{
    snprintf(f->error, sizeof(f->error), "%s", error);
    tly_webhook_sender__ep_remove(s, f->endpoint);
    s->done[s->ndone++] = f;
}

static int
add_header(flight_t *f, const char *fmt, const char *v)
{
    char line[TLY_WEBHOOK_SIGNATURE_MAX + 64];
    snprintf(line, sizeof(line), fmt, v);
    struct curl_slist *l = curl_slist_append(f->headers, line);
    if (l == NULL)
        return -1;
    f->headers = l;
    return 0;
}

/* Starts the attempt of a claimed row (or finishes it at once when the URL or the secret is refused). */
void
tly_webhook_sender__start(sender_t *s, PGresult *res, int row)
{
    char err[256], sig[TLY_WEBHOOK_SIGNATURE_MAX], ts[24];
    flight_t *f = calloc(1, sizeof(*f));
    if (f == NULL)
        abort();
    f->s = s;
    snprintf(f->id, sizeof(f->id), "%s", PQgetvalue(res, row, 0));
    snprintf(f->endpoint, sizeof(f->endpoint), "%s", PQgetvalue(res, row, 1));
    f->attempt = atoi(PQgetvalue(res, row, 2)) + 1;
    f->payload = strdup(PQgetvalue(res, row, 3));
    const char *url = PQgetvalue(res, row, 4), *secret = PQgetvalue(res, row, 5);
    const char *previous = PQgetisnull(res, row, 6) ? NULL : PQgetvalue(res, row, 6);
    snprintf(f->lease, sizeof(f->lease), "%s", PQgetvalue(res, row, 7));
    f->was_failing = strcmp(PQgetvalue(res, row, 8), "t") == 0;
    f->started_us = tly_clock_now_us();
    f->started_mono_us = tly_clock_mono_us();
    if (f->payload == NULL)
        abort();
    tly_webhook_sender__ep_add(s, f->endpoint);
    size_t len = strlen(f->payload);
    int64_t ts_s = f->started_us / 1000000;
    snprintf(ts, sizeof(ts), "%" PRId64, ts_s);
    if (tly_webhook_url_check(url, s->cfg->allow_private, false, err, sizeof(err)) != 0) {
        finish_now(s, f, err);
        f->guard.refused = true;
        return;
    }
    /* the secrets are sealed at rest (tally/secretbox.h), bound to the endpoint */
    char plain[TLY_SECRETBOX_SEALED_MAX], plain_prev[TLY_SECRETBOX_SEALED_MAX];
    if (tly_secretbox_open(secret, f->endpoint, plain, sizeof(plain), err, sizeof(err)) != 0 ||
        (previous != NULL && tly_secretbox_open(previous, f->endpoint, plain_prev, sizeof(plain_prev), err, sizeof(err)) != 0)) {
        finish_now(s, f, err);
        return;
    }
    int signed_ok =
        tly_webhook_signature_header(plain, previous != NULL ? plain_prev : NULL, f->id, ts_s, f->payload, len, sig, sizeof(sig));
    OPENSSL_cleanse(plain, sizeof(plain));
    OPENSSL_cleanse(plain_prev, sizeof(plain_prev));
    if (signed_ok != 0) {
        finish_now(s, f, "the endpoint's secret is malformed");
        return;
    }
    if (add_header(f, "Content-Type: %s", "application/json") != 0 || add_header(f, "webhook-id: %s", f->id) != 0 ||
        add_header(f, "webhook-timestamp: %s", ts) != 0 || add_header(f, "webhook-signature: %s", sig) != 0 ||
        add_header(f, "User-Agent: %s", "Tally-Webhooks/1") != 0 || add_header(f, "Expect:%s", "") != 0)
        abort();
    f->easy = curl_easy_init();
    if (f->easy == NULL)
        abort();
    CURL *e = f->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, f);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, f->payload);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, f->headers);
    f->guard.allow_private = s->cfg->allow_private;
    tly_webhook_curl_options(e, &f->guard, s->cfg->timeout_ms);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, f);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, f->errbuf);
    if (curl_multi_add_handle(s->multi, e) != CURLM_OK) {
        finish_now(s, f, "could not start the request");
        return;
    }
    f->next = s->flying; /* kept to free what is still in flight at exit */
    if (s->flying != NULL)
        s->flying->prev = f;
    s->flying = f;
}

/* An attempt curl finished: its outcome, moved to the done list. */
void
tly_webhook_sender__finished(sender_t *s, CURL *e, CURLcode code)
{
    flight_t *f = NULL;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&f);
    curl_multi_remove_handle(s->multi, e);
    f->latency_ms = (tly_clock_mono_us() - f->started_mono_us) / 1000;
    if (code == CURLE_OK) {
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &f->status);
        if (f->status < 200 || f->status > 299)
            snprintf(f->error, sizeof(f->error), "HTTP %ld", f->status);
    } else if (f->guard.refused) {
        snprintf(f->error, sizeof(f->error), "refused: the address is not allowed (private, loopback, link-local or reserved)");
    } else if (code == CURLE_OPERATION_TIMEDOUT) {
        snprintf(f->error, sizeof(f->error), "timeout after %" PRId64 " ms", s->cfg->timeout_ms);
    } else {
        snprintf(f->error, sizeof(f->error), "%s", f->errbuf[0] != '\0' ? f->errbuf : curl_easy_strerror(code));
    }
    tly_webhook_sender__flying_unlink(s, f);
    tly_webhook_sender__ep_remove(s, f->endpoint);
    s->done[s->ndone++] = f;
}
