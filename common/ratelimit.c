/*
 * Rate-limit decisions: tiers, subjects (keys and tenants), token buckets
 * served from leases, concurrency slots. See tally/ratelimit.h; the leases
 * themselves are in ratelimit_store.c, the rate_limits loader in
 * ratelimit_load.c, the design and its bounds in docs/ratelimits.md.
 */
#include "ratelimit_internal.h"
#include "tally/clock.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The one table of tiers. A contract key keeps its own rate and burst; its
   other limits are the contract tier's. Only free and standard may be asked
   for when a key is created (tly_rate_tier). */
static const tly_tier_t tiers[] = {
    {"free", 10, 20, 8, 2, TLY_STORE_DOWN_REFUSE},
    {"standard", 100, 200, 128, 32, TLY_STORE_DOWN_LOCAL},
    {"contract", 0, 0, 1024, 1024, TLY_STORE_DOWN_LOCAL},
};
#define CONTRACT_TIER (&tiers[2])

static const char *const source_names[RL_SRC__COUNT] = {"lease", "overdraft", "cold", "fallback", "refused"};
static const char *const scope_names[2] = {"key", "tenant"};

const tly_tier_t *
tly_tier_find(const char *name)
{
    for (size_t i = 0; name != NULL && i < sizeof(tiers) / sizeof(tiers[0]); ++i)
        if (strcmp(tiers[i].name, name) == 0)
            return &tiers[i];
    return NULL;
}

bool
tly_rate_tier(const char *tier, int64_t *rate, int64_t *burst)
{
    const tly_tier_t *t = tly_tier_find(tier);
    if (t == NULL || t == CONTRACT_TIER)
        return false;
    *rate = t->rate;
    *burst = t->burst;
    return true;
}

int64_t
rl_lease_size(const tly_limiter_t *lim, int64_t burst)
{
    int64_t n = burst * lim->cfg.lease_pct / 100;
    return n < 1 ? 1 : n;
}

static int64_t
ceil_div(int64_t num, int64_t den)
{
    return den <= 0 ? 1 : (num + den - 1) / den;
}

/* ---- subjects ----------------------------------------------------------- */

static size_t
chain_of(char kind, const char *id)
{
    uint64_t h = 1469598103934665603ULL ^ (uint8_t)kind; /* FNV-1a */
    for (const char *p = id; *p != '\0'; ++p)
        h = (h ^ (uint8_t)*p) * 1099511628211ULL;
    return (size_t)(h % RL_NCHAINS);
}

static tly_limit_subject_t *
find_locked(tly_limiter_t *lim, char kind, const char *id)
{
    for (tly_limit_subject_t *s = lim->chains[chain_of(kind, id)]; s != NULL; s = s->next)
        if (s->kind == kind && strcmp(s->id, id) == 0)
            return s;
    return NULL;
}

static void
bucket_init(rl_bucket_t *b, tly_limit_subject_t *s, const char *mode)
{
    snprintf(b->rkey, sizeof(b->rkey), "tally:rl:%c%s:%s", s->kind, mode, s->id);
    b->subject = s;
    b->local = -1; /* filled on first use, once the limit is known */
}

/* The subject, created on first sight; subjects live as long as the limiter. */
static tly_limit_subject_t *
subject_of(tly_limiter_t *lim, char kind, const char *id)
{
    pthread_rwlock_rdlock(&lim->lock);
    tly_limit_subject_t *s = find_locked(lim, kind, id);
    pthread_rwlock_unlock(&lim->lock);
    if (s != NULL)
        return s;
    pthread_rwlock_wrlock(&lim->lock);
    if ((s = find_locked(lim, kind, id)) == NULL) {
        if ((s = calloc(1, sizeof(*s))) == NULL)
            abort();
        s->kind = kind;
        snprintf(s->id, sizeof(s->id), "%s", id);
        pthread_mutex_init(&s->lock, NULL);
        bucket_init(&s->enforce, s, "");
        bucket_init(&s->shadow, s, "s");
        size_t c = chain_of(kind, id);
        s->next = lim->chains[c];
        lim->chains[c] = s;
    }
    pthread_rwlock_unlock(&lim->lock);
    return s;
}

