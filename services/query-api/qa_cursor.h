/*
 * Opaque, tamper-evident page cursors.
 *
 * A cursor is base64url (no padding) of: version (1 byte), the position of
 * the last item of the page (created_at in microseconds, 8 bytes big-endian,
 * and its id, 16 bytes), the first 16 bytes of SHA-256 of the canonical
 * filters it was made with (qa_list_query_canonical: list, tenant, account,
 * filters), and HMAC-SHA256 of all of that under the server's cursor key.
 * Keyset pagination resumes strictly after the position, so items inserted
 * between two pages never make a client skip or repeat one. Pure functions.
 */
#ifndef TALLY_QA_CURSOR_H
#define TALLY_QA_CURSOR_H

#include "tally/uuid.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QA_CURSOR_HASH_LEN 16
#define QA_CURSOR_TEXT_CAP 128

typedef struct st_qa_cursor_t {
    int64_t created_us;
    tly_uuid_t id;
    uint8_t filters[QA_CURSOR_HASH_LEN];
} qa_cursor_t;

typedef enum en_qa_cursor_result_t {
    QA_CURSOR_OK = 0,
    QA_CURSOR_INVALID,  /* not ours: malformed, tampered, or signed with another key */
    QA_CURSOR_MISMATCH, /* ours, but made with other filters (or for another tenant or account) */
} qa_cursor_result_t;

/** The filter hash of a canonical filter text. */
void qa_cursor_filters_hash(const char *canonical, uint8_t out[QA_CURSOR_HASH_LEN]);

/** Writes the signed text form (NUL-terminated) into `out` (QA_CURSOR_TEXT_CAP bytes). */
void qa_cursor_encode(const qa_cursor_t *c, const uint8_t *key, size_t keylen, char *out);

/**
 * Verifies and decodes `text`; the signature is checked (in constant time)
 * before anything else is trusted, then the filter hash against `filters`.
 */
qa_cursor_result_t qa_cursor_decode(const char *text, const uint8_t *key, size_t keylen, const uint8_t filters[QA_CURSOR_HASH_LEN],
                                    qa_cursor_t *out) __attribute__((warn_unused_result));

#endif
