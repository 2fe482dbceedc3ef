/* The worker's admin endpoint and readiness. See admin.h. */
#include "admin.h"
#include "tally/admin.h"
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

/* Assignment state per consumer name, shared by every consumer thread and the admin thread. */
static struct {
    pthread_mutex_t lock; /* only to add a name (a rebalance, or start-up) */
    char names[MAX_CONSUMERS][32];
    atomic_bool assigned[MAX_CONSUMERS];
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

void
tly_worker_admin_lag(rd_kafka_t *rk, const char *consumer, const char *topic, int32_t partition, int64_t next_offset)
{
    int64_t low = -1, high = -1;
    if (rd_kafka_get_watermark_offsets(rk, topic, partition, &low, &high) != RD_KAFKA_RESP_ERR_NO_ERROR || high < 0)
        return;
    tly_metrics_consumer_lag(consumer, partition, high - next_offset);
}

/* ---- probes and the endpoint --------------------------------------------- */

struct st_tly_worker_admin_t {
    tly_admin_t *admin;
    char *pg_dsn;
    rd_kafka_t *probe_rk;
    tly_kafka_probe_t *kafka;
    atomic_bool pg_ok, stop;
    pthread_t pg_thread;
    bool pg_started;
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
        all = all && assigned;
    }
    return pg && kafka && all;
}

tly_worker_admin_t *
tly_worker_admin_start(const char *host, int port, const char *pg_dsn, const char *brokers, const char *consumer_list, char *err,
                       size_t errcap)
{
    tly_worker_admin_t *a = calloc(1, sizeof(*a));
    if (a == NULL)
        abort();
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
    if (a->kafka != NULL)
        tly_kafka_probe_stop(a->kafka);
    if (a->probe_rk != NULL)
        rd_kafka_destroy(a->probe_rk);
    free(a->pg_dsn);
    free(a);
}
