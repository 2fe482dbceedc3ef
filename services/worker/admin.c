/* The worker's admin endpoint and readiness. See admin.h. */
#include "admin.h"
#include "tally/admin.h"
#include "tally/clock.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/metrics.h"

#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_CONSUMERS 8
#define MAX_PARTITIONS 1024 /* as many as tally_consumer_lag has series */
#define WATCH_EVERY_US 1000000LL
#define WATCH_GAP_US (5 * WATCH_EVERY_US) /* a watcher this late was not running (SIGSTOP): that time is nobody's stall */

/*
 * What one partition's owner last reported (any consumer thread writes,
 * under its own ownership of the partition) and what the watcher made of it
 * (the watcher's thread alone writes the rest; `stalled` is read by the
 * readiness check).
 */
typedef struct st_part_state_t {
    _Atomic(const void *) owner; /* the consumer instance (its rd_kafka_t) that claimed it last; NULL: none */
    _Atomic int64_t next_offset;
    _Atomic int64_t lag;      /* -1: no watermark known yet (no fetch answered since the claim counts as lag) */
    _Atomic unsigned claims;  /* bumped by every claim: a claim is progress */
    _Atomic unsigned reports; /* bumped by every report of the position: the consumer's loop runs */
    /* the watcher's; kept across owners: a claim is no progress, and a partition passed around stays stalled */
    unsigned seen_claims, seen_reports;
    int64_t seen_offset;
    int64_t progress_us; /* when the position last moved, or the partition was caught up */
    int64_t reported_us; /* when its owner last reported (or claimed it) */
    int64_t claimed_us;  /* when it was last claimed */
    bool seen;           /* ever owned */
    bool tracked;        /* has a progress-age series */
    atomic_bool stalled;
} part_state_t;

/* Assignment state per consumer name, shared by every consumer thread and the admin thread. */
static struct {
    pthread_mutex_t lock; /* only to add a name (a rebalance, or start-up) */
    char names[MAX_CONSUMERS][32];
    atomic_bool assigned[MAX_CONSUMERS];
    part_state_t *parts[MAX_CONSUMERS]; /* MAX_PARTITIONS each, allocated with the name */
    _Atomic int n;
} consumers = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int
consumer_slot(const char *name)
{
    int n = atomic_load(&consumers.n);
    for (int i = 0; i < n; ++i)
        if (strcmp(consumers.names[i], name) == 0)
            return i;
    pthread_mutex_lock(&consumers.lock);
    n = atomic_load(&consumers.n);
    int found = -1;
    for (int i = 0; i < n && found < 0; ++i)
        if (strcmp(consumers.names[i], name) == 0)
            found = i;
    if (found < 0 && n < MAX_CONSUMERS) {
        snprintf(consumers.names[n], sizeof(consumers.names[n]), "%s", name);
        if ((consumers.parts[n] = calloc(MAX_PARTITIONS, sizeof(part_state_t))) == NULL)
            abort();
        atomic_store(&consumers.n, n + 1);
        found = n;
    }
    pthread_mutex_unlock(&consumers.lock);
    return found;
}

static tly_metric_t *assigned_gauge;
static pthread_once_t assigned_once = PTHREAD_ONCE_INIT;

static void
assigned_init(void)
{
    assigned_gauge =
        tly_metrics_gauge(tly_metrics_default(), "tally_consumer_assigned",
                          "1 while the consumer holds an assignment from its group, else 0.", "consumer", MAX_CONSUMERS);
}

static tly_metric_t *
assigned_metric(void)
{
    pthread_once(&assigned_once, assigned_init);
    return assigned_gauge;
}

void
tly_worker_admin_assigned(const char *consumer, bool assigned)
{
    int i = consumer_slot(consumer);
    if (i >= 0)
        atomic_store(&consumers.assigned[i], assigned);
    tly_gauge_set(tly_metric_s1(assigned_metric(), consumer), assigned ? 1 : 0);
}

static part_state_t *
part_state(const char *consumer, int32_t partition)
{
    int i = consumer_slot(consumer);
    return i >= 0 && partition >= 0 && partition < MAX_PARTITIONS ? &consumers.parts[i][partition] : NULL;
}

