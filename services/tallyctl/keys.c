/* API keys: create, list, revoke, verify. No secret or hash is ever printed
   except the new key, once, on stdout. */
#include "keys.h"
#include "audit.h"
#include "db.h"
#include "tenants.h"

#include "tally/auth.h"
#include "tally/clock.h"
#include "tally/uuid.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ERR_MAX 1024
#define RFC3339(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

/* clang-format off */
static const char list_sql[] =
    "SELECT k.id, t.name AS tenant, array_to_string(k.scopes, ',') AS scopes, k.tier,"
    " k.rate_per_sec || '/' || k.burst AS \"rate/burst\", k.label,"
    " " RFC3339("k.created_at") " AS created_at, " RFC3339("k.expires_at") " AS expires_at,"
    " " RFC3339("k.revoked_at") " AS revoked_at"
    " FROM api_keys k JOIN tenants t ON t.id = k.tenant_id"
    " WHERE $1::uuid IS NULL OR k.tenant_id = $1::uuid"
    " ORDER BY k.created_at, k.id";

/* Revoking twice keeps the first revocation time and succeeds. The outer
   SELECT sees the row as it was before the UPDATE in the CTE, which is what
   the "revoked already at" message needs. */
static const char revoke_sql[] =
    "WITH r AS (UPDATE api_keys SET revoked_at = now(), updated_at = now()"
    "           WHERE id = $1 AND revoked_at IS NULL RETURNING id, tenant_id),"
    " a AS (INSERT INTO audit_events (tenant_id, actor_type, actor_id, action, resource_type, resource_id)"
    "       SELECT tenant_id, 'operator', $2, 'api_key.revoked', 'api_key', id FROM r)"
    " SELECT (SELECT count(*) FROM r) AS revoked, " RFC3339("k.revoked_at")
    " FROM api_keys k WHERE k.id = $1";

/* The key and its audit event; the quota trigger (0006) may refuse it. */
static const char insert_sql[] =
    "WITH k AS (INSERT INTO api_keys (id, tenant_id, secret_hash, scopes, tier, rate_per_sec, burst, label, expires_at)"
    "           VALUES ($1, $2::uuid, decode($3, 'hex'), $4::text[], $5, $6::integer, $7::integer, $8, $9::timestamptz)"
    "           RETURNING id, tenant_id)"
    " INSERT INTO audit_events (tenant_id, actor_type, actor_id, action, resource_type, resource_id, changes)"
    " SELECT tenant_id, 'operator', $10, 'api_key.created', 'api_key', id, jsonb_build_object('scopes', $4::text[],"
    " 'tier', $5, 'rate_per_sec', $6::integer, 'burst', $7::integer, 'label', $8, 'expires_at', $9::timestamptz) FROM k";
/* clang-format on */

/* What `keys create` was asked for, validated before any connection. */
typedef struct st_key_request_t {
    const char *tenant;
    char scopes[64]; /* PostgreSQL array literal */
    const char *tier;
    const char *rate, *burst; /* NULL: the tier decides */
    const char *label;
    const char *expires_at; /* NULL: never */
} key_request_t;

static int
read_request(const tly_ctl_cmd_t *cmd, const tly_ctl_args_t *args, key_request_t *req, char *err, size_t errcap)
{
    const char *scopes = tly_ctl_arg(cmd, args, "scopes");
    int bits = tly_scopes_parse(scopes);
    req->tenant = tly_ctl_arg(cmd, args, "tenant");
    req->tier = tly_ctl_arg(cmd, args, "tier") != NULL ? tly_ctl_arg(cmd, args, "tier") : "standard";
    req->rate = tly_ctl_arg(cmd, args, "rate");
    req->burst = tly_ctl_arg(cmd, args, "burst");
    req->label = tly_ctl_arg(cmd, args, "label") != NULL ? tly_ctl_arg(cmd, args, "label") : "";
    req->expires_at = tly_ctl_arg(cmd, args, "expires-at");
    int64_t expires_us;
    if (req->expires_at != NULL && (!tly_clock_parse_rfc3339(req->expires_at, &expires_us) || expires_us <= tly_clock_now_us())) {
        snprintf(err, errcap, "invalid value for --expires-at: \"%s\" (a future RFC 3339 time)", req->expires_at);
        return -1;
    }
    if (bits <= 0) {
        snprintf(err, errcap, "invalid value for --scopes: \"%s\" (one or more of read, write, admin, comma-separated)", scopes);
        return -1;
    }
    tly_scopes_format_pg(bits, req->scopes, sizeof(req->scopes));
    if (strcmp(req->tier, "free") != 0 && strcmp(req->tier, "standard") != 0) {
        snprintf(err, errcap, "invalid value for --tier: \"%s\" (free or standard)", req->tier);
        return -1;
    }
    if ((req->rate == NULL) != (req->burst == NULL)) {
        snprintf(err, errcap, "--rate and --burst go together");
        return -1;
    }
    if (req->rate != NULL && (!tly_ctl_int_option("rate", req->rate, 1, TLY_CTL_RATE_MAX, err, errcap) ||
                              !tly_ctl_int_option("burst", req->burst, 1, TLY_CTL_RATE_MAX, err, errcap)))
        return -1;
    return 0;
}

