/* Replay's shadow schema: DDL, resuming one. See replay_internal.h. */
#include "replay_internal.h"

/* --- the shadow schema ---------------------------------------------------- */

/* CREATE [UNIQUE] INDEX ... name ON public.t USING ... -> ... ON <schema>.t USING ... */
static int
index_into_shadow(tly_ctl_replay_t *r, const char *t, const char *def, char *sql, size_t cap, char *err, size_t errcap)
{
    char on[200], target[200];
    snprintf(on, sizeof(on), " ON public.%s ", t);
    snprintf(target, sizeof(target), " ON %s.%s ", r->schema, t);
    const char *at = strstr(def, on);
    if (at == NULL) {
        snprintf(err, errcap, "could not copy index: %s", def);
        return -1;
    }
    snprintf(sql, cap, "%.*s%s%s", (int)(at - def), def, target, at + strlen(on));
    return 0;
}

/* Creates the read-model tables like public's: same columns, defaults, checks, and constraint and index names. */
static int
create_table_like(tly_ctl_replay_t *r, const char *t, char *err, size_t errcap)
{
    if (tly_ctl_replay__execf(r, err, errcap, "CREATE TABLE %s.%s (LIKE public.%s INCLUDING ALL EXCLUDING INDEXES)", r->schema, t,
                              t) != 0)
        return -1;
    char q[160];
    snprintf(q, sizeof(q), "public.%s", t);
    const char *vals[] = {q};
    /* unique/primary/exclusion constraints by name, then the other unique indexes by name (ON CONFLICT needs
       them); the rest are built once the bulk is in (create_deferred_indexes): cheaper than maintained per row */
    PGresult *res = tly_ctl_db_query(r->conn, "could not read the indexes of a read model",
                                     "SELECT 'ALTER TABLE %s ADD CONSTRAINT ' || quote_ident(c.conname) || ' ' || "
                                     "pg_get_constraintdef(c.oid) FROM pg_constraint c WHERE c.conrelid = $1::regclass "
                                     "AND c.contype IN ('p', 'u', 'x') "
                                     "UNION ALL SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = "
                                     "$1::regclass AND i.indisunique AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE "
                                     "c.conindid = i.indexrelid AND c.conrelid = i.indrelid)",
                                     1, vals, err, errcap);
    if (res == NULL)
        return -1;
    int ret = 0;
    for (int i = 0; i < PQntuples(res) && ret == 0; ++i) {
        const char *def = PQgetvalue(res, i, 0);
        char sql[2048];
        if (strncmp(def, "ALTER TABLE %s", 14) == 0)
            snprintf(sql, sizeof(sql), "ALTER TABLE %s.%s%s", r->schema, t, def + 14);
        else if ((ret = index_into_shadow(r, t, def, sql, sizeof(sql), err, errcap)) != 0)
            break;
        ret = tly_ctl_replay__exec(r, sql, err, errcap);
    }
    PQclear(res);
    return ret;
}

/*
 * Builds the shadow's non-unique indexes, like public's and with their names,
 * once the bulk of the events is in (IF NOT EXISTS: a resumed replay may
 * have built them already).
 */
int
tly_ctl_replay__create_deferred_indexes(tly_ctl_replay_t *r, char *err, size_t errcap)
{
    int ret = 0;
    for (int k = 0; k < r->ntables && ret == 0; ++k) {
        char q[160];
        snprintf(q, sizeof(q), "public.%s", r->tables[k]);
        const char *vals[] = {q};
        PGresult *res = tly_ctl_db_query(r->conn, "could not read the indexes of a read model",
                                         "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = $1::regclass "
                                         "AND NOT i.indisunique AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE "
                                         "c.conindid = i.indexrelid AND c.conrelid = i.indrelid)",
                                         1, vals, err, errcap);
        if (res == NULL)
            return -1;
        for (int i = 0; i < PQntuples(res) && ret == 0; ++i) {
            const char *def = PQgetvalue(res, i, 0);
            char sql[2048];
            if (strncmp(def, "CREATE INDEX ", 13) != 0) {
                snprintf(err, errcap, "could not copy index: %s", def);
                ret = -1;
                break;
            }
            char ine[2048];
            snprintf(ine, sizeof(ine), "CREATE INDEX IF NOT EXISTS %s", def + 13);
            if ((ret = index_into_shadow(r, r->tables[k], ine, sql, sizeof(sql), err, errcap)) == 0)
                ret = tly_ctl_replay__exec(r, sql, err, errcap);
        }
        PQclear(res);
    }
    return ret;
}

