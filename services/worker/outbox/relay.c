/*
 * Outbox relay.
 *
 * One relay at a time: each pass runs in a transaction that first takes
 * pg_try_advisory_xact_lock(RELAY_LOCK). We chose the advisory lock over
 * SELECT ... FOR UPDATE SKIP LOCKED because SKIP LOCKED lets two relays
 * publish disjoint slices concurrently, which can reorder two outcomes of
 * the same account in Kafka; with one publisher, seq order (which is commit
 * order per account, since the decider serialises an account's requests) is
 * publish order. Other worker instances' relays simply idle.
 *
 * A pass: take up to 1000 rows in seq order, produce them all, wait for every
 * delivery report (rd_kafka_flush), delete exactly the rows published (by
 * seq list: a row with a lower seq may commit later and must not be deleted
 * unseen), commit. A crash between produce and delete republishes the same
 * events (same ids); consumers dedup by id (consumer_dedup).
 *
 * Wake-up: every outbox insert NOTIFYs tally_outbox (tly_outbox_rows_flush); we LISTEN
 * and also poll every 100 ms in case a notification is lost with a
 * connection.
 *
 * Vacuum: the outbox is a queue; every row is deleted within milliseconds
 * of its insert, so between two autovacuum runs (autovacuum_naptime, one
 * minute by default) it holds mostly dead rows, and at 1,000 outcomes/s the
 * read of the head scanned about 60,000 of them at every pass (1.5 ms each,
 * measured). The relay that deletes rows therefore vacuums the table itself
 * every VACUUM_EVERY_MS while it deletes, which keeps it a few pages long.
 */
#include "relay.h"
#include "runtime/retry.h"
#include "tally/pgx.h"
#include "tally/clock.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/pg.h"

#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RELAY_LOCK "7021820738937061376" /* any fixed bigint, shared by every relay instance */
#define RELAY_BATCH 1000
#define RELAY_POLL_MS 100
#define DELIVERY_TIMEOUT_MS 30000
#define VACUUM_EVERY_MS 1000

typedef struct st_relay_t {
    const tly_relay_config_t *cfg;
    PGconn *conn;
    bool pg_up;
    rd_kafka_t *rk;
    int delivered, failed;
    char delivery_error[256];
    long deleted;           /* rows deleted since the last vacuum */
    int64_t last_vacuum_us; /* monotonic */
} relay_t;

static void
on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
    relay_t *r = opaque;
    if (rkm->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        r->failed++;
        snprintf(r->delivery_error, sizeof(r->delivery_error), "%s", rd_kafka_err2str(rkm->err));
    } else {
        r->delivered++;
    }
}

static bool
ensure_pg(relay_t *r)
{
    return tly_pgx_ensure(&r->conn, &r->pg_up, r->cfg->pg_dsn, "LISTEN tally_outbox", "relay") >= 0;
}

/* Produces one row, waiting for queue space when the producer is full. */
static int
produce_row(relay_t *r, PGresult *res, int i, char *err, size_t errcap)
{
    const char *topic = PQgetvalue(res, i, 1), *key = PQgetvalue(res, i, 2), *payload = PQgetvalue(res, i, 3);
    const char *type = PQgetvalue(res, i, 4), *tp = PQgetisnull(res, i, 6) ? NULL : PQgetvalue(res, i, 6);
    int version = atoi(PQgetvalue(res, i, 5));
    for (;;) {
        rd_kafka_resp_err_t e = tly_kafka_produce_raw(r->rk, topic, key, payload, (size_t)PQgetlength(res, i, 3), type,
                                                      version > 0 ? version : 1, tp, NULL);
        if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
            return 0;
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            snprintf(err, errcap, "could not produce outbox row: %s", rd_kafka_err2str(e));
            return -1;
        }
        rd_kafka_poll(r->rk, 10);
    }
}

/* Deletes the published rows by their seq list. */
static int
delete_rows(relay_t *r, PGresult *res, char *err, size_t errcap)
{
    int n = PQntuples(res);
    char *list = malloc((size_t)n * 21 + 3);
    if (list == NULL)
        abort();
    size_t len = 0;
    list[len++] = '{';
    for (int i = 0; i < n; ++i)
        len += (size_t)sprintf(list + len, "%s%s", i > 0 ? "," : "", PQgetvalue(res, i, 0));
    list[len++] = '}';
    list[len] = '\0';
    const char *vals[] = {list};
    int ret = tly_pgx_exec(r->conn, "delete published outbox rows", "DELETE FROM outbox WHERE seq = ANY($1::bigint[])", 1, vals,
                           NULL, err, errcap);
    free(list);
    return ret;
}

