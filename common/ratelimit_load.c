/*
 * Loads rate_limits (migration 0010) into the limiter: everything at start,
 * then every refresh period the rows changed since the last load, on a
 * thread of its own with its own PostgreSQL connection, so `tallyctl limits
 * set` reaches every instance without a restart and no event loop ever waits
 * on the database.
 */
#include "ratelimit_internal.h"
#include "tally/log.h"
#include "tally/pg.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int64_t
int_or_zero(PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static void
apply_row(tly_limiter_t *lim, PGresult *res, int row)
{
    int64_t rate = int_or_zero(res, row, 4), burst = int_or_zero(res, row, 5);
    const tly_tier_t *tier = PQgetisnull(res, row, 3) ? NULL : tly_tier_find(PQgetvalue(res, row, 3));
    if (rate <= 0 && tier != NULL) /* a plan: the tier's rate and burst */
        rate = tier->rate, burst = burst > 0 ? burst : tier->burst;
    tly_limiter_set(lim, PQgetvalue(res, row, 0), PQgetvalue(res, row, 1), strcmp(PQgetvalue(res, row, 2), "shadow") == 0, rate,
                    burst, int_or_zero(res, row, 6), int_or_zero(res, row, 7));
}

static int
load_once(tly_limiter_t *lim, PGconn *conn, char *since, size_t sincecap, char *err, size_t errcap)
{
    /* one second of overlap: rows committed late with an older updated_at */
    const char *sql = "SELECT subject_kind, subject_id, mode, tier, rate_per_sec, burst, concurrency, long_polls, "
                      "(SELECT coalesce(max(updated_at), 'epoch') FROM rate_limits)::text "
                      "FROM rate_limits WHERE updated_at >= $1::timestamptz - interval '1 second'";
    const char *params[1] = {since};
    PGresult *res = PQexecParams(conn, sql, 1, NULL, params, NULL, NULL, 0);
    int ret = -1;
    if (!tly_pg_ok(conn, res, "could not load rate limits", err, errcap))
        goto cleanup;
    for (int i = 0; i < PQntuples(res); ++i)
        apply_row(lim, res, i);
    if (PQntuples(res) > 0)
        snprintf(since, sincecap, "%s", PQgetvalue(res, 0, 8));
    ret = 0;
cleanup:
    PQclear(res);
    return ret;
}

static void *
loader_main(void *arg)
{
    tly_limiter_t *lim = arg;
    PGconn *conn = NULL;
    char err[512], since[64] = "epoch";
    bool reported = false;
    while (!atomic_load(&lim->stop)) {
        if (tly_pg_broken(conn)) {
            PQfinish(conn);
            conn = tly_pg_connect(lim->pg_dsn, err, sizeof(err));
        }
        if (conn != NULL && load_once(lim, conn, since, sizeof(since), err, sizeof(err)) == 0) {
            if (!atomic_load(&lim->loaded) || reported)
                tly_log(TLY_LOG_INFO, "rate limits loaded", NULL);
            atomic_store(&lim->loaded, true);
            reported = false;
        } else if (!reported) {
            tly_log(TLY_LOG_WARN, "could not refresh rate limits", "error", err, NULL);
            reported = true;
        }
        for (int slept = 0; slept < lim->cfg.refresh_ms && !atomic_load(&lim->stop); slept += 50)
            usleep(50 * 1000);
    }
    PQfinish(conn);
    return NULL;
}

void
rl_loader_start(tly_limiter_t *lim)
{
    if (pthread_create(&lim->loader, NULL, loader_main, lim) != 0)
        abort();
    lim->has_loader = true;
}

void
rl_loader_stop(tly_limiter_t *lim)
{
    atomic_store(&lim->stop, true);
    if (lim->has_loader)
        pthread_join(lim->loader, NULL);
    lim->has_loader = false;
}
