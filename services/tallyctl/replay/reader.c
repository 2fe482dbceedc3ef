/* Replay's reading of tally.events: the reader thread, parsing, each message's fate. See replay_internal.h. */
#include "replay_internal.h"

/* --- kafka --------------------------------------------------------------- */

int
tly_ctl_replay__kafka_open(tly_ctl_replay_t *r, char *err, size_t errcap)
{
    char rderr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *kv[][2] = {
        {"bootstrap.servers", r->s->kafka_brokers},
        {"group.id", "tallyctl-replay"}, /* required by the API; partitions are assigned, never subscribed or committed */
        {"enable.auto.commit", "false"},
        {"enable.auto.offset.store", "false"},
        {"enable.partition.eof", "true"},
        {"auto.offset.reset", "earliest"},
        {"isolation.level", "read_committed"},
        {"fetch.wait.max.ms", "10"},
        {"queued.min.messages", "200000"},
    };
    for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); ++i) {
        if (rd_kafka_conf_set(conf, kv[i][0], kv[i][1], rderr, sizeof(rderr)) != RD_KAFKA_CONF_OK) {
            snprintf(err, errcap, "could not set kafka %s: %s", kv[i][0], rderr);
            rd_kafka_conf_destroy(conf);
            return -1;
        }
    }
    if (tly_kafka_conf_apply(conf, getenv("TALLY_KAFKA_CONFIG"), "TALLY_KAFKA_CONFIG", err, errcap) != 0) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    r->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, rderr, sizeof(rderr));
    if (r->rk == NULL) {
        snprintf(err, errcap, "could not create kafka consumer: %s", rderr);
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    rd_kafka_poll_set_consumer(r->rk);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(r->rk, r->s->kafka_topic, NULL);
    rd_kafka_resp_err_t e = rd_kafka_metadata(r->rk, 0, rkt, &md, 10000);
    rd_kafka_topic_destroy(rkt);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR || md->topic_cnt != 1 || md->topics[0].err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errcap, "could not read the partitions of %s: %s", r->s->kafka_topic,
                 rd_kafka_err2str(e != RD_KAFKA_RESP_ERR_NO_ERROR ? e : md->topics[0].err));
        if (md != NULL)
            rd_kafka_metadata_destroy(md);
        return -1;
    }
    r->nparts = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    if (r->nparts <= 0 || r->nparts > MAX_PARTS) {
        snprintf(err, errcap, "topic %s has %d partitions", r->s->kafka_topic, r->nparts);
        return -1;
    }
    return 0;
}

static int
high_watermarks(tly_ctl_replay_t *r, int64_t *high, char *err, size_t errcap)
{
    for (int p = 0; p < r->nparts; ++p) {
        int64_t lo, hi;
        rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(r->rk, r->s->kafka_topic, p, &lo, &hi, 10000);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
            snprintf(err, errcap, "could not read the end of partition %d: %s", p, rd_kafka_err2str(e));
            return -1;
        }
        if (lo > 0 && r->pos[p] < lo) {
            snprintf(err, errcap,
                     "partition %d starts at offset %" PRId64 ": events before it were deleted, so the log no longer "
                     "holds the whole history",
                     p, lo);
            return -1;
        }
        high[p] = hi;
    }
    return 0;
}

/* The live projector's committed positions (0 where it never claimed a partition). */
static int
projector_positions(tly_ctl_replay_t *r, int64_t *out, char *err, size_t errcap)
{
    const char *vals[] = {r->s->kafka_topic};
    PGresult *res = tly_ctl_db_query(r->conn, "could not read the projector's positions",
                                     "SELECT partition, next_offset FROM public.consumer_positions "
                                     "WHERE consumer = 'projector' AND topic = $1",
                                     1, vals, err, errcap);
    if (res == NULL)
        return -1;
    for (int p = 0; p < r->nparts; ++p)
        out[p] = 0;
    for (int i = 0; i < PQntuples(res); ++i) {
        int p = atoi(PQgetvalue(res, i, 0));
        if (p >= 0 && p < r->nparts)
            out[p] = strtoll(PQgetvalue(res, i, 1), NULL, 10);
    }
    PQclear(res);
    return 0;
}

