/*
 * Rate limits that hold across every API instance (docs/ratelimits.md).
 *
 * Each request takes a token from its key's bucket and, when the tenant has
 * a plan budget, from the tenant's bucket. A bucket's truth lives in Redis
 * (a token bucket in one hash, changed only by one Lua script, so a lease is
 * one atomic call); an instance leases a few tokens at a time (a fraction of
 * the burst), serves requests from its lease without any I/O, asks for the
 * next lease before this one runs out, and gives back what an idle lease
 * still holds. The decision never waits: a request is decided from what the
 * instance holds, so no request ever waits on Redis.
 *
 *   lease ≥ 1                   take from the lease
 *   Redis healthy, no lease:    overdraft while Redis said it had tokens, up
 *                               to one lease of debt (paid with the next
 *                               call); a cold bucket (no answer for it yet)
 *                               takes from its local share on the same debt
 *   Redis down or slow:         the tier's policy: the local share (rate and
 *                               burst divided by the instances) or refuse
 *
 * Overshoot: at most instances × lease above rate × time + burst while Redis
 * is up, plus one burst each time Redis loses its state (docs/).
 *
 * Limits: a key's tier (or its contract rate and burst), overridden by the
 * rate_limits table (tallyctl limits set), which also holds tenant budgets,
 * concurrency limits and shadow limits (evaluated and counted, never
 * enforced); changes are loaded every refresh period, without a restart.
 *
 * Threads: one tly_limiter_t per process (buckets and limits shared, each
 * bucket behind its own small lock), one tly_limiter_thread_t per event loop
 * (its Redis connection and timers).
 */
#ifndef TALLY_RATELIMIT_H
#define TALLY_RATELIMIT_H

#define H2O_USE_LIBUV 0
#include "tally/uuid.h"

#include <h2o.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct st_tly_limiter_t tly_limiter_t;
typedef struct st_tly_limiter_thread_t tly_limiter_thread_t;
typedef struct st_tly_limit_subject_t tly_limit_subject_t;

/** What to do while Redis is unreachable. */
typedef enum en_tly_store_down_policy_t {
    TLY_STORE_DOWN_LOCAL,  /* keep limiting with the instance's share: rate / instances */
    TLY_STORE_DOWN_REFUSE, /* 429 until Redis is back */
} tly_store_down_policy_t;

/** A tier: the one table of rates, bursts, concurrency and the store-down policy. */
typedef struct st_tly_tier_t {
    const char *name;
    int64_t rate, burst; /* tokens per second, bucket size */
    int64_t concurrency; /* requests in flight per key */
    int64_t long_polls;  /* Prefer: wait requests in flight per key, counted apart */
    tly_store_down_policy_t store_down;
} tly_tier_t;

/** The named tier (free, standard, contract); NULL for an unknown name. */
const tly_tier_t *tly_tier_find(const char *name);

/** Rate and burst of the named tier; false for an unknown tier. */
bool tly_rate_tier(const char *tier, int64_t *rate, int64_t *burst);

/** What the keycache knows of a key; the limiter's input. */
typedef struct st_tly_limit_key_t {
    const char *key_id;
    const tly_uuid_t *tenant_id;
    const char *tier;
    int64_t rate, burst; /* the tier's, or the key's contract */
} tly_limit_key_t;

/** One policy for the headers: name, bucket size, window, remaining, reset. */
typedef struct st_tly_rate_policy_t {
    const char *name; /* "burst" (the key) or "tenant" */
    int64_t quota;    /* q: the burst */
    int64_t window;   /* w: seconds to refill an empty bucket */
    int64_t remaining;
    int64_t reset; /* seconds until full again */
} tly_rate_policy_t;

typedef enum en_tly_rate_verdict_t {
    TLY_RATE_ALLOWED = 0,
    TLY_RATE_LIMITED,     /* a bucket is empty: 429 rate_limited */
    TLY_RATE_CONCURRENCY, /* too many requests (or long-polls) in flight: 429 concurrency_limited */
} tly_rate_verdict_t;

/** The decision on one request, and what its headers say. */
typedef struct st_tly_rate_t {
    tly_rate_verdict_t verdict;
    bool allowed;
    int64_t retry_after; /* seconds, when not allowed */
    int npolicies;
    tly_rate_policy_t policies[2]; /* the key's, then the tenant's when it has a budget */
    int nearest;                   /* index of the policy nearest exhaustion */
    /* kept for tly_limiter_release: what this request holds */
    tly_limit_subject_t *held;
    bool held_long_poll;
} tly_rate_t;

typedef struct st_tly_limiter_config_t {
    const char *redis_url; /* NULL or "": no Redis, every bucket on its local share */
    int redis_timeout_ms;  /* a lease call slower than this counts as Redis down */
    int instances;         /* API instances sharing the limits (the local share is 1/N) */
    int lease_pct;         /* a lease is this percentage of the burst (at least 1 token) */
    const char *pg_dsn;    /* where rate_limits is read; NULL: tier limits only (tests) */
    int refresh_ms;        /* how often rate_limits changes are loaded */
    bool enabled;          /* false: no limit at all (benchmarks of the limiter's cost) */
} tly_limiter_config_t;

/** Creates the process's limiter (strings are copied); loads rate_limits in the background. */
tly_limiter_t *tly_limiter_create(const tly_limiter_config_t *cfg);
void tly_limiter_destroy(tly_limiter_t *lim);

/** The limiter's side of one event loop; NULL redis_url makes it work offline. */
tly_limiter_thread_t *tly_limiter_thread_create(tly_limiter_t *lim, h2o_loop_t *loop, bool sweeper);
void tly_limiter_thread_destroy(tly_limiter_thread_t *t);

/**
 * Decides one request of `key` at monotonic time `now_us`: takes a token from
 * the key's bucket and the tenant's, and a slot of the key's concurrency (a
 * long-poll slot when `long_poll`). Never blocks; may start a lease call on
 * the thread's Redis connection. When allowed, the caller must call
 * tly_limiter_release(&out) when the request ends.
 */
void tly_limiter_take(tly_limiter_thread_t *t, const tly_limit_key_t *key, bool long_poll, int64_t now_us, tly_rate_t *out);
/** Takes one more token for the same key (a batch item), without a concurrency slot. */
void tly_limiter_take_token(tly_limiter_thread_t *t, const tly_limit_key_t *key, int64_t now_us, tly_rate_t *out);
/**
 * Moves an admitted request's slot to the key's long-polls (a request that
 * turns out to wait); false (slot kept as it was) when the key has no
 * long-poll left: answer 429.
 */
bool tly_limiter_become_long_poll(tly_rate_t *rate);
/** Frees the concurrency slot an admitted request holds (idempotent). */
void tly_limiter_release(tly_rate_t *rate);

/** False while this thread cannot reach Redis (decisions fall back to the tier's policy). */
bool tly_limiter_store_ok(const tly_limiter_thread_t *t);
/** True once rate_limits was loaded (or there is nothing to load). */
bool tly_limiter_ready(const tly_limiter_t *lim);

/* ---- for tests ---------------------------------------------------------- */

/** Sets a subject's limits as the rate_limits loader would ("key" or "tenant"); rate 0 clears. */
void tly_limiter_set(tly_limiter_t *lim, const char *kind, const char *id, bool shadow, int64_t rate, int64_t burst,
                     int64_t concurrency, int64_t long_polls);

#endif
