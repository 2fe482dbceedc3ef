/* Request frames, common headers, auth-or-reply and access logging. */
#include "tally/api.h"
#include "tally/authfail.h"
#include "tally/clock.h"
#include "tally/log.h"
#include "tally/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void
on_req_disposed(void *p)
{
    tly_api_req_t *ar = *(tly_api_req_t **)p;
    if (ar != NULL)
        ar->req = NULL;
}

void
tly_api_req_init(tly_api_req_t *ar, h2o_req_t *req, size_t *inflight)
{
    memset(ar, 0, sizeof(*ar));
    ar->req = req;
    ar->inflight = inflight;
    ar->route = "unknown";
    ar->started_us = tly_clock_mono_us();
    snprintf(ar->request_id, sizeof(ar->request_id), "%s", tly_http_request_id(req));
    h2o_iovec_t tp = tly_http_header(req, "traceparent");
    if (tp.base != NULL && tly_traceparent_valid(tp.base, tp.len)) {
        memcpy(ar->traceparent, tp.base, TLY_TRACEPARENT_LEN);
        ar->traceparent[TLY_TRACEPARENT_LEN] = '\0';
    } else {
        tly_traceparent_new(ar->traceparent);
    }
    ar->guard = h2o_mem_alloc_shared(&req->pool, sizeof(*ar->guard), on_req_disposed);
    *ar->guard = ar;
    ++*inflight;
}

void
tly_api_req_finish(tly_api_req_t *ar)
{
    tly_limiter_release(&ar->rate);
    if (ar->req != NULL)
        *ar->guard = NULL;
    --*ar->inflight;
}

/* RateLimit-Policy lists every policy; RateLimit reports the one nearest exhaustion (IETF httpapi draft). */
static void
add_rate_headers(h2o_req_t *req, const tly_rate_t *rate)
{
    char v[192];
    size_t n = 0;
    if (rate->npolicies == 0)
        return;
    for (int i = 0; i < rate->npolicies && n < sizeof(v); ++i) {
        const tly_rate_policy_t *p = &rate->policies[i];
        n += (size_t)snprintf(v + n, sizeof(v) - n, "%s\"%s\";q=%lld;w=%lld", i > 0 ? ", " : "", p->name, (long long)p->quota,
                              (long long)p->window);
    }
    tly_http_add_header(req, "ratelimit-policy", v);
    const tly_rate_policy_t *p = &rate->policies[rate->nearest];
    snprintf(v, sizeof(v), "\"%s\";r=%lld;t=%lld", p->name, (long long)p->remaining, (long long)p->reset);
    tly_http_add_header(req, "ratelimit", v);
}

/* The limiter of the thread serving requests: bound once per event loop, so
   that handlers and batch items reach it without carrying it in every call. */
static __thread tly_limiter_thread_t *thread_limiter;

void
tly_api_bind_limiter(tly_limiter_thread_t *limiter)
{
    thread_limiter = limiter;
}

static tly_limit_key_t
limit_key_of(const tly_principal_t *p)
{
    /* a contract key's other limits (concurrency, the store-down policy) are the contract tier's */
    return (tly_limit_key_t){p->key_id, &p->tenant_id, p->contract ? "contract" : p->tier, p->rate, p->burst};
}

/* 429 with Retry-After for a refused token or slot; false when the request must stop. */
static bool
rate_or_reply(tly_api_req_t *ar, const tly_rate_t *rate)
{
    char secs[24];
    if (rate->allowed)
        return true;
    tly_metrics_rate_limited();
    snprintf(secs, sizeof(secs), "%lld", (long long)rate->retry_after);
    tly_http_add_header(ar->req, "retry-after", secs);
    if (rate->verdict == TLY_RATE_CONCURRENCY)
        tly_api_problem(ar, 429, "concurrency_limited",
                        "too many requests of this API key are in flight; retry after the time given", NULL);
    else
        tly_api_problem(ar, 429, "rate_limited", "too many requests for this API key or its tenant; retry after the time given",
                        NULL);
    return false;
}

bool
tly_api_take_token(tly_api_req_t *ar)
{
    tly_limit_key_t key = limit_key_of(&ar->principal);
    tly_rate_t rate;
    if (thread_limiter == NULL)
        return true;
    tly_limiter_take_token(thread_limiter, &key, tly_clock_mono_us(), &rate);
    return rate.allowed;
}

bool
tly_api_long_poll_or_reply(tly_api_req_t *ar)
{
    if (tly_limiter_become_long_poll(&ar->rate))
        return true;
    tly_rate_t refused = ar->rate;
    refused.allowed = false;
    refused.verdict = TLY_RATE_CONCURRENCY;
    refused.retry_after = 1;
    return rate_or_reply(ar, &refused);
}

