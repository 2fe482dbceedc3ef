/* `tallyctl limits show|set`. See limits.h and docs/ratelimits.md. */
#include "limits.h"
#include "db.h"
#include "keys.h"
#include "tenants.h"

#include "tally/ratelimit.h"
#include "tally/uuid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ERR_MAX 1024

/* clang-format off */
/* Every row of the subject, with what it comes to: a plan's numbers are the tier's. */
static const char show_sql[] =
    "SELECT mode, CASE WHEN tier IS NOT NULL THEN tier WHEN rate_per_sec IS NOT NULL THEN 'contract' END AS plan,"
    " rate_per_sec AS rate, burst, concurrency, long_polls,"
    " to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS updated_at"
    " FROM rate_limits WHERE subject_kind = $1 AND subject_id = $2 ORDER BY mode";
/* A key's own tier or contract, what rate_limits overrides. */
static const char key_sql[] =
    "SELECT k.id, k.tier, k.rate_per_sec, k.burst, k.tenant_id FROM api_keys k WHERE k.id = $1";
static const char set_sql[] =
    "INSERT INTO rate_limits (subject_kind, subject_id, mode, tier, rate_per_sec, burst, concurrency, long_polls, updated_at)"
    " VALUES ($1, $2, $3, $4, $5::integer, $6::integer, $7::integer, $8::integer, now())"
    " ON CONFLICT (subject_kind, subject_id, mode) DO UPDATE SET tier = EXCLUDED.tier,"
    " rate_per_sec = EXCLUDED.rate_per_sec, burst = EXCLUDED.burst, concurrency = EXCLUDED.concurrency,"
    " long_polls = EXCLUDED.long_polls, updated_at = now()";
/* clang-format on */

/* The subject: kind "key" or "tenant" and its id (a tenant given by name is resolved). */
static int
resolve_subject(PGconn *conn, const tly_ctl_cmd_t *cmd, const tly_ctl_args_t *args, const char **kind, char *id, size_t idcap,
                char *err, size_t errcap)
{
    const char *key = tly_ctl_arg(cmd, args, "key"), *tenant = tly_ctl_arg(cmd, args, "tenant");
    if ((key == NULL) == (tenant == NULL)) {
        snprintf(err, errcap, "give exactly one of --key and --tenant");
        return -1;
    }
    if (tenant != NULL) {
        *kind = "tenant";
        return tly_ctl_tenant_resolve(conn, tenant, id, err, errcap);
    }
    *kind = "key";
    PGresult *res = tly_ctl_db_query(conn, "could not look up api key", key_sql, 1, &key, err, errcap);
    if (res == NULL)
        return -1;
    int found = PQntuples(res) == 1;
    if (found)
        snprintf(id, idcap, "%s", key);
    else
        snprintf(err, errcap, "api key \"%s\" does not exist", key);
    PQclear(res);
    return found ? 0 : -1;
}

/* NULL (not given), or a whole number in [1, TLY_CTL_RATE_MAX]. */
static bool
count_ok(const char *opt, const char *s, char *err, size_t errcap)
{
    return s == NULL || tly_ctl_int_option(opt, s, 1, TLY_CTL_RATE_MAX, err, errcap);
}

static int
print_key_base(PGconn *conn, const char *id, char *err, size_t errcap)
{
    PGresult *res = tly_ctl_db_query(conn, "could not look up api key", key_sql, 1, &id, err, errcap);
    if (res == NULL)
        return -1;
    const char *tier = PQgetvalue(res, 0, 1);
    const tly_tier_t *t = tly_tier_find(PQgetisnull(res, 0, 2) ? tier : "contract");
    int64_t rate = 0, burst = 0;
    if (!PQgetisnull(res, 0, 2))
        rate = strtoll(PQgetvalue(res, 0, 2), NULL, 10), burst = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
    else
        (void)tly_rate_tier(tier, &rate, &burst);
    printf("key %s (tenant %s): %s, %lld/s, burst %lld, %lld in flight, %lld long-polls, %s while redis is down\n", id,
           PQgetvalue(res, 0, 4), t != NULL ? t->name : tier, (long long)rate, (long long)burst,
           (long long)(t != NULL ? t->concurrency : 0), (long long)(t != NULL ? t->long_polls : 0),
           t != NULL && t->store_down == TLY_STORE_DOWN_REFUSE ? "refused" : "its local share");
    PQclear(res);
    return 0;
}

