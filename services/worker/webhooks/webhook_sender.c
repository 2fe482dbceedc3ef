/*
 * Sending webhook deliveries: one thread, one libcurl multi handle, one
 * PostgreSQL connection (LISTEN tally_webhooks on it too).
 *
 * The loop: record the attempts that finished (one transaction for all of
 * them), claim due deliveries when there are free slots, then let curl run
 * and wait in curl_multi_poll on curl's sockets and the PostgreSQL socket
 * (a NOTIFY wakes it) until the next due time.
 *
 * Claiming is one statement: pending rows due now, of enabled and undeleted
 * endpoints, at most `per_endpoint` minus what is in flight here per endpoint,
 * oldest first, locked FOR UPDATE SKIP LOCKED and leased by moving
 * next_attempt_at to now() + timeout + margin. A worker killed mid-attempt
 * leaves the row pending with that lease: it is due again when the lease ends
 * (at least once). Several workers never claim the same row at the same time.
 * The lease value itself is the claim's token: a result is recorded only
 * WHERE next_attempt_at still equals it, so an attempt whose lease ran out (or
 * that an operator reset for a replay meanwhile) changes nothing.
 *
 * Isolation between endpoints: the per-endpoint cap bounds what one endpoint
 * can hold of the global slots, and the claim ranks rows per endpoint, so a
 * backlog of one endpoint never hides another's due rows; a slow endpoint only
 * ever waits on itself.
 */
#include "webhook_sender_internal.h"

/* --- small helpers --------------------------------------------------------- */

double
tly_webhook_sender__rnd01(sender_t *s)
{
    uint64_t x = s->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s->rng = x;
    return (double)(x >> 11) / 9007199254740992.0; /* 2^53 */
}

bool
tly_webhook_sender__ensure_pg(sender_t *s)
{
    int r = tly_pgx_ensure(&s->conn, &s->pg_up, s->cfg->pg_dsn, "LISTEN tally_webhooks", "webhook-sender");
    if (r == 1)
        s->wake = true; /* notifications sent while we were away are lost */
    return r >= 0;
}

void
tly_webhook_sender__rollback(sender_t *s)
{
    char ignored[128];
    if (!tly_pg_broken(s->conn) && PQtransactionStatus(s->conn) != PQTRANS_IDLE)
        (void)!tly_pg_exec(s->conn, "ROLLBACK", ignored, sizeof(ignored));
}

static ep_count_t *
ep_find(sender_t *s, const char *endpoint)
{
    for (int i = 0; i < s->neps; ++i)
        if (strcmp(s->eps[i].endpoint, endpoint) == 0)
            return &s->eps[i];
    return NULL;
}

void
tly_webhook_sender__ep_add(sender_t *s, const char *endpoint)
{
    ep_count_t *e = ep_find(s, endpoint);
    if (e == NULL) {
        e = &s->eps[s->neps++]; /* at most max_in_flight distinct endpoints */
        snprintf(e->endpoint, sizeof(e->endpoint), "%s", endpoint);
        e->n = 0;
    }
    e->n++;
    s->in_flight++;
}

void
tly_webhook_sender__ep_remove(sender_t *s, const char *endpoint)
{
    ep_count_t *e = ep_find(s, endpoint);
    if (e == NULL)
        return;
    if (e->n-- >= s->cfg->per_endpoint)
        s->wake = true; /* it was full: its due rows can be claimed again */
    if (e->n <= 0)
        *e = s->eps[--s->neps];
    s->in_flight--;
}

/*
 * The endpoints in flight here as PostgreSQL array literals: "{id,...}" and
 * their counts "{n,...}"; only the full ones (at the per-endpoint cap) when
 * `only_full`. Caller frees both.
 */
