/*
 * The webhooks role's sender (a thread): claims due deliveries with a lease,
 * sends them with libcurl's multi interface, records each attempt and
 * reschedules, disables endpoints that are gone or failing. See
 * docs/webhooks.md.
 */
#ifndef TALLY_WORKER_WEBHOOK_SENDER_H
#define TALLY_WORKER_WEBHOOK_SENDER_H

#include <curl/curl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct st_tly_webhook_sender_config_t {
    const char *pg_dsn;
    const char *topic;     /* outbox topic of WebhookEndpointDisabled */
    bool allow_private;    /* loopback and private addresses, plain http (tests, local stacks) */
    int64_t timeout_ms;    /* one attempt, connection included */
    int64_t time_scale;    /* divides the retry schedule, the lease margin and the disable window */
    int64_t per_endpoint;  /* attempts in flight per endpoint, per worker */
    int64_t max_in_flight; /* attempts in flight per worker */
    atomic_bool *stop;
} tly_webhook_sender_config_t;

/* The connect-time address check of one transfer. */
typedef struct st_tly_webhook_guard_t {
    bool allow_private;
    bool refused; /* set when an address curl was about to connect to was refused */
} tly_webhook_guard_t;

/**
 * Sets the transport options every attempt uses on `e`: `timeout_ms` in all,
 * no redirects, no proxy (not even one from the environment, which would
 * bypass the check), https only (http too when allow_private), and every
 * address curl is about to connect to, after DNS resolution, checked with
 * tly_webhook_addr_allowed. `guard` must outlive the transfer.
 */
void tly_webhook_curl_options(CURL *e, tly_webhook_guard_t *guard, int64_t timeout_ms);

/**
 * Sends due deliveries until `*cfg->stop`, then waits for the attempts in
 * flight (at most the timeout) and records them. Retries every PostgreSQL
 * failure. Returns 0, or -1 when libcurl could not start.
 */
int tly_webhook_sender_run(const tly_webhook_sender_config_t *cfg);

#endif
