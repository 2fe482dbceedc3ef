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
#include "webhook_role.h"
#include "consumer.h" /* tly_backoff_sleep */
#include "pgx.h"
#include "roles.h" /* tly_outbox_insert */
#include "tally/clock.h"
#include "tally/log.h"
#include "tally/metrics.h"
#include "tally/pg.h"
#include "tally/secretbox.h"
#include "tally/webhook_url.h"

#include <inttypes.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#define US_OF(col) "COALESCE((extract(epoch FROM " col ") * 1000000)::bigint, 0)"
#define TS_OF(n) "('epoch'::timestamptz + $" #n "::bigint * interval '1 microsecond')"
#define IDLE_POLL_MS 1000
#define MIN_CLAIM_GAP_MS 10
#define NEXT_DUE_EVERY_US (100 * 1000LL)
#define PENDING_REPORT_US (5 * 1000000LL)
#define ERR_MAX 256

typedef struct st_sender_t sender_t;

typedef struct st_flight_t {
    sender_t *s;
    CURL *easy;
    struct curl_slist *headers;
    char id[TLY_UUID_STR_LEN + 1], endpoint[TLY_UUID_STR_LEN + 1];
    char lease[24]; /* next_attempt_at as claimed, in microseconds: the claim's token */
    char *payload;
    int attempt;      /* the number of this attempt (1 = first) */
    bool was_failing; /* the endpoint had failing_since set when claimed */
    int64_t started_us, started_mono_us;
    tly_webhook_guard_t guard; /* .refused: the SSRF rules refused the URL or an address */
    bool has_retry_after;      /* a parsable Retry-After came with the answer */
    int64_t retry_after_us;
    long status; /* HTTP status, 0 when none */
    int64_t latency_ms;
    char error[ERR_MAX]; /* "" on a 2xx */
    char errbuf[CURL_ERROR_SIZE];
    struct st_flight_t *prev, *next; /* in sender_t.flying while curl has it */
} flight_t;

typedef struct st_ep_count_t {
    char endpoint[TLY_UUID_STR_LEN + 1];
    int n;
} ep_count_t;

struct st_sender_t {
    const tly_webhook_sender_config_t *cfg;
    PGconn *conn;
    bool pg_up;
    CURLM *multi;
    int in_flight;
    ep_count_t *eps; /* endpoints with attempts in flight */
    int neps;
    flight_t *flying; /* attempts curl is running */
    flight_t **done;  /* finished attempts not recorded yet */
    int ndone;
    bool wake;                /* claim at the next turn (NOTIFY, a slot of a full endpoint freed) */
    int64_t next_claim_mono;  /* claim at the latest then (next due time) */
    int64_t next_record_mono; /* after a failed recording */
    int64_t next_sweep_mono;
    int64_t next_pending_mono;
    int record_delay_ms;
    int64_t next_connect_mono;   /* after a failed connection */
    int64_t next_due_query_mono; /* next_due_ms is asked at most this often */
    int connect_delay_ms;
    int64_t lease_ms, window_ms;
    uint64_t rng;
    tly_metric_t *m_attempts, *m_deliveries, *m_latency, *m_pending, *m_in_flight;
};

/* --- small helpers --------------------------------------------------------- */

static double
rnd01(sender_t *s)
{
    uint64_t x = s->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s->rng = x;
    return (double)(x >> 11) / 9007199254740992.0; /* 2^53 */
}

static bool
ensure_pg(sender_t *s)
{
    int r = tly_pgx_ensure(&s->conn, &s->pg_up, s->cfg->pg_dsn, "LISTEN tally_webhooks", "webhook-sender");
    if (r == 1)
        s->wake = true; /* notifications sent while we were away are lost */
    return r >= 0;
}

static void
rollback(sender_t *s)
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

static void
ep_add(sender_t *s, const char *endpoint)
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

