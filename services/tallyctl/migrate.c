/*
 * Applies migrations. A run holds a session advisory lock from before it reads
 * schema_migrations until it disconnects, so a second concurrent run waits and
 * then finds nothing to do. Each file runs in its own transaction together
 * with its schema_migrations row: a file is either applied and recorded, or
 * neither. Files already applied must be unchanged (same SHA-256) and still
 * present; a new file must come after every applied one. Any of those refuses
 * the whole run before anything is applied.
 */
#include "migrate.h"
#include "db.h"
#include "migrations.h"

#include "tally/clock.h"
#include "tally/pg.h"

#include <stdlib.h>
#include <string.h>

#define ERR_MAX 2048

static const char create_table_sql[] = "CREATE TABLE IF NOT EXISTS schema_migrations ("
                                       " version integer PRIMARY KEY,"
                                       " name text NOT NULL,"
                                       " checksum text NOT NULL,"
                                       " applied_at timestamptz NOT NULL DEFAULT now())";

/* Takes the lock, telling the operator when another run holds it. */
static int
take_lock(PGconn *conn, char *err, size_t errcap)
{
    const char *key[] = {TLY_CTL_MIGRATE_LOCK_KEY};
    int ret = -1;
    PGresult *res =
        tly_ctl_db_query(conn, "could not take the migration lock", "SELECT pg_try_advisory_lock($1::bigint)", 1, key, err, errcap);
    if (res == NULL)
        goto cleanup;
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        PQclear(res);
        fprintf(stderr, "tallyctl: waiting for another tallyctl migrate to finish\n");
        res =
            tly_ctl_db_query(conn, "could not take the migration lock", "SELECT pg_advisory_lock($1::bigint)", 1, key, err, errcap);
        if (res == NULL)
            goto cleanup;
    }
    ret = 0;
cleanup:
    PQclear(res);
    return ret;
}

static bool
is_applied(const PGresult *applied, int version)
{
    for (int r = 0; r < PQntuples(applied); ++r)
        if (atoi(PQgetvalue(applied, r, 0)) == version)
            return true;
    return false;
}

/* Every applied version still has its file, unchanged. */
static int
check_applied(const char *dir, const tly_migration_set_t *set, const PGresult *applied, char *err, size_t errcap)
{
    for (int r = 0; r < PQntuples(applied); ++r) {
        int version = atoi(PQgetvalue(applied, r, 0));
        const char *name = PQgetvalue(applied, r, 1), *sum = PQgetvalue(applied, r, 2);
        const tly_migration_t *m = tly_migrations_find(set, version);
        if (m == NULL) {
            snprintf(err, errcap, "migration %04d_%s.sql is applied but has no file in \"%s\"", version, name, dir);
            return -1;
        }
        if (strcmp(m->checksum, sum) != 0) {
            snprintf(err, errcap,
                     "migration file \"%s/%s\" changed after it was applied (sha256 now %s, when applied %s); "
                     "restore it and put the change in a new migration",
                     dir, m->file, m->checksum, sum);
            return -1;
        }
    }
    return 0;
}

/* A pending file must sort after every applied one: applying it out of order
   would run it against a schema its author never saw. */
static int
check_order(const char *dir, const tly_migration_set_t *set, const PGresult *applied, char *err, size_t errcap)
{
    int newest = 0;
    for (int r = 0; r < PQntuples(applied); ++r)
        if (atoi(PQgetvalue(applied, r, 0)) > newest)
            newest = atoi(PQgetvalue(applied, r, 0));
    for (size_t i = 0; i < set->n; ++i) {
        const tly_migration_t *m = &set->items[i];
        if (m->version < newest && !is_applied(applied, m->version)) {
            snprintf(err, errcap, "migration file \"%s/%s\" is older than the newest applied migration (%d); renumber it above %d",
                     dir, m->file, newest, newest);
            return -1;
        }
    }
    return 0;
}

