/*
 * Webhook endpoint requests, parsed and validated without any state: the pure
 * half of services/command-api/webhooks.c, shared with the unit tests.
 *
 * Validation appends every problem to an errors[] array of {field, message}
 * (as commands.h does) so that one 422 names every bad field at once.
 */
#ifndef TALLY_WEBHOOK_SPEC_H
#define TALLY_WEBHOOK_SPEC_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TLY_WEBHOOK_SECRET_PREFIX "whsec_"
#define TLY_WEBHOOK_SECRET_BYTES 32
/* "whsec_" + standard base64 (with padding) of 32 bytes */
#define TLY_WEBHOOK_SECRET_LEN (sizeof(TLY_WEBHOOK_SECRET_PREFIX) - 1 + 4 * ((TLY_WEBHOOK_SECRET_BYTES + 2) / 3))
#define TLY_WEBHOOK_DESCRIPTION_MAX_CHARS 500
/* every known type once, plus "*" */
#define TLY_WEBHOOK_TYPES_MAX 64
#define TLY_WEBHOOK_REPLAY_MAX_DAYS 30

/** An endpoint's fields from a create or patch body. Strings are borrowed from the body. */
typedef struct st_tly_webhook_fields_t {
    const char *url;         /* NULL: not given (patch) */
    const char *description; /* NULL: not given */
    const char *types[TLY_WEBHOOK_TYPES_MAX];
    size_t ntypes; /* 0: not given (patch); deduplicated, in the order given */
    int enabled;   /* -1: not given, else 0 or 1 (patch only) */
} tly_webhook_fields_t;

/**
 * The event types a subscription may name (the types of schemas/events/),
 * sorted; `*n` receives the count. "*" (every type) is not among them.
 */
const char *const *tly_webhook_event_types(size_t *n);

/** True when `name` is a known event type. */
bool tly_webhook_event_type_known(const char *name);

/**
 * POST /v1/webhook-endpoints {url, event_types, description?}. The url goes
 * through tly_webhook_url_check (without DNS: the sender checks every
 * resolved address when it connects). True when `errors` got nothing.
 */
bool tly_webhook_validate_create(const json_t *body, bool allow_private, tly_webhook_fields_t *out, json_t *errors);

/**
 * PATCH /v1/webhook-endpoints/{id} {url?, event_types?, description?,
 * enabled?}: at least one of them. True when `errors` got nothing.
 */
bool tly_webhook_validate_patch(const json_t *body, bool allow_private, tly_webhook_fields_t *out, json_t *errors);

/**
 * POST /v1/webhook-endpoints/{id}/replay {since, until}: RFC 3339 times,
 * since < until, at most TLY_WEBHOOK_REPLAY_MAX_DAYS apart. True when
 * `errors` got nothing; the bounds in microseconds since the epoch.
 */
bool tly_webhook_validate_replay(const json_t *body, int64_t *since_us, int64_t *until_us, json_t *errors);

/**
 * The event types as a PostgreSQL array literal of quoted elements, e.g.
 * {"FundsDeposited","*"}; false when `cap` is too small.
 */
bool tly_webhook_types_pg(const tly_webhook_fields_t *f, char *out, size_t cap) __attribute__((warn_unused_result));

/**
 * A new signing secret: "whsec_" + base64 of TLY_WEBHOOK_SECRET_BYTES bytes
 * from OpenSSL's CSPRNG (RAND_bytes). `out` holds TLY_WEBHOOK_SECRET_LEN + 1
 * bytes. Aborts when the CSPRNG fails, like every allocation in Tally: a
 * predictable secret is never an option.
 */
void tly_webhook_secret_generate(char *out);

#endif
