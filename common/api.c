/* Request frames, common headers, auth-or-reply and access logging. */
#include "tally/api.h"
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
    return (tly_limit_key_t){p->key_id, &p->tenant_id, p->tier, p->rate, p->burst};
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
tly_api_authenticate_or_reply(tly_api_req_t *ar, tly_keycache_t *keys, int scope)
{
    h2o_iovec_t auth = tly_http_header(ar->req, "authorization");
    switch (tly_keycache_check(keys, auth.base, auth.len, &ar->principal)) {
    case TLY_AUTH_OK:
        break;
    case TLY_AUTH_MISSING:
        tly_http_add_header(ar->req, "www-authenticate", "Bearer");
        tly_api_problem(ar, 401, "unauthenticated", "an API key is required: Authorization: Bearer tly_live_...", NULL);
        return false;
    case TLY_AUTH_INVALID:
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
        tly_api_problem(ar, 403, "insufficient_scope", "this API key lacks the scope this request needs", NULL);
        return false;
    }
    return true;
}

bool
tly_api_health(h2o_req_t *req, bool ready, const json_t *reasons)
{
    bool is_get = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"));
    bool healthz = h2o_memis(req->path_normalized.base, req->path_normalized.len, H2O_STRLIT("/healthz"));
    bool readyz = h2o_memis(req->path_normalized.base, req->path_normalized.len, H2O_STRLIT("/readyz"));
    if (!is_get || !(healthz || readyz))
        return false;
    if (healthz || (ready && json_object_get(reasons, "degraded") == NULL)) {
        tly_http_send_json_text(req, 200, H2O_STRLIT("{\"status\":\"ok\"}"));
    } else if (ready) {
        json_t *o = json_pack("{s:s, s:O}", "status", "degraded", "reasons", reasons);
        tly_http_send_json(req, 200, o);
        json_decref(o);
    } else {
        json_t *o = json_pack("{s:s, s:O}", "status", "unavailable", "reasons", reasons);
        tly_http_send_json(req, 503, o);
        json_decref(o);
    }
    return true;
}