void
tly_limiter_set(tly_limiter_t *lim, const char *kind, const char *id, bool shadow, int64_t rate, int64_t burst, int64_t concurrency,
                int64_t long_polls)
{
    tly_limit_subject_t *s = subject_of(lim, strcmp(kind, "tenant") == 0 ? 't' : 'k', id);
    pthread_mutex_lock(&s->lock);
    if (shadow) {
        s->s_rate = rate;
        s->s_burst = rate > 0 ? (burst > 0 ? burst : rate) : 0;
    } else {
        s->o_rate = rate;
        s->o_burst = rate > 0 ? (burst > 0 ? burst : rate) : 0;
        s->o_concurrency = concurrency;
        s->o_long_polls = long_polls;
    }
    pthread_mutex_unlock(&s->lock);
}

/* ---- one bucket ----------------------------------------------------------- */

/* Puts a bucket holding a lease or a debt on the sweeper's list (bucket's subject locked). */
static void
activate(tly_limiter_t *lim, rl_bucket_t *b)
{
    if (b->active || (b->lease <= 0 && b->debt <= 0))
        return;
    b->active = true;
    pthread_mutex_lock(&lim->active_lock);
    b->active_next = lim->active;
    lim->active = b;
    pthread_mutex_unlock(&lim->active_lock);
}

/* Follows a change of the limit and refills the local share. */
static void
bucket_prepare(tly_limiter_t *lim, rl_bucket_t *b, int64_t rate, int64_t burst, int64_t now_us)
{
    double share_rate = (double)rate / lim->cfg.instances, share_burst = fmax(1.0, (double)burst / lim->cfg.instances);
    if (b->rate != rate || b->burst != burst || b->local < 0) {
        b->rate = rate;
        b->burst = burst;
        b->local = share_burst;
        b->local_us = now_us;
    }
    b->local = fmin(share_burst, b->local + (double)(now_us - b->local_us) / 1e6 * share_rate);
    b->local_us = now_us;
}

/* ms until the local share has a token again */
static int64_t
local_wait_ms(const tly_limiter_t *lim, const rl_bucket_t *b)
{
    double share_rate = (double)b->rate / lim->cfg.instances;
    return share_rate <= 0 ? 1000 : (int64_t)ceil((1.0 - b->local) / share_rate * 1000.0);
}

/* What Redis holds now by its last answer and the refill since (others' use unknown), less what we owe. */
static double
redis_estimate(const rl_bucket_t *b, int64_t now_us)
{
    double est = (double)b->reported + (double)(now_us - b->last_reply_us) / 1e6 * (double)b->rate;
    return fmin(est, (double)b->burst) - (double)b->debt;
}

/*
 * Takes one token (subject locked). `store_ok`: this thread reaches Redis.
 * Fills `*call` when the bucket wants a lease, returns whether the request may go.
 */