void
tly_webhook_sender__ep_arrays(sender_t *s, bool only_full, char **ids, char **counts)
{
    char *a = malloc((size_t)s->neps * (TLY_UUID_STR_LEN + 1) + 3), *b = malloc((size_t)s->neps * 12 + 3);
    if (a == NULL || b == NULL)
        abort();
    size_t na = 0, nb = 0;
    a[na++] = b[nb++] = '{';
    for (int i = 0; i < s->neps; ++i) {
        if (only_full && s->eps[i].n < s->cfg->per_endpoint)
            continue;
        na += (size_t)sprintf(a + na, "%s%s", na > 1 ? "," : "", s->eps[i].endpoint);
        nb += (size_t)sprintf(b + nb, "%s%d", nb > 1 ? "," : "", s->eps[i].n);
    }
    a[na++] = b[nb++] = '}';
    a[na] = b[nb] = '\0';
    *ids = a;
    *counts = b;
}

void
tly_webhook_sender__flight_free(flight_t *f)
{
    if (f == NULL)
        return;
    if (f->easy != NULL)
        curl_easy_cleanup(f->easy);
    curl_slist_free_all(f->headers);
    free(f->payload);
    free(f);
}

void
tly_webhook_sender__flying_unlink(sender_t *s, flight_t *f)
{
    if (f->prev != NULL)
        f->prev->next = f->next;
    else if (s->flying == f)
        s->flying = f->next;
    if (f->next != NULL)
        f->next->prev = f->prev;
    f->prev = f->next = NULL;
}

/* --- periodic work --------------------------------------------------------- */

/*
 * Disables endpoints whose every attempt failed for the whole window (also
 * those no attempt touches any more), and fails the pending deliveries of
 * deleted endpoints.
 */
static void
sweep(sender_t *s)
{
    char err[512], window_s[24];
    snprintf(window_s, sizeof(window_s), "%" PRId64, s->window_ms);
    const char *vals[] = {window_s};
    PGresult *res = tly_pgx_query(s->conn, "find failing webhook endpoints",
                                  "SELECT id FROM webhook_endpoints WHERE enabled AND deleted_at IS NULL AND "
                                  "failing_since <= now() - $1::bigint * interval '1 millisecond' LIMIT 100",
                                  1, vals, err, sizeof(err));
    if (res == NULL)
        return;
    for (int i = 0; i < PQntuples(res); ++i) {
        bool disabled = false;
        const char *ep = PQgetvalue(res, i, 0);
        if (tly_pg_exec(s->conn, "BEGIN", err, sizeof(err)) != 0 ||
            tly_webhook_sender__disable_endpoint(s, ep, "failing", &disabled, err, sizeof(err)) ||
            tly_pg_exec(s->conn, "COMMIT", err, sizeof(err)) != 0) {
            tly_webhook_sender__rollback(s);
            tly_log(TLY_LOG_ERROR, "could not disable a failing webhook endpoint", "consumer", "webhook-sender", "error", err,
                    NULL);
            break;
        }
        if (disabled)
            tly_webhook_sender__log_disabled(ep, "failing");
    }
    PQclear(res);
    /* a deleted endpoint is never sent to again: its pending rows would only weigh on every claim */
    if (tly_pgx_exec(s->conn, "fail the deliveries of deleted webhook endpoints",
                     "UPDATE webhook_deliveries d SET status = 'failed', next_attempt_at = NULL, last_error = 'endpoint deleted', "
                     "updated_at = now() FROM webhook_endpoints e WHERE e.id = d.endpoint_id AND e.deleted_at IS NOT NULL "
                     "AND d.status = 'pending'",
                     0, NULL, NULL, err, sizeof(err)) != 0)
        tly_log(TLY_LOG_ERROR, "could not fail the deliveries of deleted webhook endpoints", "consumer", "webhook-sender", "error",
                err, NULL);
}

static void
report_pending(sender_t *s)
{
    char err[256];
    PGresult *res = tly_pgx_query(s->conn, "count pending webhook deliveries",
                                  "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'", 0, NULL, err, sizeof(err));
    if (res == NULL)
        return;
    tly_gauge_set(tly_metric_s0(s->m_pending), (double)strtoll(PQgetvalue(res, 0, 0), NULL, 10));
    PQclear(res);
}

static void
drain_notifications(sender_t *s)
{
    if (s->conn == NULL || PQconsumeInput(s->conn) == 0)
        return;
    PGnotify *n;
    while ((n = PQnotifies(s->conn)) != NULL) {
        s->wake = true;
        PQfreemem(n);
    }
}

/* --- the loop -------------------------------------------------------------- */

