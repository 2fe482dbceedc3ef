/*
 * Admission control shared by both APIs: the rate limiter (tally/ratelimit.h)
 * and load shedding, with their settings, their per-thread state and their
 * part of /readyz. See docs/ratelimits.md.
 *
 * Load shedding: a thread is overloaded when its requests in flight, its
 * PostgreSQL latency or (command API) its broker latency pass a threshold;
 * the load is the largest of the three ratios. The least critical traffic is
 * refused first with 503 and Retry-After, before anything is read or
 * written for it:
 *
 *   load ≥ 1.0   long-polls (Prefer: wait)
 *   load ≥ 1.5   lists and batches
 *   load ≥ 2.0   single reads and key / webhook administration
 *   load ≥ 2.5   new commands
 *
 * A request is judged only when it arrives, so a command whose record is
 * written always runs to its answer.
 */
#ifndef TALLY_GUARD_H
#define TALLY_GUARD_H

#define H2O_USE_LIBUV 0
#include "tally/config.h"
#include "tally/pgasync.h"
#include "tally/ratelimit.h"

#include <h2o.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct st_tly_guard_config_t {
    char *redis_url;
    int64_t redis_timeout_ms;
    int64_t instances;
    int64_t lease_pct;
    int64_t limits_refresh_ms;
    bool rate_limits;
    int64_t shed_inflight;
    int64_t shed_pg_ms;
    int64_t shed_broker_ms;
} tly_guard_config_t;

/* The settings table entries, for a config struct `type` that embeds a tly_guard_config_t as `member`. */
/* clang-format off */
#define TLY_GUARD_SETTINGS(type, member) \
    {"redis-url", "TALLY_REDIS_URL", TLY_CONFIG_STRING, "", 0, 0, offsetof(type, member.redis_url), \
     "Redis holding the shared rate-limit state, redis://host:port (empty: each instance limits on its own share)"}, \
    {"redis-timeout-ms", "TALLY_REDIS_TIMEOUT_MS", TLY_CONFIG_INT, "50", 1, 10000, offsetof(type, member.redis_timeout_ms), \
     "a lease call slower than this counts as Redis down (no request ever waits for one)"}, \
    {"api-instances", "TALLY_API_INSTANCES", TLY_CONFIG_INT, "1", 1, 1024, offsetof(type, member.instances), \
     "instances of this API sharing the limits: while Redis is down each one allows 1/N of a limit"}, \
    {"rate-lease-pct", "TALLY_RATE_LEASE_PCT", TLY_CONFIG_INT, "10", 1, 100, offsetof(type, member.lease_pct), \
     "tokens an instance leases at once, in percent of the burst (the overshoot bound is instances x lease)"}, \
    {"limits-refresh-ms", "TALLY_LIMITS_REFRESH_MS", TLY_CONFIG_INT, "1000", 100, 60000, offsetof(type, member.limits_refresh_ms), \
     "how often rate_limits changes (tallyctl limits set) are loaded"}, \
    {"rate-limits", "TALLY_RATE_LIMITS", TLY_CONFIG_BOOL, "true", 0, 0, offsetof(type, member.rate_limits), \
     "enforce rate and concurrency limits (false only to measure what they cost)"}, \
    {"shed-inflight", "TALLY_SHED_INFLIGHT", TLY_CONFIG_INT, "2000", 1, 1000000, offsetof(type, member.shed_inflight), \
     "requests in flight per thread at load 1.0 (load shedding)"}, \
    {"shed-pg-ms", "TALLY_SHED_PG_MS", TLY_CONFIG_INT, "1000", 1, 600000, offsetof(type, member.shed_pg_ms), \
     "PostgreSQL latency (moving average) at load 1.0"}, \
    {"shed-broker-ms", "TALLY_SHED_BROKER_MS", TLY_CONFIG_INT, "1000", 1, 600000, offsetof(type, member.shed_broker_ms), \
     "broker acknowledgement latency (moving average) at load 1.0 (command API)"}
/* clang-format on */

typedef struct st_tly_guard_t tly_guard_t;
typedef struct st_tly_guard_thread_t tly_guard_thread_t;

/** How critical a request is; lower classes are shed first. */
typedef enum en_tly_shed_class_t {
    TLY_SHED_LONG_POLL = 0,
    TLY_SHED_BULK = 1,    /* lists, batches */
    TLY_SHED_READ = 2,    /* single reads, key and webhook administration */
    TLY_SHED_COMMAND = 3, /* new commands */
} tly_shed_class_t;

/** Starts the process's guard (its limiter loads rate_limits from `pg_dsn`). */
tly_guard_t *tly_guard_create(const tly_guard_config_t *cfg, const char *pg_dsn);
void tly_guard_destroy(tly_guard_t *g);

/**
 * The guard of one event loop: binds its limiter for
 * tly_api_authenticate_or_reply and watches the latency of `pg` (borrowed;
 * outlives the guard). `sweeper`: the first thread.
 */
tly_guard_thread_t *tly_guard_thread_create(tly_guard_t *g, h2o_loop_t *loop, const size_t *inflight, tly_pgpool_t *pg,
                                            bool sweeper);
void tly_guard_thread_destroy(tly_guard_thread_t *t);

/** A PostgreSQL or broker round trip just measured (moving averages of the thread). */
void tly_guard_note_pg(tly_guard_thread_t *t, double ms);
void tly_guard_note_broker(tly_guard_thread_t *t, double ms);

/** The class of a request from its method, path and Prefer header. */
tly_shed_class_t tly_guard_class_of(h2o_req_t *req);
/** The load from the three ratios at `now_us` (an average not fed for a second counts as 0). */
double tly_guard_load(const tly_guard_thread_t *t, int64_t now_us);
/** Whether `class` is shed at `load` (the one table of thresholds). */
bool tly_guard_sheds(tly_shed_class_t cls, double load);

/**
 * Answers 503 overloaded with Retry-After when the thread sheds this request;
 * returns true when it did (the handler must not go on).
 */
bool tly_guard_shed_or_pass(tly_guard_thread_t *t, h2o_req_t *req, size_t *inflight);

/** Adds the guard's part of /readyz: the rate-limit store (degraded, never unready) and the load. */
void tly_guard_ready(const tly_guard_thread_t *t, json_t *reasons);

#endif