/* _replay_applied: its ids are random bytes, so the values are stored as they are, never compressed (pglz would try). */
static int
create_applied(tly_ctl_replay_t *r, const char *if_not_exists, char *err, size_t errcap)
{
    return tly_ctl_replay__execf(r, err, errcap,
                                 "CREATE TABLE %s%s._replay_applied (ids bytea NOT NULL); "
                                 "ALTER TABLE %s._replay_applied ALTER COLUMN ids SET STORAGE EXTERNAL",
                                 if_not_exists, r->schema, r->schema);
}

static int
create_shadow(tly_ctl_replay_t *r, const char *until_text, char *err, size_t errcap)
{
    if (tly_ctl_replay__exec(r, "BEGIN", err, errcap) != 0)
        return -1;
    if (tly_ctl_replay__execf(r, err, errcap, "CREATE SCHEMA %s", r->schema) != 0)
        goto fail;
    for (int i = 0; i < r->ntables; ++i)
        if (create_table_like(r, r->tables[i], err, errcap) != 0)
            goto fail;
    if (tly_ctl_replay__execf(r, err, errcap,
                              "CREATE TABLE %s._replay_meta (mode text NOT NULL, models text NOT NULL, until text NOT NULL, "
                              "state text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz)",
                              r->schema) != 0 ||
        tly_ctl_replay__execf(r, err, errcap,
                              "CREATE TABLE %s._replay_positions (partition integer PRIMARY KEY, next_offset bigint NOT NULL, "
                              "end_offset bigint NOT NULL)",
                              r->schema) != 0 ||
        /* no index: ids are deduplicated in memory; this is read whole, on resume only */
        create_applied(r, "", err, errcap) != 0 ||
        tly_ctl_replay__execf(
            r, err, errcap,
            "CREATE TABLE %s._replay_failures (partition integer NOT NULL, \"offset\" bigint NOT NULL, event_id uuid, "
            "type text, error text NOT NULL, PRIMARY KEY (partition, \"offset\"))",
            r->schema) != 0 ||
        /* The projections NOTIFY tally_jobs for long-polling readers; a replay must not wake them a million times.
           search_path puts this schema before pg_catalog, so this no-op is the pg_notify they call. */
        tly_ctl_replay__execf(r, err, errcap,
                              "CREATE FUNCTION %s.pg_notify(text, text) RETURNS void LANGUAGE sql AS 'SELECT NULL::void'",
                              r->schema) != 0)
        goto fail;
    const char *mode = r->o.mode == TLY_REPLAY_SWAP ? "swap" : r->o.mode == TLY_REPLAY_COPY ? "copy" : "verify";
    const char *vals[] = {mode, r->models_text, until_text};
    PGresult *res = tly_ctl_replay__queryf(
        r, "could not write replay metadata", 3, vals, err, errcap,
        "INSERT INTO %s._replay_meta (mode, models, until, state) VALUES ($1, $2, $3, 'running')", r->schema);
    if (res == NULL)
        goto fail;
    PQclear(res);
    if (tly_ctl_replay__exec(r, "COMMIT", err, errcap) != 0)
        goto fail;
    r->created = true;
    return 0;
fail:
    tly_ctl_replay__rollback(r);
    return -1;
}

int
tly_ctl_replay__drop_schema(tly_ctl_replay_t *r, const char *schema, char *err, size_t errcap)
{
    return tly_ctl_replay__execf(r, err, errcap, "DROP SCHEMA IF EXISTS %s CASCADE", schema);
}

/* Adds the uuids of column `col` of shadow table `t` to `set`; `*count` (optional) gets how many. */
static int
load_ids(tly_ctl_replay_t *r, const char *t, const char *col, tly_ctl_idset_t *set, int64_t *count, char *err, size_t errcap)
{
    PGresult *res = tly_ctl_replay__queryf(r, "could not read the ids of a shadow table", 0, NULL, err, errcap,
                                           "SELECT %s FROM %s.%s", col, r->schema, t);
    if (res == NULL)
        return -1;
    for (int i = 0; i < PQntuples(res); ++i) {
        tly_uuid_t u;
        if (tly_uuid_parse(PQgetvalue(res, i, 0), &u))
            tly_ctl_idset_add(set, u.b);
    }
    if (count != NULL)
        *count = PQntuples(res);
    PQclear(res);
    return 0;
}

/* Loads the applied ids of _replay_applied, and of _replay_dedup in a shadow an earlier version began (it then gets
   _replay_applied for the rest). */