/* Sets the targets: high watermarks (capped by --until offsets), or for a swap or verify also by the projector's positions. */
int
tly_ctl_replay__set_targets(tly_ctl_replay_t *r, char *err, size_t errcap)
{
    int64_t *high = calloc((size_t)r->nparts, sizeof(*high)), *proj = calloc((size_t)r->nparts, sizeof(*proj));
    int ret = -1;
    if (high == NULL || proj == NULL)
        abort();
    if (high_watermarks(r, high, err, errcap) != 0)
        goto out;
    if (r->o.mode != TLY_REPLAY_COPY && projector_positions(r, proj, err, errcap) != 0)
        goto out;
    for (int p = 0; p < r->nparts; ++p) {
        int64_t e = high[p];
        if (r->until_end[p] >= 0 && r->until_end[p] < e)
            e = r->until_end[p];
        if (r->o.mode != TLY_REPLAY_COPY && proj[p] < e)
            e = proj[p]; /* never ahead of the live tables: the swap needs the shadow at the projector's positions */
        r->end[p] = e;
    }
    ret = 0;
out:
    free(high);
    free(proj);
    return ret;
}

int
tly_ctl_replay__assign_from_positions(tly_ctl_replay_t *r, int *nassigned)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(r->nparts);
    *nassigned = 0;
    for (int p = 0; p < r->nparts; ++p) {
        r->gpos[p] = r->pos[p];
        r->staged[p] = r->pos[p];
        r->reached[p] = r->pos[p] >= r->end[p];
        if (!r->reached[p]) {
            rd_kafka_topic_partition_list_add(list, r->s->kafka_topic, p)->offset = r->pos[p];
            ++*nassigned;
        }
    }
    rd_kafka_resp_err_t e = rd_kafka_assign(r->rk, list);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR && list->cnt > 0)
        rd_kafka_resume_partitions(r->rk, list); /* paused when the previous phase reached its end */
    rd_kafka_topic_partition_list_destroy(list);
    return e == RD_KAFKA_RESP_ERR_NO_ERROR ? 0 : -1;
}

static void
pause_one(tly_ctl_replay_t *r, int p)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(list, r->s->kafka_topic, p);
    rd_kafka_pause_partitions(r->rk, list);
    rd_kafka_topic_partition_list_destroy(list);
}

bool
tly_ctl_replay__all_reached(const tly_ctl_replay_t *r)
{
    for (int p = 0; p < r->nparts; ++p)
        if (!r->reached[p])
            return false;
    return true;
}

/* Polls up to batch messages of [gpos, end) per partition into u. Returns the count; sets reached[] on the way. */
static int
gather(tly_ctl_replay_t *r, unit_t *u)
{
    int n = 0;
    while (n < r->batch_now && !tly_ctl_replay__all_reached(r)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(r->rk, n == 0 ? 200 : 5);
        if (m == NULL) {
            if (n > 0)
                break;
            return 0;
        }
        int p = m->partition;
        if (p < 0 || p >= r->nparts) {
            rd_kafka_message_destroy(m);
            continue;
        }
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            if (m->offset >= r->end[p] && !r->reached[p]) {
                r->reached[p] = true; /* everything before the end was delivered already */
                pause_one(r, p);
            }
            rd_kafka_message_destroy(m);
            continue;
        }
        if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            fprintf(stderr, "tallyctl: kafka: %s\n", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        if (r->reached[p] || m->offset < r->gpos[p]) {
            rd_kafka_message_destroy(m);
            continue;
        }
        if (m->offset >= r->end[p]) {
            r->reached[p] = true;
            pause_one(r, p);
            rd_kafka_message_destroy(m);
            continue;
        }
        r->gpos[p] = m->offset + 1;
        if (r->gpos[p] >= r->end[p]) {
            r->reached[p] = true;
            pause_one(r, p);
        }
        u->msgs[n++] = m;
    }
    return n;
}

