/* Role threads of tally-worker. */
#include "worker.h"
#include "outbox/relay.h"
#include "roles/decider_role.h"
#include "roles/projector_role.h"
#include "runtime/consumer.h"
#include "runtime/retention.h"
#include "saga/saga_role.h"
#include "saga/saga_timer.h"
#include "webhooks/webhook_role.h"
#include "webhooks/webhook_sender.h"

#include <curl/curl.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JOIN_AFTER_MAX_MS 5000 /* a projector consumer waits at most this for the first one's assignment */

typedef struct st_consumer_thread_t {
    tly_consumer_config_t cfg;
    tly_consumer_handler_t handler;
    int result;
    atomic_bool joined; /* set by the consumer at its first assignment */
} consumer_thread_t;

struct st_tly_worker_t {
    pthread_t threads[8 + TLY_PROJECTOR_CONSUMERS_MAX - 1];
    int nthreads;
    consumer_thread_t decider, saga, projector, webhooks;
    consumer_thread_t more_projectors[TLY_PROJECTOR_CONSUMERS_MAX - 1]; /* --projector-consumers beyond the first */
    tly_webhook_role_t webhook_role;
    tly_webhook_sender_config_t sender_cfg;
    int sender_result;
    tly_decider_role_t decider_role;
    tly_saga_role_t saga_role;
    tly_saga_timer_config_t timer_cfg;
    tly_relay_config_t relay_cfg;
    int relay_result, timer_result;
    tly_retention_config_t retention_cfg;
    int retention_result;
};

int
tly_worker_parse_roles(const char *s, unsigned *mask, char *err, size_t errcap)
{
    *mask = 0;
    while (*s != '\0') {
        size_t n = strcspn(s, ",");
        if (n == 7 && strncmp(s, "decider", n) == 0)
            *mask |= TLY_ROLE_DECIDER;
        else if (n == 9 && strncmp(s, "projector", n) == 0)
            *mask |= TLY_ROLE_PROJECTOR;
        else if (n == 4 && strncmp(s, "saga", n) == 0)
            *mask |= TLY_ROLE_SAGA;
        else if (n == 8 && strncmp(s, "webhooks", n) == 0)
            *mask |= TLY_ROLE_WEBHOOKS;
        else if (n == 9 && strncmp(s, "retention", n) == 0)
            *mask |= TLY_ROLE_RETENTION;
        else {
            snprintf(err, errcap,
                     "invalid value for roles: unknown role \"%.*s\" (known: decider, saga, projector, webhooks, retention)",
                     (int)n, s);
            return -1;
        }
        s += n;
        if (*s == ',')
            ++s;
    }
    if (*mask == 0) {
        snprintf(err, errcap, "invalid value for roles: no role given");
        return -1;
    }
    return 0;
}

static void *
run_consumer(void *arg)
{
    consumer_thread_t *t = arg;
    t->result = tly_consumer_run(&t->cfg, &t->handler);
    return NULL;
}

static void *
run_relay(void *arg)
{
    tly_worker_t *w = arg;
    w->relay_result = tly_relay_run(&w->relay_cfg);
    return NULL;
}

static void *
run_saga_timer(void *arg)
{
    tly_worker_t *w = arg;
    w->timer_result = tly_saga_timer_run(&w->timer_cfg);
    return NULL;
}

static void *
run_retention(void *arg)
{
    tly_worker_t *w = arg;
    w->retention_result = tly_retention_run(&w->retention_cfg);
    return NULL;
}

static void *
run_webhook_sender(void *arg)
{
    tly_worker_t *w = arg;
    w->sender_result = tly_webhook_sender_run(&w->sender_cfg);
    return NULL;
}

