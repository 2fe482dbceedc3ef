/*
 * Fenced consumer: gather a batch from Kafka, apply it in one PostgreSQL
 * transaction with the positions, retry or park what fails.
 *
 * Failure handling, in order of preference:
 *   - transient PostgreSQL failure (connection, deadlock, shutdown): roll
 *     back, back off (50 ms doubling to 5 s), retry the same batch; forever.
 *   - one event fails for a reason of its own: commit the events before it,
 *     retry it alone up to max_event_tries times, then park it in
 *     dead_letters in the transaction that moves the position past it.
 *   - not an envelope: parked at once (no retry can fix bytes).
 *   - a schema version newer than the handler knows: the partition is paused
 *     at that event (never skipped) until a newer worker takes over.
 *   - fenced (the epoch moved: someone else owns the partition): roll back,
 *     pause the partition and wait for the rebalance; if it is still ours
 *     after a session timeout and a half, claim it again (new epoch) and
 *     re-seek to the stored position.
 */
#include "consumer.h"
#include "admin.h"
#include "pgx.h"
#include "tally/clock.h"
#include "tally/envscan.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/metrics.h"
#include "tally/pg.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RECLAIM_AFTER_US (15 * 1000000LL) /* > session.timeout.ms (10 s) */
#define FIRST_POLL_MS 100
#define UNSAVED_MAX_US 1000000LL /* positions moved past ignored events are written within this */

typedef struct st_partition_t {
    bool assigned;
    bool stopped;       /* paused: version too new, or fenced */
    bool fenced;        /* stopped because the epoch moved */
    bool stop_pending;  /* TOO_NEW seen in the running transaction */
    bool fence_pending; /* the position update of the running transaction matched no row */
    bool touched;
    bool unsaved; /* next_offset moved past ignored events only, not yet written (see skip_ignored) */
    int64_t epoch;
    int64_t next_offset; /* committed position, or past it by ignored events when unsaved */
    int64_t staged_next; /* position within the running transaction */
    int64_t reclaim_at_us;
    int64_t too_new_offset;
    int too_new_version;
    char too_new_type[TLY_EVENT_TYPE_MAX];
} partition_t;

typedef struct st_consumer_t {
    const tly_consumer_config_t *cfg;
    const tly_consumer_handler_t *h;
    rd_kafka_t *rk;
    PGconn *conn;
    bool pg_up;
    bool rebalanced; /* set by the rebalance callback: drop what was gathered */
    bool refetch;    /* messages were polled and dropped unhandled (PostgreSQL down): re-seek before the next batch */
    partition_t *parts;
    int nparts;
    char event_error[1024]; /* last error of the event being retried */
    /* the set-based path's scratch, batch_max entries each */
    tly_consumer_msg_t **cand, **sorted, **fresh;
    unsigned char *is_fresh; /* by index in the gathered batch */
    tly_pg_array_t arr[3];
    tly_pgx_barray_t ids;     /* the dedup statement's event ids */
    int64_t unsaved_since_us; /* monotonic; 0 when no partition is unsaved */
} consumer_t;

typedef enum en_tx_result_t {
    TX_OK,
    TX_TRANSIENT,   /* retry the same range after a backoff */
    TX_EVENT_ERROR, /* the event at *fail_at failed */
    TX_FENCED,
    TX_BATCH_FAILED, /* the set-based path failed, not transiently: apply the range one event at a time */
} tx_result_t;

/* --- small helpers ------------------------------------------------------- */

void
tly_backoff_sleep(int *delay_ms, atomic_bool *stop)
{
    if (*delay_ms < 50)
        *delay_ms = 50;
    tly_sleep_unless_stopped(*delay_ms, stop);
    *delay_ms = *delay_ms * 2 > 5000 ? 5000 : *delay_ms * 2;
}

void
tly_retry_failed(tly_retry_t *rt, const char *err, atomic_bool *stop)
{
    if (!rt->failing) {
        char msg[96];
        snprintf(msg, sizeof(msg), "%s failed, retrying", rt->what);
        tly_log(TLY_LOG_ERROR, msg, "consumer", rt->name, "error", err, NULL);
    }
    rt->failing = true;
    tly_backoff_sleep(&rt->delay_ms, stop);
}

void
tly_retry_ok(tly_retry_t *rt)
{
    if (rt->failing) {
        char msg[96];
        snprintf(msg, sizeof(msg), "%s recovered", rt->what);
        tly_log(TLY_LOG_INFO, msg, "consumer", rt->name, NULL);
    }
    rt->failing = false;
    rt->delay_ms = 0;
}

