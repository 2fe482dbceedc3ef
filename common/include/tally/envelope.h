/*
 * The event envelope of ARCHITECTURE.md: every record in tally.events is one
 * JSON envelope, keyed by its aggregate id, with the type, version and W3C
 * traceparent repeated in Kafka headers.
 */
#ifndef TALLY_ENVELOPE_H
#define TALLY_ENVELOPE_H

#include "tally/uuid.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TLY_EVENT_TYPE_MAX 64
#define TLY_AGGREGATE_TYPE_MAX 32
#define TLY_TRACEPARENT_LEN 55

typedef struct st_tly_envelope_t {
    tly_uuid_t id;
    char type[TLY_EVENT_TYPE_MAX];
    int version;
    char aggregate_type[TLY_AGGREGATE_TYPE_MAX];
    tly_uuid_t aggregate_id;
    tly_uuid_t tenant_id;
    tly_uuid_t job_id;
    tly_uuid_t causation_id;   /* the event that caused this one; nil for requests */
    tly_uuid_t correlation_id; /* the request event at the root of the chain */
    int64_t occurred_at_us;
    json_t *data; /* owned reference; the event's own fields */
} tly_envelope_t;

/** Serialises to the wire JSON. Caller frees the string. */
char *tly_envelope_to_json(const tly_envelope_t *env);

/**
 * Parses a wire envelope. On success `env->data` is a new reference that
 * tly_envelope_clear releases. On failure returns -1 and writes why to `err`.
 */
int tly_envelope_parse(const char *buf, size_t len, tly_envelope_t *env, char *err, size_t errcap)
    __attribute__((warn_unused_result));

void tly_envelope_clear(tly_envelope_t *env);

/**
 * Builds an envelope caused by `cause`: same tenant, job, aggregate and
 * correlation; causation = cause's id; a deterministic id, v5 of the cause's id
 * and `type` (and `salt` when one cause yields several events of one type),
 * so that deciding the same request twice yields the same event. Takes
 * ownership of `data`.
 */
void tly_envelope_derive(tly_envelope_t *out, const tly_envelope_t *cause, const char *type, int version, json_t *data,
                         const char *salt);

/** Validates a W3C traceparent ("00-<32 hex>-<16 hex>-<2 hex>", ids not all zero). */
bool tly_traceparent_valid(const char *s, size_t len);
/** A fresh traceparent with random trace and span ids; `out` holds 56 bytes. */
void tly_traceparent_new(char *out);
/** The same trace with a new span id, for the next hop; `out` holds 56 bytes. */
void tly_traceparent_child(const char *parent, char *out);

#endif