/* Runs the file's statements inside the open transaction. */
static int
run_file(PGconn *conn, const tly_migration_t *m, char *err, size_t errcap)
{
    char what[TLY_MIGRATION_NAME_MAX + 64];
    int ret = -1;
    /* PQexec, not PQexecParams: a file holds many statements, and it is the
       schema itself, not user input */
    PGresult *res = PQexec(conn, m->sql);
    snprintf(what, sizeof(what), "could not apply migration %s", m->file);
    if (PQresultStatus(res) != PGRES_EMPTY_QUERY && !tly_pg_ok(conn, res, what, err, errcap))
        goto cleanup;
    if (PQtransactionStatus(conn) != PQTRANS_INTRANS) {
        /* found only after the fact: what ran before its COMMIT stays committed */
        snprintf(err, errcap,
                 "migration file %s ended the transaction itself, so it is not recorded as applied and part of it may be "
                 "committed; remove its BEGIN/COMMIT/ROLLBACK and check the schema by hand",
                 m->file);
        goto cleanup;
    }
    ret = 0;
cleanup:
    PQclear(res);
    return ret;
}

static int
apply_one(PGconn *conn, const tly_migration_t *m, char *err, size_t errcap)
{
    char version[16];
    const char *params[] = {version, m->name, m->checksum};
    int64_t t0 = tly_clock_mono_us();
    PGresult *res = NULL;
    snprintf(version, sizeof(version), "%d", m->version);
    if (tly_pg_exec(conn, "BEGIN", err, errcap) != 0 || run_file(conn, m, err, errcap) != 0)
        goto cleanup;
    res = tly_ctl_db_query(conn, "could not record migration",
                           "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)", 3, params, err, errcap);
    if (res == NULL || tly_pg_exec(conn, "COMMIT", err, errcap) != 0)
        goto cleanup;
    fprintf(stderr, "tallyctl: applied migration %s (%.1f ms)\n", m->file, (double)(tly_clock_mono_us() - t0) / 1000.0);
    PQclear(res);
    return 0;
cleanup:
    PQclear(res);
    if (PQtransactionStatus(conn) != PQTRANS_IDLE) {
        PGresult *rb = PQexec(conn, "ROLLBACK"); /* best effort: the error above is the one to report */
        PQclear(rb);
    }
    return -1;
}

static int
apply_pending(PGconn *conn, const tly_migration_set_t *set, const PGresult *applied, char *err, size_t errcap)
{
    int n = 0;
    for (size_t i = 0; i < set->n; ++i) {
        if (is_applied(applied, set->items[i].version))
            continue;
        if (apply_one(conn, &set->items[i], err, errcap) != 0)
            return -1;
        ++n;
    }
    if (n == 0)
        fprintf(stderr, "tallyctl: database is up to date\n");
    return 0;
}

int
tly_ctl_migrate(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[ERR_MAX];
    const char *dir = tly_ctl_arg(cmd, args, "dir") != NULL ? tly_ctl_arg(cmd, args, "dir") : settings->migrations_dir;
    int ret = TLY_CTL_FAIL;
    tly_migration_set_t set = {0};
    PGconn *conn = NULL;
    PGresult *applied = NULL;
    if (tly_migrations_load(dir, &set, err, sizeof(err)) != 0)
        goto cleanup;
    if ((conn = tly_ctl_db_connect(settings->pg_dsn, err, sizeof(err))) == NULL || take_lock(conn, err, sizeof(err)) != 0 ||
        tly_pg_exec(conn, create_table_sql, err, sizeof(err)) != 0)
        goto cleanup;
    applied = tly_ctl_db_query(conn, "could not read schema_migrations",
                               "SELECT version, name, checksum FROM schema_migrations ORDER BY version", 0, NULL, err, sizeof(err));
    if (applied == NULL || check_applied(dir, &set, applied, err, sizeof(err)) != 0 ||
        check_order(dir, &set, applied, err, sizeof(err)) != 0 || apply_pending(conn, &set, applied, err, sizeof(err)) != 0)
        goto cleanup;
    ret = TLY_CTL_OK;
cleanup:
    if (ret != TLY_CTL_OK)
        tly_ctl_error("%s", err);
    PQclear(applied);
    PQfinish(conn); /* ends the session, which releases the advisory lock */
    tly_migrations_free(&set);
    return ret;
}