static void
ep_remove(sender_t *s, const char *endpoint)
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
static void
ep_arrays(sender_t *s, bool only_full, char **ids, char **counts)
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

static void
flight_free(flight_t *f)
{
    if (f == NULL)
        return;
    if (f->easy != NULL)
        curl_easy_cleanup(f->easy);
    curl_slist_free_all(f->headers);
    free(f->payload);
    free(f);
}

static void
flying_unlink(sender_t *s, flight_t *f)
{
    if (f->prev != NULL)
        f->prev->next = f->next;
    else if (s->flying == f)
        s->flying = f->next;
    if (f->next != NULL)
        f->next->prev = f->prev;
    f->prev = f->next = NULL;
}

/* --- one attempt ----------------------------------------------------------- */

/* Every address curl is about to connect to passes the SSRF rules first (after DNS: rebinding cannot get around it). */
static curl_socket_t
on_open_socket(void *data, curlsocktype purpose, struct curl_sockaddr *a)
{
    tly_webhook_guard_t *g = data;
    if (!tly_webhook_addr_allowed(&a->addr, a->addrlen, g->allow_private)) {
        g->refused = true;
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

void
tly_webhook_curl_options(CURL *e, tly_webhook_guard_t *guard, int64_t timeout_ms)
{
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L); /* a 3xx is a failure, never followed */
    curl_easy_setopt(e, CURLOPT_PROXY, "");          /* never a proxy from the environment: it would bypass the address check */
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, guard->allow_private ? "http,https" : "https");
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, guard);
}

static size_t
on_header(char *buf, size_t size, size_t n, void *data)
{
    flight_t *f = data;
    size_t len = size * n;
    static const char name[] = "retry-after:";
    if (len > sizeof(name) - 1 && len < 128 && strncasecmp(buf, name, sizeof(name) - 1) == 0) {
        char v[128];
        memcpy(v, buf + sizeof(name) - 1, len - (sizeof(name) - 1));
        v[len - (sizeof(name) - 1)] = '\0';
        f->has_retry_after = tly_webhook_parse_retry_after(v, tly_clock_now_us(), &f->retry_after_us);
    }
    return len;
}

static size_t
on_body(char *buf, size_t size, size_t n, void *data)
{
    return size * n; /* the answer's body is not kept */
}

static void
finish_now(sender_t *s, flight_t *f, const char *error)
{
    snprintf(f->error, sizeof(f->error), "%s", error);
    ep_remove(s, f->endpoint);
    s->done[s->ndone++] = f;
}

static int
add_header(flight_t *f, const char *fmt, const char *v)
{
    char line[TLY_WEBHOOK_SIGNATURE_MAX + 64];
    snprintf(line, sizeof(line), fmt, v);
    struct curl_slist *l = curl_slist_append(f->headers, line);
    if (l == NULL)
        return -1;
    f->headers = l;
    return 0;
}