static bool
bucket_take(tly_limiter_t *lim, rl_bucket_t *b, bool store_ok, tly_store_down_policy_t policy, int64_t now_us, rl_source_t *src,
            int64_t *wait_ms, rl_call_t *call)
{
    int64_t lease_size = rl_lease_size(lim, b->burst);
    bool allowed = false;
    *wait_ms = 0;
    b->last_take_us = now_us;
    if (b->lease >= 1) {
        --b->lease;
        *src = RL_SRC_LEASE;
        allowed = true;
    } else if (!store_ok) {
        *src = policy == TLY_STORE_DOWN_REFUSE ? RL_SRC_REFUSED : RL_SRC_FALLBACK;
        if (*src == RL_SRC_FALLBACK && b->local >= 1) {
            b->local -= 1;
            /* reported once Redis answers again (up to one burst), so an
               episode of a slow Redis hands out no second burst */
            if (b->debt < b->burst)
                ++b->debt;
            allowed = true;
        } else {
            *wait_ms = *src == RL_SRC_REFUSED ? 1000 : local_wait_ms(lim, b);
        }
    } else if (b->last_reply_us != 0 && now_us - b->last_reply_us < RL_STALE_US) {
        *src = RL_SRC_OVERDRAFT; /* Redis had tokens a moment ago, or has refilled some since */
        /* up to a lease, or beyond while the instance's share has tokens:
           a burst that outruns the leases within one round trip (a batch
           of 100) borrows at most this instance's part of the burst */
        if (redis_estimate(b, now_us) >= 1 && (b->debt < lease_size || b->local >= 1)) {
            ++b->debt;
            allowed = true;
        } else {
            *src = RL_SRC_LEASE; /* Redis said the bucket is empty */
            *wait_ms = b->empty_until_us > now_us ? (b->empty_until_us - now_us + 999) / 1000 : ceil_div(1000, b->rate);
        }
    } else {
        *src = RL_SRC_COLD; /* nothing known of the bucket: this instance's share of it, owed */
        if (b->local >= 1) {
            b->local -= 1;
            ++b->debt;
            allowed = true;
        } else {
            *wait_ms = ceil_div(1000, b->rate);
        }
    }
    /* the local share follows what this instance admits, so that falling back
       to it (Redis down or slow) starts from this instance's recent use, not
       from a fresh burst */
    if (allowed && (*src == RL_SRC_LEASE || *src == RL_SRC_OVERDRAFT))
        b->local = fmax(0.0, b->local - 1);
    call->bucket = NULL;
    /* the next lease is asked for while a whole one is still in hand: a busy
       loop that answers late still finds tokens (held tokens are Redis's
       already, so holding two leases never adds to the overshoot) */
    if (store_ok && !b->refilling && b->lease <= lease_size && now_us >= b->empty_until_us) {
        b->refilling = true;
        b->debt_sent = b->debt;
        *call = (rl_call_t){b, b->rate, b->burst, lease_size, b->debt, 0};
    }
    activate(lim, b);
    return allowed;
}

/* Gives back a token taken by bucket_take (the other bucket refused the request). */
static void
bucket_untake(rl_bucket_t *b, rl_source_t src)
{
    switch (src) {
    case RL_SRC_LEASE:
        ++b->lease;
        break;
    case RL_SRC_COLD:
        b->local += 1;
        /* fall through */
    case RL_SRC_OVERDRAFT:
        if (b->debt > b->debt_sent)
            --b->debt;
        break;
    case RL_SRC_FALLBACK:
        b->local += 1;
        if (b->debt > b->debt_sent)
            --b->debt;
        break;
    default:
        break;
    }
}

/* What the headers say of a bucket (subject locked). */
static void
bucket_policy(const tly_limiter_t *lim, const rl_bucket_t *b, bool store_ok, const char *name, tly_rate_policy_t *p)
{
    int64_t remaining;
    if (store_ok && b->last_reply_us != 0)
        remaining = b->lease + (int64_t)fmax(0.0, redis_estimate(b, tly_clock_mono_us()));
    else
        remaining = b->lease + (int64_t)(b->local * lim->cfg.instances);
    if (remaining > b->burst)
        remaining = b->burst;
    if (remaining < 0)
        remaining = 0;
    p->name = name;
    p->quota = b->burst;
    p->window = ceil_div(b->burst, b->rate);
    p->remaining = remaining;
    p->reset = ceil_div(b->burst - remaining, b->rate);
}

