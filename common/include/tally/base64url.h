/*
 * base64url without padding (RFC 4648 section 5): the text form of the
 * signed, opaque values the APIs hand out (page cursors, consistency tokens).
 * Pure functions.
 */
#ifndef TALLY_BASE64URL_H
#define TALLY_BASE64URL_H

#include <stddef.h>
#include <stdint.h>

/** base64url without padding; `out` needs 4 * ceil(len / 3) + 1 bytes. Returns the length. */
size_t tly_base64url_encode(const uint8_t *in, size_t len, char *out);
/** Decodes base64url without padding; returns the length, or -1 on bad input or a short `out`. */
int tly_base64url_decode(const char *in, size_t len, uint8_t *out, size_t cap) __attribute__((warn_unused_result));

#endif
