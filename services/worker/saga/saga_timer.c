/*
 * Saga deadlines. A step whose outcome has not come back within the step
 * timeout is sent again: same event id, same content (saga.c rebuilds it from
 * the row), so the decider, which dedups by event id, applies it at most once;
 * the re-send only matters if the first copy never reached it. A saga stays
 * in transfer_sagas with its deadline until it finishes, whatever happens, so
 * a compensation is never abandoned: it is re-sent forever and the saga shows
 * as stuck (stuck_at passed) for an operator.
 *
 * Each pass is one transaction over at most PASS_MAX due rows, locked FOR
 * UPDATE SKIP LOCKED: several worker instances share the due sagas, and a row
 * the saga consumer is advancing right now is skipped (its deadline moves
 * anyway). The new deadline, the re-sent step in the outbox and the NOTIFY to
 * the relay commit together.
 */
#include "saga_timer.h"
#include "runtime/retry.h"
#include "tally/pgx.h"
#include "outbox/outbox.h"
#include "saga_store.h"
#include "tally/clock.h"
#include "tally/log.h"
#include "tally/metrics.h"
#include "tally/pg.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PASS_MAX 200
#define STUCK_REPORT_US (10 * 1000000LL)

typedef struct st_timer_t {
    const tly_saga_timer_config_t *cfg;
    PGconn *conn;
    bool pg_up;
    int64_t next_report_us;
} saga_timer_t;

static bool
ensure_pg(saga_timer_t *t)
{
    return tly_pgx_ensure(&t->conn, &t->pg_up, t->cfg->pg_dsn, NULL, "saga-timer") >= 0;
}

static void
rollback(saga_timer_t *t)
{
    char ignored[128];
    if (!tly_pg_broken(t->conn) && PQtransactionStatus(t->conn) != PQTRANS_IDLE)
        (void)!tly_pg_exec(t->conn, "ROLLBACK", ignored, sizeof(ignored));
}

/* Re-sends the steps of every due saga (at most PASS_MAX). Returns how many, or -1 with `err`. */
static int
pass(saga_timer_t *t, char *err, size_t errcap)
{
    char now_s[24];
    int64_t now = tly_clock_now_us();
    int sent = 0;
    snprintf(now_s, sizeof(now_s), "%" PRId64, now);
    if (tly_pg_exec(t->conn, "BEGIN", err, errcap) != 0)
        return -1;
    const char *vals[] = {now_s};
    PGresult *res = tly_pgx_query(t->conn, "find due sagas",
                                  "SELECT transfer_id FROM transfer_sagas WHERE deadline_at <= 'epoch'::timestamptz + "
                                  "$1::bigint * interval '1 microsecond' ORDER BY deadline_at LIMIT 200 FOR UPDATE SKIP LOCKED",
                                  1, vals, err, errcap);
    if (res == NULL)
        goto fail;
    for (int i = 0; i < PQntuples(res); ++i) {
        tly_uuid_t id;
        tly_saga_state_t s;
        tly_saga_step_t step;
        if (!tly_uuid_parse(PQgetvalue(res, i, 0), &id))
            continue;
        if (tly_saga_load(t->conn, &id, &s, err, errcap) != 0)
            goto fail_res;
        if (tly_saga_on_timeout(&s, &t->cfg->saga, now, &step) != 0)
            continue;
        int r = step.changed ? tly_saga_store(t->conn, &step.next, err, errcap) : 0;
        for (int k = 0; r == 0 && k < step.nevents; ++k)
            r = tly_outbox_insert(t->conn, t->cfg->topic, "", &step.events[k], err, errcap);
        sent += step.nevents;
        tly_saga_step_clear(&step);
        if (r != 0)
            goto fail_res;
    }
    PQclear(res);
    if (tly_pg_exec(t->conn, "COMMIT", err, errcap) != 0)
        goto fail;
    if (sent > 0) {
        char n[16];
        snprintf(n, sizeof(n), "%d", sent);
        tly_log(TLY_LOG_WARN, "saga steps past their deadline sent again", "consumer", "saga-timer", "count", n, NULL);
    }
    return sent;
fail_res:
    PQclear(res);
fail:
    rollback(t);
    return -1;
}

/* Feeds the tally_saga_states{state} gauge: sagas per state. */
static void
report_states(saga_timer_t *t)
{
    char err[512];
    static const char *states[] = {"debiting", "crediting", "compensating", "completed", "rejected", "failed"};
    PGresult *res = tly_pgx_query(t->conn, "count sagas by state", "SELECT state, count(*) FROM transfer_sagas GROUP BY state", 0,
                                  NULL, err, sizeof(err));
    if (res == NULL)
        return;
    for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); ++i) {
        int64_t n = 0;
        for (int r = 0; r < PQntuples(res); ++r)
            if (strcmp(PQgetvalue(res, r, 0), states[i]) == 0)
                n = strtoll(PQgetvalue(res, r, 1), NULL, 10);
        tly_metrics_saga_states(states[i], n);
    }
    PQclear(res);
}

/* Logs the number of stuck sagas (unfinished past stuck_at) every STUCK_REPORT_US. */
static void
report_stuck(saga_timer_t *t)
{
    char err[512];
    int64_t now = tly_clock_mono_us();
    if (now < t->next_report_us)
        return;
    t->next_report_us = now + STUCK_REPORT_US;
    PGresult *res = tly_pgx_query(t->conn, "count stuck sagas", "SELECT count(*) FROM transfer_sagas WHERE stuck_at <= now()", 0,
                                  NULL, err, sizeof(err));
    if (res == NULL)
        return;
    if (strcmp(PQgetvalue(res, 0, 0), "0") != 0)
        tly_log(TLY_LOG_WARN, "sagas stuck: unfinished past their limit (transfer_sagas.stuck_at)", "consumer", "saga-timer",
                "count", PQgetvalue(res, 0, 0), NULL);
    tly_metrics_saga_states("stuck", strtoll(PQgetvalue(res, 0, 0), NULL, 10));
    PQclear(res);
    report_states(t);
}

int
tly_saga_timer_run(const tly_saga_timer_config_t *cfg)
{
    char err[1024];
    saga_timer_t t = {.cfg = cfg, .pg_up = true};
    tly_retry_t rt = {.what = "saga timer", .name = "saga-timer"};
    /* look a few times per timeout, at most every second, at least every 20 ms */
    int64_t tick_ms = cfg->saga.step_timeout_us / 4000;
    if (tick_ms > 1000)
        tick_ms = 1000;
    if (tick_ms < 20)
        tick_ms = 20;
    while (!atomic_load(cfg->stop)) {
        if (!ensure_pg(&t)) {
            tly_retry_backoff(&rt.delay_ms, cfg->stop);
            continue;
        }
        int n = pass(&t, err, sizeof(err));
        if (n < 0) {
            tly_retry_failed(&rt, err, cfg->stop);
            continue;
        }
        tly_retry_ok(&rt);
        report_stuck(&t);
        if (n >= PASS_MAX)
            continue;
        tly_retry_sleep(tick_ms, cfg->stop);
    }
    if (t.conn != NULL)
        PQfinish(t.conn);
    tly_log(TLY_LOG_INFO, "saga timer stopped", "consumer", "saga-timer", NULL);
    return 0;
}
