/*
 * The webhooks role: a recording consumer and a sender.
 *
 *   recording (consumer "webhooks", group tally-webhooks): for each event, one
 *     webhook_deliveries row per enabled, undeleted endpoint of the event's
 *     tenant that subscribes to its type and existed when it occurred; in the
 *     fenced batch transaction, so each (event, endpoint) is recorded exactly
 *     once (consumer_dedup, and the pair is unique). NOTIFY tally_webhooks at
 *     commit wakes the senders.
 *   sending (tly_webhook_sender_run, a thread): claims due deliveries with a
 *     lease, sends them with libcurl's multi interface, records each attempt
 *     and reschedules, disables endpoints that are gone or failing.
 *
 * See docs/webhooks.md.
 */
#ifndef TALLY_WORKER_WEBHOOK_ROLE_H
#define TALLY_WORKER_WEBHOOK_ROLE_H

#include "consumer.h"
#include "webhook.h"

#include <curl/curl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct st_tly_webhook_endpoint_t {
    tly_uuid_t id;
    int64_t created_us;
    json_t *types; /* JSON array of subscribed type names ("*": all) */
} tly_webhook_endpoint_t;

/* The endpoints of one tenant, as read in the running batch transaction. */
typedef struct st_tly_webhook_tenant_t {
    tly_uuid_t tenant;
    int n;
    tly_webhook_endpoint_t *endpoints;
} tly_webhook_tenant_t;

/* State of the recording consumer; lives as long as the consumer. */
typedef struct st_tly_webhook_role_t {
    long recorded;     /* deliveries inserted in the running transaction: NOTIFY at commit */
    int ntenants, cap; /* per-batch endpoint cache, emptied in begin() */
    tly_webhook_tenant_t *tenants;
} tly_webhook_role_t;

/** Fills `h` for the recording consumer; `role` must outlive the consumer. */
void tly_webhook_role_init(tly_consumer_handler_t *h, tly_webhook_role_t *role);
/** Frees the role's cache. */
void tly_webhook_role_clear(tly_webhook_role_t *role);

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
