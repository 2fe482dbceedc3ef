/*
 * In-memory API key cache with per-key token buckets, shared by every thread
 * of one API process.
 *
 * A background thread with its own PostgreSQL connection loads every key at
 * start and then the keys changed since the last load (api_keys.updated_at)
 * whenever the api_keys trigger announces a change on TLY_KEYCACHE_CHANNEL
 * (LISTEN/NOTIFY: a revocation reaches every instance within milliseconds),
 * and at the latest every `refresh_ms`, the fallback for a notification lost
 * while the connection was down. Lookups never touch the database and never block the event
 * loop on I/O: the map is behind a read-write lock that writers hold only to
 * swap entries, and each key's bucket has its own small lock, so one busy key
 * never makes other keys wait.
 */
#ifndef TALLY_KEYCACHE_H
#define TALLY_KEYCACHE_H

#include "tally/auth.h"
#include "tally/uuid.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* NOTIFYed with the key id by the api_keys trigger (migrations/0006_credentials.sql). */
#define TLY_KEYCACHE_CHANNEL "tally_api_keys"

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
    /* what the key may grant at most (api_keys.c): its tier, its rate and
       burst (a contract's when `contract`), its expiry (0: never) */
    char tier[TLY_TIER_NAME_MAX];
    bool contract;
    int64_t rate, burst;
    int64_t expires_us;
    int max_long_polls; /* the tenant's quota of concurrent Prefer: wait requests (per instance) */
    void *entry;        /* the cache entry, for the rate limiter */
} tly_principal_t;

/** What the cache knows of one key. */
typedef struct st_tly_key_attrs_t {
    tly_uuid_t tenant_id;
    uint8_t hash[TLY_KEY_HASH_LEN];
    int scopes;
    char tier[TLY_TIER_NAME_MAX];
    bool contract; /* rate and burst are a contract's, not the tier's */
    int64_t rate, burst;
    int64_t expires_us; /* wall clock microseconds; 0: never expires */
    int max_long_polls; /* the tenant's quota (tenants.max_long_polls) */
    bool revoked;
} tly_key_attrs_t;

typedef struct st_tly_rate_t {
    bool allowed;
    int64_t burst;       /* bucket size: RateLimit-Policy q */
    int64_t window;      /* seconds to refill an empty bucket: RateLimit-Policy w */
    int64_t remaining;   /* whole tokens left after this request */
    int64_t reset;       /* seconds until the bucket is full again */
    int64_t retry_after; /* when !allowed: seconds until one token is back */
} tly_rate_t;

/** Rate and burst of the named tier; false for an unknown tier. */
bool tly_rate_tier(const char *tier, int64_t *rate, int64_t *burst);

tly_keycache_t *tly_keycache_create(const char *dsn, int refresh_ms);
void tly_keycache_destroy(tly_keycache_t *kc);
/** True once the first full load succeeded. */
bool tly_keycache_ready(tly_keycache_t *kc);

/**
 * Checks an Authorization header value ("Bearer tly_live_..."). On
 * TLY_AUTH_OK fills `out`. Constant-time on the secret. An expired key is
 * TLY_AUTH_INVALID, like a revoked one.
 */
tly_auth_result_t tly_keycache_check(tly_keycache_t *kc, const char *authorization, size_t len, tly_principal_t *out);

/** Takes one token from the principal's bucket at time `now_us` (monotonic). */
void tly_keycache_take(tly_principal_t *principal, int64_t now_us, tly_rate_t *out);

/** Marks a key revoked in this process at once (the database is the caller's job). */
void tly_keycache_revoke(tly_keycache_t *kc, const char *key_id);

/** Inserts or replaces an entry (a key just created here; tests without a database). */
void tly_keycache_put(tly_keycache_t *kc, const char *key_id, const tly_key_attrs_t *attrs);
/** A cache that never loads from a database (tests). */
tly_keycache_t *tly_keycache_create_offline(void);

#endif