/* Parses and upcasts one message: no bookkeeping, so the reader thread can run it ahead of the write. */
static void
prepare(const rd_kafka_message_t *m, prepared_t *p)
{
    tly_envelope_t env;
    char why[256];
    memset(p, 0, sizeof(*p));
    const char *payload = m->payload != NULL ? m->payload : "";
    if (tly_envelope_scan(payload, m->len, &env) != 0 && tly_envelope_parse(payload, m->len, &env, why, sizeof(why)) != 0)
        goto invalid;
    if (!tly_projection_knows(env.type) || env.version > tly_projection_max_version(env.type)) {
        p->kind = tly_projection_knows(env.type) ? PREP_TOO_NEW : PREP_UNKNOWN;
        p->env = env;
        json_decref(p->env.data);
        p->env.data = NULL;
        return;
    }
    int rc = tly_upcast(&env, tly_projection_max_version(env.type), &p->env, why, sizeof(why));
    tly_envelope_clear(&env);
    if (rc == 0)
        return; /* PREP_OK */
invalid:
    p->kind = PREP_INVALID;
    if ((p->why = strdup(why)) == NULL)
        abort();
}

static void
prepared_clear(prepared_t *p)
{
    tly_envelope_clear(&p->env);
    free(p->why);
    p->why = NULL;
}

void
tly_ctl_replay__unit_free_msgs(unit_t *u)
{
    tly_ctl_jarena_skip_frees(true); /* the events' JSON is in u's arenas, emptied below */
    for (int i = 0; i < u->n; ++i) {
        prepared_clear(&u->prep[i]);
        rd_kafka_message_destroy(u->msgs[i]);
    }
    tly_ctl_jarena_skip_frees(false);
    for (int t = 0; t < PARSE_THREADS; ++t)
        tly_ctl_jarena_reset(&u->arenas[t]);
    u->n = 0;
}

static void decide(tly_ctl_replay_t *r, unit_t *u);

/* Messages [from, to) of a unit, parsed by one thread. */
typedef struct st_slice_t {
    unit_t *u;
    int from, to, t;
    pthread_t thread;
    bool started;
} slice_t;

static void *
prepare_slice(void *arg)
{
    slice_t *sl = arg;
    tly_ctl_jarena_use(&sl->u->arenas[sl->t]);
    for (int i = sl->from; i < sl->to; ++i)
        prepare(sl->u->msgs[i], &sl->u->prep[i]);
    tly_ctl_jarena_use(NULL);
    return NULL;
}

/*
 * Reads the next batch into u: gathered, parsed (on up to PARSE_THREADS
 * threads), and reached[] as of its last message. What u held (the batch
 * written before) is freed first, here, off the writing thread.
 */
void
tly_ctl_replay__read_unit(tly_ctl_replay_t *r, unit_t *u)
{
    slice_t sl[PARSE_THREADS];
    tly_ctl_replay__unit_free_msgs(u);
    u->n = gather(r, u);
    memcpy(u->reached, r->reached, sizeof(bool) * (size_t)r->nparts);
    int k = u->n < 1000 ? 1 : r->parse_threads;
    for (int t = 0; t < k; ++t) {
        sl[t] = (slice_t){.u = u, .from = (int)((int64_t)u->n * t / k), .to = (int)((int64_t)u->n * (t + 1) / k), .t = t};
        if (t > 0)
            sl[t].started = pthread_create(&sl[t].thread, NULL, prepare_slice, &sl[t]) == 0;
    }
    for (int t = 0; t < k; ++t) {
        if (t == 0 || !sl[t].started)
            prepare_slice(&sl[t]);
        else
            pthread_join(sl[t].thread, NULL);
    }
    decide(r, u);
    if (u->fatal < 0 && !u->invalid)
        (void)tly_ctl_replay__fold_unit(r, u);
}

