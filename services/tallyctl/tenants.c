/* Tenants: create (idempotent by name), list, quotas, resolve an id or a name. */
#include "tenants.h"
#include "audit.h"
#include "db.h"

#include "tally/uuid.h"

#include <stdlib.h>
#include <string.h>

#define ERR_MAX 1024

int
tly_ctl_tenant_resolve(PGconn *conn, const char *ref, char *id, char *err, size_t errcap)
{
    tly_uuid_t u;
    char canon[TLY_UUID_STR_LEN + 1];
    const char *param = ref, *sql = "SELECT id FROM tenants WHERE name = $1";
    if (tly_uuid_parse(ref, &u)) {
        tly_uuid_format(&u, canon);
        param = canon, sql = "SELECT id FROM tenants WHERE id = $1::uuid";
    }
    PGresult *res = tly_ctl_db_query(conn, "could not look up tenant", sql, 1, &param, err, errcap);
    if (res == NULL)
        return -1;
    int found = PQntuples(res) == 1;
    if (found)
        snprintf(id, TLY_UUID_STR_LEN + 1, "%s", PQgetvalue(res, 0, 0));
    else
        snprintf(err, errcap, "tenant \"%s\" does not exist", ref);
    PQclear(res);
    return found ? 0 : -1;
}

static int
check_name(const char *name, char *err, size_t errcap)
{
    tly_uuid_t u;
    size_t len = strlen(name);
    if (len == 0 || len > TLY_CTL_TENANT_NAME_MAX) {
        snprintf(err, errcap, "tenant name must have 1 to %d bytes", TLY_CTL_TENANT_NAME_MAX);
        return -1;
    }
    if (tly_uuid_parse(name, &u)) {
        snprintf(err, errcap, "tenant name \"%s\" looks like a tenant id; choose another", name);
        return -1;
    }
    for (const char *p = name; *p != '\0'; ++p) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            snprintf(err, errcap, "tenant name must not contain control characters");
            return -1;
        }
    }
    return 0;
}

int
tly_ctl_tenants_create(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[ERR_MAX], id[TLY_UUID_STR_LEN + 1];
    const char *name = tly_ctl_arg(cmd, args, "name");
    int ret = TLY_CTL_FAIL;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    if (check_name(name, err, sizeof(err)) != 0) {
        tly_ctl_error("%s", err);
        return TLY_CTL_USAGE;
    }
    tly_uuid_t u = tly_uuid_v4();
    tly_uuid_format(&u, id);
    const char *params[] = {id, name};
    if ((conn = tly_ctl_db_connect(settings->pg_dsn, err, sizeof(err))) == NULL)
        goto cleanup;
    /* one statement, so two concurrent creates of one name both print the
       winner's id; DO UPDATE (a no-op) makes RETURNING yield the existing row */
    res = tly_ctl_db_query(conn, "could not create tenant",
                           "INSERT INTO tenants (id, name) VALUES ($1::uuid, $2) "
                           "ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id, (id = $1::uuid) AS created",
                           2, params, err, sizeof(err));
    if (res == NULL)
        goto cleanup;
    if (strcmp(PQgetvalue(res, 0, 1), "t") != 0)
        fprintf(stderr, "tallyctl: tenant \"%s\" exists already\n", name);
    printf("%s\n", PQgetvalue(res, 0, 0));
    ret = TLY_CTL_OK;
cleanup:
    if (ret != TLY_CTL_OK)
        tly_ctl_error("%s", err);
    PQclear(res);
    PQfinish(conn);
    return ret;
}

int
tly_ctl_tenants_list(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[ERR_MAX];
    int ret = TLY_CTL_FAIL;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    if ((conn = tly_ctl_db_connect(settings->pg_dsn, err, sizeof(err))) == NULL)
        goto cleanup;
    res =
        tly_ctl_db_query(conn, "could not list tenants",
                         "SELECT id, name, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS created_at "
                         "FROM tenants ORDER BY tenants.created_at, id",
                         0, NULL, err, sizeof(err));
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

/* The quotas: option name, column; the defaults and bounds are the columns' (migrations/0006). */
static const struct {
    const char *option, *column;
} quotas[] = {
    {"api-keys", "max_api_keys"},
    {"webhook-endpoints", "max_webhook_endpoints"},
    {"long-polls", "max_long_polls"},
};
#define NQUOTAS (sizeof(quotas) / sizeof(quotas[0]))

/* clang-format off */
/* $2..$4 NULL keep a quota; the audit event records the values before and after. */
static const char quota_sql[] =
    "WITH old AS (SELECT id, max_api_keys, max_webhook_endpoints, max_long_polls FROM tenants WHERE id = $1::uuid FOR UPDATE),"
    " upd AS (UPDATE tenants t SET max_api_keys = coalesce($2::integer, t.max_api_keys),"
    "         max_webhook_endpoints = coalesce($3::integer, t.max_webhook_endpoints),"
    "         max_long_polls = coalesce($4::integer, t.max_long_polls)"
    "         FROM old WHERE t.id = old.id AND ($2::integer IS NOT NULL OR $3::integer IS NOT NULL OR $4::integer IS NOT NULL)"
    "         RETURNING t.id, t.max_api_keys, t.max_webhook_endpoints, t.max_long_polls),"
    " a AS (INSERT INTO audit_events (tenant_id, actor_type, actor_id, action, resource_type, resource_id, changes)"
    "       SELECT upd.id, 'operator', $5, 'tenant.quotas_changed', 'tenant', upd.id::text,"
    "       jsonb_build_object('before', jsonb_build_object('api_keys', old.max_api_keys,"
    "       'webhook_endpoints', old.max_webhook_endpoints, 'long_polls', old.max_long_polls),"
    "       'after', jsonb_build_object('api_keys', upd.max_api_keys, 'webhook_endpoints', upd.max_webhook_endpoints,"
    "       'long_polls', upd.max_long_polls)) FROM upd JOIN old ON old.id = upd.id)"
    " SELECT coalesce(upd.max_api_keys, old.max_api_keys) AS api_keys,"
    " coalesce(upd.max_webhook_endpoints, old.max_webhook_endpoints) AS webhook_endpoints,"
    " coalesce(upd.max_long_polls, old.max_long_polls) AS long_polls"
    " FROM old LEFT JOIN upd ON upd.id = old.id";
/* clang-format on */

int
tly_ctl_tenants_quota(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[ERR_MAX], id[TLY_UUID_STR_LEN + 1];
    const char *params[2 + NQUOTAS] = {id};
    int ret = TLY_CTL_FAIL;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    for (size_t i = 0; i < NQUOTAS; ++i) {
        params[1 + i] = tly_ctl_arg(cmd, args, quotas[i].option);
        if (params[1 + i] != NULL && !tly_ctl_int_option(quotas[i].option, params[1 + i], 0, 100000, err, sizeof(err))) {
            tly_ctl_error("%s", err);
            return TLY_CTL_USAGE;
        }
    }
    params[1 + NQUOTAS] = tly_ctl_operator();
    if ((conn = tly_ctl_db_connect(settings->pg_dsn, err, sizeof(err))) == NULL ||
        tly_ctl_tenant_resolve(conn, args->pos[0], id, err, sizeof(err)) != 0)
        goto cleanup;
    /* the database's CHECK bounds a quota (e.g. 100000 endpoints is too many): its message names the column */
    if ((res = tly_ctl_db_query(conn, "could not change quotas", quota_sql, 2 + NQUOTAS, params, err, sizeof(err))) == NULL)
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