/* Starts the attempt of a claimed row (or finishes it at once when the URL or the secret is refused). */
static void
start(sender_t *s, PGresult *res, int row)
{
    char err[256], sig[TLY_WEBHOOK_SIGNATURE_MAX], ts[24];
    flight_t *f = calloc(1, sizeof(*f));
    if (f == NULL)
        abort();
    f->s = s;
    snprintf(f->id, sizeof(f->id), "%s", PQgetvalue(res, row, 0));
    snprintf(f->endpoint, sizeof(f->endpoint), "%s", PQgetvalue(res, row, 1));
    f->attempt = atoi(PQgetvalue(res, row, 2)) + 1;
    f->payload = strdup(PQgetvalue(res, row, 3));
    const char *url = PQgetvalue(res, row, 4), *secret = PQgetvalue(res, row, 5);
    const char *previous = PQgetisnull(res, row, 6) ? NULL : PQgetvalue(res, row, 6);
    snprintf(f->lease, sizeof(f->lease), "%s", PQgetvalue(res, row, 7));
    f->was_failing = strcmp(PQgetvalue(res, row, 8), "t") == 0;
    f->started_us = tly_clock_now_us();
    f->started_mono_us = tly_clock_mono_us();
    if (f->payload == NULL)
        abort();
    ep_add(s, f->endpoint);
    size_t len = strlen(f->payload);
    int64_t ts_s = f->started_us / 1000000;
    snprintf(ts, sizeof(ts), "%" PRId64, ts_s);
    if (tly_webhook_url_check(url, s->cfg->allow_private, false, err, sizeof(err)) != 0) {
        finish_now(s, f, err);
        f->guard.refused = true;
        return;
    }
    /* the secrets are sealed at rest (tally/secretbox.h), bound to the endpoint */
    char plain[TLY_SECRETBOX_SEALED_MAX], plain_prev[TLY_SECRETBOX_SEALED_MAX];
    if (tly_secretbox_open(secret, f->endpoint, plain, sizeof(plain), err, sizeof(err)) != 0 ||
        (previous != NULL && tly_secretbox_open(previous, f->endpoint, plain_prev, sizeof(plain_prev), err, sizeof(err)) != 0)) {
        finish_now(s, f, err);
        return;
    }
    int signed_ok = tly_webhook_signature_header(plain, previous != NULL ? plain_prev : NULL, f->id, ts_s, f->payload, len, sig,
                                                 sizeof(sig));
    OPENSSL_cleanse(plain, sizeof(plain));
    OPENSSL_cleanse(plain_prev, sizeof(plain_prev));
    if (signed_ok != 0) {
        finish_now(s, f, "the endpoint's secret is malformed");
        return;
    }
    if (add_header(f, "Content-Type: %s", "application/json") != 0 || add_header(f, "webhook-id: %s", f->id) != 0 ||
        add_header(f, "webhook-timestamp: %s", ts) != 0 || add_header(f, "webhook-signature: %s", sig) != 0 ||
        add_header(f, "User-Agent: %s", "Tally-Webhooks/1") != 0 || add_header(f, "Expect:%s", "") != 0)
        abort();
    f->easy = curl_easy_init();
    if (f->easy == NULL)
        abort();
    CURL *e = f->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, f);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, f->payload);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, f->headers);
    f->guard.allow_private = s->cfg->allow_private;
    tly_webhook_curl_options(e, &f->guard, s->cfg->timeout_ms);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, f);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, f->errbuf);
    if (curl_multi_add_handle(s->multi, e) != CURLM_OK) {
        finish_now(s, f, "could not start the request");
        return;
    }
    f->next = s->flying; /* kept to free what is still in flight at exit */
    if (s->flying != NULL)
        s->flying->prev = f;
    s->flying = f;
}

