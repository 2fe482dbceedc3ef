/* Live-traffic watch: see livewatch.h. */
#include "livewatch.h"
#include "db.h"

#include "tally/pg.h"

#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SAMPLE_MS 50
#define RECONNECT_MS 1000

bool
tly_ctl_loadavg_add(tly_ctl_loadavg_t *a, int active)
{
    uint16_t v = active < 0 ? 0 : active > 1000 ? 1000 : (uint16_t)active;
    if (a->n == TLY_CTL_WATCH_WINDOW)
        a->sum -= a->ring[a->next];
    else
        ++a->n;
    a->ring[a->next] = v;
    a->sum += v;
    a->next = (a->next + 1) % TLY_CTL_WATCH_WINDOW;
    bool over = a->n >= TLY_CTL_WATCH_MIN_SAMPLES && a->sum * 4 >= a->n; /* mean >= 0.25 */
    if (over) {
        a->busy = true;
        a->calm = 0;
    } else if (a->busy && ++a->calm >= TLY_CTL_WATCH_CALM_SAMPLES) {
        a->busy = false;
    }
    return a->busy;
}

double
tly_ctl_loadavg_mean(const tly_ctl_loadavg_t *a)
{
    return a->n > 0 ? (double)a->sum / a->n : 0;
}

struct st_tly_ctl_livewatch_t {
    char *dsn;
    PGconn *conn;
    pthread_t thread;
    atomic_bool stop, busy;
    _Atomic double load;
    tly_ctl_loadavg_t avg; /* the thread's */
};

static void
sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Sessions of this database inside a statement or a transaction, other than tallyctl's; -1 on error. */
static int
sample(tly_ctl_livewatch_t *w)
{
    PGresult *res = PQexec(w->conn, "SELECT count(*) FROM pg_stat_activity "
                                    "WHERE datname = current_database() AND backend_type = 'client backend' "
                                    "AND application_name IS DISTINCT FROM 'tallyctl' "
                                    "AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)')");
    int n = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 ? atoi(PQgetvalue(res, 0, 0)) : -1;
    PQclear(res);
    return n;
}

static void *
watch(void *arg)
{
    tly_ctl_livewatch_t *w = arg;
    while (!atomic_load(&w->stop)) {
        int n = w->conn != NULL ? sample(w) : -1;
        if (n < 0) {
            atomic_store(&w->busy, true); /* blind: assume the live services are working */
            if (w->conn != NULL)
                PQfinish(w->conn);
            char err[256];
            sleep_ms(RECONNECT_MS);
            w->conn = tly_ctl_db_connect(w->dsn, err, sizeof(err));
            continue;
        }
        atomic_store(&w->busy, tly_ctl_loadavg_add(&w->avg, n));
        atomic_store(&w->load, tly_ctl_loadavg_mean(&w->avg));
        sleep_ms(SAMPLE_MS);
    }
    return NULL;
}

tly_ctl_livewatch_t *
tly_ctl_livewatch_start(const char *dsn, char *err, size_t errcap)
{
    tly_ctl_livewatch_t *w = calloc(1, sizeof(*w));
    if (w == NULL || (w->dsn = strdup(dsn)) == NULL)
        abort();
    if ((w->conn = tly_ctl_db_connect(dsn, err, errcap)) == NULL) {
        free(w->dsn);
        free(w);
        return NULL;
    }
    /* the first verdict before the first batch: a replay must not start flat out into live traffic */
    for (int i = 0; i < TLY_CTL_WATCH_MIN_SAMPLES; ++i) {
        if (i > 0)
            sleep_ms(10);
        int n = sample(w);
        tly_ctl_loadavg_add(&w->avg, n < 0 ? 1 : n);
    }
    atomic_init(&w->busy, w->avg.busy);
    atomic_init(&w->load, tly_ctl_loadavg_mean(&w->avg));
    atomic_init(&w->stop, false);
    if (pthread_create(&w->thread, NULL, watch, w) != 0)
        abort();
    return w;
}

bool
tly_ctl_livewatch_busy(tly_ctl_livewatch_t *w)
{
    return atomic_load(&w->busy);
}

double
tly_ctl_livewatch_load(tly_ctl_livewatch_t *w)
{
    return atomic_load(&w->load);
}

void
tly_ctl_livewatch_stop(tly_ctl_livewatch_t *w)
{
    if (w == NULL)
        return;
    atomic_store(&w->stop, true);
    pthread_join(w->thread, NULL);
    if (w->conn != NULL)
        PQfinish(w->conn);
    free(w->dsn);
    free(w);
}
