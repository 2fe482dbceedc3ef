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
#include "consumer_internal.h"

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

partition_t *
tly_consumer__part_of(consumer_t *c, int32_t partition)
{
    return partition >= 0 && partition < c->nparts ? &c->parts[partition] : NULL;
}

void
tly_consumer__grow_parts(consumer_t *c, int32_t partition)
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
bool
tly_consumer__ensure_pg(consumer_t *c)
{
    return tly_pgx_ensure(&c->conn, &c->pg_up, c->cfg->pg_dsn, NULL, c->h->name) >= 0;
}

void
tly_consumer__rollback(consumer_t *c)
{
    char err[256];
    if (!tly_pg_broken(c->conn) && PQtransactionStatus(c->conn) != PQTRANS_IDLE)
        (void)!tly_pgx_end(c->conn, false, err, sizeof(err));
    else
        tly_pgx_begin(NULL); /* a BEGIN not sent yet (tx_start) is forgotten */
}

/* --- gathering a batch ---------------------------------------------------- */

void
tly_consumer__msgs_clear(tly_consumer_msg_t *msgs, int n)
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
    partition_t *p = tly_consumer__part_of(c, rkm->partition);
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
int
tly_consumer__gather(consumer_t *c, tly_consumer_msg_t *msgs)
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
            tly_consumer__msgs_clear(msgs, n);
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
        tx_result_t res = one_by_one || failing >= 0 ? tly_consumer__run_tx(c, msgs, start, end, park, &fail_at, err, sizeof(err))
                                                     : tly_consumer__run_tx_batch(c, msgs, start, end, err, sizeof(err));
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
        tly_retry_backoff(&delay, c->cfg->stop);
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

tly_verdict_t
tly_consumer_verdict(bool handles, const tly_envelope_t *env, int max_version)
{
    if (!handles)
        return TLY_VERDICT_IGNORE;
    return env->version > max_version ? TLY_VERDICT_TOO_NEW : TLY_VERDICT_APPLY;
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
    c.rk = tly_kafka_consumer_create(cfg->brokers, cfg->group, cfg->prefetch_kbytes, cfg->gather_ms, tly_consumer__on_rebalance, &c,
                                     err, sizeof(err));
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
        if (!tly_consumer__ensure_pg(&c)) {
            rd_kafka_message_t *rkm = rd_kafka_consumer_poll(c.rk, 0); /* keep group membership alive */
            if (rkm != NULL) {
                rd_kafka_message_destroy(rkm);
                c.refetch = true; /* librdkafka's fetch position is past it now */
            }
            tly_retry_backoff(&delay, cfg->stop);
            continue;
        }
        delay = 0;
        if (c.refetch) {
            reseek_live(&c);
            c.refetch = false;
        }
        tly_consumer__reclaim_fenced(&c);
        int n = tly_consumer__gather(&c, msgs);
        if (n > 0) {
            if (!tly_consumer__skip_ignored(&c, msgs, n) && process_batch(&c, msgs, n))
                reseek_live(&c);
            tly_consumer__msgs_clear(msgs, n);
        }
        tly_consumer__flush_unsaved(&c, false);
        for (int i = 0; i < c.nparts; ++i)
            if (c.parts[i].assigned)
                tly_worker_admin_lag(c.rk, handler->name, cfg->topic, i, c.parts[i].next_offset);
    }
    if (!tly_pg_broken(c.conn))
        tly_consumer__flush_unsaved(&c, true);
    rd_kafka_consumer_close(c.rk); /* leaves the group; revocation runs on_rebalance */
    rd_kafka_destroy(c.rk);
    if (c.conn != NULL)
        PQfinish(c.conn);
    consumer_free(&c, msgs);
    tly_log(TLY_LOG_INFO, "consumer stopped", "consumer", handler->name, NULL);
    return 0;
}
