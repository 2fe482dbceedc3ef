/*
 * Internal to the webhook sender (webhook_sender.h): its state and the functions its files share
 * (tly_webhook_sender__*). webhook_sender.c: the loop and periodic work; webhook_attempt.c: one
 * attempt with libcurl; webhook_claim.c: claiming due deliveries, disabling endpoints;
 * webhook_record.c: recording attempts and rescheduling.
 */
#ifndef TALLY_WORKER_WEBHOOK_SENDER_INTERNAL_H
#define TALLY_WORKER_WEBHOOK_SENDER_INTERNAL_H

#include "webhook_sender.h"
#include "webhook.h"
#include "runtime/retry.h"
#include "tally/pgx.h"
#include "outbox/outbox.h"
#include "tally/clock.h"
#include "tally/log.h"
#include "tally/metrics.h"
#include "tally/pg.h"
#include "tally/webhook_url.h"
#include <inttypes.h>
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

/* webhook_sender.c */
double tly_webhook_sender__rnd01(sender_t *s);
bool tly_webhook_sender__ensure_pg(sender_t *s);
void tly_webhook_sender__rollback(sender_t *s);
void tly_webhook_sender__ep_add(sender_t *s, const char *endpoint);
void tly_webhook_sender__ep_remove(sender_t *s, const char *endpoint);
void tly_webhook_sender__ep_arrays(sender_t *s, bool only_full, char **ids, char **counts);
void tly_webhook_sender__flight_free(flight_t *f);
void tly_webhook_sender__flying_unlink(sender_t *s, flight_t *f);

/* webhook_attempt.c */
void tly_webhook_sender__start(sender_t *s, PGresult *res, int row);
void tly_webhook_sender__finished(sender_t *s, CURL *e, CURLcode code);

/* webhook_claim.c */
int tly_webhook_sender__claim(sender_t *s, char *err, size_t errcap);

/* webhook_claim.c */
int tly_webhook_sender__disable_endpoint(sender_t *s, const char *endpoint, const char *reason, bool *disabled, char *err,
                                         size_t errcap);
void tly_webhook_sender__log_disabled(const char *endpoint, const char *reason);

/* webhook_record.c */
int tly_webhook_sender__record_done(sender_t *s, char *err, size_t errcap);

#endif