static void
hex_encode(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; ++i)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* Generates a key for tenant `tenant_id`, stores it and prints it. */
static int
insert_key(PGconn *conn, const key_request_t *req, const char *tenant_id, char *err, size_t errcap)
{
    tly_key_parts_t parts;
    char key[TLY_KEY_LEN + 1], hash_hex[2 * TLY_KEY_HASH_LEN + 1];
    uint8_t hash[TLY_KEY_HASH_LEN];
    tly_key_generate(&parts, key);
    tly_key_hash(parts.secret, hash);
    hex_encode(hash, sizeof(hash), hash_hex);
    const char *params[] = {parts.id,  tenant_id,  hash_hex,   req->scopes,     req->tier,
                            req->rate, req->burst, req->label, req->expires_at, tly_ctl_operator()};
    PGresult *res = tly_ctl_db_query(conn, "could not create api key", insert_sql, 10, params, err, errcap);
    if (res != NULL) {
        printf("%s\n", key);
        fprintf(stderr, "tallyctl: api key %s created for tenant %s; shown once; store it now\n", parts.id, tenant_id);
    }
    PQclear(res);
    explicit_bzero(key, sizeof(key));
    explicit_bzero(&parts, sizeof(parts));
    return res != NULL ? 0 : -1;
}

int
tly_ctl_keys_create(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[ERR_MAX], tenant_id[TLY_UUID_STR_LEN + 1];
    key_request_t req;
    int ret = TLY_CTL_FAIL;
    PGconn *conn = NULL;
    if (read_request(cmd, args, &req, err, sizeof(err)) != 0) {
        tly_ctl_error("%s", err);
        return TLY_CTL_USAGE;
    }
    if ((conn = tly_ctl_db_connect(settings->pg_dsn, err, sizeof(err))) == NULL ||
        tly_ctl_tenant_resolve(conn, req.tenant, tenant_id, err, sizeof(err)) != 0 ||
        insert_key(conn, &req, tenant_id, err, sizeof(err)) != 0)
        goto cleanup;
    ret = TLY_CTL_OK;
cleanup:
    if (ret != TLY_CTL_OK)
        tly_ctl_error("%s", err);
    PQfinish(conn);
    return ret;
}

int
tly_ctl_keys_list(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[ERR_MAX], tenant_id[TLY_UUID_STR_LEN + 1];
    const char *tenant = tly_ctl_arg(cmd, args, "tenant"), *param = NULL;
    int ret = TLY_CTL_FAIL;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    if ((conn = tly_ctl_db_connect(settings->pg_dsn, err, sizeof(err))) == NULL)
        goto cleanup;
    if (tenant != NULL && tly_ctl_tenant_resolve(conn, tenant, tenant_id, err, sizeof(err)) != 0)
        goto cleanup;
    param = tenant != NULL ? tenant_id : NULL;
    res = tly_ctl_db_query(conn, "could not list api keys", list_sql, 1, &param, err, sizeof(err));
    if (res == NULL)
        goto cleanup;
    tly_ctl_db_print_table(res, stdout);
    ret = TLY_CTL_OK;
cleanup:
    if (ret != TLY_CTL_OK)
        tly_ctl_error("%s", err);
    PQclear(res);
    PQfinish(conn);
    return ret;
}

static int
revoke(PGconn *conn, const char *id, char *err, size_t errcap)
{
    int ret = -1;
    const char *params[2] = {id, tly_ctl_operator()};
    PGresult *res = tly_ctl_db_query(conn, "could not revoke api key", revoke_sql, 2, params, err, errcap);
    if (res == NULL)
        goto cleanup;
    if (PQntuples(res) == 0) {
        snprintf(err, errcap, "api key \"%s\" does not exist", id);
        goto cleanup;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "0") == 0)
        fprintf(stderr, "tallyctl: api key %s was revoked already at %s\n", id, PQgetvalue(res, 0, 1));
    else
        fprintf(stderr, "tallyctl: api key %s revoked\n", id);
    ret = 0;