/* One pass. Returns rows published (0 when idle or another relay holds the lock), or -1 with `err`. */
static int
publish_once(relay_t *r, char *err, size_t errcap)
{
    PGresult *res = NULL;
    int ret = -1;
    /* BEGIN, the lock and the read in one round trip: without the lock (another relay publishes) the read
       gives no rows, which is the same as an empty outbox for this pass */
    tly_pgx_begin(r->conn);
    const char *lock_vals[] = {RELAY_LOCK};
    res = tly_pgx_query(r->conn, "read outbox",
                        "WITH lock AS MATERIALIZED (SELECT pg_try_advisory_xact_lock($1::bigint) AS held) "
                        "SELECT seq, topic, msg_key, payload, headers->>'type', COALESCE(headers->>'version', '1'), "
                        "headers->>'traceparent' FROM outbox WHERE (SELECT held FROM lock) ORDER BY seq LIMIT 1000",
                        1, lock_vals, err, errcap);
    if (res == NULL)
        goto cleanup;
    int n = PQntuples(res);
    r->delivered = r->failed = 0;
    for (int i = 0; i < n; ++i)
        if (produce_row(r, res, i, err, errcap) != 0)
            goto cleanup;
    rd_kafka_flush(r->rk, DELIVERY_TIMEOUT_MS);
    if (r->failed > 0 || r->delivered < n) {
        snprintf(err, errcap, "could not publish outbox rows: %d of %d delivered: %s", r->delivered, n,
                 r->failed > 0 ? r->delivery_error : "timed out");
        goto cleanup;
    }
    if (n > 0 && delete_rows(r, res, err, errcap) != 0)
        goto cleanup;
    if (tly_pgx_end(r->conn, true, err, errcap) != 0)
        goto cleanup;
    ret = n;
cleanup:
    if (res != NULL)
        PQclear(res);
    if (ret <= 0 && !tly_pg_broken(r->conn) && PQtransactionStatus(r->conn) != PQTRANS_IDLE) {
        char ignored[128];
        (void)!tly_pgx_end(r->conn, false, ignored, sizeof(ignored));
    }
    return ret;
}

/* Vacuums the outbox when rows were deleted and VACUUM_EVERY_MS passed (outside any transaction). */
static void
maybe_vacuum(relay_t *r)
{
    int64_t now = tly_clock_mono_us();
    if (r->deleted == 0 || now - r->last_vacuum_us < VACUUM_EVERY_MS * 1000LL)
        return;
    char err[256];
    if (tly_pg_exec(r->conn, "VACUUM (TRUNCATE false, PARALLEL 0) outbox", err, sizeof(err)) != 0)
        tly_log(TLY_LOG_DEBUG, "could not vacuum the outbox", "consumer", "relay", "error", err, NULL);
    r->deleted = 0;
    r->last_vacuum_us = now;
}

/* Waits for a NOTIFY on tally_outbox or RELAY_POLL_MS, whichever comes first. */
static void
wait_for_work(relay_t *r)
{
    struct pollfd pfd = {.fd = PQsocket(r->conn), .events = POLLIN};
    if (pfd.fd >= 0)
        (void)poll(&pfd, 1, RELAY_POLL_MS);
    PQconsumeInput(r->conn);
    PGnotify *n;
    while ((n = PQnotifies(r->conn)) != NULL)
        PQfreemem(n);
}

int
tly_relay_run(const tly_relay_config_t *cfg)
{
    char err[1024];
    relay_t r = {.cfg = cfg, .pg_up = true};
    r.rk = tly_kafka_producer_create(cfg->brokers, DELIVERY_TIMEOUT_MS - 5000, on_delivery, &r, err, sizeof(err));
    if (r.rk == NULL) {
        tly_log(TLY_LOG_ERROR, "could not create kafka producer", "consumer", "relay", "error", err, NULL);
        return -1;
    }
    tly_retry_t rt = {.what = "outbox relay", .name = "relay"};
    while (!atomic_load(cfg->stop)) {
        if (!ensure_pg(&r)) {
            tly_retry_backoff(&rt.delay_ms, cfg->stop);
            continue;
        }
        int n = publish_once(&r, err, sizeof(err));
        if (n < 0) {
            tly_retry_failed(&rt, err, cfg->stop);
            continue;
        }
        tly_retry_ok(&rt);
        r.deleted += n;
        maybe_vacuum(&r);
        if (n < RELAY_BATCH)
            wait_for_work(&r);
    }
    rd_kafka_flush(r.rk, 5000);
    rd_kafka_destroy(r.rk);
    if (r.conn != NULL)
        PQfinish(r.conn);
    tly_log(TLY_LOG_INFO, "relay stopped", "consumer", "relay", NULL);
    return 0;
}