void
tly_sleep_unless_stopped(int64_t ms, atomic_bool *stop)
{
    for (int64_t slept = 0; slept < ms && !atomic_load(stop); slept += 20) {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static bool
utf8_ok(const unsigned char *s, size_t len)
{
    for (size_t i = 0; i < len;) {
        unsigned char c = s[i];
        size_t n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (c == 0 || n == 0 || i + n > len || (n == 2 && c < 0xc2))
            return false;
        for (size_t k = 1; k < n; ++k)
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
        i += n;
    }
    return true;
}

char *
tly_text_or_hex(const char *buf, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    if (utf8_ok((const unsigned char *)buf, len)) {
        char *s = malloc(len + 1);
        if (s == NULL)
            abort();
        memcpy(s, buf, len);
        s[len] = '\0';
        return s;
    }
    char *s = malloc(2 * len + 3);
    if (s == NULL)
        abort();
    s[0] = '\\';
    s[1] = 'x';
    for (size_t i = 0; i < len; ++i) {
        s[2 + 2 * i] = hex[(unsigned char)buf[i] >> 4];
        s[3 + 2 * i] = hex[(unsigned char)buf[i] & 0xf];
    }
    s[2 * len + 2] = '\0';
    return s;
}

static partition_t *
part_of(consumer_t *c, int32_t partition)
{
    return partition >= 0 && partition < c->nparts ? &c->parts[partition] : NULL;
}

static void
grow_parts(consumer_t *c, int32_t partition)
{
    if (partition < c->nparts)
        return;
    int n = partition + 1;
    partition_t *p = realloc(c->parts, sizeof(*p) * (size_t)n);
    if (p == NULL)
        abort();
    memset(p + c->nparts, 0, sizeof(*p) * (size_t)(n - c->nparts));
    c->parts = p;
    c->nparts = n;
}

/* Connects (or reconnects) to PostgreSQL, logging only when the state changes. */
static bool
ensure_pg(consumer_t *c)
{
    return tly_pgx_ensure(&c->conn, &c->pg_up, c->cfg->pg_dsn, NULL, c->h->name) >= 0;
}

static void
rollback(consumer_t *c)
{
    char err[256];
    if (!tly_pg_broken(c->conn) && PQtransactionStatus(c->conn) != PQTRANS_IDLE)
        (void)!tly_pgx_end(c->conn, false, err, sizeof(err));
    else
        tly_pgx_begin(NULL); /* a BEGIN not sent yet (tx_start) is forgotten */
}

/* --- claiming partitions ------------------------------------------------- */

/* Bumps the epoch of each partition in `list` and fills in its stored offset. One transaction. */
static int
claim(consumer_t *c, rd_kafka_topic_partition_list_t *list, char *err, size_t errcap)
{
    if (!ensure_pg(c)) {
        snprintf(err, errcap, "postgresql unavailable");
        return -1;
    }
    if (tly_pg_exec(c->conn, "BEGIN", err, errcap) != 0)
        return -1;
    for (int i = 0; i < list->cnt; ++i) {
        rd_kafka_topic_partition_t *tp = &list->elems[i];
        char part_s[16];
        snprintf(part_s, sizeof(part_s), "%" PRId32, tp->partition);
        const char *vals[] = {c->h->name, tp->topic, part_s};
        PGresult *res = tly_pgx_query(c->conn, "claim partition",
                                      "INSERT INTO consumer_positions (consumer, topic, partition, next_offset, epoch) "
                                      "VALUES ($1, $2, $3, 0, 1) ON CONFLICT (consumer, topic, partition) DO UPDATE "
                                      "SET epoch = consumer_positions.epoch + 1, updated_at = now() RETURNING next_offset, epoch",
                                      3, vals, err, errcap);
        if (res == NULL) {
            rollback(c);
            return -1;
        }
        grow_parts(c, tp->partition);
        partition_t *p = &c->parts[tp->partition];
        memset(p, 0, sizeof(*p));
        p->assigned = true;
        p->next_offset = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        p->epoch = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
        tp->offset = p->next_offset;
        PQclear(res);
    }
    if (tly_pg_exec(c->conn, "COMMIT", err, errcap) != 0) {
        rollback(c);
        return -1;
    }
    for (int i = 0; i < list->cnt; ++i)
        tly_worker_admin_claimed(c->rk, c->h->name, list->elems[i].partition);
    return 0;
}

rd_kafka_resp_err_t
tly_consumer_assign(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *list)
{
    if (list != NULL && list->cnt > 0) {
        /* on a copy: the resume sets each element's err, which is no business of the assignment */
        rd_kafka_topic_partition_list_t *copy = rd_kafka_topic_partition_list_copy(list);
        (void)rd_kafka_resume_partitions(rk, copy); /* a partition it does not know was never paused */
        rd_kafka_topic_partition_list_destroy(copy);
    }
    return rd_kafka_assign(rk, list);
}

static void
on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t rerr, rd_kafka_topic_partition_list_t *list, void *opaque)
{
    consumer_t *c = opaque;
    char err[512];
    c->rebalanced = true;
    if (rerr != RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        /* Revoked: nothing of the revoked partitions is in flight (we only poll between transactions). */
        for (int i = 0; i < c->nparts; ++i) {
            if (c->parts[i].assigned)
                tly_worker_admin_released(c->rk, c->h->name, i); /* only ours: another consumer of the name may hold the rest */
            c->parts[i].assigned = false;
            c->parts[i].unsaved = false; /* the next owner reads those ignored events again */
        }
        tly_worker_admin_assigned(c->h->name, false);
        rd_kafka_assign(rk, NULL);
        tly_log(TLY_LOG_INFO, "partitions revoked", "consumer", c->h->name, NULL);
        return;
    }
    int delay = 0;
    while (claim(c, list, err, sizeof(err)) != 0) {
        if (delay == 0) /* once per outage, not per attempt */
            tly_log(TLY_LOG_WARN, "could not claim partitions, retrying", "consumer", c->h->name, "error", err, NULL);
        if (atomic_load(c->cfg->stop)) {
            rd_kafka_assign(rk, NULL);
            return;
        }
        tly_backoff_sleep(&delay, c->cfg->stop);
    }
    (void)tly_consumer_assign(rk, list);
    tly_worker_admin_assigned(c->h->name, true);
    if (c->cfg->joined != NULL)
        atomic_store(c->cfg->joined, true);
    char count[16];
    snprintf(count, sizeof(count), "%d", list->cnt);
    tly_log(TLY_LOG_INFO, "partitions assigned", "consumer", c->h->name, "count", count, NULL);
}

/* Re-claims fenced partitions that are still assigned to us after the grace period, and re-seeks. */
static void
reclaim_fenced(consumer_t *c)
{
    char err[512];
    int64_t now = tly_clock_mono_us();
    for (int i = 0; i < c->nparts; ++i) {
        partition_t *p = &c->parts[i];
        if (!p->assigned || !p->fenced || now < p->reclaim_at_us)
            continue;
        rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(list, c->cfg->topic, i);
        if (claim(c, list, err, sizeof(err)) == 0) {
            rd_kafka_error_t *e = rd_kafka_seek_partitions(c->rk, list, 5000);
            if (e != NULL)
                rd_kafka_error_destroy(e);
            rd_kafka_resume_partitions(c->rk, list);
            tly_log(TLY_LOG_WARN, "reclaimed a fenced partition", "consumer", c->h->name, NULL);
        } else {
            p->reclaim_at_us = now + 1000000;
        }
        rd_kafka_topic_partition_list_destroy(list);
    }
}

static void
pause_partition(consumer_t *c, int32_t partition)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(list, c->cfg->topic, partition);
    rd_kafka_pause_partitions(c->rk, list);
    rd_kafka_topic_partition_list_destroy(list);
}

