/* The webhook sender: claiming due deliveries under a lease, disabling an endpoint. See webhook_sender_internal.h. */
#include "webhook_sender_internal.h"

/* --- claiming -------------------------------------------------------------- */

static const char claim_sql[] =
    "WITH ranked AS ("
    "  SELECT d.id, d.endpoint_id, d.next_attempt_at,"
    "         row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at, d.id) AS rn"
    "  FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id"
    "  WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND e.enabled AND e.deleted_at IS NULL"
    "    AND NOT (d.endpoint_id = ANY($6::uuid[]))" /* full here: their backlog is filtered, never sorted */
    "), picked AS ("
    "  SELECT r.id FROM ranked r LEFT JOIN unnest($1::uuid[], $2::int[]) AS busy(endpoint_id, n)"
    "    ON busy.endpoint_id = r.endpoint_id"
    "  WHERE r.rn <= $3::int - COALESCE(busy.n, 0) ORDER BY r.next_attempt_at LIMIT $4::int"
    "), locked AS ("
    "  SELECT d.id FROM webhook_deliveries d JOIN picked USING (id)"
    "  WHERE d.status = 'pending' AND d.next_attempt_at <= now() FOR UPDATE OF d SKIP LOCKED"
    ") "
    "UPDATE webhook_deliveries d SET next_attempt_at = now() + $5::bigint * interval '1 millisecond', updated_at = now() "
    "FROM locked l, webhook_endpoints e WHERE d.id = l.id AND e.id = d.endpoint_id "
    "RETURNING d.id, d.endpoint_id, d.attempts, d.payload, e.url, e.secret,"
    "  CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END, " US_OF(
        "d.next_attempt_at") ","
                             "  e.failing_since IS NOT NULL";

/*
 * Milliseconds until the next due row of an endpoint not in `full_ids` (<= 0:
 * one is due already, e.g. beyond an endpoint's remaining room;
 * IDLE_POLL_MS when there is none) into `*ms`. 0 or -1 with `err`.
 */
static int
next_due_ms(sender_t *s, const char *full_ids, int64_t *ms, char *err, size_t errcap)
{
    const char *vals[] = {full_ids};
    PGresult *res = tly_pgx_query(s->conn, "find the next due webhook delivery",
                                  "SELECT (extract(epoch FROM d.next_attempt_at - now()) * 1000)::bigint "
                                  "FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id "
                                  "WHERE d.status = 'pending' AND e.enabled AND e.deleted_at IS NULL "
                                  "AND NOT (d.endpoint_id = ANY($1::uuid[])) ORDER BY d.next_attempt_at LIMIT 1",
                                  1, vals, err, errcap);
    if (res == NULL)
        return -1;
    *ms = PQntuples(res) == 1 ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : IDLE_POLL_MS;
    PQclear(res);
    return 0;
}

