/* The fenced consumer's partitions and positions: claims (epochs), rebalances, the positions' update and fencing. See
 * consumer_internal.h. */
#include "consumer_internal.h"

/* --- claiming partitions ------------------------------------------------- */

/* Bumps the epoch of each partition in `list` and fills in its stored offset. One transaction. */
static int
claim(consumer_t *c, rd_kafka_topic_partition_list_t *list, char *err, size_t errcap)
{
    if (!tly_consumer__ensure_pg(c)) {
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
            tly_consumer__rollback(c);
            return -1;
        }
        tly_consumer__grow_parts(c, tp->partition);
        partition_t *p = &c->parts[tp->partition];
        memset(p, 0, sizeof(*p));
        p->assigned = true;
        p->next_offset = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        p->epoch = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
        tp->offset = p->next_offset;
        PQclear(res);
    }
    if (tly_pg_exec(c->conn, "COMMIT", err, errcap) != 0) {
        tly_consumer__rollback(c);
        return -1;
    }
    for (int i = 0; i < list->cnt; ++i)
        tly_worker_admin_claimed(c->rk, c->h->name, list->elems[i].partition, list->elems[i].offset);
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

void
tly_consumer__on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t rerr, rd_kafka_topic_partition_list_t *list, void *opaque)
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
        tly_retry_backoff(&delay, c->cfg->stop);
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
void
tly_consumer__reclaim_fenced(consumer_t *c)
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

void
tly_consumer__pause_partition(consumer_t *c, int32_t partition)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(list, c->cfg->topic, partition);
    rd_kafka_pause_partitions(c->rk, list);
    rd_kafka_topic_partition_list_destroy(list);
}

/* Moves every touched partition's position in one statement, fenced by epoch; a partition it did not match is fenced. */
tx_result_t
tly_consumer__update_positions(consumer_t *c, char *err, size_t errcap)
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
        partition_t *p = tly_consumer__part_of(c, (int32_t)atoi(PQgetvalue(res, k, 0)));
        if (p != NULL)
            p->fence_pending = false;
    }
    PQclear(res);
    bool fenced = false;
    for (int i = 0; i < c->nparts; ++i)
        fenced = fenced || c->parts[i].fence_pending; /* applied after the rollback, in on_fenced */
    return fenced ? TX_FENCED : TX_OK;
}

void
tly_consumer__on_fenced(consumer_t *c)
{
    for (int i = 0; i < c->nparts; ++i) {
        partition_t *p = &c->parts[i];
        if (p->fence_pending) {
            char part_s[16];
            snprintf(part_s, sizeof(part_s), "%d", i);
            p->stopped = p->fenced = true;
            p->reclaim_at_us = tly_clock_mono_us() + RECLAIM_AFTER_US;
            tly_consumer__pause_partition(c, i);
            tly_log(TLY_LOG_WARN, "fenced: another worker claimed the partition", "consumer", c->h->name, "partition", part_s,
                    NULL);
        }
    }
}

void
tly_consumer__after_commit(consumer_t *c)
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
            tly_consumer__pause_partition(c, i);
            tly_log(TLY_LOG_ERROR,
                    "event schema version is newer than this worker knows; partition paused until a newer "
                    "worker takes it",
                    "consumer", c->h->name, "partition", part_s, "offset", off_s, "type", p->too_new_type, "version", ver_s, NULL);
        }
    }
}