void
rl_bucket_answered(tly_limiter_t *lim, rl_bucket_t *b, bool ok, int64_t grant, int64_t left, int64_t wait_ms, int64_t now_us)
{
    tly_limit_subject_t *s = b->subject;
    pthread_mutex_lock(&s->lock);
    b->refilling = false;
    if (ok) {
        b->lease += grant;
        b->debt -= b->debt_sent;
        b->reported = left;
        b->last_reply_us = now_us;
        b->empty_until_us = wait_ms > 0 && grant == 0 ? now_us + wait_ms * 1000 : 0;
    }
    b->debt_sent = 0;
    activate(lim, b);
    pthread_mutex_unlock(&s->lock);
}

/* ---- requests ------------------------------------------------------------- */

bool
tly_limiter_store_ok(const tly_limiter_thread_t *t)
{
    if (t->redis == NULL)
        return false;
    return tly_redis_healthy(t->redis) && tly_clock_mono_us() - t->error_us > RL_ERROR_HOLD_US;
}

static void
count_decision(tly_limiter_t *lim, int scope, bool allowed, rl_source_t src, const tly_rate_policy_t *p)
{
    tly_counter_add(lim->decisions[scope][allowed ? 0 : 1][src], 1);
    if (allowed && p->remaining * 10 < p->quota)
        tly_counter_add(lim->near_limit[scope], 1);
}

/* A shadow limit: evaluated like the real one, counted, never enforced. */
static void
take_shadow(tly_limiter_thread_t *t, rl_bucket_t *b, int scope, bool store_ok, int64_t now_us, rl_call_t *call)
{
    rl_source_t src;
    int64_t wait;
    if (!bucket_take(t->lim, b, store_ok, TLY_STORE_DOWN_LOCAL, now_us, &src, &wait, call))
        tly_counter_add(t->lim->shadow_rejections[scope], 1);
}

/* The subject's bucket for one scope with the limit it has now; NULL when it has none. */
static rl_bucket_t *
enforced_bucket(tly_limiter_t *lim, tly_limit_subject_t *s, const tly_limit_key_t *key, int64_t now_us)
{
    int64_t rate = s->o_rate, burst = s->o_burst;
    if (rate <= 0 && key != NULL)
        rate = key->rate, burst = key->burst;
    if (rate <= 0)
        return NULL;
    bucket_prepare(lim, &s->enforce, rate, burst, now_us);
    return &s->enforce;
}

static rl_bucket_t *
shadow_bucket(tly_limiter_t *lim, tly_limit_subject_t *s, int64_t now_us)
{
    if (s->s_rate <= 0)
        return NULL;
    bucket_prepare(lim, &s->shadow, s->s_rate, s->s_burst, now_us);
    return &s->shadow;
}

static void
send_calls(tly_limiter_thread_t *t, rl_call_t *calls, size_t n)
{
    for (size_t i = 0; i < n; ++i)
        if (calls[i].bucket != NULL)
            rl_store_send(t, &calls[i]);
}

static void
set_nearest(tly_rate_t *out)
{
    out->nearest = 0;
    for (int i = 1; i < out->npolicies; ++i)
        if (out->policies[i].remaining * out->policies[0].quota < out->policies[0].remaining * out->policies[i].quota)
            out->nearest = i;
}

