/* tallyctl bootstrap: the tenant and the API key of TALLY_BOOTSTRAP_API_KEY,
   created once (idempotent by tenant name and key id). See bootstrap.h. */
#include "bootstrap.h"
#include "db.h"

#include "tally/auth.h"
#include "tally/uuid.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ERR_MAX 1024
#define DEFAULT_SCOPES "read,write,admin"

/* One statement: the tenant (the existing one when the name is taken), the
   key unless its id exists; then what is stored under that id, to tell "the
   same key again" from "another key with this id". The outer SELECT sees the
   tables as they were before the CTEs, so a new key reads as created = 1 and
   no stored row. */
/* clang-format off */
static const char bootstrap_sql[] =
    "WITH t AS (INSERT INTO tenants (id, name) VALUES ($1::uuid, $2)"
    "           ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id),"
    " k AS (INSERT INTO api_keys (id, tenant_id, secret_hash, scopes, label)"
    "       SELECT $3, t.id, decode($4, 'hex'), $5::text[], 'bootstrap' FROM t"
    "       ON CONFLICT (id) DO NOTHING RETURNING id)"
    " SELECT (SELECT count(*) FROM k) AS created, t.id AS tenant_id,"
    "        s.tenant_id = t.id AS same_tenant, s.secret_hash = decode($4, 'hex') AS same_secret,"
    "        s.revoked_at IS NOT NULL AS revoked"
    " FROM t LEFT JOIN api_keys s ON s.id = $3";
/* clang-format on */

static void
hex_encode(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; ++i)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* Reads and checks the key and the options before any connection. */
static int
read_request(const tly_ctl_cmd_t *cmd, const tly_ctl_args_t *args, tly_key_parts_t *parts, char *scopes_pg, size_t scopes_cap,
             char *err, size_t errcap)
{
    const char *key = getenv(TLY_CTL_BOOTSTRAP_KEY_ENV);
    const char *scopes = tly_ctl_arg(cmd, args, "scopes") != NULL ? tly_ctl_arg(cmd, args, "scopes") : DEFAULT_SCOPES;
    const char *tenant = tly_ctl_arg(cmd, args, "tenant");
    int bits = tly_scopes_parse(scopes);
    if (key == NULL || key[0] == '\0') {
        snprintf(err, errcap, "%s is not set (the key to create, e.g. the one your test suite uses)", TLY_CTL_BOOTSTRAP_KEY_ENV);
        return -1;
    }
    if (!tly_key_parse(key, strlen(key), parts)) {
        snprintf(err, errcap, "%s is malformed (expected %s<16 base32>_<43 base64url>, as keys create prints)",
                 TLY_CTL_BOOTSTRAP_KEY_ENV, TLY_KEY_PREFIX);
        return -1;
    }
    if (bits <= 0) {
        snprintf(err, errcap, "invalid value for --scopes: \"%s\" (one or more of read, write, admin, comma-separated)", scopes);
        return -1;
    }
    if (tenant[0] == '\0') {
        snprintf(err, errcap, "invalid value for --tenant: the name is empty");
        return -1;
    }
    tly_scopes_format_pg(bits, scopes_pg, scopes_cap);
    return 0;
}

static bool
is_true(const PGresult *res, int col)
{
    return strcmp(PQgetvalue(res, 0, col), "t") == 0;
}

int
tly_ctl_bootstrap(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[ERR_MAX], tenant_id[TLY_UUID_STR_LEN + 1], scopes[64], hash_hex[2 * TLY_KEY_HASH_LEN + 1];
    uint8_t hash[TLY_KEY_HASH_LEN];
    const char *tenant = tly_ctl_arg(cmd, args, "tenant");
    tly_key_parts_t parts;
    int ret = TLY_CTL_FAIL;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    if (read_request(cmd, args, &parts, scopes, sizeof(scopes), err, sizeof(err)) != 0) {
        tly_ctl_error("%s", err);
        explicit_bzero(&parts, sizeof(parts));
        return TLY_CTL_USAGE;
    }
    tly_key_hash(parts.secret, hash);
    hex_encode(hash, sizeof(hash), hash_hex);
    tly_uuid_t u = tly_uuid_v4();
    tly_uuid_format(&u, tenant_id);
    const char *params[] = {tenant_id, tenant, parts.id, hash_hex, scopes};
    if ((conn = tly_ctl_db_connect(settings->pg_dsn, err, sizeof(err))) == NULL)
        goto cleanup;
    res = tly_ctl_db_query(conn, "could not bootstrap the api key", bootstrap_sql, 5, params, err, sizeof(err));
    if (res == NULL)
        goto cleanup;
    snprintf(tenant_id, sizeof(tenant_id), "%s", PQgetvalue(res, 0, 1));
    if (strcmp(PQgetvalue(res, 0, 0), "1") == 0) {
        fprintf(stderr, "tallyctl: bootstrap api key %s created for tenant %s (%s)\n", parts.id, tenant, tenant_id);
    } else if (PQgetisnull(res, 0, 2) || !is_true(res, 2) || !is_true(res, 3)) {
        snprintf(err, sizeof(err), "api key %s exists already with another secret or tenant; choose another key", parts.id);
        goto cleanup;
    } else if (is_true(res, 4)) {
        snprintf(err, sizeof(err), "api key %s is revoked; choose another key", parts.id);
        goto cleanup;
    } else {
        fprintf(stderr, "tallyctl: bootstrap api key %s exists already for tenant %s (%s)\n", parts.id, tenant, tenant_id);
    }
    printf("%s\n", tenant_id);
    ret = TLY_CTL_OK;
cleanup:
    if (ret != TLY_CTL_OK)
        tly_ctl_error("%s", err);
    explicit_bzero(&parts, sizeof(parts));
    explicit_bzero(hash_hex, sizeof(hash_hex));
    PQclear(res);
    PQfinish(conn);
    return ret;
}