static int
load_applied(tly_ctl_replay_t *r, int64_t *count, char *err, size_t errcap)
{
    char q[160];
    snprintf(q, sizeof(q), "%s._replay_dedup", r->schema);
    const char *vals[] = {q};
    PGresult *res =
        tly_ctl_db_query(r->conn, "could not look up table", "SELECT to_regclass($1) IS NOT NULL", 1, vals, err, errcap);
    if (res == NULL)
        return -1;
    bool old = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    *count = 0;
    if (old && (load_ids(r, "_replay_dedup", "event_id", &r->seen, count, err, errcap) != 0 ||
                create_applied(r, "IF NOT EXISTS ", err, errcap) != 0))
        return -1;
    if ((res = tly_ctl_replay__queryf(r, "could not read applied event ids", 0, NULL, err, errcap,
                                      "SELECT ids FROM %s._replay_applied", r->schema)) == NULL)
        return -1;
    for (int i = 0; i < PQntuples(res); ++i) {
        size_t n = 0;
        unsigned char *ids = PQunescapeBytea((const unsigned char *)PQgetvalue(res, i, 0), &n);
        if (ids == NULL)
            abort();
        for (size_t k = 0; k + 16 <= n; k += 16)
            tly_ctl_idset_add(&r->seen, ids + k);
        *count += (int64_t)(n / 16);
        PQfreemem(ids);
    }
    PQclear(res);
    return 0;
}

/* Loads positions, applied ids and the jobs already written of a shadow being resumed. */
static int
load_progress(tly_ctl_replay_t *r, char *err, size_t errcap)
{
    PGresult *res = tly_ctl_replay__queryf(r, "could not read replay positions", 0, NULL, err, errcap,
                                           "SELECT partition, next_offset, end_offset FROM %s._replay_positions", r->schema);
    if (res == NULL)
        return -1;
    for (int i = 0; i < PQntuples(res); ++i) {
        int p = atoi(PQgetvalue(res, i, 0));
        if (p >= 0 && p < r->nparts) {
            r->pos[p] = strtoll(PQgetvalue(res, i, 1), NULL, 10);
            r->end[p] = strtoll(PQgetvalue(res, i, 2), NULL, 10);
        }
    }
    int stored = PQntuples(res);
    PQclear(res);
    int64_t applied = 0;
    if (load_applied(r, &applied, err, errcap) != 0 ||
        ((r->mask & TLY_MODEL_JOBS) && load_ids(r, "jobs", "id", &r->jobs, NULL, err, errcap) != 0))
        return -1;
    if (!r->o.quiet && stored > 0)
        fprintf(stderr, "tallyctl: resuming %s (%" PRId64 " events applied before)\n", r->schema, applied);
    return 0;
}

typedef struct st_shadow_info_t {
    char name[TLY_CTL_SCHEMA_MAX];
    int n;
    char mode[16], models[128], until[128], state[16];
} shadow_info_t;

/* Lists tally_shadow_<n> schemas (and --into's) with their metadata. Returns the count; -1 on error. */
static int
list_shadows(tly_ctl_replay_t *r, shadow_info_t *out, int cap, int *max_n, char *err, size_t errcap)
{
    PGresult *res = tly_ctl_db_query(r->conn, "could not list shadow schemas",
                                     "SELECT nspname, substring(nspname from 14)::int FROM pg_namespace "
                                     "WHERE nspname ~ '^tally_shadow_[0-9]{1,9}$' ORDER BY 2",
                                     0, NULL, err, errcap);
    if (res == NULL)
        return -1;
    int n = 0;
    *max_n = 0;
    for (int i = 0; i < PQntuples(res); ++i) {
        int num = atoi(PQgetvalue(res, i, 1));
        if (num > *max_n)
            *max_n = num;
        if (n == cap)
            continue;
        shadow_info_t *s = &out[n];
        memset(s, 0, sizeof(*s));
        snprintf(s->name, sizeof(s->name), "%s", PQgetvalue(res, i, 0));
        s->n = num;
        char q[160];
        snprintf(q, sizeof(q), "%s._replay_meta", s->name);
        const char *vals[] = {q};
        PGresult *has = tly_ctl_db_query(r->conn, "could not inspect a shadow schema", "SELECT to_regclass($1) IS NOT NULL", 1,
                                         vals, err, errcap);
        if (has == NULL) {
            PQclear(res);
            return -1;
        }
        bool meta = strcmp(PQgetvalue(has, 0, 0), "t") == 0;
        PQclear(has);
        if (!meta)
            continue;
        PGresult *m = tly_ctl_replay__queryf(r, "could not read replay metadata", 0, NULL, err, errcap,
                                             "SELECT mode, models, until, state FROM %s._replay_meta LIMIT 1", s->name);
        if (m == NULL) {
            PQclear(res);
            return -1;
        }
        if (PQntuples(m) == 1) {
            snprintf(s->mode, sizeof(s->mode), "%s", PQgetvalue(m, 0, 0));
            snprintf(s->models, sizeof(s->models), "%s", PQgetvalue(m, 0, 1));
            snprintf(s->until, sizeof(s->until), "%s", PQgetvalue(m, 0, 2));
            snprintf(s->state, sizeof(s->state), "%s", PQgetvalue(m, 0, 3));
            ++n;
        }
        PQclear(m);
    }
    PQclear(res);
    return n;
}