static void
register_metrics(sender_t *s)
{
    static const double bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30};
    tly_metrics_t *reg = tly_metrics_default();
    s->m_attempts =
        tly_metrics_counter(reg, "tally_webhook_attempts_total",
                            "Webhook attempts by result: 2xx, 3xx, 4xx, 5xx, timeout, refused (SSRF), error.", "result", 16);
    s->m_deliveries = tly_metrics_counter(reg, "tally_webhook_deliveries_total",
                                          "Webhook deliveries finished, by outcome: succeeded, failed (attempts exhausted or "
                                          "endpoint disabled), gone (410).",
                                          "outcome", 8);
    s->m_latency = tly_metrics_histogram(reg, "tally_webhook_attempt_duration_seconds",
                                         "Duration of webhook attempts that reached the network.", "", 1, bounds,
                                         sizeof(bounds) / sizeof(bounds[0]));
    s->m_pending =
        tly_metrics_gauge(reg, "tally_webhook_pending", "Webhook deliveries pending (due, scheduled or in flight).", "", 1);
    s->m_in_flight = tly_metrics_gauge(reg, "tally_webhook_in_flight", "Webhook attempts in flight in this worker.", "", 1);
}

static int
sender_init(sender_t *s, const tly_webhook_sender_config_t *cfg)
{
    memset(s, 0, sizeof(*s));
    s->cfg = cfg;
    s->pg_up = true;
    s->wake = true;
    s->multi = curl_multi_init();
    if (s->multi == NULL)
        return -1;
    s->eps = calloc((size_t)cfg->max_in_flight + 1, sizeof(*s->eps));
    s->done = calloc((size_t)cfg->max_in_flight + 1, sizeof(*s->done));
    if (s->eps == NULL || s->done == NULL)
        abort();
    int64_t scale = cfg->time_scale < 1 ? 1 : cfg->time_scale;
    int64_t margin = 60000 / scale;
    s->lease_ms = cfg->timeout_ms + (margin < 1000 ? 1000 : margin);
    s->window_ms = TLY_WEBHOOK_DISABLE_AFTER_US / 1000 / scale;
    tly_random_bytes(&s->rng, sizeof(s->rng));
    s->rng |= 1;
    register_metrics(s);
    return 0;
}

/* One turn of bookkeeping with PostgreSQL: record, claim, sweep. */
static void
pg_turn(sender_t *s, bool stopping)
{
    char err[1024];
    int64_t now = tly_clock_mono_us();
    if (now < s->next_connect_mono)
        return;
    if (!tly_webhook_sender__ensure_pg(s)) { /* curl keeps running what is in flight; its results wait */
        s->connect_delay_ms = s->connect_delay_ms == 0 ? 50 : s->connect_delay_ms * 2 > 5000 ? 5000 : s->connect_delay_ms * 2;
        s->next_connect_mono = now + s->connect_delay_ms * 1000LL;
        if (s->next_record_mono < s->next_connect_mono)
            s->next_record_mono = s->next_connect_mono;
        return;
    }
    s->connect_delay_ms = 0;
    drain_notifications(s);
    if (s->ndone > 0 && now >= s->next_record_mono) {
        if (tly_webhook_sender__record_done(s, err, sizeof(err)) != 0) {
            bool transient = tly_pgx_last_transient(s->conn);
            tly_log(TLY_LOG_ERROR, transient ? "could not record webhook attempts, retrying" : "could not record webhook attempts",
                    "consumer", "webhook-sender", "error", err, NULL);
            if (!transient) { /* never recordable: drop them; their leases end and they are sent again */
                for (int i = 0; i < s->ndone; ++i)
                    tly_webhook_sender__flight_free(s->done[i]);
                s->ndone = 0;
            }
            s->record_delay_ms = s->record_delay_ms == 0 ? 50 : s->record_delay_ms * 2 > 5000 ? 5000 : s->record_delay_ms * 2;
            s->next_record_mono = now + s->record_delay_ms * 1000LL;
            return;
        }
        s->record_delay_ms = 0;
    }
    if (stopping)
        return;
    if (s->in_flight < s->cfg->max_in_flight && (s->wake || now >= s->next_claim_mono) && s->ndone == 0) {
        if (tly_webhook_sender__claim(s, err, sizeof(err)) < 0) {
            tly_log(TLY_LOG_ERROR, "could not claim webhook deliveries", "consumer", "webhook-sender", "error", err, NULL);
            s->next_claim_mono = now + IDLE_POLL_MS * 1000LL;
            s->wake = false;
        }
    }
    if (now >= s->next_sweep_mono) {
        int64_t every_ms = s->window_ms / 50;
        every_ms = every_ms < 100 ? 100 : every_ms > 60000 ? 60000 : every_ms;
        s->next_sweep_mono = now + every_ms * 1000;
        sweep(s);
    }
    if (now >= s->next_pending_mono) {
        s->next_pending_mono = now + PENDING_REPORT_US;
        report_pending(s);
    }
    /* libpq queued the notifications that came during our statements: the socket will not wake us for them */
    drain_notifications(s);
}

