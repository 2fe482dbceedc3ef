/*
 * Webhooks: the pure parts, shared by the recording consumer (webhook_role.c)
 * and the sender (webhook_sender.c), and tested without a network or a
 * database: the body of a delivery, its deterministic id, which endpoint
 * subscribes to what, the retry schedule with its jitter, Retry-After, the
 * Standard Webhooks signature, and the WebhookEndpointDisabled event.
 *
 * See docs/webhooks.md for the contract with receivers.
 */
#ifndef TALLY_WORKER_WEBHOOK_H
#define TALLY_WORKER_WEBHOOK_H

#include "tally/envelope.h"
#include "tally/webhook_sign.h"
#include "tally/uuid.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** Attempts per delivery: the first and one per step of the retry schedule. */
#define TLY_WEBHOOK_MAX_ATTEMPTS 10
/** The endpoint is disabled when every attempt failed for this long (before the time scale). */
#define TLY_WEBHOOK_DISABLE_AFTER_US (5LL * 24 * 3600 * 1000000)
/** Longest Retry-After honoured (real time, never scaled). */
#define TLY_WEBHOOK_RETRY_AFTER_MAX_US (24LL * 3600 * 1000000)
#define TLY_WEBHOOK_EVENT_VERSION 1

/**
 * The body of a delivery: {"type", "timestamp" (occurred_at, RFC 3339),
 * "data": {event_id, event_version, aggregate_type, aggregate_id, job_id,
 * correlation_id, then the event's own fields}}. When that exceeds
 * TLY_WEBHOOK_BODY_MAX, the event's own fields are left out and
 * "truncated": true is added to data (the receiver reads the resource through
 * the API); `*truncated` says so. Caller frees.
 */
char *tly_webhook_body(const tly_envelope_t *env, bool *truncated);

/** The delivery id (the webhook-id header): a v5 UUID of the endpoint id and the event id, so a re-record is the same row. */
tly_uuid_t tly_webhook_delivery_id(const tly_uuid_t *endpoint, const tly_uuid_t *event);

/** True when `types` (a JSON array of type names, "*" meaning every type) contains `type`. */
bool tly_webhook_subscribed(const json_t *types, const char *type);

/**
 * Delay before the next attempt after attempt number `attempt` (1 = the first
 * one) failed, or -1 when it was the last. Schedule after attempt n: 5 s,
 * 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h (about three days in all).
 * Jitter: uniform between the previous step and this one (`rnd` in [0, 1)),
 * so retries after an outage spread out but keep the schedule's order and
 * span. Divided by `time_scale` (>= 1; tests compress days into seconds).
 */
int64_t tly_webhook_retry_delay_us(int attempt, double rnd, int64_t time_scale);

/**
 * Parses a Retry-After value: delay-seconds ("120") or an IMF-fixdate ("Sun,
 * 22 Nov 2026 14:00:00 GMT", relative to `now_us`). The result is clamped to
 * [0, TLY_WEBHOOK_RETRY_AFTER_MAX_US]. False when the value is neither.
 */
bool tly_webhook_parse_retry_after(const char *value, int64_t now_us, int64_t *delay_us);

/**
 * Builds the WebhookEndpointDisabled event (documented as endpoint.disabled):
 * aggregate webhook_endpoint, id derived from the endpoint id and its new
 * `version` (so disabling the same row twice in a race yields one event, and a
 * later disable after a re-enable a new one). `failing_since_us` 0 = unknown.
 * Caller clears `out`.
 */
void tly_webhook_disabled_event(tly_envelope_t *out, const tly_uuid_t *endpoint, const tly_uuid_t *tenant, int64_t version,
                                const char *url, const char *reason, int64_t failing_since_us, int64_t now_us);

#endif