/* Takes the key's and the tenant's tokens; the key's slot is the caller's. */
static void
take_tokens(tly_limiter_thread_t *t, tly_limit_subject_t *ks, const tly_limit_key_t *key, int64_t now_us, tly_rate_t *out)
{
    tly_limiter_t *lim = t->lim;
    const tly_tier_t *tier = tly_tier_find(key->tier);
    tly_store_down_policy_t policy = tier != NULL ? tier->store_down : TLY_STORE_DOWN_LOCAL;
    bool store_ok = tly_limiter_store_ok(t);
    char tenant[TLY_UUID_STR_LEN + 1];
    rl_call_t calls[4] = {{0}};
    rl_source_t ksrc = RL_SRC_LEASE, tsrc = RL_SRC_LEASE;
    int64_t kwait = 0, twait = 0;
    if (t->redis == NULL)
        policy = TLY_STORE_DOWN_LOCAL; /* no Redis configured: local shares are the design, not a failure */
    tly_uuid_format(key->tenant_id, tenant);
    tly_limit_subject_t *ts = subject_of(lim, 't', tenant);

    pthread_mutex_lock(&ks->lock);
    rl_bucket_t *kb = enforced_bucket(lim, ks, key, now_us), *kshadow = shadow_bucket(lim, ks, now_us);
    bool allowed = kb == NULL || bucket_take(lim, kb, store_ok, policy, now_us, &ksrc, &kwait, &calls[0]);
    if (kshadow != NULL)
        take_shadow(t, kshadow, 0, store_ok, now_us, &calls[1]);
    pthread_mutex_unlock(&ks->lock);

    pthread_mutex_lock(&ts->lock);
    rl_bucket_t *tb = enforced_bucket(lim, ts, NULL, now_us), *tshadow = shadow_bucket(lim, ts, now_us);
    bool tenant_allowed = true;
    if (tb != NULL && allowed)
        tenant_allowed = bucket_take(lim, tb, store_ok, policy, now_us, &tsrc, &twait, &calls[2]);
    if (tshadow != NULL)
        take_shadow(t, tshadow, 1, store_ok, now_us, &calls[3]);
    tly_rate_policy_t tp;
    if (tb != NULL) {
        bucket_policy(lim, tb, store_ok, "tenant", &tp);
        if (allowed)
            count_decision(lim, 1, tenant_allowed, tsrc, &tp);
    }
    pthread_mutex_unlock(&ts->lock);

    out->npolicies = 0;
    pthread_mutex_lock(&ks->lock);
    if (kb != NULL) {
        if (allowed && !tenant_allowed)
            bucket_untake(kb, ksrc);
        bucket_policy(lim, kb, store_ok, "burst", &out->policies[out->npolicies]);
        count_decision(lim, 0, allowed, ksrc, &out->policies[out->npolicies++]);
    }
    pthread_mutex_unlock(&ks->lock);
    if (tb != NULL)
        out->policies[out->npolicies++] = tp;
    set_nearest(out);
    out->allowed = allowed && tenant_allowed;
    out->verdict = out->allowed ? TLY_RATE_ALLOWED : TLY_RATE_LIMITED;
    int64_t wait_ms = !allowed ? kwait : twait;
    out->retry_after = out->allowed ? 0 : (wait_ms + 999) / 1000;
    if (!out->allowed && out->retry_after < 1)
        out->retry_after = 1;
    send_calls(t, calls, 4);
}

/* The headers of a request refused before any token was taken (concurrency). */
static void
peek_tokens(tly_limiter_thread_t *t, tly_limit_subject_t *ks, const tly_limit_key_t *key, int64_t now_us, tly_rate_t *out)
{
    char tenant[TLY_UUID_STR_LEN + 1];
    bool store_ok = tly_limiter_store_ok(t);
    tly_uuid_format(key->tenant_id, tenant);
    tly_limit_subject_t *ts = subject_of(t->lim, 't', tenant);
    out->npolicies = 0;
    pthread_mutex_lock(&ks->lock);
    rl_bucket_t *kb = enforced_bucket(t->lim, ks, key, now_us);
    if (kb != NULL)
        bucket_policy(t->lim, kb, store_ok, "burst", &out->policies[out->npolicies++]);
    pthread_mutex_unlock(&ks->lock);
    pthread_mutex_lock(&ts->lock);
    rl_bucket_t *tb = enforced_bucket(t->lim, ts, NULL, now_us);
    if (tb != NULL)
        bucket_policy(t->lim, tb, store_ok, "tenant", &out->policies[out->npolicies++]);
    pthread_mutex_unlock(&ts->lock);
    set_nearest(out);
}

