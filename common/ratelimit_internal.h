/*
 * Internals of the rate limiter shared by ratelimit.c (buckets, decisions),
 * ratelimit_store.c (leases from Redis) and ratelimit_load.c (rate_limits).
 * Not included outside common/.
 */
#ifndef TALLY_RATELIMIT_INTERNAL_H
#define TALLY_RATELIMIT_INTERNAL_H

#include "tally/metrics.h"
#include "tally/ratelimit.h"
#include "tally/redisasync.h"

#include <pthread.h>
#include <stdatomic.h>

#define RL_NCHAINS 4096
/* an answer from Redis about a bucket older than this says nothing about it any more */
#define RL_STALE_US 1000000
/* a lease unused this long goes back to Redis (a key used every few seconds keeps its lease) */
#define RL_IDLE_US 5000000
/* an error reply from Redis makes the thread treat it as down this long */
#define RL_ERROR_HOLD_US 1000000
#define RL_TICK_MS 250

typedef enum en_rl_source_t {
    RL_SRC_LEASE,     /* the instance's lease */
    RL_SRC_OVERDRAFT, /* no lease in hand, Redis had tokens: debt */
    RL_SRC_COLD,      /* no answer for this bucket yet: local share, as debt */
    RL_SRC_FALLBACK,  /* Redis down: local share */
    RL_SRC_REFUSED,   /* Redis down, the tier refuses */
    RL_SRC__COUNT
} rl_source_t;

/* One token bucket as this instance sees it; guarded by its subject's lock. */
typedef struct st_rl_bucket_t {
    char rkey[64];       /* the Redis key */
    int64_t rate, burst; /* the limit in force (0: none) */
    int64_t lease;       /* tokens held by this instance */
    int64_t debt;        /* tokens admitted without a lease, still to report */
    int64_t debt_sent;   /* the part of the debt the call in flight reports */
    int64_t reported;    /* tokens Redis had left at its last answer */
    int64_t last_reply_us, empty_until_us, last_take_us;
    bool refilling; /* a call for this bucket is in flight */
    double local;   /* the local share's tokens */
    int64_t local_us;
    bool active; /* in the sweeper's list (holds a lease or a debt) */
    struct st_rl_bucket_t *active_next;
    struct st_tly_limit_subject_t *subject;
} rl_bucket_t;

struct st_tly_limit_subject_t {
    struct st_tly_limit_subject_t *next; /* hash chain */
    char kind;                           /* 'k' key, 't' tenant */
    char id[40];
    pthread_mutex_t lock;
    /* rate_limits rows (0: no row, or the row sets nothing) */
    int64_t o_rate, o_burst, o_concurrency, o_long_polls;
    int64_t s_rate, s_burst;
    rl_bucket_t enforce, shadow;
    int64_t inflight, long_polls;   /* this process's requests of the key */
    int64_t conc_limit, poll_limit; /* the shares in force for the requests held */
};

/* A lease call to make once the subject's lock is released. */
typedef struct st_rl_call_t {
    rl_bucket_t *bucket;
    int64_t rate, burst, want, debt, back;
} rl_call_t;

struct st_tly_limiter_t {
    tly_limiter_config_t cfg;
    char *redis_url, *pg_dsn;
    pthread_rwlock_t lock;
    tly_limit_subject_t *chains[RL_NCHAINS];
    pthread_mutex_t active_lock;
    rl_bucket_t *active;
    char script_sha[41];
    atomic_bool loaded, stop;
    pthread_t loader;
    bool has_loader;
    /* metrics, resolved once */
    tly_series_t *decisions[2][2][RL_SRC__COUNT]; /* scope (key, tenant), limited, source */
    tly_series_t *shadow_rejections[2], *near_limit[2], *concurrency[2];
    tly_series_t *calls_lease, *calls_return, *calls_probe, *store_errors, *store_up;
};

struct st_tly_limiter_thread_t {
    tly_limiter_t *lim;
    h2o_loop_t *loop;
    tly_redis_t *redis;
    bool sweeper, probing, was_ok;
    int64_t error_us;
    h2o_timeout_t tick;
    h2o_timeout_entry_t tick_entry;
};

/** The Lua script of a lease (ratelimit_store.c). */
extern const char rl_lease_script[];

/** SHA-1 of the script, as EVALSHA names it. */
void rl_script_sha(char out[41]);
/** Sends a lease call (or a return) for `call` on the thread's connection. */
void rl_store_send(tly_limiter_thread_t *t, const rl_call_t *call);
/** Applies a lease answer (grant, tokens left, ms until a token) or a failure (`ok` false). */
void rl_bucket_answered(tly_limiter_t *lim, rl_bucket_t *b, bool ok, int64_t grant, int64_t left, int64_t wait_ms, int64_t now_us);
/** Returns idle leases and pays debts (the sweeper thread, every tick). */
void rl_sweep(tly_limiter_thread_t *t, int64_t now_us);

/** Starts (and stops) the rate_limits loader thread (ratelimit_load.c). */
void rl_loader_start(tly_limiter_t *lim);
void rl_loader_stop(tly_limiter_t *lim);

/** Tokens a lease asks for: lease_pct of the burst, at least 1. */
int64_t rl_lease_size(const tly_limiter_t *lim, int64_t burst);

#endif