/* --- gathering a batch ---------------------------------------------------- */

static void
msgs_clear(tly_consumer_msg_t *msgs, int n)
{
    for (int i = 0; i < n; ++i) {
        if (msgs[i].parsed)
            tly_envelope_clear(&msgs[i].env);
        rd_kafka_message_destroy(msgs[i].rkm);
    }
}

/* Keeps `rkm` when it belongs to a live partition and is not behind its position. */
static bool
keep(consumer_t *c, tly_consumer_msg_t *m, rd_kafka_message_t *rkm)
{
    if (rkm->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (rkm->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
            tly_log(TLY_LOG_WARN, "kafka consumer error", "consumer", c->h->name, "error", rd_kafka_message_errstr(rkm), NULL);
        return false;
    }
    partition_t *p = part_of(c, rkm->partition);
    if (p == NULL || !p->assigned || p->stopped || rkm->offset < p->next_offset)
        return false;
    memset(m, 0, sizeof(*m));
    m->rkm = rkm;
    const char *payload = rkm->payload != NULL ? rkm->payload : "";
    /* the scanner reads Tally's own envelopes without a jansson tree; anything else, or a refusal, is jansson's to judge */
    m->parsed = tly_envelope_scan(payload, rkm->len, &m->env) == 0 ||
                tly_envelope_parse(payload, rkm->len, &m->env, m->parse_error, sizeof(m->parse_error)) == 0;
    if (!tly_kafka_header(rkm, "traceparent", m->traceparent, sizeof(m->traceparent)) ||
        !tly_traceparent_valid(m->traceparent, strlen(m->traceparent)))
        m->traceparent[0] = '\0';
    return true;
}

/*
 * Polls up to batch_max messages: waits FIRST_POLL_MS for the first, then
 * batch_wait_ms for more, then takes whatever is already fetched without
 * waiting. So with batch_wait_ms 0 (the default) an event never waits for
 * company, and a backlog still makes full batches (librdkafka prefetches).
 */
static int
gather(consumer_t *c, tly_consumer_msg_t *msgs)
{
    int n = 0;
    int64_t deadline = 0;
    c->rebalanced = false;
    tly_log_trace_set(NULL); /* no event in hand */
    while (n < c->cfg->batch_max) {
        int timeout = FIRST_POLL_MS;
        if (n > 0) {
            int64_t left = deadline - tly_clock_mono_us();
            timeout = left <= 0 ? 0 : (int)((left + 999) / 1000);
        }
        rd_kafka_message_t *rkm = rd_kafka_consumer_poll(c->rk, timeout);
        if (c->rebalanced) {
            /*
             * Positions were re-read: what we gathered before may be stale, but
             * the message this poll returned is already from the new assignment
             * (librdkafka discards outdated fetches), so it goes through keep()
             * like any other. Dropping it too would lose it: the next poll
             * returns its successor.
             */
            msgs_clear(msgs, n);
            n = 0;
            c->rebalanced = false;
        }
        if (rkm == NULL) {
            if (n == 0 || timeout == 0)
                break; /* nothing at all, or nothing more already fetched */
            continue;
        }
        if (!keep(c, &msgs[n], rkm)) {
            rd_kafka_message_destroy(rkm);
            continue;
        }
        if (n++ == 0)
            deadline = tly_clock_mono_us() + (int64_t)c->cfg->batch_wait_ms * 1000;
    }
    return n;
}

/* --- the batch transaction ----------------------------------------------- */

static int
dedup_insert(consumer_t *c, const tly_consumer_msg_t *m, bool *fresh, char *err, size_t errcap)
{
    char id[TLY_UUID_STR_LEN + 1];
    long affected = 0;
    tly_uuid_format(&m->env.id, id);
    const char *vals[] = {c->h->name, id};
    if (tly_pgx_exec(c->conn, "record applied event",
                     "INSERT INTO consumer_dedup (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING", 2, vals, &affected,
                     err, errcap) != 0)
        return -1;
    *fresh = affected == 1;
    return 0;
}

static int
dead_letter(consumer_t *c, const tly_consumer_msg_t *m, const char *why, int attempts, char *err, size_t errcap)
{
    char part_s[16], off_s[24], att_s[16], id[TLY_UUID_STR_LEN + 1];
    snprintf(part_s, sizeof(part_s), "%" PRId32, m->rkm->partition);
    snprintf(off_s, sizeof(off_s), "%" PRId64, m->rkm->offset);
    snprintf(att_s, sizeof(att_s), "%d", attempts);
    if (m->parsed)
        tly_uuid_format(&m->env.id, id);
    char *payload = tly_text_or_hex(m->rkm->payload != NULL ? m->rkm->payload : "", m->rkm->len);
    const char *vals[] = {c->h->name, c->cfg->topic, part_s, off_s, m->parsed ? id : NULL, payload, why, att_s};
    int ret = tly_pgx_exec(c->conn, "insert dead letter",
                           "INSERT INTO dead_letters (consumer, topic, partition, \"offset\", event_id, payload, error, attempts) "
                           "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                           8, vals, NULL, err, errcap);
    free(payload);
    if (ret == 0)
        tly_metrics_dead_letter(c->h->name);
    if (ret == 0)
        tly_log(TLY_LOG_ERROR, "event parked in dead_letters", "consumer", c->h->name, "partition", part_s, "offset", off_s,
                "error", why, NULL);
    return ret;
}

/* Inside the batch transaction: a batch that is rolled back and retried logs its events again. */
static void
log_applied(consumer_t *c, const tly_consumer_msg_t *m)
{
    if (!tly_log_enabled(TLY_LOG_INFO))
        return;
    char id[TLY_UUID_STR_LEN + 1], job[TLY_UUID_STR_LEN + 1], part_s[16], off_s[24];
    tly_log_trace_set(m->traceparent);
    tly_uuid_format(&m->env.id, id);
    if (!tly_uuid_is_nil(&m->env.job_id))
        tly_uuid_format(&m->env.job_id, job);
    snprintf(part_s, sizeof(part_s), "%" PRId32, m->rkm->partition);
    snprintf(off_s, sizeof(off_s), "%" PRId64, m->rkm->offset);
    tly_log(TLY_LOG_INFO, "event applied", "consumer", c->h->name, "type", m->env.type, "event_id", id, "job_id",
            tly_uuid_is_nil(&m->env.job_id) ? NULL : job, "partition", part_s, "offset", off_s, NULL);
}

/* Handles one message inside the transaction. Returns 0, or -1 (the event's own failure) with `err`. */
static int
handle(consumer_t *c, tly_consumer_msg_t *m, partition_t *p, bool park, char *err, size_t errcap)
{
    if (!m->parsed)
        return dead_letter(c, m, m->parse_error, 1, err, errcap);
    switch (c->h->classify(c->h->ctx, &m->env)) {
    case TLY_VERDICT_IGNORE:
        return 0;
    case TLY_VERDICT_TOO_NEW:
        p->stop_pending = true;
        p->too_new_offset = m->rkm->offset;
        p->too_new_version = m->env.version;
        memcpy(p->too_new_type, m->env.type, sizeof(p->too_new_type));
        return 1; /* do not advance */
    case TLY_VERDICT_APPLY:
        break;
    }
    bool fresh = c->h->idempotent;
    if (!fresh && dedup_insert(c, m, &fresh, err, errcap) != 0)
        return -1;
    if (!fresh)
        return 0;
    if (park) {
        if (c->h->park != NULL && c->h->park(c->h->ctx, c->conn, m, c->event_error, err, errcap) != 0)
            return -1;
        return dead_letter(c, m, c->event_error, c->cfg->max_event_tries, err, errcap);
    }
    int r = c->h->apply(c->h->ctx, c->conn, m, err, errcap);
    if (r == 0)
        log_applied(c, m);
    return r;
}

/* Moves every touched partition's position in one statement, fenced by epoch; a partition it did not match is fenced. */
static tx_result_t
update_positions(consumer_t *c, char *err, size_t errcap)
{
    tly_pg_array_t *parts = &c->arr[0], *offs = &c->arr[1], *epochs = &c->arr[2];
    tly_pg_array_reset(parts);
    tly_pg_array_reset(offs);
    tly_pg_array_reset(epochs);
    for (int i = 0; i < c->nparts; ++i) {
        partition_t *p = &c->parts[i];
        if (!p->touched && !(p->unsaved && p->assigned && !p->stopped))
            continue;
        tly_pg_array_add_i64(parts, i);
        tly_pg_array_add_i64(offs, p->staged_next);
        tly_pg_array_add_i64(epochs, p->epoch);
        p->fence_pending = true; /* until the statement returns the partition */
    }
    if (parts->n == 0)
        return TX_OK;
    const char *vals[] = {c->h->name, c->cfg->topic, tly_pg_array_text(parts), tly_pg_array_text(offs), tly_pg_array_text(epochs)};
    PGresult *res = tly_pgx_query(c->conn, "update positions",
                                  "UPDATE consumer_positions AS cp SET next_offset = u.next_offset, updated_at = now() "
                                  "FROM unnest($3::int[], $4::bigint[], $5::bigint[]) AS u(partition, next_offset, epoch) "
                                  "WHERE cp.consumer = $1 AND cp.topic = $2 AND cp.partition = u.partition "
                                  "AND cp.epoch = u.epoch RETURNING cp.partition",
                                  5, vals, err, errcap);
    if (res == NULL) {
        for (int i = 0; i < c->nparts; ++i)
            c->parts[i].fence_pending = false;
        return TX_TRANSIENT;
    }
    for (int k = 0; k < PQntuples(res); ++k) {
        partition_t *p = part_of(c, (int32_t)atoi(PQgetvalue(res, k, 0)));
        if (p != NULL)
            p->fence_pending = false;
    }
    PQclear(res);
    bool fenced = false;
    for (int i = 0; i < c->nparts; ++i)
        fenced = fenced || c->parts[i].fence_pending; /* applied after the rollback, in on_fenced */
    return fenced ? TX_FENCED : TX_OK;
}

static void
on_fenced(consumer_t *c)
{
    for (int i = 0; i < c->nparts; ++i) {
        partition_t *p = &c->parts[i];
        if (p->fence_pending) {
            char part_s[16];
            snprintf(part_s, sizeof(part_s), "%d", i);
            p->stopped = p->fenced = true;
            p->reclaim_at_us = tly_clock_mono_us() + RECLAIM_AFTER_US;
            pause_partition(c, i);
            tly_log(TLY_LOG_WARN, "fenced: another worker claimed the partition", "consumer", c->h->name, "partition", part_s,
                    NULL);
        }
    }
}

static void
after_commit(consumer_t *c)
{
    for (int i = 0; i < c->nparts; ++i) {
        partition_t *p = &c->parts[i];
        if (p->touched) {
            tly_metrics_events_applied(c->h->name, (uint64_t)(p->staged_next - p->next_offset));
            p->next_offset = p->staged_next;
        }
        p->unsaved = false; /* written with this transaction */
        if (p->stop_pending && !p->stopped) {
            char part_s[16], off_s[24], ver_s[16];
            snprintf(part_s, sizeof(part_s), "%d", i);
            snprintf(off_s, sizeof(off_s), "%" PRId64, p->too_new_offset);
            snprintf(ver_s, sizeof(ver_s), "%d", p->too_new_version);
            p->stopped = true;
            pause_partition(c, i);
            tly_log(TLY_LOG_ERROR,
                    "event schema version is newer than this worker knows; partition paused until a newer "
                    "worker takes it",
                    "consumer", c->h->name, "partition", part_s, "offset", off_s, "type", p->too_new_type, "version", ver_s, NULL);
        }
    }
}

/* Resets the transaction's per-partition state and opens the transaction. */
static bool
tx_start(consumer_t *c, char *err, size_t errcap)
{
    tly_pgx_reset_last();
    for (int i = 0; i < c->nparts; ++i) {
        c->parts[i].touched = c->parts[i].stop_pending = c->parts[i].fence_pending = false;
        c->parts[i].staged_next = c->parts[i].next_offset;
    }
    if (!ensure_pg(c))
        return false;
    tly_pgx_begin(c->conn); /* sent with the first statement (pgx.c) */
    if (c->h->begin != NULL)
        c->h->begin(c->h->ctx);
    return true;
}

/* Moves the positions and commits. */
static tx_result_t
tx_finish(consumer_t *c, char *err, size_t errcap)
{
    tx_result_t res = update_positions(c, err, errcap);
    if (res == TX_OK && c->h->end != NULL && c->h->end(c->h->ctx, c->conn, err, errcap) != 0)
        res = TX_TRANSIENT;
    if (res == TX_OK && tly_pgx_end(c->conn, true, err, errcap) != 0)
        res = TX_TRANSIENT;
    if (res == TX_TRANSIENT && tly_pgx_last_deferred() && !tly_pgx_last_transient(c->conn))
        res = TX_BATCH_FAILED; /* a deferred write of the set-based batch failed for its own reason */
    if (res != TX_OK) {
        rollback(c);
        if (res == TX_FENCED)
            on_fenced(c);
        return res;
    }
    tly_metrics_consumer_transaction(c->h->name);
    after_commit(c);
    c->unsaved_since_us = 0;
    return TX_OK;
}

/* True when `m` is to be handled in this transaction (live partition, not behind what is staged). */
static bool
in_play(consumer_t *c, const tly_consumer_msg_t *m, partition_t **pp)
{
    partition_t *p = part_of(c, m->rkm->partition);
    *pp = p;
    return p != NULL && p->assigned && !p->stopped && !p->stop_pending && m->rkm->offset >= p->staged_next;
}

/* Applies msgs[start, end) in one transaction, one event at a time; `park` is the index to dead-letter instead of apply, or -1. */
static tx_result_t
run_tx(consumer_t *c, tly_consumer_msg_t *msgs, int start, int end, int park, int *fail_at, char *err, size_t errcap)
{
    if (!tx_start(c, err, errcap))
        return TX_TRANSIENT;
    for (int i = start; i < end; ++i) {
        tly_consumer_msg_t *m = &msgs[i];
        partition_t *p;
        if (!in_play(c, m, &p))
            continue;
        tly_log_trace_set(m->traceparent); /* every line about this event carries its trace id */
        int r = handle(c, m, p, i == park, err, errcap);
        if (r < 0) {
            rollback(c);
            *fail_at = i;
            return tly_pgx_last_transient(c->conn) ? TX_TRANSIENT : TX_EVENT_ERROR;
        }
        if (r == 0) {
            p->staged_next = m->rkm->offset + 1;
            p->touched = true;
        }
    }
    return tx_finish(c, err, errcap);
}

static int
cmp_msg_id(const void *a, const void *b)
{
    const tly_consumer_msg_t *x = *(tly_consumer_msg_t *const *)a, *y = *(tly_consumer_msg_t *const *)b;
    int d = memcmp(&x->env.id, &y->env.id, sizeof(x->env.id));
    return d != 0 ? d : (x < y ? -1 : x > y); /* equal ids: log order (the batch array's order) */
}

/*
 * Records the ids of cand[0, n) (log order) in consumer_dedup with one
 * statement and leaves in c->fresh those applied for the first time (an id
 * twice in the batch: its first copy). Returns how many, or -1.
 */
static int
dedup_batch(consumer_t *c, tly_consumer_msg_t *msgs, int n, char *err, size_t errcap)
{
    tly_pgx_barray_t *ids = &c->ids;
    memcpy(c->sorted, c->cand, sizeof(*c->sorted) * (size_t)n);
    qsort(c->sorted, (size_t)n, sizeof(*c->sorted), cmp_msg_id);
    tly_pgx_barray_reset(ids, TLY_PGX_UUID);
    for (int i = 0; i < n; ++i) {
        c->is_fresh[c->cand[i] - msgs] = 0;
        if (i > 0 && memcmp(&c->sorted[i]->env.id, &c->sorted[i - 1]->env.id, sizeof(c->sorted[i]->env.id)) == 0)
            continue;
        tly_pgx_barray_uuid(ids, c->sorted[i]->env.id.b);
    }
    int lens[2] = {0, 0}, formats[2] = {0, 1}; /* the ids in binary (pgx.h) */
    const char *vals[] = {c->h->name, tly_pgx_barray_bytes(ids, &lens[1])};
    PGresult *res = tly_pgx_query_params(c->conn, "record applied events",
                                         "INSERT INTO consumer_dedup (consumer, event_id) SELECT $1, unnest($2::uuid[]) "
                                         "ON CONFLICT DO NOTHING RETURNING event_id",
                                         2, vals, lens, formats, err, errcap);
    if (res == NULL)
        return -1;
    for (int k = 0; k < PQntuples(res); ++k) {
        tly_uuid_t key;
        if (!tly_uuid_parse(PQgetvalue(res, k, 0), &key))
            continue;
        /* the first copy: the lowest index among equal ids */
        int lo = 0, hi = n;
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (memcmp(&c->sorted[mid]->env.id, &key, sizeof(key)) < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < n && memcmp(&c->sorted[lo]->env.id, &key, sizeof(key)) == 0)
            c->is_fresh[c->sorted[lo] - msgs] = 1;
    }
    PQclear(res);
    int nfresh = 0;
    for (int i = 0; i < n; ++i)
        if (c->is_fresh[c->cand[i] - msgs])
            c->fresh[nfresh++] = c->cand[i];
    return nfresh;
}

/*
 * The set-based path: msgs[start, end) in one transaction with one dedup
 * statement and the handler's apply_batch. Anything that is not transient
 * gives TX_BATCH_FAILED (rolled back): the caller then goes one event at a
 * time, which finds the failing event and isolates it.
 */
static tx_result_t
run_tx_batch(consumer_t *c, tly_consumer_msg_t *msgs, int start, int end, char *err, size_t errcap)
{
    int ncand = 0, nfresh = 0;
    if (!tx_start(c, err, errcap))
        return TX_TRANSIENT;
    for (int i = start; i < end; ++i) {
        tly_consumer_msg_t *m = &msgs[i];
        partition_t *p;
        if (!in_play(c, m, &p))
            continue;
        tly_verdict_t v = m->parsed ? c->h->classify(c->h->ctx, &m->env) : TLY_VERDICT_APPLY;
        if (!m->parsed || v == TLY_VERDICT_TOO_NEW) {
            tly_log_trace_set(m->traceparent);
            if (handle(c, m, p, false, err, errcap) < 0) /* parks it, or stops the partition at it */
                goto failed;
            if (p->stop_pending)
                continue;
        } else if (v == TLY_VERDICT_APPLY) {
            c->cand[ncand++] = m;
        }
        p->staged_next = m->rkm->offset + 1;
        p->touched = true;
    }
    int64_t t_dedup = tly_clock_mono_us();
    if (c->h->idempotent) {
        memcpy(c->fresh, c->cand, sizeof(*c->fresh) * (size_t)ncand);
        nfresh = ncand;
    } else if (ncand > 0 && (nfresh = dedup_batch(c, msgs, ncand, err, errcap)) < 0) {
        goto failed;
    }
    int64_t t_apply = tly_clock_mono_us();
    if (nfresh > 0) {
        /* the batch's writes go out without waiting for each other (pgx.c), and are read with the positions' update in
           tx_finish: a failure of one of them is the batch's (TX_BATCH_FAILED there) */
        tly_pgx_defer(c->conn);
        int r = c->h->apply_batch(c->h->ctx, c->conn, (const tly_consumer_msg_t *const *)c->fresh, nfresh, err, errcap);
        tly_pgx_defer(NULL);
        if (r != 0)
            goto failed;
    }
    int64_t t_log = tly_clock_mono_us();
    for (int i = 0; i < nfresh; ++i)
        log_applied(c, c->fresh[i]);
    tly_log_trace_set(NULL);
    if (tly_log_enabled(TLY_LOG_DEBUG)) { /* where a batch's time goes, without a profiler */
        char counts[48], times[80];
        snprintf(counts, sizeof(counts), "%d/%d/%d", end - start, ncand, nfresh);
        snprintf(times, sizeof(times), "%lld/%lld/%lld", (long long)(t_apply - t_dedup), (long long)(t_log - t_apply),
                 (long long)(tly_clock_mono_us() - t_log));
        tly_log(TLY_LOG_DEBUG, "batch applied", "consumer", c->h->name, "gathered/to_apply/new", counts, "dedup/apply/log_us",
                times, NULL);
    }
    return tx_finish(c, err, errcap);
failed:
    rollback(c);
    return tly_pgx_last_transient(c->conn) ? TX_TRANSIENT : TX_BATCH_FAILED;
}

/* The handler's word that a batch of events it would apply writes nothing (handler->nothing_to_do); false when unsure. */
static bool
nothing_to_do(consumer_t *c, tly_consumer_msg_t *msgs, int n)
{
    char err[512];
    bool nothing = false;
    if (c->h->nothing_to_do == NULL)
        return false;
    if (c->h->nothing_to_do(c->h->ctx, c->conn, msgs, n, &nothing, err, sizeof(err)) != 0) {
        tly_log(TLY_LOG_DEBUG, "could not tell whether a batch has work; running its transaction", "consumer", c->h->name, "error",
                err, NULL);
        return false;
    }
    return nothing;
}

/*
 * A batch of nothing but events this handler ignores (the saga's share of a
 * deposit workload, the decider's of outcomes), or of events it would apply
 * without writing anything (the webhooks role's, for tenants without an
 * endpoint), needs no transaction: nothing is written but the position, and
 * a position left behind such events is harmless (after a crash or a
 * rebalance they are read and passed over again). So the position only
 * moves in memory here, and is written with the next transaction, or by
 * flush_unsaved within UNSAVED_MAX_US. Returns false, and changes nothing,
 * when any event of the batch has work to do.
 */
static bool
skip_ignored(consumer_t *c, tly_consumer_msg_t *msgs, int n)
{
    bool all_ignored = true;
    for (int i = 0; i < n; ++i) {
        if (!msgs[i].parsed)
            return false; /* parked in dead_letters */
        tly_verdict_t v = c->h->classify(c->h->ctx, &msgs[i].env);
        if (v == TLY_VERDICT_TOO_NEW)
            return false;
        all_ignored = all_ignored && v == TLY_VERDICT_IGNORE;
    }
    if (!all_ignored && !nothing_to_do(c, msgs, n))
        return false;
    for (int i = 0; i < n; ++i) {
        partition_t *p = part_of(c, msgs[i].rkm->partition);
        if (p == NULL || !p->assigned || p->stopped || msgs[i].rkm->offset < p->next_offset)
            continue;
        tly_metrics_events_applied(c->h->name, (uint64_t)(msgs[i].rkm->offset + 1 - p->next_offset));
        p->next_offset = msgs[i].rkm->offset + 1;
        p->unsaved = true;
    }
    if (c->unsaved_since_us == 0)
        c->unsaved_since_us = tly_clock_mono_us();
    return true;
}

/* Writes the positions that moved in memory only, once they are UNSAVED_MAX_US old (or `now`), in a transaction of their own. */
static void
flush_unsaved(consumer_t *c, bool now)
{
    char err[512];
    if (c->unsaved_since_us == 0 || (!now && tly_clock_mono_us() - c->unsaved_since_us < UNSAVED_MAX_US))
        return;
    if (tx_start(c, err, sizeof(err)) && tx_finish(c, err, sizeof(err)) == TX_OK)
        return;
    tly_log(TLY_LOG_DEBUG, "could not write positions past ignored events; next batch will", "consumer", c->h->name, "error", err,
            NULL);
}

/*
 * Applies the whole batch, never skipping: transient failures retry forever
 * (until stop), an event that fails on its own is isolated, retried and parked.
 */
static bool
process_batch(consumer_t *c, tly_consumer_msg_t *msgs, int n)
{
    char err[1024];
    int start = 0, failing = -1, tries = 0, delay = 0;
    bool logged_transient = false;
    bool one_by_one = c->h->apply_batch == NULL; /* set-based until a batch fails for an event's own reason */
    while (start < n) {
        int end = failing < 0 ? n : start < failing ? failing : start + 1;
        int park = (failing == start && tries >= c->cfg->max_event_tries) ? start : -1;
        int fail_at = -1;
        tx_result_t res = one_by_one || failing >= 0 ? run_tx(c, msgs, start, end, park, &fail_at, err, sizeof(err))
                                                     : run_tx_batch(c, msgs, start, end, err, sizeof(err));
        switch (res) {
        case TX_BATCH_FAILED:
            tly_log(TLY_LOG_WARN, "batch failed, applying its events one at a time", "consumer", c->h->name, "error", err, NULL);
            one_by_one = true;
            continue; /* at once: this is no retry of the same thing */
        case TX_OK:
            start = end;
            if (failing >= 0 && start > failing) {
                failing = -1;
                tries = 0;
                one_by_one = c->h->apply_batch == NULL; /* the failing event is behind us */
            }
            delay = 0;
            if (logged_transient)
                tly_log(TLY_LOG_INFO, "batch committed after retries", "consumer", c->h->name, NULL);
            logged_transient = false;
            continue;
        case TX_FENCED:
            return true; /* the fenced partitions' messages are skipped; others were rolled back with them */
        case TX_EVENT_ERROR:
            if (fail_at != failing) {
                failing = fail_at;
                tries = 0;
            }
            tries++;
            snprintf(c->event_error, sizeof(c->event_error), "%s", err);
            tly_log(TLY_LOG_WARN, "could not apply event, retrying", "consumer", c->h->name, "error", err, NULL);
            break;
        case TX_TRANSIENT:
            if (!logged_transient)
                tly_log(TLY_LOG_ERROR, "batch failed, retrying", "consumer", c->h->name, "error", err, NULL);
            logged_transient = true;
            break;
        }
        if (atomic_load(c->cfg->stop))
            return false; /* nothing of the rest is committed: it is redelivered to whoever owns it next */
        tly_backoff_sleep(&delay, c->cfg->stop);
    }
    return false;
}

/*
 * After a fence, the batch's other partitions were rolled back too; their
 * messages are dropped here and fetched again by re-seeking to the committed
 * positions (re-assigning the unchanged set of partitions).
 */
static void
reseek_live(consumer_t *c)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(c->nparts > 0 ? c->nparts : 1);
    for (int i = 0; i < c->nparts; ++i) {
        partition_t *p = &c->parts[i];
        if (p->assigned && !p->stopped)
            rd_kafka_topic_partition_list_add(list, c->cfg->topic, i)->offset = p->next_offset;
    }
    if (list->cnt > 0) {
        rd_kafka_error_t *e = rd_kafka_seek_partitions(c->rk, list, 5000);
        if (e != NULL)
            rd_kafka_error_destroy(e);
    }
    rd_kafka_topic_partition_list_destroy(list);
}

static void
consumer_free(consumer_t *c, tly_consumer_msg_t *msgs)
{
    free(c->parts);
    free(c->cand);
    free(c->sorted);
    free(c->fresh);
    free(c->is_fresh);
    for (size_t i = 0; i < sizeof(c->arr) / sizeof(c->arr[0]); ++i)
        tly_pg_array_free(&c->arr[i]);
    tly_pgx_barray_free(&c->ids);
    free(msgs);
}

/*
 * Waits until cfg->join_after is set, at most join_after_max_ms. Two
 * consumers that join an empty group at the same moment race: the first's
 * SyncGroup fails with "rebalance in progress" and librdkafka retries the
 * join only a second or two later, so both start late. One after the other,
 * the first starts with every partition at once and hands half of them over
 * when the second joins.
 */
static void
wait_join_turn(const tly_consumer_config_t *cfg)
{
    if (cfg->join_after == NULL)
        return;
    for (int64_t waited = 0; waited < cfg->join_after_max_ms && !atomic_load(cfg->join_after) && !atomic_load(cfg->stop);
         waited += 10) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

int
tly_consumer_run(const tly_consumer_config_t *cfg, const tly_consumer_handler_t *handler)
{
    char err[512];
    wait_join_turn(cfg);
    consumer_t c = {.cfg = cfg, .h = handler, .pg_up = true};
    tly_consumer_msg_t *msgs = calloc((size_t)cfg->batch_max, sizeof(*msgs));
    c.cand = calloc((size_t)cfg->batch_max, sizeof(*c.cand));
    c.sorted = calloc((size_t)cfg->batch_max, sizeof(*c.sorted));
    c.fresh = calloc((size_t)cfg->batch_max, sizeof(*c.fresh));
    c.is_fresh = calloc((size_t)cfg->batch_max, 1);
    if (msgs == NULL || c.cand == NULL || c.sorted == NULL || c.fresh == NULL || c.is_fresh == NULL)
        abort();
    c.rk = tly_kafka_consumer_create(cfg->brokers, cfg->group, cfg->prefetch_kbytes, cfg->gather_ms, on_rebalance, &c, err,
                                     sizeof(err));
    if (c.rk == NULL) {
        tly_log(TLY_LOG_ERROR, "could not create kafka consumer", "consumer", handler->name, "error", err, NULL);
        consumer_free(&c, msgs);
        return -1;
    }
    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, cfg->topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t serr = rd_kafka_subscribe(c.rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (serr != RD_KAFKA_RESP_ERR_NO_ERROR) {
        tly_log(TLY_LOG_ERROR, "could not subscribe", "consumer", handler->name, "error", rd_kafka_err2str(serr), NULL);
        rd_kafka_destroy(c.rk);
        consumer_free(&c, msgs);
        return -1;
    }
    int delay = 0;
    while (!atomic_load(cfg->stop)) {
        if (!ensure_pg(&c)) {
            rd_kafka_message_t *rkm = rd_kafka_consumer_poll(c.rk, 0); /* keep group membership alive */
            if (rkm != NULL) {
                rd_kafka_message_destroy(rkm);
                c.refetch = true; /* librdkafka's fetch position is past it now */
            }
            tly_backoff_sleep(&delay, cfg->stop);
            continue;
        }
        delay = 0;
        if (c.refetch) {
            reseek_live(&c);
            c.refetch = false;
        }
        reclaim_fenced(&c);
        int n = gather(&c, msgs);
        if (n > 0) {
            if (!skip_ignored(&c, msgs, n) && process_batch(&c, msgs, n))
                reseek_live(&c);
            msgs_clear(msgs, n);
        }
        flush_unsaved(&c, false);
        for (int i = 0; i < c.nparts; ++i)
            if (c.parts[i].assigned)
                tly_worker_admin_lag(c.rk, handler->name, cfg->topic, i, c.parts[i].next_offset);
    }
    if (!tly_pg_broken(c.conn))
        flush_unsaved(&c, true);
    rd_kafka_consumer_close(c.rk); /* leaves the group; revocation runs on_rebalance */
    rd_kafka_destroy(c.rk);
    if (c.conn != NULL)
        PQfinish(c.conn);
    consumer_free(&c, msgs);
    tly_log(TLY_LOG_INFO, "consumer stopped", "consumer", handler->name, NULL);
    return 0;
}
