/*
 * The rate limiter's Redis side: leases taken and returned in one atomic
 * call (a Lua script run with EVALSHA, sent again with EVAL when the server
 * lost its script cache), health probes, and the sweep that gives back idle
 * leases. See tally/ratelimit.h and docs/ratelimits.md.
 */
#include "ratelimit_internal.h"
#include "tally/clock.h"
#include "tally/log.h"

#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * KEYS[1] the bucket; ARGV rate (tokens/s), burst, want, debt, back.
 * Refills the bucket for the time since its last change (Redis's clock, so
 * instances' clocks never matter), adds what is given back, subtracts the
 * debt (tokens admitted without a lease; never below -burst), then grants up
 * to `want` whole tokens. Returns {granted, tokens left, ms until a token}.
 * The key expires once it would be full again: an expired bucket and a full
 * one are the same.
 */
const char rl_lease_script[] = "local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
                               "local want, debt, back = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])\n"
                               "local t = redis.call('TIME')\n"
                               "local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"
                               "local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts')\n"
                               "local tokens, ts = tonumber(s[1]), tonumber(s[2])\n"
                               "if tokens == nil or ts == nil then tokens, ts = burst, now end\n"
                               "if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1000); ts = now end\n"
                               "tokens = math.max(-burst, math.min(burst, tokens + back) - debt)\n"
                               "local grant = 0\n"
                               "if tokens >= 1 then grant = math.min(want, math.floor(tokens)) end\n"
                               "tokens = tokens - grant\n"
                               "redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))\n"
                               "redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)\n"
                               "local wait = 0\n"
                               "if tokens < 1 then wait = math.ceil((1 - tokens) * 1000 / rate) end\n"
                               "return {grant, math.floor(tokens), wait}\n";

typedef struct st_store_call_t {
    tly_limiter_thread_t *t;
    rl_call_t call;
    bool eval; /* sent with the script's text */
} store_call_t;

static void on_lease_reply(void *data, redisReply *reply, const char *err);

static void
send_call(store_call_t *sc)
{
    char n[5][24];
    const char *argv[10];
    size_t lens[10];
    const rl_call_t *c = &sc->call;
    snprintf(n[0], sizeof(n[0]), "%lld", (long long)c->rate);
    snprintf(n[1], sizeof(n[1]), "%lld", (long long)c->burst);
    snprintf(n[2], sizeof(n[2]), "%lld", (long long)c->want);
    snprintf(n[3], sizeof(n[3]), "%lld", (long long)c->debt);
    snprintf(n[4], sizeof(n[4]), "%lld", (long long)c->back);
    argv[0] = sc->eval ? "EVAL" : "EVALSHA";
    argv[1] = sc->eval ? rl_lease_script : sc->t->lim->script_sha;
    argv[2] = "1";
    argv[3] = c->bucket->rkey;
    for (int i = 0; i < 5; ++i)
        argv[4 + i] = n[i];
    for (int i = 0; i < 9; ++i)
        lens[i] = strlen(argv[i]);
    tly_counter_add(c->want > 0 ? sc->t->lim->calls_lease : sc->t->lim->calls_return, 1);
    tly_redis_command(sc->t->redis, 9, argv, lens, on_lease_reply, sc);
}

static bool
parse_lease(const redisReply *reply, int64_t *grant, int64_t *left, int64_t *wait_ms)
{
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3)
        return false;
    for (size_t i = 0; i < 3; ++i)
        if (reply->element[i]->type != REDIS_REPLY_INTEGER)
            return false;
    *grant = reply->element[0]->integer;
    *left = reply->element[1]->integer;
    *wait_ms = reply->element[2]->integer;
    return true;
}

static void
store_failed(tly_limiter_thread_t *t, const char *what)
{
    tly_counter_add(t->lim->store_errors, 1);
    if (t->was_ok)
        tly_log(TLY_LOG_WARN, "rate limiter call to redis failed", "error", what, NULL);
    t->error_us = tly_clock_mono_us();
}

static void
on_lease_reply(void *data, redisReply *reply, const char *err)
{
    store_call_t *sc = data;
    int64_t grant = 0, left = 0, wait_ms = 0;
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR && !sc->eval && strncmp(reply->str, "NOSCRIPT", 8) == 0) {
        sc->eval = true; /* a restarted server: the script goes with the call once, then is cached again */
        send_call(sc);
        return;
    }
    bool ok = reply != NULL && parse_lease(reply, &grant, &left, &wait_ms);
    if (!ok)
        store_failed(sc->t, reply != NULL ? (reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply") : err);
    rl_bucket_answered(sc->t->lim, sc->call.bucket, ok, grant, left, wait_ms, tly_clock_mono_us());
    free(sc);
}

void
rl_script_sha(char out[41])
{
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)rl_lease_script, strlen(rl_lease_script), md);
    for (int i = 0; i < SHA_DIGEST_LENGTH; ++i)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

void
rl_store_send(tly_limiter_thread_t *t, const rl_call_t *call)
{
    if (t->redis == NULL) {
        rl_bucket_answered(t->lim, call->bucket, false, 0, 0, 0, tly_clock_mono_us());
        return;
    }
    store_call_t *sc = calloc(1, sizeof(*sc));
    if (sc == NULL)
        abort();
    sc->t = t;
    sc->call = *call;
    send_call(sc);
}

