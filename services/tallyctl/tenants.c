/* Tenants: create (idempotent by name), list, resolve an id or a name. */
#include "tenants.h"
#include "db.h"

#include "tally/uuid.h"

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