/*
 * The projector's and the decider's consumers prefetch deeper than the
 * others' 4 MB: they are the ones that catch up on a backlog, and with
 * librdkafka 2.0.2 a full queue stalls fetching for about a second (see
 * tly_kafka_consumer_create). Measured on a 200k-event backlog: projector
 * 10–13k events/s with 4 MB, 32–34k with 16 MB; decider 3.3k requests/s,
 * 12.8–13.1k. The projector runs two consumers, and with 16 MB each the
 * worker's peak RSS in a catch-up was 118, 131 and 143 MB in three
 * bench/run.sh project runs and 108–132 MB in bench/reproject.sh runs (the
 * limit is 128 MB); with 12 MB each, 100–112 MB in five reproject runs at
 * 29.4–30.7k events/s against 30.8k with 16 MB (8 MB: 96 MB, 22.7k).
 */
#define DECIDER_PREFETCH_KB 16384
#define PROJECTOR_PREFETCH_KB 12288

/*
 * The webhooks consumer lets the broker gather events for up to 50 ms per
 * fetch: a delivery leaves over the network anyway, and answering its fetch
 * at every event cost the broker about 300 fetches/s at 1,000 commands/s
 * (17/s gathering). The other roles are on the path a client waits for.
 */
#define WEBHOOKS_GATHER_MS 50

static void
consumer_cfg(tly_consumer_config_t *c, const tly_worker_config_t *cfg, const char *group, atomic_bool *stop)
{
    *c = (tly_consumer_config_t){
        .brokers = cfg->brokers,
        .topic = cfg->topic,
        .pg_dsn = cfg->pg_dsn,
        .group = group,
        .batch_max = (int)cfg->batch_size,
        .batch_wait_ms = (int)cfg->batch_wait_ms,
        .max_event_tries = (int)cfg->max_event_tries,
        .stop = stop,
    };
}

/* Starts a role's thread, named `name` (at most 15 bytes: top -H, /proc/<pid>/task/<tid>/comm, the pause tests). */
static int
spawn(tly_worker_t *w, const char *name, void *(*fn)(void *), void *arg, char *err, size_t errcap)
{
    int e = pthread_create(&w->threads[w->nthreads], NULL, fn, arg);
    if (e != 0) {
        snprintf(err, errcap, "could not start a thread: %s", strerror(e));
        return -1;
    }
    (void)pthread_setname_np(w->threads[w->nthreads], name);
    w->nthreads++;
    return 0;
}