static void
unit_add_id(unit_t *u, const uint8_t *id)
{
    if (u->nids == u->cap_ids) {
        u->cap_ids = u->cap_ids == 0 ? 4096 : u->cap_ids * 2;
        if ((u->ids = realloc(u->ids, u->cap_ids * 16)) == NULL)
            abort();
    }
    memcpy(u->ids[u->nids++], id, 16);
}

/* Decides the fate of each message in log order: the one place (during a phase) that adds to the ids seen. */
static void
decide(tly_ctl_replay_t *r, unit_t *u)
{
    u->fatal = -1;
    u->invalid = false;
    u->dups = u->skips = 0;
    u->nids = 0;
    for (int i = 0; i < u->n && u->fatal < 0; ++i) {
        const prepared_t *p = &u->prep[i];
        size_t slot;
        fate_t f = FATE_APPLY;
        if (p->kind == PREP_TOO_NEW)
            f = FATE_FATAL, u->fatal = i;
        else if (p->kind == PREP_INVALID)
            f = FATE_INVALID, u->invalid = true;
        else if (p->kind == PREP_UNKNOWN || (r->has_until && p->env.occurred_at_us > r->until_us))
            f = FATE_SKIP, u->skips++;
        else if (tly_ctl_idset_find(&r->seen, p->env.id.b, &slot))
            f = FATE_DUP, u->dups++;
        if (f == FATE_APPLY) {
            tly_ctl_idset_add(&r->seen, p->env.id.b);
            unit_add_id(u, p->env.id.b);
        }
        u->fate[i] = (uint8_t)f;
    }
}

/* Forgets the ids of a batch that will not be written (the phase ended before it, or it failed for good). */
void
tly_ctl_replay__unit_forget(tly_ctl_replay_t *r, unit_t *u)
{
    for (size_t i = 0; i < u->nids; ++i)
        tly_ctl_idset_del(&r->seen, u->ids[i]);
    u->nids = 0;
}

/*
 * Folds the FATE_APPLY events into u->segs, the live projector's code in
 * bulk mode. Returns false when the fold refuses an event (the slow path
 * then finds it) or a batch asks to be flushed first once too often.
 */
bool
tly_ctl_replay__fold_unit(tly_ctl_replay_t *r, unit_t *u)
{
    char err[512];
    u->nsegs = 0;
    u->folded = false;
    for (int i = 0; i < u->n; ++i) {
        if (u->fate[i] != FATE_APPLY)
            continue;
        int a = u->nsegs == 0 ? 1 : tly_projection_batch_add(u->segs[u->nsegs - 1], &u->prep[i].env, err, sizeof(err));
        if (a == 1) { /* cannot be folded after what the batch holds: it goes to the next one, written after */
            if (u->nsegs == (int)(sizeof(u->segs) / sizeof(u->segs[0])))
                return false;
            if (u->segs[u->nsegs] == NULL) {
                u->segs[u->nsegs] = tly_projection_batch_create(r->mask);
                tly_projection_batch_set_bulk(u->segs[u->nsegs], tly_ctl_replay__job_may_exist, r);
            }
            tly_projection_batch_reset(u->segs[u->nsegs]);
            a = tly_projection_batch_add(u->segs[u->nsegs++], &u->prep[i].env, err, sizeof(err));
        }
        if (a != 0)
            return false;
    }
    u->folded = true;
    return true;
}

static void *
reader_main(void *arg)
{
    reader_t *rd = arg;
    tly_ctl_replay__read_unit(rd->r, rd->u);
    return NULL;
}

/* Starts reading u on the reader thread; when no thread can be started, reader_finish reads it instead. */
void
tly_ctl_replay__reader_start(reader_t *rd, tly_ctl_replay_t *r, unit_t *u)
{
    *rd = (reader_t){.r = r, .u = u};
    rd->started = pthread_create(&rd->thread, NULL, reader_main, rd) == 0;
}

void
tly_ctl_replay__reader_finish(reader_t *rd)
{
    if (rd->started)
        pthread_join(rd->thread, NULL);
    else
        tly_ctl_replay__read_unit(rd->r, rd->u);
}
