/*
 * Retention: deletes the bookkeeping rows that only matter for a while, so
 * that no table of the hot path grows forever.
 *
 *   consumer_dedup    an id is only needed while a second copy of its event
 *                     can still arrive: the relay republishes within seconds
 *                     of a crash, the command API re-sends a request within
 *                     its Idempotency-Key window (24 h). Rows applied more
 *                     than --dedup-retention-s ago (7 days) go.
 *   command_requests  an idempotency record answers retries for 24 h
 *                     (expires_at). Rows past expires_at by more than
 *                     --command-retention-s (7 days) go, but only once their
 *                     job is projected (or the request failed before the
 *                     log): GET /v1/jobs falls back to this row until then,
 *                     and a 202 must never turn into a 404.
 *
 * Each pass deletes in chunks of CHUNK rows (one short transaction each, so
 * no lock is held for long and the hot path never waits behind a big
 * delete), located by BRIN indexes on the time columns (migration 0005).
 * One worker prunes at a time (a session advisory lock); the others skip.
 */
#include "retention.h"
#include "retry.h"
#include "tally/pgx.h"
#include "tally/clock.h"
#include "tally/log.h"
#include "tally/pg.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RETENTION_LOCK "7021820738937061377" /* any fixed bigint, shared by every worker */
#define CHUNK 5000
#define STR(x) #x
#define XSTR(x) STR(x)

typedef struct st_retention_t {
    const tly_retention_config_t *cfg;
    PGconn *conn;
    bool pg_up;
} retention_t;

static const struct {
    const char *table;
    const char *sql; /* $1: retention in seconds; deletes at most CHUNK rows */
    size_t cfg_off;  /* the retention setting of the table */
} prunes[] = {
    {"consumer_dedup",
     "DELETE FROM consumer_dedup WHERE ctid = ANY (ARRAY(SELECT ctid FROM consumer_dedup "
     "WHERE applied_at < now() - $1::bigint * interval '1 second' LIMIT " XSTR(CHUNK) "))",
     offsetof(tly_retention_config_t, dedup_retention_s)},
    {"command_requests",
     "DELETE FROM command_requests WHERE ctid = ANY (ARRAY(SELECT c.ctid FROM command_requests c "
     "WHERE c.expires_at < now() - $1::bigint * interval '1 second' "
     "AND (c.state = 'failed' OR EXISTS (SELECT 1 FROM jobs j WHERE j.id = c.job_id)) LIMIT " XSTR(CHUNK) "))",
     offsetof(tly_retention_config_t, command_retention_s)},
};

/* Deletes what is due in one table. Returns rows deleted, or -1 with `err`. */
static long
prune_table(retention_t *r, size_t i, char *err, size_t errcap)
{
    char secs[24];
    long total = 0, n;
    snprintf(secs, sizeof(secs), "%" PRId64, *(const int64_t *)((const char *)r->cfg + prunes[i].cfg_off));
    const char *vals[] = {secs};
    do {
        if (tly_pgx_exec(r->conn, "prune", prunes[i].sql, 1, vals, &n, err, errcap) != 0)
            return -1;
        total += n;
    } while (n >= CHUNK && !atomic_load(r->cfg->stop));
    return total;
}

/* One pass over every table, under the advisory lock. Returns 0, or -1 with `err`. */
static int
pass(retention_t *r, char *err, size_t errcap)
{
    const char *lock[] = {RETENTION_LOCK};
    PGresult *res =
        tly_pgx_query(r->conn, "take the retention lock", "SELECT pg_try_advisory_lock($1::bigint)", 1, lock, err, errcap);
    if (res == NULL)
        return -1;
    bool locked = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (!locked)
        return 0; /* another worker prunes */
    int ret = 0;
    for (size_t i = 0; i < sizeof(prunes) / sizeof(prunes[0]) && ret == 0; ++i) {
        int64_t t0 = tly_clock_mono_us();
        long n = prune_table(r, i, err, errcap);
        if (n < 0) {
            ret = -1;
        } else if (n > 0) {
            char rows[24], ms[24];
            snprintf(rows, sizeof(rows), "%ld", n);
            snprintf(ms, sizeof(ms), "%" PRId64, (tly_clock_mono_us() - t0) / 1000);
            tly_log(TLY_LOG_INFO, "old rows deleted", "consumer", "retention", "table", prunes[i].table, "rows", rows, "ms", ms,
                    NULL);
        }
    }
    char ignored[128];
    res = tly_pgx_query(r->conn, "release the retention lock", "SELECT pg_advisory_unlock($1::bigint)", 1, lock, ignored,
                        sizeof(ignored));
    if (res != NULL)
        PQclear(res);
    return ret;
}

int
tly_retention_run(const tly_retention_config_t *cfg)
{
    char err[1024];
    retention_t r = {.cfg = cfg, .pg_up = true};
    tly_retry_t rt = {.what = "retention pass", .name = "retention"};
    while (!atomic_load(cfg->stop)) {
        if (tly_pgx_ensure(&r.conn, &r.pg_up, cfg->pg_dsn, NULL, "retention") < 0) {
            tly_retry_backoff(&rt.delay_ms, cfg->stop);
            continue;
        }
        if (pass(&r, err, sizeof(err)) != 0) {
            tly_retry_failed(&rt, err, cfg->stop);
            continue;
        }
        tly_retry_ok(&rt);
        tly_retry_sleep(cfg->interval_ms, cfg->stop);
    }
    if (r.conn != NULL)
        PQfinish(r.conn);
    tly_log(TLY_LOG_INFO, "retention stopped", "consumer", "retention", NULL);
    return 0;
}