tly_worker_t *
tly_worker_start(const tly_worker_config_t *cfg, unsigned roles, atomic_bool *stop, char *err, size_t errcap)
{
    tly_worker_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        abort();
    if (roles & TLY_ROLE_DECIDER) {
        consumer_cfg(&w->decider.cfg, cfg, "tally-decider", stop);
        w->decider.cfg.prefetch_kbytes = DECIDER_PREFETCH_KB;
        tly_decider_role_init(&w->decider.handler, &w->decider_role, cfg->topic);
        if (spawn(w, "decider", run_consumer, &w->decider, err, errcap) != 0)
            goto fail;
    }
    if (roles & TLY_ROLE_SAGA) {
        tly_saga_config_t saga = {.step_timeout_us = cfg->saga_step_timeout_ms * 1000, .stuck_after_us = cfg->saga_stuck_ms * 1000};
        consumer_cfg(&w->saga.cfg, cfg, "tally-saga", stop);
        tly_saga_role_init(&w->saga.handler, &w->saga_role, cfg->topic, &saga);
        w->timer_cfg = (tly_saga_timer_config_t){.pg_dsn = cfg->pg_dsn, .topic = cfg->topic, .saga = saga, .stop = stop};
        if (spawn(w, "saga", run_consumer, &w->saga, err, errcap) != 0 ||
            spawn(w, "saga-timer", run_saga_timer, w, err, errcap) != 0)
            goto fail;
    }
    if (roles & (TLY_ROLE_DECIDER | TLY_ROLE_SAGA)) { /* both write the outbox */
        w->relay_cfg = (tly_relay_config_t){.brokers = cfg->brokers, .pg_dsn = cfg->pg_dsn, .stop = stop};
        if (spawn(w, "relay", run_relay, w, err, errcap) != 0)
            goto fail;
    }
    if (roles & TLY_ROLE_PROJECTOR) {
        /* Several consumers of the group in one process: partitions are independent, and each has its own connection,
           so one's PostgreSQL round trips overlap another's parsing (the same as more worker processes). */
        for (int i = 0; i < cfg->projector_consumers && i < TLY_PROJECTOR_CONSUMERS_MAX; ++i) {
            consumer_thread_t *t = i == 0 ? &w->projector : &w->more_projectors[i - 1];
            consumer_cfg(&t->cfg, cfg, "tally-projector", stop);
            t->cfg.prefetch_kbytes = PROJECTOR_PREFETCH_KB;
            /* the first joins alone; the others after it has its partitions (consumer.c, wait_join_turn) */
            atomic_init(&t->joined, false);
            t->cfg.joined = &t->joined;
            if (i > 0) {
                t->cfg.join_after = &w->projector.joined;
                t->cfg.join_after_max_ms = JOIN_AFTER_MAX_MS;
            }
            tly_projector_role_init(&t->handler);
            char name[16];
            snprintf(name, sizeof(name), "projector-%d", i);
            if (spawn(w, name, run_consumer, t, err, errcap) != 0)
                goto fail;
        }
    }
    if (roles & TLY_ROLE_WEBHOOKS) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            snprintf(err, errcap, "could not initialise libcurl");
            goto fail;
        }
        consumer_cfg(&w->webhooks.cfg, cfg, "tally-webhooks", stop);
        w->webhooks.cfg.gather_ms = WEBHOOKS_GATHER_MS;
        tly_webhook_role_init(&w->webhooks.handler, &w->webhook_role);
        w->sender_cfg = (tly_webhook_sender_config_t){
            .pg_dsn = cfg->pg_dsn,
            .topic = cfg->topic,
            .allow_private = cfg->webhook_allow_private,
            .timeout_ms = cfg->webhook_timeout_ms,
            .time_scale = cfg->webhook_time_scale,
            .per_endpoint = cfg->webhook_per_endpoint,
            .max_in_flight = cfg->webhook_max_in_flight,
            .stop = stop,
        };
        if (spawn(w, "webhooks", run_consumer, &w->webhooks, err, errcap) != 0 ||
            spawn(w, "webhook-sender", run_webhook_sender, w, err, errcap) != 0)
            goto fail;
    }
    if (roles & TLY_ROLE_RETENTION) {
        w->retention_cfg = (tly_retention_config_t){
            .pg_dsn = cfg->pg_dsn,
            .interval_ms = cfg->retention_interval_ms,
            .dedup_retention_s = cfg->dedup_retention_s,
            .command_retention_s = cfg->command_retention_s,
            .stop = stop,
        };
        if (spawn(w, "retention", run_retention, w, err, errcap) != 0)
            goto fail;
    }
    return w;
fail:
    atomic_store(stop, true);
    tly_worker_join(w);
    return NULL;
}

int
tly_worker_join(tly_worker_t *w)
{
    for (int i = 0; i < w->nthreads; ++i)
        pthread_join(w->threads[i], NULL);
    int ret = w->decider.result != 0 || w->saga.result != 0 || w->projector.result != 0 || w->webhooks.result != 0 ||
                      w->relay_result != 0 || w->timer_result != 0 || w->sender_result != 0 || w->retention_result != 0
                  ? -1
                  : 0;
    for (int i = 0; i < TLY_PROJECTOR_CONSUMERS_MAX - 1; ++i)
        if (w->more_projectors[i].result != 0)
            ret = -1;
    tly_webhook_role_clear(&w->webhook_role);
    tly_decider_role_free(&w->decider_role);
    free(w);
    return ret;
}