/* The access line and the HTTP metrics: one place every API answer goes through. */
static void
log_request(tly_api_req_t *ar, int status)
{
    char tenant[TLY_UUID_STR_LEN + 1] = "", job[TLY_UUID_STR_LEN + 1] = "", st[16], ms[48], method[16], trace[33];
    h2o_req_t *req = ar->req;
    int64_t elapsed_us = tly_clock_mono_us() - ar->started_us;
    if (ar->principal.entry != NULL)
        tly_uuid_format(&ar->principal.tenant_id, tenant);
    if (!tly_uuid_is_nil(&ar->job_id))
        tly_uuid_format(&ar->job_id, job);
    snprintf(st, sizeof(st), "%d", status);
    snprintf(ms, sizeof(ms), "%.3f", (double)elapsed_us / 1000.0);
    snprintf(method, sizeof(method), "%.*s", (int)(req->method.len < 15 ? req->method.len : 15), req->method.base);
    tly_log_trace_id_of(ar->traceparent, trace);
    tly_metrics_http_request(ar->route, method, status, (double)elapsed_us / 1e6);
    if (ar->quiet)
        return;
    tly_log(TLY_LOG_INFO, "request", "request_id", ar->request_id, "trace_id", trace[0] ? trace : NULL, "tenant",
            tenant[0] ? tenant : NULL, "method", method, "route", ar->route, "status", st, "latency_ms", ms, "job_id",
            job[0] ? job : NULL, NULL);
}

void
tly_api_send(tly_api_req_t *ar, int status, const char *content_type, const char *body, size_t len)
{
    h2o_req_t *req = ar->req;
    if (req == NULL)
        return;
    tly_http_add_header(req, "x-request-id", ar->request_id);
    tly_http_add_header(req, "cache-control", "private, no-cache");
    if (ar->principal.entry != NULL)
        add_rate_headers(req, &ar->rate);
    log_request(ar, status);
    req->res.status = status;
    req->res.reason = tly_http_reason(status);
    req->res.content_length = len;
    if (content_type != NULL)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, content_type, strlen(content_type));
    /* HEAD and 304 carry no body; h2o drops it for HEAD itself */
    h2o_send_inline(req, status == 304 ? "" : body, status == 304 ? 0 : len);
}

void
tly_api_problem(tly_api_req_t *ar, int status, const char *code, const char *detail, const json_t *errors)
{
    if (ar->req == NULL)
        return;
    char *body = tly_http_problem_body(status, code, detail, errors);
    tly_api_send(ar, status, "application/problem+json", body, strlen(body));
    free(body);
}

void
tly_api_unavailable(tly_api_req_t *ar, const char *code, const char *detail)
{
    if (ar->req == NULL)
        return;
    tly_http_add_header(ar->req, "retry-after", "1");
    tly_api_problem(ar, 503, code, detail, NULL);
}

bool
tly_pg_invalid_input(const PGresult *res)
{
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return state != NULL && strncmp(state, "22", 2) == 0;
}

void
tly_api_db_failed(tly_api_req_t *ar, const PGresult *res, const char *err, const char *detail)
{
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (state != NULL && strcmp(state, TLY_SQLSTATE_QUOTA) == 0) {
        /* the quota triggers' message names the quota: "... quota of 20 webhook endpoints" */
        tly_api_problem(ar, 422, "quota_exceeded", PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY), NULL);
        return;
    }
    /* class 22 (data exception) is the client's input that the parsers let
       through: a retry would fail the same way, so never 503 + Retry-After */
    if (tly_pg_invalid_input(res)) {
        tly_api_problem(ar, 422, "invalid_input", "a value of the request is out of range or invalid", NULL);
        return;
    }
    tly_log(TLY_LOG_WARN, "statement failed", "request_id", ar->request_id, "route", ar->route, "error",
            err != NULL   ? err
            : res != NULL ? PQresultErrorMessage(res)
                          : "no result",
            NULL);
    tly_api_unavailable(ar, "database_unavailable", detail);
}

bool
tly_api_abuse_setup(const tly_api_abuse_config_t *cfg, char *err, size_t errcap)
{
    tly_authfail_configure((int)cfg->auth_fail_limit, (int)cfg->auth_fail_window_s);
    if (!tly_trusted_proxies_set(cfg->trusted_proxies)) {
        snprintf(err, errcap, "invalid value for TALLY_TRUSTED_PROXIES: \"%s\"", cfg->trusted_proxies);
        return false;
    }
    return true;
}

