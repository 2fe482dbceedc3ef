/* API key cache and its background refresh. See tally/keycache.h. */
#include "tally/keycache.h"
#include "tally/clock.h"
#include "tally/log.h"
#include "tally/pg.h"

#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct st_key_entry_t {
    struct st_key_entry_t *next; /* hash chain */
    char id[TLY_KEY_ID_LEN + 1];
    tly_uuid_t tenant_id;
    uint8_t hash[TLY_KEY_HASH_LEN];
    int scopes;
    bool revoked;
    char tier[TLY_TIER_NAME_MAX];
    bool contract;      /* rate and burst are the key's own, not its tier's */
    int64_t expires_us; /* wall clock; 0: never */
    int max_long_polls; /* the tenant's quota */
    int64_t rate, burst;
} key_entry_t;

#define NBUCKETS 4096

struct st_tly_keycache_t {
    pthread_rwlock_t lock;
    key_entry_t *buckets[NBUCKETS];
    char *dsn;
    int refresh_ms;
    atomic_bool ready, stop;
    pthread_t refresher;
    bool has_thread;
    char since[64]; /* updated_at watermark of the last load, as text */
};

static size_t
bucket_of(const char *id)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const char *p = id; *p != '\0'; ++p)
        h = (h ^ (uint8_t)*p) * 1099511628211ULL;
    return (size_t)(h % NBUCKETS);
}

static key_entry_t *
find_locked(tly_keycache_t *kc, const char *id)
{
    for (key_entry_t *e = kc->buckets[bucket_of(id)]; e != NULL; e = e->next)
        if (strcmp(e->id, id) == 0)
            return e;
    return NULL;
}

void
tly_keycache_put(tly_keycache_t *kc, const char *key_id, const tly_key_attrs_t *a)
{
    pthread_rwlock_wrlock(&kc->lock);
    key_entry_t *e = find_locked(kc, key_id);
    if (e == NULL) {
        /* entries live as long as the cache: a principal may point at one */
        if ((e = calloc(1, sizeof(*e))) == NULL)
            abort();
        snprintf(e->id, sizeof(e->id), "%s", key_id);
        size_t b = bucket_of(key_id);
        e->next = kc->buckets[b];
        kc->buckets[b] = e;
    }
    e->tenant_id = a->tenant_id;
    memcpy(e->hash, a->hash, TLY_KEY_HASH_LEN);
    e->scopes = a->scopes;
    e->revoked = a->revoked;
    snprintf(e->tier, sizeof(e->tier), "%s", a->tier);
    e->contract = a->contract;
    e->expires_us = a->expires_us;
    e->max_long_polls = a->max_long_polls;
    e->rate = a->rate;
    e->burst = a->burst;
    pthread_rwlock_unlock(&kc->lock);
}

void
tly_keycache_revoke(tly_keycache_t *kc, const char *key_id)
{
    pthread_rwlock_wrlock(&kc->lock);
    key_entry_t *e = find_locked(kc, key_id);
    if (e != NULL)
        e->revoked = true;
    pthread_rwlock_unlock(&kc->lock);
}

static bool
load_row(tly_keycache_t *kc, PGresult *res, int row)
{
    tly_key_attrs_t a = {.revoked = strcmp(PQgetvalue(res, row, 7), "t") == 0};
    size_t hlen = 0;
    const char *id = PQgetvalue(res, row, 0), *tier = PQgetvalue(res, row, 4);
    if (!tly_uuid_parse(PQgetvalue(res, row, 1), &a.tenant_id))
        return false;
    unsigned char *hash = PQunescapeBytea((const unsigned char *)PQgetvalue(res, row, 2), &hlen);
    a.scopes = tly_scopes_parse(PQgetvalue(res, row, 3));
    if (hash == NULL || hlen != TLY_KEY_HASH_LEN || a.scopes < 0 || strlen(tier) >= sizeof(a.tier) ||
        !tly_rate_tier(tier, &a.rate, &a.burst)) {
        PQfreemem(hash);
        return false;
    }
    memcpy(a.hash, hash, TLY_KEY_HASH_LEN);
    PQfreemem(hash);
    snprintf(a.tier, sizeof(a.tier), "%s", tier);
    a.contract = !PQgetisnull(res, row, 5) || !PQgetisnull(res, row, 6);
    if (!PQgetisnull(res, row, 5))
        a.rate = strtoll(PQgetvalue(res, row, 5), NULL, 10);
    if (!PQgetisnull(res, row, 6))
        a.burst = strtoll(PQgetvalue(res, row, 6), NULL, 10);
    if (!PQgetisnull(res, row, 9))
        a.expires_us = strtoll(PQgetvalue(res, row, 9), NULL, 10);
    a.max_long_polls = (int)strtol(PQgetvalue(res, row, 10), NULL, 10);
    tly_keycache_put(kc, id, &a);
    return true;
}

