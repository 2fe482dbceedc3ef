/* Replay's writing of a batch, its bookkeeping, and pacing. See replay_internal.h. */
#include "replay_internal.h"

/* --- applying a batch ---------------------------------------------------- */

typedef enum en_ev_result_t {
    EV_OK,
    EV_FAILED,    /* the event's own failure (fast mode: redo the batch with savepoints) */
    EV_TRANSIENT, /* PostgreSQL trouble: roll back, retry later */
    EV_FATAL,     /* cannot go on (a version this tallyctl does not know) */
} ev_result_t;

static void
fresh_push(tly_ctl_replay_t *r, const uint8_t *id)
{
    if (r->nfresh == r->fresh_cap) {
        r->fresh_cap = r->fresh_cap == 0 ? 4096 : r->fresh_cap * 2;
        r->fresh = realloc(r->fresh, r->fresh_cap * 16);
        if (r->fresh == NULL)
            abort();
    }
    memcpy(r->fresh[r->nfresh++], id, 16);
}

static int
record_failure(tly_ctl_replay_t *r, const rd_kafka_message_t *m, const tly_envelope_t *env, const char *why, char *err,
               size_t errcap)
{
    char part[16], off[24], id[TLY_UUID_STR_LEN + 1];
    snprintf(part, sizeof(part), "%" PRId32, m->partition);
    snprintf(off, sizeof(off), "%" PRId64, m->offset);
    if (env != NULL)
        tly_uuid_format(&env->id, id);
    const char *vals[] = {part, off, env != NULL ? id : NULL, env != NULL ? env->type : NULL, why};
    PGresult *res = tly_ctl_replay__queryf(r, "could not record a failed event", 5, vals, err, errcap,
                                           "INSERT INTO %s._replay_failures (partition, \"offset\", event_id, type, error) "
                                           "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                                           r->schema);
    PQclear(res);
    r->failed++;
    return res != NULL ? 0 : -1;
}

/* Bulk loading (tly_projection_batch_set_bulk): a job may be in the shadow once a batch wrote it. Ids stay when
   that batch rolls back: "may exist" only costs an upsert instead of a COPY. */
bool
tly_ctl_replay__job_may_exist(void *ctx, const tly_uuid_t *id)
{
    tly_ctl_replay_t *r = ctx;
    size_t slot;
    if (tly_ctl_idset_find(&r->jobs, id->b, &slot))
        return true;
    tly_ctl_idset_add(&r->jobs, id->b);
    return false;
}

/* Applies one event under a savepoint of its own; when it fails on its own account, parks it as the live projector does. */
static ev_result_t
apply_one(tly_ctl_replay_t *r, const rd_kafka_message_t *m, const tly_envelope_t *env, char *err, size_t errcap)
{
    char why[1024];
    tly_pgx_reset_last();
    if (tly_ctl_replay__exec(r, "SAVEPOINT ev", err, errcap) != 0)
        return EV_TRANSIENT;
    if (!tly_uuid_is_nil(&env->job_id))
        (void)tly_ctl_replay__job_may_exist(r, &env->job_id); /* written below by an upsert, not by the bulk COPY */
    if (tly_projection_apply(r->conn, env, r->mask, why, sizeof(why)) == 0) {
        r->applied++;
        return tly_ctl_replay__exec(r, "RELEASE SAVEPOINT ev", err, errcap) != 0 ? EV_TRANSIENT : EV_OK;
    }
    bool transient = tly_pgx_last_transient(r->conn);
    snprintf(err, errcap, "%s", why);
    if (tly_ctl_replay__exec(r, "ROLLBACK TO SAVEPOINT ev", err, errcap) != 0 || transient)
        return EV_TRANSIENT;
    /* As the live projector does when it parks an event: its job ends failed (dead_lettered). */
    char ignored[512];
    if (tly_projection_job_dead_lettered(r->conn, env, why, ignored, sizeof(ignored)) != 0 &&
        tly_ctl_replay__exec(r, "ROLLBACK TO SAVEPOINT ev", err, errcap) != 0)
        return EV_TRANSIENT;
    if (tly_ctl_replay__exec(r, "RELEASE SAVEPOINT ev", err, errcap) != 0)
        return EV_TRANSIENT;
    fprintf(stderr, "tallyctl: partition %" PRId32 " offset %" PRId64 ": %s\n", m->partition, m->offset, why);
    return record_failure(r, m, env, why, err, errcap) == 0 ? EV_OK : EV_TRANSIENT;
}

/* Why the last write of the batch failed: PostgreSQL trouble, or (redo with savepoints) an event's own. */
static ev_result_t
write_failure(tly_ctl_replay_t *r)
{
    return tly_pgx_last_transient(r->conn) ? EV_TRANSIENT : EV_FAILED;
}

/* The slow path for message i: a new event applied under a savepoint of its own, an invalid one recorded. */
static ev_result_t
apply_slow(tly_ctl_replay_t *r, const unit_t *u, int i, char *err, size_t errcap)
{
    const prepared_t *p = &u->prep[i];
    if (u->fate[i] == FATE_INVALID)
        return record_failure(r, u->msgs[i], NULL, p->why, err, errcap) == 0 ? EV_OK : EV_TRANSIENT;
    return u->fate[i] == FATE_APPLY ? apply_one(r, u->msgs[i], &p->env, err, errcap) : EV_OK;
}

/* Writes the ids applied since `from` to _replay_applied: one row of their 16 bytes each, however many. */
static int
save_dedup(tly_ctl_replay_t *r, size_t from, char *err, size_t errcap)
{
    char sql[256];
    if (from >= r->nfresh)
        return 0;
    snprintf(sql, sizeof(sql), "INSERT INTO %s._replay_applied (ids) VALUES ($1)", r->schema);
    const char *vals[] = {(const char *)r->fresh[from]};
    const int lens[] = {(int)((r->nfresh - from) * 16)}, binary[] = {1};
    PGresult *res = PQexecParams(r->conn, sql, 1, NULL, vals, lens, binary, 0);
    int ret = PQresultStatus(res) == PGRES_COMMAND_OK ? 0 : -1;
    if (ret != 0)
        snprintf(err, errcap, "could not save applied event ids: %s", PQerrorMessage(r->conn));
    PQclear(res);
    return ret;
}

/* Stores staged[] (end[] for a partition reached[] says is done) and end[]. */
int
tly_ctl_replay__save_positions(tly_ctl_replay_t *r, const bool *reached, char *err, size_t errcap)
{
    size_t cap = (size_t)r->nparts * 48 + 16;
    char *parts = malloc(cap), *offs = malloc(cap), *ends = malloc(cap);
    if (parts == NULL || offs == NULL || ends == NULL)
        abort();
    size_t a = 0, b = 0, c = 0;
    parts[a++] = '{', offs[b++] = '{', ends[c++] = '{';
    for (int p = 0; p < r->nparts; ++p) {
        int64_t next = reached[p] && r->staged[p] < r->end[p] ? r->end[p] : r->staged[p];
        a += (size_t)snprintf(parts + a, cap - a, "%s%d", p > 0 ? "," : "", p);
        b += (size_t)snprintf(offs + b, cap - b, "%s%" PRId64, p > 0 ? "," : "", next);
        c += (size_t)snprintf(ends + c, cap - c, "%s%" PRId64, p > 0 ? "," : "", r->end[p]);
    }
    snprintf(parts + a, cap - a, "}");
    snprintf(offs + b, cap - b, "}");
    snprintf(ends + c, cap - c, "}");
    const char *vals[] = {parts, offs, ends};
    PGresult *res =
        tly_ctl_replay__queryf(r, "could not save replay positions", 3, vals, err, errcap,
                               "INSERT INTO %s._replay_positions AS rp (partition, next_offset, end_offset) "
                               "SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[]) "
                               "ON CONFLICT (partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, "
                               "end_offset = EXCLUDED.end_offset WHERE rp.next_offset IS DISTINCT FROM EXCLUDED.next_offset "
                               "OR rp.end_offset IS DISTINCT FROM EXCLUDED.end_offset",
                               r->schema);
    free(parts);
    free(offs);
    free(ends);
    PQclear(res);
    return res != NULL ? 0 : -1;
}

typedef struct st_counters_t {
    int64_t processed, applied, dups, failed, skipped;
} counters_t;

static void
counters_save(const tly_ctl_replay_t *r, counters_t *c)
{
    *c = (counters_t){r->processed, r->applied, r->dups, r->failed, r->skipped};
}

static void
counters_restore(tly_ctl_replay_t *r, const counters_t *c)
{
    r->processed = c->processed, r->applied = c->applied, r->dups = c->dups, r->failed = c->failed, r->skipped = c->skipped;
}

/* Forgets the ids applied since `from` (their transaction rolled back). */
void
tly_ctl_replay__forget_fresh(tly_ctl_replay_t *r, size_t from)
{
    for (size_t i = from; i < r->nfresh; ++i)
        tly_ctl_idset_del(&r->seen, r->fresh[i]);
    r->nfresh = from;
}

/* The statements of a batch whose events were folded (the fast path): one set of statements per segment. */
static ev_result_t
write_folded(tly_ctl_replay_t *r, unit_t *u, char *err, size_t errcap)
{
    if (!u->folded && !tly_ctl_replay__fold_unit(r, u))
        return EV_FAILED;
    u->folded = false; /* a flush empties its batch: a retry folds again */
    for (int k = 0; k < u->nsegs; ++k)
        if (tly_projection_batch_flush(u->segs[k], r->conn, err, errcap) != 0)
            return write_failure(r);
    return EV_OK;
}

static ev_result_t
too_new(const unit_t *u, char *err, size_t errcap)
{
    const rd_kafka_message_t *m = u->msgs[u->fatal];
    const tly_envelope_t *env = &u->prep[u->fatal].env;
    snprintf(err, errcap,
             "partition %" PRId32 " offset %" PRId64 ": %s version %d is newer than this tallyctl knows (%d); "
             "upgrade tallyctl and run the replay again (it resumes here)",
             m->partition, m->offset, env->type, env->version, tly_projection_max_version(env->type));
    return EV_FATAL;
}

/*
 * Applies the batch u and the positions. own_tx: in a transaction of its
 * own, committed; else inside the final transaction, under a savepoint.
 * First written set-based (folded by the reader, projection.h); when that
 * fails for an event's own reason, redone with a savepoint per event to
 * isolate it. Returns 0, -1 fatal, -2 transient (rolled back when own_tx).
 */
static int
run_batch(tly_ctl_replay_t *r, unit_t *u, bool own_tx, char *err, size_t errcap)
{
    bool slow = u->invalid;
    counters_t before;
    size_t fresh_from = r->nfresh;
    counters_save(r, &before);
    int64_t *staged0 = malloc(sizeof(int64_t) * (size_t)r->nparts);
    if (staged0 == NULL)
        abort();
    memcpy(staged0, r->staged, sizeof(int64_t) * (size_t)r->nparts);
    int ret = -2;
    for (;;) {
        tly_pgx_reset_last();
        if (tly_ctl_replay__exec(r, own_tx ? "BEGIN" : "SAVEPOINT batch", err, errcap) != 0)
            goto out;
        ev_result_t res = u->fatal >= 0 ? too_new(u, err, errcap) : EV_OK;
        for (size_t i = 0; i < u->nids; ++i)
            fresh_push(r, u->ids[i]);
        for (int i = 0; i < u->n && res == EV_OK; ++i) {
            if (slow)
                res = apply_slow(r, u, i, err, errcap);
            r->staged[u->msgs[i]->partition] = u->msgs[i]->offset + 1;
        }
        if (res == EV_OK && !slow)
            res = write_folded(r, u, err, errcap);
        if (res == EV_OK && save_dedup(r, fresh_from, err, errcap) != 0)
            res = EV_TRANSIENT;
        if (res == EV_OK && tly_ctl_replay__save_positions(r, u->reached, err, errcap) != 0)
            res = EV_TRANSIENT;
        if (res == EV_OK && tly_ctl_replay__exec(r, own_tx ? "COMMIT" : "RELEASE SAVEPOINT batch", err, errcap) != 0)
            res = EV_TRANSIENT;
        if (res == EV_OK)
            break;
        if (own_tx)
            tly_ctl_replay__rollback(r);
        else if (tly_ctl_replay__exec(r, "ROLLBACK TO SAVEPOINT batch", err, errcap) != 0)
            res = EV_TRANSIENT; /* the final transaction is retried whole */
        r->nfresh = fresh_from; /* not saved; they stay seen: the retry, or the slow path, applies the same events */
        counters_restore(r, &before);
        memcpy(r->staged, staged0, sizeof(int64_t) * (size_t)r->nparts);
        if (res == EV_FAILED && !slow) {
            slow = true; /* an event failed on its own: redo with a savepoint per event to isolate it */
            continue;
        }
        ret = res == EV_FATAL ? -1 : -2;
        goto out;
    }
    r->processed += u->n;
    r->dups += u->dups;
    r->skipped += u->skips;
    if (!slow)
        r->applied += (int64_t)u->nids; /* the slow path counted each one it applied */
    for (int p = 0; p < r->nparts; ++p) {
        if (u->reached[p] && r->staged[p] < r->end[p])
            r->staged[p] = r->end[p];
        if (own_tx)
            r->pos[p] = r->staged[p];
    }
    if (own_tx)
        r->nfresh = 0; /* committed: nothing to forget any more */
    ret = 0;
out:
    free(staged0);
    return ret;
}

void
tly_ctl_replay__sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Stores the positions alone: an empty batch (end-of-partition markers move them too). */
int
tly_ctl_replay__write_positions(tly_ctl_replay_t *r, bool own_tx, char *err, size_t errcap)
{
    unit_t none = {.reached = r->reached, .fatal = -1};
    return run_batch(r, &none, own_tx, err, errcap);
}

/* Writes u in a transaction of its own (own_tx), retrying transient failures, or under the final transaction's savepoint. */
/*
 * --max-rate: after a batch of n events, sleeps as long as it takes for the
 * events written since the first batch to be no more than max_rate per
 * second (the next batch is read meanwhile). The batches are small then
 * (tly_ctl_replay_open), so the live services get the CPUs between them
 * instead of waiting behind one long burst.
 */
static void
pace(tly_ctl_replay_t *r, int n)
{
    if (r->rate_now <= 0)
        return;
    int64_t now = tly_clock_mono_us();
    if (r->pace_t0_us == 0)
        r->pace_t0_us = now;
    r->paced += n;
    int64_t due = r->pace_t0_us + r->paced * 1000000 / r->rate_now;
    if (due > now) {
        struct timespec ts = {(time_t)((due - now) / 1000000), (long)((due - now) % 1000000) * 1000};
        nanosleep(&ts, NULL);
    }
}

/* At most 50 ms of events per batch at `rate`, at least 500, at most the units' capacity. */
int
tly_ctl_replay__paced_batch(const tly_ctl_replay_t *r, int64_t rate)
{
    int64_t b = rate / 20 < 500 ? 500 : rate / 20;
    return b < r->o.batch ? (int)b : r->o.batch;
}

/*
 * The busy rate: between batches (the reader thread is not running), asks
 * the live-traffic watch whether other sessions are working and, when the
 * answer changed, switches between full speed in full batches and
 * o.busy_rate in 50-ms batches. --max-rate fixes the rate instead.
 */
void
tly_ctl_replay__adapt(tly_ctl_replay_t *r)
{
    if (r->watch == NULL)
        return;
    bool busy = tly_ctl_livewatch_busy(r->watch);
    if (busy == r->yielding)
        return;
    int64_t now = tly_clock_mono_us();
    r->yielding = busy;
    r->pace_t0_us = 0;
    r->paced = 0;
    r->rate_now = busy ? r->o.busy_rate : 0;
    r->batch_now = busy ? tly_ctl_replay__paced_batch(r, r->o.busy_rate) : r->o.batch;
    if (busy)
        r->yield_since_us = now;
    else
        r->yielded_us += now - r->yield_since_us;
    if (!r->o.quiet)
        fprintf(stderr, "%stallyctl: %s (%.1f active sessions on average)\n", r->tty ? "\r\033[K" : "",
                busy ? "live traffic: slowing to the busy rate" : "the database is quiet: full speed",
                tly_ctl_livewatch_load(r->watch));
    if (!r->o.quiet)
        fflush(stderr);
}

static int
write_unit(tly_ctl_replay_t *r, unit_t *u, bool own_tx, char *err, size_t errcap)
{
    int rc, tries = 0, delay = 50;
    while ((rc = run_batch(r, u, own_tx, err, errcap)) == -2 && own_tx && ++tries < 20) {
        fprintf(stderr, "tallyctl: batch failed, retrying: %s\n", err);
        if (tly_pg_broken(r->conn))
            PQreset(r->conn);
        tly_ctl_replay__sleep_ms(delay);
        delay = delay * 2 > 5000 ? 5000 : delay * 2;
    }
    return rc;
}

/*
 * Replays [pos, end) of every partition. Batch N+1 is read from Kafka and
 * parsed on a second thread while batch N is folded and written here, so
 * the JSON parsing overlaps PostgreSQL's work. Returns 0, 1 (max_batches
 * reached), -1 fatal, -2 transient (final phase).
 */
int
tly_ctl_replay__run_phase(tly_ctl_replay_t *r, bool own_tx, char *err, size_t errcap)
{
    int nassigned;
    if (tly_ctl_replay__assign_from_positions(r, &nassigned) != 0) {
        snprintf(err, errcap, "could not assign the partitions of %s", r->s->kafka_topic);
        return -1;
    }
    if (nassigned == 0)
        return 0;
    unit_t *cur = &r->units[0], *next = &r->units[1];
    tly_ctl_replay__read_unit(r, cur);
    int64_t last_progress = tly_clock_mono_us();
    int rc = 0;
    bool more = false, cur_written = false;
    for (;;) {
        more = !tly_ctl_replay__all_reached(r); /* the reader thread is not running: its state is ours to read */
        reader_t rd;
        if (own_tx)
            tly_ctl_replay__adapt(r);
        if (more)
            tly_ctl_replay__reader_start(&rd, r, next);
        int64_t now = tly_clock_mono_us();
        cur_written = false;
        if (cur->n > 0) {
            last_progress = now;
            rc = write_unit(r, cur, own_tx, err, errcap);
            cur_written = rc == 0;
        } else if (more && now - last_progress > STALL_US) {
            snprintf(err, errcap, "no events from %s for %d s while %" PRId64 " are still expected; is the broker up?",
                     r->s->kafka_topic, (int)(STALL_US / 1000000), tly_ctl_replay__remaining(r));
            rc = -1;
        }
        if (cur_written && own_tx) /* the final phase holds the live tables' lock: never slowed */
            pace(r, cur->n);
        if (more)
            tly_ctl_replay__reader_finish(&rd);
        if (cur_written) {
            tly_ctl_replay__progress(r, false);
            if (own_tx && r->o.max_batches > 0 && ++r->batches >= r->o.max_batches)
                rc = 1;
        }
        if (rc != 0 || !more)
            break;
        unit_t *t = cur;
        cur = next;
        next = t;
    }
    if (rc != 0 && !cur_written)
        tly_ctl_replay__unit_forget(r, cur);
    if (rc != 0 && more)
        tly_ctl_replay__unit_forget(r, next); /* read ahead, never written */
    tly_ctl_replay__unit_free_msgs(cur);
    tly_ctl_replay__unit_free_msgs(next);
    if (rc != 0)
        return rc;
    /* a phase with nothing but end-of-partition markers still moves positions */
    return own_tx ? tly_ctl_replay__write_positions(r, true, err, errcap) : 0;
}