void
tly_worker_admin_claimed(const void *owner, const char *consumer, int32_t partition, int64_t next_offset)
{
    part_state_t *ps = part_state(consumer, partition);
    if (ps == NULL)
        return;
    atomic_store(&ps->owner, NULL);
    if (atomic_load(&ps->claims) == 0)
        atomic_store(&ps->lag, -1); /* unknown until a fetch answers; later claims keep the last known */
    atomic_store(&ps->next_offset, next_offset);
    atomic_fetch_add(&ps->claims, 1);
    atomic_store(&ps->owner, owner);
}

void
tly_worker_admin_released(const void *owner, const char *consumer, int32_t partition)
{
    part_state_t *ps = part_state(consumer, partition);
    const void *mine = owner;
    /* only if still ours: a consumer of the same name may have claimed it before our revocation ran (a session timeout) */
    if (ps != NULL && atomic_compare_exchange_strong(&ps->owner, &mine, NULL))
        tly_metrics_consumer_lag_clear(consumer, partition); /* the watcher hides its age and forgets a stall */
}

void
tly_worker_admin_position(const void *owner, const char *consumer, int32_t partition, int64_t next_offset, int64_t high)
{
    part_state_t *ps = part_state(consumer, partition);
    if (ps == NULL || atomic_load(&ps->owner) != owner)
        return; /* a fenced former owner that has not seen its revocation yet */
    atomic_fetch_add(&ps->reports, 1);
    atomic_store(&ps->next_offset, next_offset);
    if (high < 0)
        return;
    atomic_store(&ps->lag, high > next_offset ? high - next_offset : 0);
    tly_metrics_consumer_lag(consumer, partition, high - next_offset);
}

void
tly_worker_admin_lag(rd_kafka_t *rk, const char *consumer, const char *topic, int32_t partition, int64_t next_offset)
{
    int64_t low = -1, high = -1;
    if (rd_kafka_get_watermark_offsets(rk, topic, partition, &low, &high) != RD_KAFKA_RESP_ERR_NO_ERROR)
        high = -1;
    tly_worker_admin_position(rk, consumer, partition, next_offset, high);
}

/* ---- progress: a partition with lag whose position does not move -------- */

static tly_metric_t *age_gauge;
static pthread_once_t age_once = PTHREAD_ONCE_INIT;

static void
age_init(void)
{
    age_gauge = tly_metrics_gauge(tly_metrics_default(), "tally_consumer_progress_age_seconds",
                                  "Seconds since the partition's position last moved, by consumer and partition (0 while "
                                  "it is caught up); over TALLY_CONSUMER_STALL_S with lag, the worker is not ready.",
                                  "consumer,partition", MAX_PARTITIONS);
}

static int64_t last_watch_us; /* the watcher's thread only */

