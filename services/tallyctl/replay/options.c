/* Replay's options: --models, --until, schema names. See replay_internal.h. */
#include "replay_internal.h"

/* --- read models --------------------------------------------------------- */

/* The models of projection.h by table name. "transfers" is every bit of
   TLY_MODEL_ALL that is not one of the three below (the saga's model), and
   exists only when that is non-zero and public.transfers is a table. */
#define KNOWN_MASK ((unsigned)TLY_MODEL_ACCOUNTS | (unsigned)TLY_MODEL_LEDGER | (unsigned)TLY_MODEL_JOBS)
static const struct {
    const char *name;
    const char *table;
    unsigned mask;
} model_names[] = {
    {"accounts", "accounts", TLY_MODEL_ACCOUNTS},
    {"ledger_entries", "ledger_entries", TLY_MODEL_LEDGER},
    {"ledger", "ledger_entries", TLY_MODEL_LEDGER},
    {"jobs", "jobs", TLY_MODEL_JOBS},
    {"transfers", "transfers", (unsigned)TLY_MODEL_ALL & ~KNOWN_MASK},
};
#define NMODEL_NAMES (sizeof(model_names) / sizeof(model_names[0]))

static bool
table_exists(PGconn *conn, const char *table)
{
    char err[256], q[160];
    snprintf(q, sizeof(q), "public.%s", table);
    const char *vals[] = {q};
    PGresult *res = tly_ctl_db_query(conn, "look up table", "SELECT to_regclass($1) IS NOT NULL", 1, vals, err, sizeof(err));
    bool ok = res != NULL && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return ok;
}

static bool
model_available(PGconn *conn, size_t i)
{
    return model_names[i].mask != 0 && (conn == NULL || table_exists(conn, model_names[i].table));
}

int
tly_ctl_models_parse(PGconn *conn, const char *list, unsigned *mask, const char **tables, int *ntables, char *err, size_t errcap)
{
    *mask = 0;
    *ntables = 0;
    if (list == NULL) {
        for (size_t i = 0; i < NMODEL_NAMES; ++i) {
            if (strcmp(model_names[i].name, model_names[i].table) != 0 || !model_available(conn, i))
                continue;
            *mask |= model_names[i].mask;
            tables[(*ntables)++] = model_names[i].table;
        }
        return 0;
    }
    for (const char *p = list; *p != '\0';) {
        size_t n = strcspn(p, ",");
        size_t i;
        for (i = 0; i < NMODEL_NAMES; ++i)
            if (strlen(model_names[i].name) == n && memcmp(model_names[i].name, p, n) == 0)
                break;
        if (i == NMODEL_NAMES || !model_available(conn, i)) {
            snprintf(err, errcap, "unknown read model \"%.*s\" (known: accounts, ledger_entries, jobs%s)", (int)n, p,
                     model_available(conn, 4) ? ", transfers" : "");
            return -1;
        }
        if ((*mask & model_names[i].mask) == 0) {
            *mask |= model_names[i].mask;
            tables[(*ntables)++] = model_names[i].table;
        }
        p += n;
        p += strspn(p, ",");
    }
    if (*ntables == 0) {
        snprintf(err, errcap, "--projection names no read model");
        return -1;
    }
    return 0;
}

int
tly_ctl_until_parse(const char *s, int64_t *until_us, bool *has_time, int64_t *ends, int maxends, int *nends, char *err,
                    size_t errcap)
{
    *has_time = false;
    *nends = 0;
    for (int i = 0; i < maxends; ++i)
        ends[i] = -1;
    if (tly_clock_parse_rfc3339(s, until_us)) {
        *has_time = true;
        return 0;
    }
    for (const char *p = s; *p != '\0';) {
        char *end;
        errno = 0;
        long part = strtol(p, &end, 10);
        if (end == p || *end != ':' || part < 0 || part >= maxends || errno != 0)
            goto bad;
        p = end + 1;
        long long off = strtoll(p, &end, 10);
        if (end == p || off < 0 || errno != 0 || (*end != ',' && *end != '\0'))
            goto bad;
        ends[part] = off;
        if (part + 1 > *nends)
            *nends = (int)part + 1;
        p = *end == ',' ? end + 1 : end;
    }
    if (*nends > 0)
        return 0;
bad:
    snprintf(err, errcap, "--until must be an RFC 3339 time (2026-11-22T14:00:00Z) or partition:offset pairs (0:1200,1:980)");
    return -1;
}

bool
tly_ctl_schema_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63 || !(islower((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (size_t i = 0; i < n; ++i)
        if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '_'))
            return false;
    return strcmp(s, "public") != 0 && strncmp(s, "pg_", 3) != 0 && strcmp(s, "information_schema") != 0;
}
