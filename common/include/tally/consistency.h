/*
 * Consistency tokens: read your own write (issue 25).
 *
 * Every 202 of the command API carries `Tally-Consistency-Token`; a GET of
 * the query API that sends it back waits until the read models include the
 * command. A token is base64url (no padding) of: version (1 byte), the
 * tenant (16 bytes), the job (16), the log position of the request event
 * (partition, 4 bytes big-endian, -1 when unknown; offset, 8 bytes), and the
 * first 16 bytes of HMAC-SHA256 of all of that under the key both APIs derive
 * from TALLY_CONSISTENCY_SECRET. Opaque to clients; tampering, another key
 * or another tenant's token is refused before anything in it is used.
 * Pure functions.
 */
#ifndef TALLY_CONSISTENCY_H
#define TALLY_CONSISTENCY_H

#include "tally/config.h"
#include "tally/uuid.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TLY_CONSISTENCY_HEADER "tally-consistency-token"
#define TLY_CONSISTENCY_KEY_LEN 32
/* Text form: 82 characters of base64url (61 bytes), NUL and room to spare */
#define TLY_CONSISTENCY_TEXT_CAP 96

/* The setting, the same in the command API and the query API (a char * at offset `off` of their config). */
#define TLY_CONSISTENCY_SETTING(off)                                                                                               \
    {                                                                                                                              \
        "consistency-secret", "TALLY_CONSISTENCY_SECRET", TLY_CONFIG_STRING, "", 0, 0, (off),                                      \
            "key that signs consistency tokens (Tally-Consistency-Token); the same on every command and query API instance "       \
            "(unset: no tokens are given, and a token sent is refused)"                                                            \
    }

typedef struct st_tly_consistency_t {
    tly_uuid_t tenant, job;
    int32_t partition; /* -1: the position is not known (an idempotent replay of an older 202) */
    int64_t offset;
} tly_consistency_t;

typedef enum en_tly_consistency_result_t {
    TLY_CONSISTENCY_OK = 0,
    TLY_CONSISTENCY_INVALID,      /* malformed, tampered, or signed with another key */
    TLY_CONSISTENCY_OTHER_TENANT, /* ours, but of another tenant */
} tly_consistency_result_t;

/** The token key from the shared secret (SHA-256 of it). False when `secret` is empty: no tokens then. */
bool tly_consistency_key(const char *secret, uint8_t key[TLY_CONSISTENCY_KEY_LEN]) __attribute__((warn_unused_result));

/** Writes the signed text form (NUL-terminated) of `t` into `out` (TLY_CONSISTENCY_TEXT_CAP bytes). */
void tly_consistency_encode(const tly_consistency_t *t, const uint8_t key[TLY_CONSISTENCY_KEY_LEN], char *out);

/**
 * Verifies `text` (`len` bytes) in constant time, then checks that it is
 * `tenant`'s; fills `out` only when the result is TLY_CONSISTENCY_OK.
 */
tly_consistency_result_t tly_consistency_decode(const char *text, size_t len, const uint8_t key[TLY_CONSISTENCY_KEY_LEN],
                                                const tly_uuid_t *tenant, tly_consistency_t *out)
    __attribute__((warn_unused_result));

#endif
