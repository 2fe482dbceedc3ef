/* Role threads of tally-worker. */
#include "worker.h"
#include "consumer.h"
#include "relay.h"
#include "roles.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct st_consumer_thread_t {
    tly_consumer_config_t cfg;
    tly_consumer_handler_t handler;
    int result;
} consumer_thread_t;

struct st_tly_worker_t {
    pthread_t threads[3];
    int nthreads;
    consumer_thread_t decider, projector;
    tly_decider_role_t decider_role;
    tly_relay_config_t relay_cfg;
    int relay_result;
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
        else {
            snprintf(err, errcap, "invalid value for roles: unknown role \"%.*s\" (known: decider, projector)", (int)n, s);
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

static int
spawn(tly_worker_t *w, void *(*fn)(void *), void *arg, char *err, size_t errcap)
{
    int e = pthread_create(&w->threads[w->nthreads], NULL, fn, arg);
    if (e != 0) {
        snprintf(err, errcap, "could not start a thread: %s", strerror(e));
        return -1;
    }
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
        tly_decider_role_init(&w->decider.handler, &w->decider_role, cfg->topic);
        w->relay_cfg = (tly_relay_config_t){.brokers = cfg->brokers, .pg_dsn = cfg->pg_dsn, .stop = stop};
        if (spawn(w, run_consumer, &w->decider, err, errcap) != 0 || spawn(w, run_relay, w, err, errcap) != 0)
            goto fail;
    }
    if (roles & TLY_ROLE_PROJECTOR) {
        consumer_cfg(&w->projector.cfg, cfg, "tally-projector", stop);
        tly_projector_role_init(&w->projector.handler);
        if (spawn(w, run_consumer, &w->projector, err, errcap) != 0)
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
    int ret = w->decider.result != 0 || w->projector.result != 0 || w->relay_result != 0 ? -1 : 0;
    free(w);
    return ret;
}