/* Concurrency shares of this instance: the limit divided by the instances, rounded up. */
static void
slot_limits(const tly_limiter_t *lim, const tly_limit_subject_t *s, const tly_tier_t *tier, int64_t *conc, int64_t *polls)
{
    int64_t c = s->o_concurrency > 0 ? s->o_concurrency : tier->concurrency;
    int64_t p = s->o_long_polls > 0 ? s->o_long_polls : tier->long_polls;
    *conc = ceil_div(c, lim->cfg.instances);
    *polls = ceil_div(p, lim->cfg.instances);
}

void
tly_limiter_take(tly_limiter_thread_t *t, const tly_limit_key_t *key, bool long_poll, int64_t now_us, tly_rate_t *out)
{
    memset(out, 0, sizeof(*out));
    if (!t->lim->cfg.enabled) {
        out->allowed = true;
        return;
    }
    const tly_tier_t *tier = tly_tier_find(key->tier);
    if (tier == NULL)
        tier = CONTRACT_TIER;
    tly_limit_subject_t *ks = subject_of(t->lim, 'k', key->key_id);
    pthread_mutex_lock(&ks->lock);
    int64_t conc, polls;
    slot_limits(t->lim, ks, tier, &conc, &polls);
    ks->conc_limit = conc;
    ks->poll_limit = polls;
    bool free_slot = long_poll ? ks->long_polls < polls : ks->inflight < conc;
    if (free_slot)
        ++*(long_poll ? &ks->long_polls : &ks->inflight);
    pthread_mutex_unlock(&ks->lock);
    if (!free_slot) {
        tly_counter_add(t->lim->concurrency[long_poll ? 1 : 0], 1);
        peek_tokens(t, ks, key, now_us, out);
        out->verdict = TLY_RATE_CONCURRENCY;
        out->retry_after = 1;
        return;
    }
    out->held = ks;
    out->held_long_poll = long_poll;
    take_tokens(t, ks, key, now_us, out);
    if (!out->allowed)
        tly_limiter_release(out);
}

void
tly_limiter_take_token(tly_limiter_thread_t *t, const tly_limit_key_t *key, int64_t now_us, tly_rate_t *out)
{
    memset(out, 0, sizeof(*out));
    out->allowed = true;
    if (t->lim->cfg.enabled)
        take_tokens(t, subject_of(t->lim, 'k', key->key_id), key, now_us, out);
}

bool
tly_limiter_become_long_poll(tly_rate_t *rate)
{
    tly_limit_subject_t *s = rate->held;
    if (s == NULL || rate->held_long_poll)
        return true;
    pthread_mutex_lock(&s->lock);
    bool ok = s->long_polls < s->poll_limit; /* the share computed at the key's last take */
    if (ok) {
        --s->inflight;
        ++s->long_polls;
        rate->held_long_poll = true;
    }
    pthread_mutex_unlock(&s->lock);
    return ok;
}

void
tly_limiter_release(tly_rate_t *rate)
{
    tly_limit_subject_t *s = rate->held;
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->lock);
    --*(rate->held_long_poll ? &s->long_polls : &s->inflight);
    pthread_mutex_unlock(&s->lock);
    rate->held = NULL;
}

/* ---- life ----------------------------------------------------------------- */