/* Loads keys changed since the watermark; 0 on success. */
static int
refresh_once(tly_keycache_t *kc, PGconn *conn, char *err, size_t errcap)
{
    /* one second of overlap: rows committed late with an older updated_at */
    const char *sql =
        "SELECT k.id, k.tenant_id, k.secret_hash, k.scopes, k.tier, k.rate_per_sec, k.burst, k.revoked_at IS NOT NULL, "
        "(SELECT coalesce(max(updated_at), 'epoch') FROM api_keys)::text, "
        "(extract(epoch FROM k.expires_at) * 1000000)::bigint, t.max_long_polls "
        "FROM api_keys k JOIN tenants t ON t.id = k.tenant_id "
        "WHERE k.updated_at >= $1::timestamptz - interval '1 second'";
    const char *params[1] = {kc->since};
    PGresult *res = PQexecParams(conn, sql, 1, NULL, params, NULL, NULL, 0);
    int ret = -1;
    if (!tly_pg_ok(conn, res, "could not load api keys", err, errcap))
        goto cleanup;
    for (int i = 0; i < PQntuples(res); ++i)
        if (!load_row(kc, res, i))
            tly_logf(TLY_LOG_WARN, "skipping malformed api key %s", PQgetvalue(res, i, 0));
    if (PQntuples(res) > 0)
        snprintf(kc->since, sizeof(kc->since), "%s", PQgetvalue(res, 0, 8));
    ret = 0;
cleanup:
    PQclear(res);
    return ret;
}

/* LISTEN on the key channel; false (with `err`) when the connection refused it. */
static bool
listen_keys(PGconn *conn, char *err, size_t errcap)
{
    PGresult *res = PQexec(conn, "LISTEN " TLY_KEYCACHE_CHANNEL);
    bool ok = tly_pg_ok(conn, res, "could not listen for api key changes", err, errcap);
    PQclear(res);
    return ok;
}

/*
 * Sleeps until a key change is announced (the api_keys trigger's NOTIFY),
 * the refresh period ends (the fallback for a notification missed while the
 * connection was down) or the cache is stopped. True when notified.
 */
static bool
wait_for_change(tly_keycache_t *kc, PGconn *conn)
{
    int64_t deadline = tly_clock_mono_us() + (int64_t)kc->refresh_ms * 1000;
    bool notified = false;
    PGnotify *queued;
    /* notifications libpq read during the last load are queued already: no byte on the socket announces them */
    while (conn != NULL && (queued = PQnotifies(conn)) != NULL) {
        notified = true;
        PQfreemem(queued);
    }
    while (!notified && !atomic_load(&kc->stop)) {
        int64_t left_ms = (deadline - tly_clock_mono_us()) / 1000;
        if (left_ms <= 0)
            break;
        /* short slices: a stop is noticed within 50 ms */
        struct pollfd p = {.fd = conn != NULL ? PQsocket(conn) : -1, .events = POLLIN};
        if (p.fd < 0) {
            usleep(50 * 1000);
            continue;
        }
        if (poll(&p, 1, left_ms < 50 ? (int)left_ms : 50) > 0 && PQconsumeInput(conn) == 1) {
            PGnotify *n;
            while ((n = PQnotifies(conn)) != NULL) {
                notified = true;
                PQfreemem(n);
            }
        } else if (p.revents != 0) {
            break; /* the connection failed: reconnect now */
        }
    }
    return notified;
}