int
tly_ctl_limits_show(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[ERR_MAX], id[64];
    const char *kind;
    int ret = TLY_CTL_FAIL;
    PGresult *res = NULL;
    PGconn *conn = tly_ctl_db_connect(settings->pg_dsn, err, sizeof(err));
    if (conn == NULL || resolve_subject(conn, cmd, args, &kind, id, sizeof(id), err, sizeof(err)) != 0)
        goto cleanup;
    if (strcmp(kind, "key") == 0 && print_key_base(conn, id, err, sizeof(err)) != 0)
        goto cleanup;
    const char *params[] = {kind, id};
    if ((res = tly_ctl_db_query(conn, "could not read rate limits", show_sql, 2, params, err, sizeof(err))) == NULL)
        goto cleanup;
    if (PQntuples(res) == 0)
        printf("%s %s: no rate_limits row (%s)\n", kind, id,
               strcmp(kind, "key") == 0 ? "the key's own tier applies" : "no tenant budget");
    else
        tly_ctl_db_print_table(res, stdout);
    ret = TLY_CTL_OK;
cleanup:
    if (ret != TLY_CTL_OK)
        tly_ctl_error("%s", err);
    PQclear(res);
    PQfinish(conn);
    return ret;
}

int
tly_ctl_limits_set(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[ERR_MAX], id[64];
    const char *kind, *plan = tly_ctl_arg(cmd, args, "plan"), *rate = tly_ctl_arg(cmd, args, "rate"),
                      *burst = tly_ctl_arg(cmd, args, "burst"), *conc = tly_ctl_arg(cmd, args, "concurrency"),
                      *polls = tly_ctl_arg(cmd, args, "long-polls");
    bool shadow = tly_ctl_arg(cmd, args, "shadow") != NULL, clear = tly_ctl_arg(cmd, args, "clear") != NULL;
    int64_t r, b;
    if (plan != NULL && !tly_rate_tier(plan, &r, &b)) {
        tly_ctl_error("invalid value for --plan: \"%s\" (free or standard)", plan);
        return TLY_CTL_USAGE;
    }
    if (!count_ok("rate", rate, err, sizeof(err)) || !count_ok("burst", burst, err, sizeof(err)) ||
        !count_ok("concurrency", conc, err, sizeof(err)) || !count_ok("long-polls", polls, err, sizeof(err))) {
        tly_ctl_error("%s", err);
        return TLY_CTL_USAGE;
    }
    if (burst != NULL && rate == NULL && plan == NULL) {
        tly_ctl_error("--burst needs --rate or --plan");
        return TLY_CTL_USAGE;
    }
    if (clear == (plan != NULL || rate != NULL || conc != NULL || polls != NULL)) {
        tly_ctl_error("give --clear, or one or more of --plan, --rate, --concurrency, --long-polls");
        return TLY_CTL_USAGE;
    }
    int ret = TLY_CTL_FAIL;
    PGresult *res = NULL;
    PGconn *conn = tly_ctl_db_connect(settings->pg_dsn, err, sizeof(err));
    if (conn == NULL || resolve_subject(conn, cmd, args, &kind, id, sizeof(id), err, sizeof(err)) != 0)
        goto cleanup;
    const char *params[] = {kind, id, shadow ? "shadow" : "enforce", plan, rate, burst, conc, polls};
    if ((res = tly_ctl_db_query(conn, "could not set rate limits", set_sql, 8, params, err, sizeof(err))) == NULL)
        goto cleanup;
    fprintf(stderr, "tallyctl: %s limits of %s %s %s; every API instance applies them within its refresh period\n",
            shadow ? "shadow" : "enforced", kind, id, clear ? "cleared" : "set");
    ret = TLY_CTL_OK;
cleanup:
    if (ret != TLY_CTL_OK)
        tly_ctl_error("%s", err);
    PQclear(res);
    PQfinish(conn);
    return ret;
}