void
tly_worker_admin_watch(int64_t now_us, int64_t stall_us)
{
    pthread_once(&age_once, age_init);
    bool resumed = last_watch_us != 0 && now_us - last_watch_us > WATCH_GAP_US;
    last_watch_us = now_us;
    int n = atomic_load(&consumers.n);
    for (int c = 0; c < n; ++c)
        for (int32_t p = 0; p < MAX_PARTITIONS; ++p) {
            part_state_t *ps = &consumers.parts[c][p];
            char part_s[16];
            snprintf(part_s, sizeof(part_s), "%d", (int)p);
            if (atomic_load(&ps->owner) == NULL) {
                if (ps->tracked)
                    tly_series_hide(tly_metric_s2(age_gauge, consumers.names[c], part_s));
                if (atomic_load(&ps->stalled))
                    tly_log(TLY_LOG_INFO, "partition that made no progress is no longer ours", "consumer", consumers.names[c],
                            "partition", part_s, NULL);
                ps->tracked = false;
                atomic_store(&ps->stalled, false);
                continue;
            }
            int64_t off = atomic_load(&ps->next_offset), lag = atomic_load(&ps->lag);
            unsigned claims = atomic_load(&ps->claims), reports = atomic_load(&ps->reports);
            if (!ps->seen || resumed) {
                ps->seen = true;
                ps->seen_offset = off;
                ps->progress_us = ps->reported_us = ps->claimed_us = now_us;
            }
            if (claims != ps->seen_claims) { /* where the claim put it (the stored position): no move of its own */
                ps->seen_claims = claims;
                ps->seen_offset = off;
                ps->reported_us = ps->claimed_us = now_us;
            }
            if (off != ps->seen_offset || lag == 0) {
                ps->seen_offset = off;
                ps->progress_us = now_us;
            }
            if (reports != ps->seen_reports) {
                ps->seen_reports = reports;
                ps->reported_us = now_us;
            }
            ps->tracked = true;
            /* a consumer whose loop stopped reporting (blocked, or its thread stopped) is not caught up, whatever it said */
            int64_t age = now_us - ps->progress_us, silent = now_us - ps->reported_us;
            if (silent > age)
                age = silent;
            tly_gauge_set(tly_metric_s2(age_gauge, consumers.names[c], part_s), (double)age / 1e6);
            bool has_lag = lag > 0 || (lag < 0 && now_us - ps->claimed_us >= stall_us);
            bool stalled = (has_lag || silent >= stall_us) && age >= stall_us, was = atomic_load(&ps->stalled);
            if (stalled == was)
                continue;
            atomic_store(&ps->stalled, stalled);
            char lag_s[24], age_s[24];
            snprintf(lag_s, sizeof(lag_s), "%lld", (long long)lag);
            snprintf(age_s, sizeof(age_s), "%lld", (long long)(age / 1000000));
            if (stalled)
                tly_log(TLY_LOG_ERROR, "partition makes no progress; not ready", "consumer", consumers.names[c], "partition",
                        part_s, "lag", lag < 0 ? "unknown" : lag_s, "seconds", age_s, NULL);
            else
                tly_log(TLY_LOG_INFO, "partition makes progress again", "consumer", consumers.names[c], "partition", part_s, NULL);
        }
}

int
tly_worker_admin_stalled(const char *consumer, json_t *reasons)
{
    int i = consumer_slot(consumer), n = 0;
    for (int32_t p = 0; i >= 0 && p < MAX_PARTITIONS; ++p)
        if (atomic_load(&consumers.parts[i][p].owner) != NULL && atomic_load(&consumers.parts[i][p].stalled)) {
            char key[96];
            snprintf(key, sizeof(key), "consumer_%s_partition_%d_progressing", consumer, (int)p);
            if (reasons != NULL)
                json_object_set_new(reasons, key, json_false());
            n++;
        }
    return n;
}

/* ---- probes and the endpoint --------------------------------------------- */

struct st_tly_worker_admin_t {
    tly_admin_t *admin;
    char *pg_dsn;
    rd_kafka_t *probe_rk;
    tly_kafka_probe_t *kafka;
    atomic_bool pg_ok, stop;
    pthread_t pg_thread, watch_thread;
    bool pg_started, watch_started;
    int64_t stall_us;
    char expected[MAX_CONSUMERS][32];
    int nexpected;
};

/* PQping with a short connect timeout, once a second: the admin loop only reads the answer. */
static void *
pg_probe_main(void *arg)
{
    tly_worker_admin_t *a = arg;
    const char *keys[] = {"dbname", "connect_timeout", NULL};
    const char *vals[] = {a->pg_dsn, "2", NULL};
    while (!atomic_load(&a->stop)) {
        atomic_store(&a->pg_ok, PQpingParams(keys, vals, 1) == PQPING_OK);
        for (int slept = 0; slept < 1000 && !atomic_load(&a->stop); slept += 50)
            usleep(50 * 1000);
    }
    return NULL;
}

/* Once a second: tly_worker_admin_watch (progress ages, stalls and their log lines). */
static void *
watch_main(void *arg)
{
    tly_worker_admin_t *a = arg;
    while (!atomic_load(&a->stop)) {
        tly_worker_admin_watch(tly_clock_mono_us(), a->stall_us);
        for (int slept = 0; slept < WATCH_EVERY_US / 1000 && !atomic_load(&a->stop); slept += 50)
            usleep(50 * 1000);
    }
    return NULL;
}