static void *
refresher_main(void *arg)
{
    tly_keycache_t *kc = arg;
    PGconn *conn = NULL;
    char err[512];
    bool reported = false;
    while (!atomic_load(&kc->stop)) {
        if (tly_pg_broken(conn)) {
            PQfinish(conn);
            /* LISTEN before the load: a change committed in between is both loaded and announced */
            if ((conn = tly_pg_connect(kc->dsn, err, sizeof(err))) != NULL && !listen_keys(conn, err, sizeof(err))) {
                PQfinish(conn);
                conn = NULL;
            }
        }
        if (conn != NULL && refresh_once(kc, conn, err, sizeof(err)) == 0) {
            if (!atomic_load(&kc->ready) || reported)
                tly_log(TLY_LOG_INFO, "api keys loaded", NULL);
            atomic_store(&kc->ready, true);
            reported = false;
        } else if (!reported) {
            tly_log(TLY_LOG_WARN, "could not refresh api keys", "error", err, NULL);
            reported = true;
        }
        wait_for_change(kc, conn);
    }
    PQfinish(conn);
    return NULL;
}

tly_keycache_t *
tly_keycache_create_offline(void)
{
    tly_keycache_t *kc = calloc(1, sizeof(*kc));
    if (kc == NULL)
        abort();
    pthread_rwlock_init(&kc->lock, NULL);
    snprintf(kc->since, sizeof(kc->since), "epoch");
    atomic_store(&kc->ready, true);
    return kc;
}

tly_keycache_t *
tly_keycache_create(const char *dsn, int refresh_ms)
{
    tly_keycache_t *kc = tly_keycache_create_offline();
    atomic_store(&kc->ready, false);
    kc->dsn = strdup(dsn);
    kc->refresh_ms = refresh_ms;
    if (pthread_create(&kc->refresher, NULL, refresher_main, kc) != 0)
        abort();
    kc->has_thread = true;
    return kc;
}

void
tly_keycache_destroy(tly_keycache_t *kc)
{
    atomic_store(&kc->stop, true);
    if (kc->has_thread)
        pthread_join(kc->refresher, NULL);
    for (size_t b = 0; b < NBUCKETS; ++b) {
        for (key_entry_t *e = kc->buckets[b], *next; e != NULL; e = next) {
            next = e->next;
            free(e);
        }
    }
    pthread_rwlock_destroy(&kc->lock);
    free(kc->dsn);
    free(kc);
}

bool
tly_keycache_ready(tly_keycache_t *kc)
{
    return atomic_load(&kc->ready);
}

tly_auth_result_t
tly_keycache_check(tly_keycache_t *kc, const char *authorization, size_t len, tly_principal_t *out)
{
    static const char bearer[] = "Bearer ";
    tly_key_parts_t parts;
    uint8_t presented[TLY_KEY_HASH_LEN];
    if (authorization == NULL || len == 0)
        return TLY_AUTH_MISSING;
    if (len < sizeof(bearer) - 1 || strncasecmp(authorization, bearer, sizeof(bearer) - 1) != 0)
        return TLY_AUTH_INVALID;
    size_t at = sizeof(bearer) - 1;
    while (at < len && authorization[at] == ' ') /* auth-scheme 1*SP token68 */
        ++at;
    if (!tly_key_parse(authorization + at, len - at, &parts))
        return TLY_AUTH_INVALID;
    if (!tly_keycache_ready(kc))
        return TLY_AUTH_UNAVAILABLE;
    tly_key_hash(parts.secret, presented);
    tly_auth_result_t result = TLY_AUTH_INVALID;
    pthread_rwlock_rdlock(&kc->lock);
    key_entry_t *e = find_locked(kc, parts.id);
    if (e != NULL && tly_key_hash_equal(e->hash, presented) && !e->revoked &&
        (e->expires_us == 0 || tly_clock_now_us() < e->expires_us)) {
        memcpy(out->key_id, e->id, sizeof(out->key_id));
        out->tenant_id = e->tenant_id;
        out->scopes = e->scopes;
        out->entry = e;
        snprintf(out->tier, sizeof(out->tier), "%s", e->tier);
        out->contract = e->contract;
        out->expires_us = e->expires_us;
        out->max_long_polls = e->max_long_polls;
        out->rate = e->rate;
        out->burst = e->burst;
        result = TLY_AUTH_OK;
    }
    pthread_rwlock_unlock(&kc->lock);
    return result;
}
