/*
 * API keys: `tly_live_<key id>_<secret>`. The key id is 16 lower-case base32
 * characters and names the row; the secret is 43 base64url characters (256
 * random bits) of which only SHA-256 is stored. Scopes are a bit set.
 */
#ifndef TALLY_AUTH_H
#define TALLY_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TLY_KEY_PREFIX "tly_live_"
#define TLY_KEY_ID_LEN 16
#define TLY_KEY_SECRET_LEN 43
#define TLY_KEY_LEN (sizeof(TLY_KEY_PREFIX) - 1 + TLY_KEY_ID_LEN + 1 + TLY_KEY_SECRET_LEN)
#define TLY_KEY_HASH_LEN 32

enum {
    TLY_SCOPE_READ = 1 << 0,
    TLY_SCOPE_WRITE = 1 << 1,
    TLY_SCOPE_ADMIN = 1 << 2,
};

typedef struct st_tly_key_parts_t {
    char id[TLY_KEY_ID_LEN + 1];
    char secret[TLY_KEY_SECRET_LEN + 1];
} tly_key_parts_t;

/** Splits a presented key; false when it does not have the exact shape. */
bool tly_key_parse(const char *key, size_t len, tly_key_parts_t *out) __attribute__((warn_unused_result));

/** Generates a new key; `key_out` holds TLY_KEY_LEN + 1 bytes. */
void tly_key_generate(tly_key_parts_t *parts, char *key_out);

/** SHA-256 of the secret. */
void tly_key_hash(const char *secret, uint8_t out[TLY_KEY_HASH_LEN]);

/** Constant-time comparison of two hashes. */
bool tly_key_hash_equal(const uint8_t a[TLY_KEY_HASH_LEN], const uint8_t b[TLY_KEY_HASH_LEN]);

/** The bit of one scope name, matched exactly (`len` bytes); 0 when it is none. */
int tly_scope_bit(const char *name, size_t len) __attribute__((warn_unused_result));
/** Writes the scope names of a set, "read, write", for messages. */
void tly_scopes_names(int scopes, char *out, size_t cap);
/**
 * Parses "read,write" or a PostgreSQL array literal "{read,write}" into a scope
 * bit set; returns -1 on an unknown scope.
 */
int tly_scopes_parse(const char *s) __attribute__((warn_unused_result));
/** Writes a PostgreSQL array literal of the scopes, e.g. "{read,write}". */
void tly_scopes_format_pg(int scopes, char *out, size_t cap);

#endif
