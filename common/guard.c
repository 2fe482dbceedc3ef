/* Admission control of both APIs: limiter wiring and load shedding. See tally/guard.h. */
#include "tally/guard.h"
#include "tally/api.h"
#include "tally/clock.h"
#include "tally/http.h"
#include "tally/metrics.h"

#include <stdlib.h>
#include <string.h>

/* a moving average with no sample for this long says nothing any more */
#define EWMA_STALE_US 1000000
#define EWMA_WEIGHT 0.2
#define SHED_RETRY_AFTER "2"

struct st_tly_guard_t {
    tly_guard_config_t cfg;
    bool has_redis;
    tly_limiter_t *limiter;
    tly_series_t *shed[4];
};

typedef struct st_ewma_t {
    double ms;
    int64_t at_us;
} ewma_t;

struct st_tly_guard_thread_t {
    tly_guard_t *guard;
    tly_limiter_thread_t *limiter;
    tly_pgpool_t *pgpool;
    const size_t *inflight;
    ewma_t pg, broker;
};

static const char *const class_names[4] = {"long_poll", "bulk", "read", "command"};

tly_guard_t *
tly_guard_create(const tly_guard_config_t *cfg, const char *pg_dsn)
{
    tly_guard_t *g = calloc(1, sizeof(*g));
    if (g == NULL)
        abort();
    g->cfg = *cfg;
    tly_limiter_config_t lc = {
        .redis_url = cfg->redis_url,
        .redis_timeout_ms = (int)cfg->redis_timeout_ms,
        .instances = (int)cfg->instances,
        .lease_pct = (int)cfg->lease_pct,
        .pg_dsn = pg_dsn,
        .refresh_ms = (int)cfg->limits_refresh_ms,
        .enabled = cfg->rate_limits,
    };
    g->limiter = tly_limiter_create(&lc);
    g->has_redis = cfg->redis_url != NULL && cfg->redis_url[0] != '\0';
    g->cfg.redis_url = NULL; /* owned by the caller's config; the limiter keeps its own copy */
    tly_metric_t *m = tly_metrics_counter(tly_metrics_default(), "tally_load_shed_total",
                                          "Requests refused with 503 because the instance was overloaded, by class "
                                          "(long_poll, bulk, read, command: shed in that order).",
                                          "class", 4);
    for (int i = 0; i < 4; ++i) {
        g->shed[i] = tly_metric_s1(m, class_names[i]);
        tly_counter_add(g->shed[i], 0);
    }
    return g;
}

void
tly_guard_destroy(tly_guard_t *g)
{
    if (g == NULL)
        return;
    tly_limiter_destroy(g->limiter);
    free(g);
}

static void
on_pg_latency(void *data, double ms)
{
    tly_guard_note_pg(data, ms);
}

tly_guard_thread_t *
tly_guard_thread_create(tly_guard_t *g, h2o_loop_t *loop, const size_t *inflight, tly_pgpool_t *pg, bool sweeper)
{
    tly_guard_thread_t *t = calloc(1, sizeof(*t));
    if (t == NULL)
        abort();
    t->guard = g;
    t->inflight = inflight;
    t->limiter = tly_limiter_thread_create(g->limiter, loop, sweeper);
    tly_api_bind_limiter(t->limiter);
    t->pgpool = pg;
    tly_pgpool_observe(pg, on_pg_latency, t);
    return t;
}

void
tly_guard_thread_destroy(tly_guard_thread_t *t)
{
    if (t == NULL)
        return;
    tly_api_bind_limiter(NULL);
    tly_pgpool_observe(t->pgpool, NULL, NULL);
    tly_limiter_thread_destroy(t->limiter);
    free(t);
}

static void
ewma_note(ewma_t *e, double ms, int64_t now_us)
{
    e->ms = e->at_us == 0 || now_us - e->at_us > EWMA_STALE_US ? ms : (1 - EWMA_WEIGHT) * e->ms + EWMA_WEIGHT * ms;
    e->at_us = now_us;
}

static double
ewma_value(const ewma_t *e, int64_t now_us)
{
    return e->at_us == 0 || now_us - e->at_us > EWMA_STALE_US ? 0 : e->ms;
}

void
tly_guard_note_pg(tly_guard_thread_t *t, double ms)
{
    ewma_note(&t->pg, ms, tly_clock_mono_us());
}

void
tly_guard_note_broker(tly_guard_thread_t *t, double ms)
{
    ewma_note(&t->broker, ms, tly_clock_mono_us());
}

double
tly_guard_load(const tly_guard_thread_t *t, int64_t now_us)
{
    const tly_guard_config_t *c = &t->guard->cfg;
    double load = (double)*t->inflight / (double)c->shed_inflight;
    double pg = ewma_value(&t->pg, now_us) / (double)c->shed_pg_ms,
           broker = ewma_value(&t->broker, now_us) / (double)c->shed_broker_ms;
    if (pg > load)
        load = pg;
    if (broker > load)
        load = broker;
    return load;
}

bool
tly_guard_sheds(tly_shed_class_t cls, double load)
{
    return load >= 1.0 + 0.5 * (double)cls;
}

tly_shed_class_t
tly_guard_class_of(h2o_req_t *req)
{
    h2o_iovec_t segs[4];
    int n = tly_http_path_segments(req, segs, 3);
    bool read = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")) ||
                h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"));
    if (read) {
        h2o_iovec_t prefer = tly_http_header(req, "prefer");
        if (n == 2 && tly_http_seg_is(segs[0], "jobs") && prefer.base != NULL &&
            h2o_strstr(prefer.base, prefer.len, H2O_STRLIT("wait")) != SIZE_MAX)
            return TLY_SHED_LONG_POLL;
        return n == 2 ? TLY_SHED_READ : TLY_SHED_BULK; /* /v1/x and /v1/x/{id}/y are lists */
    }
    if (n == 1 && tly_http_seg_is(segs[0], "batch"))
        return TLY_SHED_BULK;
    if (n >= 1 && (tly_http_seg_is(segs[0], "api-keys") || tly_http_seg_is(segs[0], "webhook-endpoints")))
        return TLY_SHED_READ;
    return TLY_SHED_COMMAND;
}

bool
tly_guard_shed_or_pass(tly_guard_thread_t *t, h2o_req_t *req, size_t *inflight)
{
    tly_shed_class_t cls = tly_guard_class_of(req);
    if (!tly_guard_sheds(cls, tly_guard_load(t, tly_clock_mono_us())))
        return false;
    tly_api_req_t ar;
    tly_counter_add(t->guard->shed[cls], 1);
    tly_api_req_init(&ar, req, inflight);
    ar.route = "shed";
    tly_http_add_header(req, "retry-after", SHED_RETRY_AFTER);
    tly_api_problem(&ar, 503, "overloaded", "this instance is overloaded; retry after the time given", NULL);
    tly_api_req_finish(&ar);
    return true;
}

void
tly_guard_ready(const tly_guard_thread_t *t, json_t *reasons)
{
    bool store = tly_limiter_store_ok(t->limiter) || !t->guard->has_redis;
    json_object_set_new(reasons, "rate_limits", json_boolean(tly_limiter_ready(t->guard->limiter)));
    json_object_set_new(reasons, "rate_limit_store", json_boolean(store));
    json_object_set_new(reasons, "load", json_real(tly_guard_load(t, tly_clock_mono_us())));
    if (!store)
        json_object_set_new(reasons, "degraded", json_pack("[s]", "rate_limit_store"));
}