/* The client's address: the peer, or the last X-Forwarded-For entry when the peer is a trusted proxy. */
static bool
source_addr(h2o_req_t *req, tly_addr_t *out)
{
    struct sockaddr_storage ss;
    if (req->conn->callbacks->get_peername == NULL || req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss) == 0 ||
        !tly_addr_from_sockaddr((struct sockaddr *)&ss, out))
        return false;
    if (!tly_trusted_proxy(out))
        return true;
    ssize_t i = -1, last = -1;
    while ((i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("x-forwarded-for"), i)) >= 0)
        last = i;
    if (last >= 0) {
        h2o_iovec_t v = req->headers.entries[last].value;
        const char *comma = v.base + v.len;
        while (comma > v.base && comma[-1] != ',')
            --comma;
        tly_addr_t fwd;
        if (tly_addr_parse(comma, (size_t)(v.base + v.len - comma), &fwd))
            *out = fwd;
    }
    return true;
}

/* 429 for an address over its failed-authentication limit; false when the request must stop. */
static bool
not_throttled_or_reply(tly_api_req_t *ar, const tly_addr_t *addr)
{
    char secs[24];
    int retry = tly_authfail_retry_after(addr, tly_clock_mono_us());
    if (retry == 0)
        return true;
    snprintf(secs, sizeof(secs), "%d", retry);
    tly_http_add_header(ar->req, "retry-after", secs);
    ar->quiet = true;
    tly_api_problem(ar, 429, "too_many_failed_authentications",
                    "too many failed authentications from this address; retry after the time given", NULL);
    return false;
}

static void
record_failure(const tly_addr_t *addr, bool have_addr)
{
    char text[46];
    if (!have_addr || !tly_authfail_record(addr, tly_clock_mono_us()))
        return;
    tly_addr_format(addr, text);
    tly_log(TLY_LOG_WARN, "throttling failed authentications", "source", text, NULL);
}

/* More than one Authorization header is ambiguous (which one is checked?): 400, never the first one. */
static bool
one_authorization_or_reply(tly_api_req_t *ar, h2o_iovec_t *auth)
{
    ssize_t first = h2o_find_header(&ar->req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    *auth = h2o_iovec_init(NULL, 0);
    if (first < 0)
        return true;
    if (h2o_find_header(&ar->req->headers, H2O_TOKEN_AUTHORIZATION, first) >= 0) {
        tly_api_problem(ar, 400, "duplicate_header", "the request has more than one Authorization header", NULL);
        return false;
    }
    /* optional whitespace around the value is not part of it (RFC 9110 5.5) */
    h2o_iovec_t v = ar->req->headers.entries[first].value;
    while (v.len > 0 && (v.base[0] == ' ' || v.base[0] == '\t'))
        ++v.base, --v.len;
    while (v.len > 0 && (v.base[v.len - 1] == ' ' || v.base[v.len - 1] == '\t'))
        --v.len;
    *auth = v;
    return true;
}

bool
tly_api_authenticate_or_reply(tly_api_req_t *ar, tly_keycache_t *keys, int scope)
{
    tly_addr_t addr;
    h2o_iovec_t auth;
    bool have_addr = source_addr(ar->req, &addr);
    if ((have_addr && !not_throttled_or_reply(ar, &addr)) || !one_authorization_or_reply(ar, &auth))
        return false;
    switch (tly_keycache_check(keys, auth.base, auth.len, &ar->principal)) {
    case TLY_AUTH_OK:
        break;
    case TLY_AUTH_MISSING:
        tly_http_add_header(ar->req, "www-authenticate", "Bearer");
        tly_api_problem(ar, 401, "unauthenticated", "an API key is required: Authorization: Bearer tly_live_...", NULL);
        return false;
    case TLY_AUTH_INVALID:
        record_failure(&addr, have_addr);
        tly_http_add_header(ar->req, "www-authenticate", "Bearer error=\"invalid_token\"");
        tly_api_problem(ar, 401, "invalid_api_key", "the API key is malformed, unknown or revoked", NULL);
        return false;
    case TLY_AUTH_UNAVAILABLE:
        tly_api_unavailable(ar, "database_unavailable", "API keys cannot be checked right now");
        return false;
    }
    if (thread_limiter != NULL) {
        tly_limit_key_t key = limit_key_of(&ar->principal);
        tly_limiter_take(thread_limiter, &key, false, tly_clock_mono_us(), &ar->rate);
        if (!rate_or_reply(ar, &ar->rate))
            return false;
    }
    if ((ar->principal.scopes & scope) == 0) {
        char name[16], detail[96], challenge[96];
        tly_scopes_names(scope, name, sizeof(name));
        snprintf(detail, sizeof(detail), "this API key lacks the %s scope this request needs", name);
        snprintf(challenge, sizeof(challenge), "Bearer error=\"insufficient_scope\", scope=\"%s\"", name);
        tly_http_add_header(ar->req, "www-authenticate", challenge);
        tly_api_problem(ar, 403, "insufficient_scope", detail, NULL);
        return false;
    }
    return true;
}
