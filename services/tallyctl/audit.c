/* `tallyctl audit`: prints audit events, optionally of one tenant, the last N. */
#include "audit.h"
#include "db.h"
#include "tenants.h"

#include "tally/uuid.h"

#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define ERR_MAX 1024
#define AUDIT_LAST_DEFAULT "50"
#define AUDIT_LAST_MAX 100000

/* clang-format off */
static const char list_sql[] =
    "SELECT * FROM (SELECT to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS occurred_at,"
    " t.name AS tenant, e.actor_type || ':' || e.actor_id AS actor, e.action, e.resource_type || ':' || e.resource_id AS resource,"
    " coalesce(e.request_id, '') AS request_id, e.changes::text AS changes"
    " FROM audit_events e JOIN tenants t ON t.id = e.tenant_id"
    " WHERE $1::uuid IS NULL OR e.tenant_id = $1::uuid"
    " ORDER BY e.occurred_at DESC, e.id DESC LIMIT $2::integer) last ORDER BY occurred_at, resource";
/* clang-format on */

const char *
tly_ctl_operator(void)
{
    static char name[64];
    struct passwd *pw = getpwuid(geteuid());
    if (pw != NULL && pw->pw_name != NULL)
        snprintf(name, sizeof(name), "%s", pw->pw_name);
    else
        snprintf(name, sizeof(name), "uid %u", (unsigned)geteuid());
    return name;
}

int
tly_ctl_audit_list(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[ERR_MAX], tenant_id[TLY_UUID_STR_LEN + 1];
    const char *tenant = tly_ctl_arg(cmd, args, "tenant"), *last = tly_ctl_arg(cmd, args, "last");
    int ret = TLY_CTL_FAIL;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    if (last == NULL)
        last = AUDIT_LAST_DEFAULT;
    if (!tly_ctl_int_option("last", last, 1, AUDIT_LAST_MAX, err, sizeof(err))) {
        tly_ctl_error("%s", err);
        return TLY_CTL_USAGE;
    }
    if ((conn = tly_ctl_db_connect(settings->pg_dsn, err, sizeof(err))) == NULL)
        goto cleanup;
    if (tenant != NULL && tly_ctl_tenant_resolve(conn, tenant, tenant_id, err, sizeof(err)) != 0)
        goto cleanup;
    const char *params[2] = {tenant != NULL ? tenant_id : NULL, last};
    if ((res = tly_ctl_db_query(conn, "could not list audit events", list_sql, 2, params, err, sizeof(err))) == NULL)
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