static bool
ready(void *arg, json_t *reasons)
{
    tly_worker_admin_t *a = arg;
    bool pg = atomic_load(&a->pg_ok), kafka = a->kafka != NULL && tly_kafka_probe_ok(a->kafka), all = true;
    json_object_set_new(reasons, "postgresql", json_boolean(pg));
    json_object_set_new(reasons, "kafka", json_boolean(kafka));
    for (int i = 0; i < a->nexpected; ++i) {
        char key[64];
        int slot = consumer_slot(a->expected[i]);
        bool assigned = slot >= 0 && atomic_load(&consumers.assigned[slot]);
        snprintf(key, sizeof(key), "consumer_%s_assigned", a->expected[i]);
        json_object_set_new(reasons, key, json_boolean(assigned));
        bool progressing = tly_worker_admin_stalled(a->expected[i], reasons) == 0;
        snprintf(key, sizeof(key), "consumer_%s_progressing", a->expected[i]);
        json_object_set_new(reasons, key, json_boolean(progressing));
        all = all && assigned && progressing;
    }
    return pg && kafka && all;
}

tly_worker_admin_t *
tly_worker_admin_start(const char *host, int port, const char *pg_dsn, const char *brokers, const char *consumer_list, int stall_s,
                       char *err, size_t errcap)
{
    tly_worker_admin_t *a = calloc(1, sizeof(*a));
    if (a == NULL)
        abort();
    a->stall_us = (int64_t)stall_s * 1000000;
    /* the watcher logs stalls with or without an endpoint */
    if (pthread_create(&a->watch_thread, NULL, watch_main, a) != 0)
        abort();
    a->watch_started = true;
    if (port == 0)
        return a;
    for (const char *p = consumer_list; p != NULL && *p != '\0' && a->nexpected < MAX_CONSUMERS;) {
        size_t n = strcspn(p, ",");
        bool consumes = !(n == 9 && strncmp(p, "retention", n) == 0); /* the one role without a Kafka consumer */
        if (consumes && n > 0 && n < sizeof(a->expected[0])) {
            memcpy(a->expected[a->nexpected], p, n);
            a->expected[a->nexpected][n] = '\0';
            (void)consumer_slot(a->expected[a->nexpected]);
            tly_gauge_set(tly_metric_s1(assigned_metric(), a->expected[a->nexpected]), 0);
            a->nexpected++;
        }
        p += n;
        if (*p == ',')
            ++p;
    }
    tly_metrics_register_all();
    if ((a->pg_dsn = strdup(pg_dsn)) == NULL)
        abort();
    /* a producer of its own for the broker probe: it asks for metadata, never produces */
    if ((a->probe_rk = tly_kafka_producer_create(brokers, 1000, NULL, NULL, err, errcap)) == NULL)
        goto fail;
    if ((a->admin = tly_admin_start(host, (uint16_t)port, ready, a, err, errcap)) == NULL)
        goto fail;
    a->kafka = tly_kafka_probe_start(a->probe_rk, 1000);
    if (pthread_create(&a->pg_thread, NULL, pg_probe_main, a) != 0)
        abort();
    a->pg_started = true;
    return a;
fail:
    atomic_store(&a->stop, true);
    pthread_join(a->watch_thread, NULL);
    if (a->probe_rk != NULL)
        rd_kafka_destroy(a->probe_rk);
    free(a->pg_dsn);
    free(a);
    return NULL;
}

void
tly_worker_admin_stop(tly_worker_admin_t *a)
{
    if (a == NULL)
        return;
    atomic_store(&a->stop, true);
    tly_admin_stop(a->admin); /* first: its readiness callback reads the probes */
    if (a->pg_started)
        pthread_join(a->pg_thread, NULL);
    if (a->watch_started)
        pthread_join(a->watch_thread, NULL);
    if (a->kafka != NULL)
        tly_kafka_probe_stop(a->kafka);
    if (a->probe_rk != NULL)
        rd_kafka_destroy(a->probe_rk);
    free(a->pg_dsn);
    free(a);
}