/* How long curl_multi_poll may sleep: until the next thing to do with PostgreSQL, or what curl asks. */
static int
poll_ms(sender_t *s)
{
    int64_t now = tly_clock_mono_us();
    int64_t until = !s->pg_up ? s->next_connect_mono : s->ndone > 0 ? s->next_record_mono : s->wake ? now : s->next_claim_mono;
    if (s->next_sweep_mono < until)
        until = s->next_sweep_mono;
    int64_t ms = (until - now + 999) / 1000;
    long curl_ms = -1;
    curl_multi_timeout(s->multi, &curl_ms);
    if (curl_ms >= 0 && curl_ms < ms)
        ms = curl_ms;
    return ms < 0 ? 0 : ms > IDLE_POLL_MS ? IDLE_POLL_MS : (int)ms;
}

int
tly_webhook_sender_run(const tly_webhook_sender_config_t *cfg)
{
    sender_t s;
    if (sender_init(&s, cfg) != 0) {
        tly_log(TLY_LOG_ERROR, "could not start the webhook sender: curl_multi_init failed", "consumer", "webhook-sender", NULL);
        return -1;
    }
    int64_t stop_deadline = 0;
    int delay = 0;
    for (;;) {
        bool stopping = atomic_load(cfg->stop);
        if (stopping && stop_deadline == 0)
            stop_deadline = tly_clock_mono_us() + (cfg->timeout_ms + 1000) * 1000;
        if (stopping && ((s.in_flight == 0 && s.ndone == 0) || tly_clock_mono_us() > stop_deadline))
            break;
        pg_turn(&s, stopping);
        if (!s.pg_up && s.in_flight == 0) {
            tly_retry_backoff(&delay, cfg->stop);
            continue;
        }
        delay = 0;
        int running = 0;
        curl_multi_perform(s.multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(s.multi, &left)) != NULL)
            if (m->msg == CURLMSG_DONE)
                tly_webhook_sender__finished(&s, m->easy_handle, m->data.result);
        tly_gauge_set(tly_metric_s0(s.m_in_flight), (double)s.in_flight);
        if (s.ndone > 0 && tly_clock_mono_us() >= s.next_record_mono)
            continue;
        struct curl_waitfd pfd = {.fd = s.conn != NULL ? PQsocket(s.conn) : -1, .events = CURL_WAIT_POLLIN};
        curl_multi_poll(s.multi, pfd.fd >= 0 ? &pfd : NULL, pfd.fd >= 0 ? 1 : 0, poll_ms(&s), NULL);
    }
    for (int i = 0; i < s.ndone; ++i)
        tly_webhook_sender__flight_free(s.done[i]);
    /* attempts still in flight after the grace period: their leases end, they are sent again */
    while (s.flying != NULL) {
        flight_t *f = s.flying;
        tly_webhook_sender__flying_unlink(&s, f);
        curl_multi_remove_handle(s.multi, f->easy);
        tly_webhook_sender__flight_free(f);
    }
    curl_multi_cleanup(s.multi);
    if (s.conn != NULL)
        PQfinish(s.conn);
    free(s.eps);
    free(s.done);
    tly_log(TLY_LOG_INFO, "webhook sender stopped", "consumer", "webhook-sender", NULL);
    return 0;
}
