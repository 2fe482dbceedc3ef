/*
 * In-memory API key cache, shared by every thread of one API process (the
 * rate limits it feeds are tally/ratelimit.h's).
 *
 * A background thread with its own PostgreSQL connection loads every key at
 * start and then, every `refresh_ms`, the keys changed since the last load
 * (api_keys.updated_at), so a revocation takes effect within that period on
 * every instance. Lookups never touch the database and never block the event
 * loop on I/O: the map is behind a read-write lock that writers hold only to
 * swap entries.
 */
#ifndef TALLY_KEYCACHE_H
#define TALLY_KEYCACHE_H

#include "tally/auth.h"
#include "tally/ratelimit.h"
#include "tally/uuid.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct st_tly_keycache_t tly_keycache_t;

typedef enum en_tly_auth_result_t {
    TLY_AUTH_OK = 0,
    TLY_AUTH_MISSING,     /* no Authorization header */
    TLY_AUTH_INVALID,     /* malformed, unknown, wrong secret or revoked */
    TLY_AUTH_UNAVAILABLE, /* keys not loaded yet (database unreachable since start) */
} tly_auth_result_t;

#define TLY_TIER_NAME_MAX 16

typedef struct st_tly_principal_t {
    char key_id[TLY_KEY_ID_LEN + 1];
    tly_uuid_t tenant_id;
    int scopes;
    /* the key's tier ("contract" when it has a rate and burst of its own) and its rate and burst */
    char tier[TLY_TIER_NAME_MAX];
    bool contract;
    int64_t rate, burst;
    void *entry; /* the cache entry; NULL until authenticated */
} tly_principal_t;

tly_keycache_t *tly_keycache_create(const char *dsn, int refresh_ms);
void tly_keycache_destroy(tly_keycache_t *kc);
/** True once the first full load succeeded. */
bool tly_keycache_ready(tly_keycache_t *kc);

/**
 * Checks an Authorization header value ("Bearer tly_live_..."). On
 * TLY_AUTH_OK fills `out`. Constant-time on the secret.
 */
tly_auth_result_t tly_keycache_check(tly_keycache_t *kc, const char *authorization, size_t len, tly_principal_t *out);

/** Marks a key revoked in this process at once (the database is the caller's job). */
void tly_keycache_revoke(tly_keycache_t *kc, const char *key_id);

/* For tests (and a key just created): insert or replace an entry without a
   database; a rate and burst that are no tier's make a contract. */
void tly_keycache_put(tly_keycache_t *kc, const char *key_id, const tly_uuid_t *tenant, const uint8_t hash[TLY_KEY_HASH_LEN],
                      int scopes, int64_t rate, int64_t burst, bool revoked);
/** A cache that never loads from a database (tests). */
tly_keycache_t *tly_keycache_create_offline(void);

#endif