cleanup:
    PQclear(res);
    return ret;
}

int
tly_ctl_keys_revoke(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[ERR_MAX];
    int ret = TLY_CTL_FAIL;
    PGconn *conn = NULL;
    if ((conn = tly_ctl_db_connect(settings->pg_dsn, err, sizeof(err))) == NULL ||
        revoke(conn, args->pos[0], err, sizeof(err)) != 0)
        goto cleanup;
    ret = TLY_CTL_OK;
cleanup:
    if (ret != TLY_CTL_OK)
        tly_ctl_error("%s", err);
    PQfinish(conn);
    return ret;
}

/* The key from argv, or from the first line of stdin for "-" (keeps the key
   out of the process list and shell history). */
static int
read_key(const char *arg, char *buf, size_t cap, char *err, size_t errcap)
{
    if (strcmp(arg, "-") != 0) {
        snprintf(buf, cap, "%s", arg);
        return 0;
    }
    if (fgets(buf, (int)cap, stdin) == NULL) {
        snprintf(err, errcap, "could not read the key from stdin: %s", ferror(stdin) ? strerror(errno) : "no input");
        return -1;
    }
    buf[strcspn(buf, "\r\n")] = '\0';
    return 0;
}

static bool
hex_decode(const char *hex, uint8_t *out, size_t n)
{
    if (strlen(hex) != 2 * n)
        return false;
    for (size_t i = 0; i < n; ++i) {
        unsigned int b;
        if (sscanf(hex + 2 * i, "%2x", &b) != 1)
            return false;
        out[i] = (uint8_t)b;
    }
    return true;
}

/* 0 when valid; 1 with `err` saying why not; -1 on a database error. */
static int
check_key(PGconn *conn, const tly_key_parts_t *parts, char *err, size_t errcap)
{
    uint8_t stored[TLY_KEY_HASH_LEN], presented[TLY_KEY_HASH_LEN];
    const char *id = parts->id;
    int ret = -1;
    PGresult *res = tly_ctl_db_query(
        conn, "could not look up api key",
        "SELECT encode(secret_hash, 'hex'), revoked_at IS NOT NULL, expires_at <= now() FROM api_keys WHERE id = $1", 1, &id, err,
        errcap);
    if (res == NULL)
        goto cleanup;
    ret = 1;
    tly_key_hash(parts->secret, presented);
    if (PQntuples(res) == 0)
        snprintf(err, errcap, "api key %s does not exist", id);
    else if (!hex_decode(PQgetvalue(res, 0, 0), stored, sizeof(stored)) || !tly_key_hash_equal(stored, presented))
        snprintf(err, errcap, "api key %s does not match (wrong secret)", id);
    else if (strcmp(PQgetvalue(res, 0, 1), "t") == 0)
        snprintf(err, errcap, "api key %s is revoked", id);
    else if (strcmp(PQgetvalue(res, 0, 2), "t") == 0)
        snprintf(err, errcap, "api key %s has expired", id);
    else
        ret = 0;
cleanup:
    PQclear(res);
    return ret;
}

int
tly_ctl_keys_verify(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[ERR_MAX], key[256];
    tly_key_parts_t parts;
    int ret = TLY_CTL_FAIL;
    PGconn *conn = NULL;
    if (read_key(args->pos[0], key, sizeof(key), err, sizeof(err)) != 0)
        goto cleanup;
    if (!tly_key_parse(key, strlen(key), &parts)) {
        snprintf(err, sizeof(err), "api key is malformed (expected %s<16 base32>_<43 base64url>)", TLY_KEY_PREFIX);
        goto cleanup;
    }
    if ((conn = tly_ctl_db_connect(settings->pg_dsn, err, sizeof(err))) == NULL || check_key(conn, &parts, err, sizeof(err)) != 0)
        goto cleanup;
    printf("valid\n");
    ret = TLY_CTL_OK;
cleanup:
    if (ret != TLY_CTL_OK)
        tly_ctl_error("%s", err);
    explicit_bzero(key, sizeof(key));
    explicit_bzero(&parts, sizeof(parts));
    PQfinish(conn);
    return ret;
}