/* Claims what fits into the free slots and starts it. */
int
tly_webhook_sender__claim(sender_t *s, char *err, size_t errcap)
{
    char *ids, *counts;
    char cap[16], limit[16], lease[24];
    int free_slots = (int)s->cfg->max_in_flight - s->in_flight;
    char *full, *full_counts;
    tly_webhook_sender__ep_arrays(s, false, &ids, &counts);
    tly_webhook_sender__ep_arrays(s, true, &full, &full_counts);
    snprintf(cap, sizeof(cap), "%" PRId64, s->cfg->per_endpoint);
    snprintf(limit, sizeof(limit), "%d", free_slots);
    snprintf(lease, sizeof(lease), "%" PRId64, s->lease_ms);
    const char *vals[] = {ids, counts, cap, limit, lease, full};
    PGresult *res = tly_pgx_query(s->conn, "claim due webhook deliveries", claim_sql, 6, vals, err, errcap);
    free(ids);
    free(counts);
    free(full_counts);
    if (res == NULL) {
        free(full);
        return -1;
    }
    int n = PQntuples(res);
    for (int i = 0; i < n; ++i)
        tly_webhook_sender__start(s, res, i);
    PQclear(res);
    s->wake = false;
    if (n == free_slots) {
        free(full);
        s->next_claim_mono = tly_clock_mono_us(); /* there may be more as soon as a slot frees */
        return n;
    }
    /*
     * The next due row of an endpoint with room decides when to look again (a
     * full one wakes us when a slot frees, new rows with a NOTIFY, our own
     * retries when recorded). Asked at most every NEXT_DUE_EVERY_US: a busy
     * loop claims after every batch of answers and need not pay for it each time.
     */
    int64_t now = tly_clock_mono_us();
    if (now < s->next_due_query_mono) {
        free(full);
        if (s->next_claim_mono < now + MIN_CLAIM_GAP_MS * 1000) /* stale: look again when we may ask */
            s->next_claim_mono = s->next_due_query_mono;
        return n;
    }
    s->next_due_query_mono = now + NEXT_DUE_EVERY_US;
    int64_t ms = 0;
    free(full);
    tly_webhook_sender__ep_arrays(s, true, &full, &full_counts); /* full now, with what was just started */
    free(full_counts);
    int r = next_due_ms(s, full, &ms, err, errcap);
    free(full);
    if (r != 0)
        return -1;
    if (ms < MIN_CLAIM_GAP_MS)
        ms = MIN_CLAIM_GAP_MS; /* due but not ours to take now (locked elsewhere, or beyond an endpoint's room): no spin */
    if (ms > IDLE_POLL_MS)
        ms = IDLE_POLL_MS;
    s->next_claim_mono = tly_clock_mono_us() + ms * 1000;
    return n;
}

/* --- disabling an endpoint ------------------------------------------------- */

/*
 * Disables the endpoint (if still enabled), fails its pending deliveries and
 * records WebhookEndpointDisabled in the outbox, in the caller's transaction.
 * `*disabled` tells whether it did.
 */
int
tly_webhook_sender__disable_endpoint(sender_t *s, const char *endpoint, const char *reason, bool *disabled, char *err,
                                     size_t errcap)
{
    *disabled = false;
    const char *vals[] = {endpoint, reason};
    PGresult *res = tly_pgx_query(
        s->conn, "disable webhook endpoint",
        "UPDATE webhook_endpoints SET enabled = false, disabled_reason = $2, version = version + 1, updated_at = now() "
        "WHERE id = $1 AND enabled AND deleted_at IS NULL RETURNING tenant_id, url, version, " US_OF("failing_since"),
        2, vals, err, errcap);
    if (res == NULL)
        return -1;
    if (PQntuples(res) == 0) {
        PQclear(res);
        return 0;
    }
    tly_uuid_t ep, tenant;
    tly_envelope_t ev;
    int ret = -1;
    if (!tly_uuid_parse(endpoint, &ep) || !tly_uuid_parse(PQgetvalue(res, 0, 0), &tenant)) {
        snprintf(err, errcap, "could not disable webhook endpoint %s: bad ids", endpoint);
        PQclear(res);
        return -1;
    }
    tly_webhook_disabled_event(&ev, &ep, &tenant, strtoll(PQgetvalue(res, 0, 2), NULL, 10), PQgetvalue(res, 0, 1), reason,
                               strtoll(PQgetvalue(res, 0, 3), NULL, 10), tly_clock_now_us());
    PQclear(res);
    const char *fail_vals[] = {endpoint, reason};
    if (tly_pgx_exec(s->conn, "fail the pending deliveries of a disabled endpoint",
                     "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, "
                     "last_error = 'endpoint disabled: ' || $2, updated_at = now() WHERE endpoint_id = $1 AND status = 'pending'",
                     2, fail_vals, NULL, err, errcap) != 0)
        goto cleanup;
    if (tly_outbox_insert(s->conn, s->cfg->topic, "", &ev, err, errcap) != 0)
        goto cleanup;
    *disabled = true;
    ret = 0;
cleanup:
    tly_envelope_clear(&ev);
    return ret;
}

void
tly_webhook_sender__log_disabled(const char *endpoint, const char *reason)
{
    tly_log(TLY_LOG_WARN, "webhook endpoint disabled", "consumer", "webhook-sender", "endpoint_id", endpoint, "reason", reason,
            NULL);
}