/* ---- the sweep: idle leases go back, debts get paid ----------------------- */

/* Decides for one bucket (taken off the list); true to keep it listed. */
static bool
sweep_one(tly_limiter_thread_t *t, rl_bucket_t *b, int64_t now_us, rl_call_t *call)
{
    bool keep;
    call->bucket = NULL;
    pthread_mutex_lock(&b->subject->lock);
    if (!b->refilling && now_us - b->last_take_us > RL_IDLE_US && (b->lease > 0 || b->debt > 0) && tly_limiter_store_ok(t)) {
        *call = (rl_call_t){b, b->rate, b->burst, 0, b->debt, b->lease};
        b->refilling = true;
        b->debt_sent = b->debt;
        b->lease = 0;
    }
    keep = b->lease > 0 || b->debt > 0 || b->refilling;
    b->active = keep;
    pthread_mutex_unlock(&b->subject->lock);
    return keep;
}

void
rl_sweep(tly_limiter_thread_t *t, int64_t now_us)
{
    tly_limiter_t *lim = t->lim;
    pthread_mutex_lock(&lim->active_lock);
    rl_bucket_t *list = lim->active;
    lim->active = NULL;
    pthread_mutex_unlock(&lim->active_lock);
    rl_bucket_t *kept = NULL, **tail = &kept;
    while (list != NULL) {
        rl_bucket_t *b = list;
        rl_call_t call;
        list = b->active_next;
        b->active_next = NULL;
        if (sweep_one(t, b, now_us, &call)) {
            *tail = b;
            tail = &b->active_next;
        }
        if (call.bucket != NULL)
            rl_store_send(t, &call);
    }
    if (kept != NULL) {
        pthread_mutex_lock(&lim->active_lock);
        *tail = lim->active;
        lim->active = kept;
        pthread_mutex_unlock(&lim->active_lock);
    }
}

/* ---- per-thread life -------------------------------------------------------- */

static void
on_probe(void *data, redisReply *reply, const char *err)
{
    tly_limiter_thread_t *t = data;
    t->probing = false;
    if (reply != NULL && reply->type != REDIS_REPLY_ERROR)
        t->error_us = 0;
}

/* One line when this thread's view of Redis changes; decisions follow it at once. */
static void
log_transition(tly_limiter_thread_t *t)
{
    bool ok = tly_limiter_store_ok(t);
    if (ok == t->was_ok)
        return;
    t->was_ok = ok;
    if (ok)
        tly_log(TLY_LOG_INFO, "rate limiter reaches redis: limits are shared again", NULL);
    else
        tly_log(TLY_LOG_WARN, "rate limiter cannot reach redis: each tier's store-down policy applies", NULL);
}

static void
on_tick(h2o_timeout_entry_t *entry)
{
    tly_limiter_thread_t *t = H2O_STRUCT_FROM_MEMBER(tly_limiter_thread_t, tick_entry, entry);
    int64_t now = tly_clock_mono_us();
    if (t->redis != NULL)
        log_transition(t);
    /* a connected server that timed out or erred is asked again before decisions trust it */
    if (t->redis != NULL && !tly_limiter_store_ok(t) && !t->probing) {
        const char *argv[1] = {"PING"};
        size_t lens[1] = {4};
        t->probing = true;
        tly_counter_add(t->lim->calls_probe, 1);
        tly_redis_command(t->redis, 1, argv, lens, on_probe, t);
    }
    if (t->sweeper) {
        tly_gauge_set(t->lim->store_up, t->redis == NULL || tly_limiter_store_ok(t) ? 1 : 0);
        rl_sweep(t, now);
    }
    h2o_timeout_link(t->loop, &t->tick, &t->tick_entry);
}

tly_limiter_thread_t *
tly_limiter_thread_create(tly_limiter_t *lim, h2o_loop_t *loop, bool sweeper)
{
    tly_limiter_thread_t *t = calloc(1, sizeof(*t));
    if (t == NULL)
        abort();
    t->lim = lim;
    t->loop = loop;
    t->sweeper = sweeper;
    t->was_ok = true; /* the first tick logs a Redis that is not there */
    if (lim->redis_url != NULL && (t->redis = tly_redis_create(loop, lim->redis_url, lim->cfg.redis_timeout_ms)) == NULL)
        tly_log(TLY_LOG_ERROR, "could not use the redis url: limiting on local shares", "url", lim->redis_url, NULL);
    h2o_timeout_init(loop, &t->tick, RL_TICK_MS);
    t->tick_entry.cb = on_tick;
    h2o_timeout_link(loop, &t->tick, &t->tick_entry);
    return t;
}

void
tly_limiter_thread_destroy(tly_limiter_thread_t *t)
{
    if (t == NULL)
        return;
    if (h2o_timeout_is_linked(&t->tick_entry))
        h2o_timeout_unlink(&t->tick_entry);
    tly_redis_destroy(t->redis); /* answers every call in flight (with an error) first */
    h2o_timeout_dispose(t->loop, &t->tick);
    free(t);
}