/* An attempt curl finished: its outcome, moved to the done list. */
static void
finished(sender_t *s, CURL *e, CURLcode code)
{
    flight_t *f = NULL;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&f);
    curl_multi_remove_handle(s->multi, e);
    f->latency_ms = (tly_clock_mono_us() - f->started_mono_us) / 1000;
    if (code == CURLE_OK) {
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &f->status);
        if (f->status < 200 || f->status > 299)
            snprintf(f->error, sizeof(f->error), "HTTP %ld", f->status);
    } else if (f->guard.refused) {
        snprintf(f->error, sizeof(f->error), "refused: the address is not allowed (private, loopback, link-local or reserved)");
    } else if (code == CURLE_OPERATION_TIMEDOUT) {
        snprintf(f->error, sizeof(f->error), "timeout after %" PRId64 " ms", s->cfg->timeout_ms);
    } else {
        snprintf(f->error, sizeof(f->error), "%s", f->errbuf[0] != '\0' ? f->errbuf : curl_easy_strerror(code));
    }
    flying_unlink(s, f);
    ep_remove(s, f->endpoint);
    s->done[s->ndone++] = f;
}

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
static int
claim(sender_t *s, char *err, size_t errcap)
{
    char *ids, *counts;
    char cap[16], limit[16], lease[24];
    int free_slots = (int)s->cfg->max_in_flight - s->in_flight;
    char *full, *full_counts;
    ep_arrays(s, false, &ids, &counts);
    ep_arrays(s, true, &full, &full_counts);
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
        start(s, res, i);
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
    ep_arrays(s, true, &full, &full_counts); /* full now, with what was just started */
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
static int
disable_endpoint(sender_t *s, const char *endpoint, const char *reason, bool *disabled, char *err, size_t errcap)
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

static void
log_disabled(const char *endpoint, const char *reason)
{
    tly_log(TLY_LOG_WARN, "webhook endpoint disabled", "consumer", "webhook-sender", "endpoint_id", endpoint, "reason", reason,
            NULL);
}

/* --- recording attempts ---------------------------------------------------- */

typedef struct st_outcome_t {
    bool ok, gone, final;
    int64_t delay_us;
} outcome_t;

static outcome_t
judge(sender_t *s, const flight_t *f)
{
    outcome_t o = {.ok = f->status >= 200 && f->status <= 299 && f->error[0] == '\0'};
    if (o.ok)
        return o;
    o.gone = f->status == 410;
    o.delay_us = tly_webhook_retry_delay_us(f->attempt, rnd01(s), s->cfg->time_scale);
    if (o.delay_us >= 0 && (f->status == 429 || f->status == 503) && f->has_retry_after && f->retry_after_us > o.delay_us)
        o.delay_us = f->retry_after_us; /* never earlier than the receiver asked */
    o.final = o.gone || o.delay_us < 0;
    return o;
}

/* A growing PostgreSQL array literal: {"a","b",NULL}. */
typedef struct st_arr_t {
    char *p;
    size_t n, cap;
} arr_t;

static void
arr_put(arr_t *a, const char *s, size_t len)
{
    if (a->n + len + 3 > a->cap) {
        a->cap = (a->n + len + 3) * 2;
        a->p = realloc(a->p, a->cap);
        if (a->p == NULL)
            abort();
    }
    memcpy(a->p + a->n, s, len);
    a->n += len;
    a->p[a->n] = '\0';
}

/* Appends one element (NULL: SQL NULL), quoted and escaped. */
static void
arr_add(arr_t *a, const char *v)
{
    arr_put(a, a->n == 0 ? "{" : ",", 1);
    if (v == NULL) {
        arr_put(a, "NULL", 4);
        return;
    }
    arr_put(a, "\"", 1);
    for (const char *c = v; *c != '\0'; ++c) {
        if (*c == '"' || *c == '\\')
            arr_put(a, "\\", 1);
        arr_put(a, c, 1);
    }
    arr_put(a, "\"", 1);
}

static const char *
arr_done(arr_t *a)
{
    arr_put(a, a->n == 0 ? "{}" : "}", a->n == 0 ? 2 : 1);
    return a->p;
}

/*
 * Records every attempt of the batch with one statement: each delivery's new
 * state WHERE its lease is still ours, and an attempt row for each one that
 * matched. `recorded[i]` tells which (a lost lease records nothing).
 */
static int
record_attempts(sender_t *s, const outcome_t *o, bool *recorded, char *err, size_t errcap)
{
    arr_t a[9];
    char num[32];
    memset(a, 0, sizeof(a));
    for (int i = 0; i < s->ndone; ++i) {
        const flight_t *f = s->done[i];
        arr_add(&a[0], f->id);
        arr_add(&a[1], f->lease);
        arr_add(&a[2], o[i].ok ? "succeeded" : o[i].final ? "failed" : "pending");
        snprintf(num, sizeof(num), "%" PRId64, o[i].delay_us < 0 ? 0 : o[i].delay_us);
        arr_add(&a[3], num);
        snprintf(num, sizeof(num), "%ld", f->status);
        arr_add(&a[4], f->status > 0 ? num : NULL);
        arr_add(&a[5], f->error[0] != '\0' ? f->error : NULL);
        snprintf(num, sizeof(num), "%d", f->attempt);
        arr_add(&a[6], num);
        snprintf(num, sizeof(num), "%" PRId64, f->started_us);
        arr_add(&a[7], num);
        snprintf(num, sizeof(num), "%" PRId64, f->latency_ms);
        arr_add(&a[8], num);
    }
    const char *vals[9];
    for (int k = 0; k < 9; ++k)
        vals[k] = arr_done(&a[k]);
    PGresult *res = tly_pgx_query(
        s->conn, "record webhook attempts",
        "WITH r AS (SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bigint[], $5::int[], $6::text[], $7::int[], "
        "  $8::bigint[], $9::int[]) AS r(id, lease, status, delay_us, code, error, attempt, started_us, latency_ms)), "
        "u AS (UPDATE webhook_deliveries d SET status = r.status, attempts = d.attempts + 1, "
        "  next_attempt_at = CASE WHEN r.status = 'pending' THEN now() + r.delay_us * interval '1 microsecond' END, "
        "  last_status_code = r.code, last_error = r.error, updated_at = now() FROM r "
        "  WHERE d.id = r.id AND d.status = 'pending' AND d.next_attempt_at = 'epoch'::timestamptz + r.lease * interval "
        "'1 microsecond' RETURNING d.id) "
        "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, status_code, latency_ms, error) "
        "SELECT r.id, r.attempt, 'epoch'::timestamptz + r.started_us * interval '1 microsecond', r.code, r.latency_ms, r.error "
        "FROM r JOIN u ON u.id = r.id ON CONFLICT DO NOTHING RETURNING delivery_id",
        9, vals, err, errcap);
    for (int k = 0; k < 9; ++k)
        free(a[k].p);
    if (res == NULL)
        return -1;
    for (int i = 0; i < s->ndone; ++i) {
        recorded[i] = false;
        for (int r = 0; r < PQntuples(res) && !recorded[i]; ++r)
            recorded[i] = strcmp(PQgetvalue(res, r, 0), s->done[i]->id) == 0;
    }
    PQclear(res);
    return 0;
}

/* Endpoints that answered 2xx are healthy again: one statement. */
static int
mark_healthy(sender_t *s, const outcome_t *o, const bool *recorded, char *err, size_t errcap)
{
    arr_t ids;
    memset(&ids, 0, sizeof(ids));
    for (int i = 0; i < s->ndone; ++i)
        if (o[i].ok && recorded[i] && s->done[i]->was_failing)
            arr_add(&ids, s->done[i]->endpoint); /* repeats are harmless */
    if (ids.n == 0)
        return 0;
    const char *vals[] = {arr_done(&ids)};
    int ret = tly_pgx_exec(s->conn, "mark webhook endpoints healthy",
                           "UPDATE webhook_endpoints SET failing_since = NULL, version = version + 1, updated_at = now() "
                           "WHERE id = ANY($1::uuid[]) AND failing_since IS NOT NULL",
                           1, vals, NULL, err, errcap);
    free(ids.p);
    return ret;
}

/* A failed attempt: 410 disables the endpoint; otherwise it is failing since then, and disabled once that is too long. */
static int
mark_failing(sender_t *s, const flight_t *f, const outcome_t *o, bool *disabled, char *err, size_t errcap)
{
    char started_s[24], window_s[24];
    *disabled = false;
    if (o->gone)
        return disable_endpoint(s, f->endpoint, "gone", disabled, err, errcap);
    snprintf(started_s, sizeof(started_s), "%" PRId64, f->started_us);
    snprintf(window_s, sizeof(window_s), "%" PRId64, s->window_ms);
    const char *vals[] = {f->endpoint, started_s, window_s};
    PGresult *res = tly_pgx_query(s->conn, "mark webhook endpoint failing",
                                  "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, " TS_OF(
                                      2) "), "
                                         /* the query API's ETag is the version: a change readers see bumps it */
                                         "version = version + (failing_since IS NULL)::int, "
                                         "updated_at = CASE WHEN failing_since IS NULL THEN now() ELSE updated_at END "
                                         "WHERE id = $1 AND enabled AND deleted_at IS NULL AND (failing_since IS NULL OR "
                                         "failing_since <= now() - $3::bigint * interval '1 millisecond') "
                                         "RETURNING failing_since <= now() - $3::bigint * interval '1 millisecond'",
                                  3, vals, err, errcap);
    if (res == NULL)
        return -1;
    bool too_long = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return too_long ? disable_endpoint(s, f->endpoint, "failing", disabled, err, errcap) : 0;
}

static int
by_endpoint(const void *a, const void *b)
{
    return strcmp((*(flight_t *const *)a)->endpoint, (*(flight_t *const *)b)->endpoint);
}

static void
count(sender_t *s, const flight_t *f, const outcome_t *o)
{
    const char *result = f->status >= 200 && f->status <= 299   ? "2xx"
                         : f->status >= 300 && f->status <= 399 ? "3xx"
                         : f->status >= 400 && f->status <= 499 ? "4xx"
                         : f->status >= 500                     ? "5xx"
                         : f->guard.refused                     ? "refused"
                         : strncmp(f->error, "timeout", 7) == 0 ? "timeout"
                                                                : "error";
    tly_counter_add(tly_metric_s1(s->m_attempts, result), 1);
    if (f->status > 0 || !f->guard.refused)
        tly_histogram_observe(tly_metric_s0(s->m_latency), (double)f->latency_ms / 1000.0);
    if (o->ok || o->final)
        tly_counter_add(tly_metric_s1(s->m_deliveries, o->ok ? "succeeded" : o->gone ? "gone" : "failed"), 1);
}

/*
 * Records every finished attempt in one transaction (three statements when
 * all succeeded), endpoints in order (two workers touching the same
 * endpoints lock them in the same order). Kept for a later try when
 * PostgreSQL fails; the attempts' leases keep other workers away meanwhile.
 */
static int
record_done(sender_t *s, char *err, size_t errcap)
{
    outcome_t *o = calloc((size_t)s->ndone, sizeof(*o));
    bool *disabled = calloc((size_t)s->ndone, sizeof(bool)), *recorded = calloc((size_t)s->ndone, sizeof(bool));
    if (o == NULL || disabled == NULL || recorded == NULL)
        abort();
    qsort(s->done, (size_t)s->ndone, sizeof(*s->done), by_endpoint);
    for (int i = 0; i < s->ndone; ++i)
        o[i] = judge(s, s->done[i]);
    /* all succeeded at endpoints that were healthy: the one statement is the transaction */
    bool simple = true;
    for (int i = 0; i < s->ndone && simple; ++i)
        simple = o[i].ok && !s->done[i]->was_failing;
    int ret = -1;
    tly_pgx_reset_last();
    if ((!simple && tly_pg_exec(s->conn, "BEGIN", err, errcap) != 0) || record_attempts(s, o, recorded, err, errcap) != 0 ||
        mark_healthy(s, o, recorded, err, errcap) != 0)
        goto cleanup;
    for (int i = 0; i < s->ndone; ++i) {
        if (!recorded[i]) {
            tly_log(TLY_LOG_WARN, "webhook attempt not recorded: its lease ended or the delivery was reset meanwhile", "consumer",
                    "webhook-sender", "delivery_id", s->done[i]->id, NULL);
            continue;
        }
        if (!o[i].ok && mark_failing(s, s->done[i], &o[i], &disabled[i], err, errcap) != 0)
            goto cleanup;
    }
    if (!simple && tly_pg_exec(s->conn, "COMMIT", err, errcap) != 0)
        goto cleanup;
    int64_t now = tly_clock_mono_us();
    for (int i = 0; i < s->ndone; ++i) {
        if (!o[i].ok && !o[i].final && now + o[i].delay_us < s->next_claim_mono)
            s->next_claim_mono = now + o[i].delay_us; /* our own retry: we know when it is due */
        count(s, s->done[i], &o[i]);
        if (disabled[i])
            log_disabled(s->done[i]->endpoint, o[i].gone ? "gone" : "failing");
        flight_free(s->done[i]);
    }
    s->ndone = 0;
    ret = 0;
cleanup:
    if (ret != 0)
        rollback(s);
    free(o);
    free(disabled);
    free(recorded);
    return ret;
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
            disable_endpoint(s, ep, "failing", &disabled, err, sizeof(err)) ||
            tly_pg_exec(s->conn, "COMMIT", err, sizeof(err)) != 0) {
            rollback(s);
            tly_log(TLY_LOG_ERROR, "could not disable a failing webhook endpoint", "consumer", "webhook-sender", "error", err,
                    NULL);
            break;
        }
        if (disabled)
            log_disabled(ep, "failing");
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
    if (!ensure_pg(s)) { /* curl keeps running what is in flight; its results wait */
        s->connect_delay_ms = s->connect_delay_ms == 0 ? 50 : s->connect_delay_ms * 2 > 5000 ? 5000 : s->connect_delay_ms * 2;
        s->next_connect_mono = now + s->connect_delay_ms * 1000LL;
        if (s->next_record_mono < s->next_connect_mono)
            s->next_record_mono = s->next_connect_mono;
        return;
    }
    s->connect_delay_ms = 0;
    drain_notifications(s);
    if (s->ndone > 0 && now >= s->next_record_mono) {
        if (record_done(s, err, sizeof(err)) != 0) {
            bool transient = tly_pgx_last_transient(s->conn);
            tly_log(TLY_LOG_ERROR, transient ? "could not record webhook attempts, retrying" : "could not record webhook attempts",
                    "consumer", "webhook-sender", "error", err, NULL);
            if (!transient) { /* never recordable: drop them; their leases end and they are sent again */
                for (int i = 0; i < s->ndone; ++i)
                    flight_free(s->done[i]);
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
        if (claim(s, err, sizeof(err)) < 0) {
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
            tly_backoff_sleep(&delay, cfg->stop);
            continue;
        }
        delay = 0;
        int running = 0;
        curl_multi_perform(s.multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(s.multi, &left)) != NULL)
            if (m->msg == CURLMSG_DONE)
                finished(&s, m->easy_handle, m->data.result);
        tly_gauge_set(tly_metric_s0(s.m_in_flight), (double)s.in_flight);
        if (s.ndone > 0 && tly_clock_mono_us() >= s.next_record_mono)
            continue;
        struct curl_waitfd pfd = {.fd = s.conn != NULL ? PQsocket(s.conn) : -1, .events = CURL_WAIT_POLLIN};
        curl_multi_poll(s.multi, pfd.fd >= 0 ? &pfd : NULL, pfd.fd >= 0 ? 1 : 0, poll_ms(&s), NULL);
    }
    for (int i = 0; i < s.ndone; ++i)
        flight_free(s.done[i]);
    /* attempts still in flight after the grace period: their leases end, they are sent again */
    while (s.flying != NULL) {
        flight_t *f = s.flying;
        flying_unlink(&s, f);
        curl_multi_remove_handle(s.multi, f->easy);
        flight_free(f);
    }
    curl_multi_cleanup(s.multi);
    if (s.conn != NULL)
        PQfinish(s.conn);
    free(s.eps);
    free(s.done);
    tly_log(TLY_LOG_INFO, "webhook sender stopped", "consumer", "webhook-sender", NULL);
    return 0;
}