static void
register_metrics(tly_limiter_t *lim)
{
    tly_metrics_t *r = tly_metrics_default();
    tly_metric_t *dec = tly_metrics_counter(r, "tally_rate_limit_decisions_total",
                                            "Rate-limit decisions by scope (key, tenant), result (allowed, limited) and "
                                            "source (lease, overdraft, cold, fallback: the local share while Redis is down, "
                                            "refused: the tier refuses while Redis is down).",
                                            "scope,result,source", 32);
    for (int s = 0; s < 2; ++s)
        for (int l = 0; l < 2; ++l)
            for (int k = 0; k < RL_SRC__COUNT; ++k)
                lim->decisions[s][l][k] = tly_metric_s3(dec, scope_names[s], l ? "limited" : "allowed", source_names[k]);
    tly_metric_t *shadow = tly_metrics_counter(r, "tally_rate_limit_shadow_rejections_total",
                                               "Requests a shadow limit would have refused (none was refused).", "scope", 2);
    tly_metric_t *near = tly_metrics_counter(r, "tally_rate_limit_near_limit_total",
                                             "Admitted requests that left their bucket under 10 % of its burst.", "scope", 2);
    tly_metric_t *conc = tly_metrics_counter(r, "tally_rate_limit_concurrency_rejections_total",
                                             "Requests refused with 429 because the key had too many in flight.", "kind", 2);
    for (int s = 0; s < 2; ++s) {
        lim->shadow_rejections[s] = tly_metric_s1(shadow, scope_names[s]);
        lim->near_limit[s] = tly_metric_s1(near, scope_names[s]);
        lim->concurrency[s] = tly_metric_s1(conc, s == 0 ? "requests" : "long_polls");
        tly_counter_add(lim->shadow_rejections[s], 0);
        tly_counter_add(lim->near_limit[s], 0);
        tly_counter_add(lim->concurrency[s], 0);
    }
    tly_metric_t *calls =
        tly_metrics_counter(r, "tally_rate_limit_redis_calls_total",
                            "Calls to Redis by the rate limiter: lease, return (of an idle lease), probe.", "kind", 3);
    lim->calls_lease = tly_metric_s1(calls, "lease");
    lim->calls_return = tly_metric_s1(calls, "return");
    lim->calls_probe = tly_metric_s1(calls, "probe");
    tly_counter_add(lim->calls_lease, 0);
    lim->store_errors = tly_metric_s0(tly_metrics_counter(r, "tally_rate_limit_redis_errors_total",
                                                          "Rate-limiter calls to Redis that failed or timed out.", "", 1));
    tly_counter_add(lim->store_errors, 0);
    lim->store_up = tly_metric_s0(
        tly_metrics_gauge(r, "tally_rate_limit_store_up", "1 while the rate limiter reaches Redis, 0 while degraded.", "", 1));
}

tly_limiter_t *
tly_limiter_create(const tly_limiter_config_t *cfg)
{
    tly_limiter_t *lim = calloc(1, sizeof(*lim));
    if (lim == NULL)
        abort();
    lim->cfg = *cfg;
    if (lim->cfg.instances < 1)
        lim->cfg.instances = 1;
    if (lim->cfg.lease_pct < 1)
        lim->cfg.lease_pct = 1;
    lim->redis_url = cfg->redis_url != NULL && cfg->redis_url[0] != '\0' ? strdup(cfg->redis_url) : NULL;
    lim->pg_dsn = cfg->pg_dsn != NULL ? strdup(cfg->pg_dsn) : NULL;
    lim->cfg.redis_url = lim->redis_url;
    lim->cfg.pg_dsn = lim->pg_dsn;
    pthread_rwlock_init(&lim->lock, NULL);
    pthread_mutex_init(&lim->active_lock, NULL);
    register_metrics(lim);
    rl_script_sha(lim->script_sha);
    atomic_store(&lim->loaded, lim->pg_dsn == NULL);
    if (lim->pg_dsn != NULL)
        rl_loader_start(lim);
    return lim;
}

void
tly_limiter_destroy(tly_limiter_t *lim)
{
    if (lim == NULL)
        return;
    rl_loader_stop(lim);
    for (size_t c = 0; c < RL_NCHAINS; ++c) {
        for (tly_limit_subject_t *s = lim->chains[c], *next; s != NULL; s = next) {
            next = s->next;
            pthread_mutex_destroy(&s->lock);
            free(s);
        }
    }
    pthread_mutex_destroy(&lim->active_lock);
    pthread_rwlock_destroy(&lim->lock);
    free(lim->redis_url);
    free(lim->pg_dsn);
    free(lim);
}

bool
tly_limiter_ready(const tly_limiter_t *lim)
{
    return atomic_load(&lim->loaded);
}
