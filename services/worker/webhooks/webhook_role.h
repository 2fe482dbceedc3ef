/*
 * The webhooks role: a recording consumer (this module) and a sender
 * (webhook_sender.h).
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

#include "runtime/consumer.h"
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

#endif