/* Picks the shadow schema: resume an unfinished one with the same options, or create tally_shadow_<n+1> / --into. */
int
tly_ctl_replay__choose_shadow(tly_ctl_replay_t *r, char *err, size_t errcap)
{
    shadow_info_t found[64];
    int max_n = 0;
    const char *mode = r->o.mode == TLY_REPLAY_SWAP ? "swap" : r->o.mode == TLY_REPLAY_COPY ? "copy" : "verify";
    const char *until_text = r->o.until != NULL ? r->o.until : "";
    int n = list_shadows(r, found, 64, &max_n, err, errcap);
    if (n < 0)
        return -1;
    bool resume = false;
    if (r->o.into != NULL) {
        snprintf(r->schema, sizeof(r->schema), "%s", r->o.into);
        char q[160];
        snprintf(q, sizeof(q), "%s", r->o.into);
        const char *vals[] = {q};
        PGresult *res = tly_ctl_db_query(r->conn, "could not look up schema",
                                         "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1), "
                                         "to_regclass(quote_ident($1) || '._replay_meta') IS NOT NULL",
                                         1, vals, err, errcap);
        if (res == NULL)
            return -1;
        bool exists = strcmp(PQgetvalue(res, 0, 0), "t") == 0, ours = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
        PQclear(res);
        if (exists && !ours) {
            snprintf(err, errcap, "schema %s exists and is not a replay's: choose another --into", r->o.into);
            return -1;
        }
        if (exists && r->o.restart) {
            if (tly_ctl_replay__drop_schema(r, r->schema, err, errcap) != 0)
                return -1;
        } else if (exists) {
            PGresult *m = tly_ctl_replay__queryf(r, "could not read replay metadata", 0, NULL, err, errcap,
                                                 "SELECT models, until, state FROM %s._replay_meta", r->schema);
            if (m == NULL)
                return -1;
            bool same = PQntuples(m) == 1 && strcmp(PQgetvalue(m, 0, 0), r->models_text) == 0 &&
                        strcmp(PQgetvalue(m, 0, 1), until_text) == 0;
            bool done = PQntuples(m) == 1 && strcmp(PQgetvalue(m, 0, 2), "running") != 0;
            PQclear(m);
            if (done) {
                snprintf(err, errcap, "schema %s holds a finished replay; --restart rebuilds it", r->schema);
                return -1;
            }
            if (!same) {
                snprintf(err, errcap,
                         "schema %s holds an unfinished replay with other options; run with the same "
                         "options to resume it, or add --restart",
                         r->schema);
                return -1;
            }
            resume = true;
        }
    } else {
        for (int i = 0; i < n; ++i) {
            bool unfinished = strcmp(found[i].state, "running") == 0;
            if (!unfinished || strcmp(found[i].mode, mode) != 0)
                continue;
            if (r->o.restart || r->o.mode == TLY_REPLAY_VERIFY) {
                if (!r->o.quiet)
                    fprintf(stderr, "tallyctl: dropping unfinished %s\n", found[i].name);
                if (tly_ctl_replay__drop_schema(r, found[i].name, err, errcap) != 0)
                    return -1;
                continue;
            }
            if (strcmp(found[i].models, r->models_text) != 0 || strcmp(found[i].until, until_text) != 0) {
                snprintf(err, errcap,
                         "%s holds an unfinished replay with other options (--projection %s%s%s); run with "
                         "the same options to resume it, or add --restart",
                         found[i].name, found[i].models, found[i].until[0] ? " --until " : "", found[i].until);
                return -1;
            }
            if (!resume) {
                memcpy(r->schema, found[i].name, sizeof(r->schema));
                r->shadow_n = found[i].n;
                resume = true;
            }
        }
        if (!resume) {
            r->shadow_n = max_n + 1;
            snprintf(r->schema, sizeof(r->schema), "tally_shadow_%d", r->shadow_n);
        }
    }
    if (resume)
        return load_progress(r, err, errcap);
    return create_shadow(r, until_text, err, errcap);
}
