/*
 * Standard Webhooks signatures (HMAC-SHA256 over "id.timestamp.body" with the
 * endpoint's whsec_ secret): made by the worker's sender, checked by
 * `tallyctl webhooks listen`. One implementation for both.
 */
#ifndef TALLY_WEBHOOK_SIGN_H
#define TALLY_WEBHOOK_SIGN_H

#include <stddef.h>
#include <stdint.h>

/** Largest body the worker sends; a bigger one is sent without the event's own fields (tly_webhook_body). */
#define TLY_WEBHOOK_BODY_MAX (20 * 1024)

/** Room for "v1,<44 base64 chars>" twice, space-separated. */
#define TLY_WEBHOOK_SIGNATURE_MAX 128

/**
 * One Standard Webhooks signature, "v1,<base64 HMAC-SHA256(key, id.timestamp.body)>",
 * where key is the base64 decoding of `secret` without its "whsec_" prefix.
 * Returns 0, or -1 when the secret is malformed.
 */
int tly_webhook_sign(const char *secret, const char *msg_id, int64_t timestamp, const char *body, size_t len, char *out, size_t cap)
    __attribute__((warn_unused_result));

/**
 * The webhook-signature header: the current secret's signature, then, when
 * `previous` is not NULL (a rotation still in its grace period), the previous
 * one's, separated by a space. Returns 0 or -1 (malformed current secret; a
 * malformed previous secret is left out).
 */
int tly_webhook_signature_header(const char *secret, const char *previous, const char *msg_id, int64_t timestamp, const char *body,
                                 size_t len, char *out, size_t cap) __attribute__((warn_unused_result));

#endif
