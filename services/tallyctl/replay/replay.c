/*
 * Replay: tally.events from offset 0 into a shadow schema, through the
 * ledger's projection functions (tally/ledger/projection.h), never the
 * decider, never a producer. See services/tallyctl/README.md for the phases
 * and the swap; replay_internal.h for the files of this folder.
 *
 * Bookkeeping lives in the shadow schema itself, committed in the same
 * transaction as the rows it describes:
 *   _replay_meta       mode, models, --until, state (running, done, swapped)
 *   _replay_positions  per partition: next offset to apply, target end offset
 *   _replay_applied    event ids applied (the log may hold an event twice):
 *                      one row per batch, its ids' 16 bytes each end to end;
 *                      shadows of earlier versions have _replay_dedup
 *                      (one uuid per row) instead, read on resume too
 *   _replay_failures   events the projection refused (what the live
 *                      projector would have parked in dead_letters)
 * so a replay killed at any moment resumes where its last batch committed.
 */
#include "replay_internal.h"

PGconn *
tly_ctl_replay_conn(tly_ctl_replay_t *r)
{
    return r->conn;
}
const char *
tly_ctl_replay_schema(const tly_ctl_replay_t *r)
{
    return r->schema;
}
int
tly_ctl_replay_tables(const tly_ctl_replay_t *r, const char *const **tables)
{
    *tables = r->tables;
    return r->ntables;
}
int64_t
tly_ctl_replay_failed(const tly_ctl_replay_t *r)
{
    return r->failed;
}

int
tly_ctl_replay__exec(tly_ctl_replay_t *r, const char *sql, char *err, size_t errcap)
{
    return tly_pg_exec(r->conn, sql, err, errcap);
}

int
tly_ctl_replay__execf(tly_ctl_replay_t *r, char *err, size_t errcap, const char *fmt, ...)
{
    char sql[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(sql)) {
        snprintf(err, errcap, "statement too long");
        return -1;
    }
    return tly_pg_exec(r->conn, sql, err, errcap);
}

PGresult *
tly_ctl_replay__queryf(tly_ctl_replay_t *r, const char *what, int n, const char *const *vals, char *err, size_t errcap,
                       const char *fmt, ...)
{
    char sql[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    return tly_ctl_db_query(r->conn, what, sql, n, vals, err, errcap);
}

void
tly_ctl_replay__rollback(tly_ctl_replay_t *r)
{
    char err[256];
    if (!tly_pg_broken(r->conn) && PQtransactionStatus(r->conn) != PQTRANS_IDLE)
        (void)!tly_pg_exec(r->conn, "ROLLBACK", err, sizeof(err));
}

/* --- public -------------------------------------------------------------- */

tly_ctl_replay_t *
tly_ctl_replay_open(const tly_ctl_settings_t *s, const tly_ctl_replay_opts_t *o, char *err, size_t errcap)
{
    tly_ctl_replay_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        abort();
    r->o = *o;
    r->s = s;
    tly_ctl_jarena_install();
    if (r->o.batch <= 0)
        r->o.batch = 40000;
    if (r->o.max_rate > 0) {
        r->o.batch = tly_ctl_replay__paced_batch(r, r->o.max_rate);
        r->o.busy_rate = 0; /* a fixed rate: nothing to adapt */
    }
    r->batch_now = r->o.batch;
    r->rate_now = r->o.max_rate;
    r->tty = isatty(2);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    r->parse_threads = cpus < 1 ? 1 : cpus > PARSE_THREADS ? PARSE_THREADS : (int)cpus;
    const char *pt = getenv("TALLY_REPLAY_PARSE_THREADS");
    if (pt != NULL && atoi(pt) >= 1 && atoi(pt) <= PARSE_THREADS)
        r->parse_threads = atoi(pt);
    r->t0_us = tly_clock_mono_us();
    int nends = 0;
    for (int p = 0; p < MAX_PARTS; ++p)
        r->until_end[p] = -1;
    if (o->until != NULL &&
        tly_ctl_until_parse(o->until, &r->until_us, &r->has_until, r->until_end, MAX_PARTS, &nends, err, errcap) != 0)
        goto fail;
    if (o->into != NULL && !tly_ctl_schema_name_ok(o->into)) {
        snprintf(err, errcap, "--into must be a lower-case schema name ([a-z_][a-z0-9_]*), not public or pg_*");
        goto fail;
    }
    if ((r->conn = tly_ctl_db_connect(s->pg_dsn, err, errcap)) == NULL)
        goto fail;
    PGresult *res = tly_ctl_db_query(r->conn, "could not take the replay lock", "SELECT pg_try_advisory_lock(7246016001)", 0, NULL,
                                     err, errcap);
    if (res == NULL)
        goto fail;
    bool locked = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (!locked) {
        snprintf(err, errcap, "another tallyctl replay or verify is running against this database");
        goto fail;
    }
    if (tly_ctl_models_parse(r->conn, o->projections, &r->mask, r->tables, &r->ntables, err, errcap) != 0)
        goto fail;
    if (r->o.busy_rate > 0 && (r->watch = tly_ctl_livewatch_start(s->pg_dsn, err, errcap)) == NULL)
        goto fail;
    size_t used = 0;
    for (int i = 0; i < r->ntables; ++i)
        used += (size_t)snprintf(r->models_text + used, sizeof(r->models_text) - used, "%s%s", i > 0 ? "," : "", r->tables[i]);
    if (tly_ctl_replay__kafka_open(r, err, errcap) != 0)
        goto fail;
    r->pos = calloc((size_t)r->nparts, sizeof(int64_t));
    r->staged = calloc((size_t)r->nparts, sizeof(int64_t));
    r->end = calloc((size_t)r->nparts, sizeof(int64_t));
    r->gpos = calloc((size_t)r->nparts, sizeof(int64_t));
    r->saved_pos = calloc((size_t)r->nparts, sizeof(int64_t));
    r->reached = calloc((size_t)r->nparts, sizeof(bool));
    if (r->pos == NULL || r->staged == NULL || r->end == NULL || r->gpos == NULL || r->saved_pos == NULL || r->reached == NULL)
        abort();
    for (int i = 0; i < 2; ++i) {
        unit_t *u = &r->units[i];
        u->msgs = calloc((size_t)r->o.batch, sizeof(*u->msgs));
        u->prep = calloc((size_t)r->o.batch, sizeof(*u->prep));
        u->fate = calloc((size_t)r->o.batch, sizeof(*u->fate));
        u->reached = calloc((size_t)r->nparts, sizeof(bool));
        if (u->msgs == NULL || u->prep == NULL || u->fate == NULL || u->reached == NULL)
            abort();
    }
    if (tly_ctl_replay__choose_shadow(r, err, errcap) != 0)
        goto fail;
    char sp[256];
    snprintf(sp, sizeof(sp), "SET search_path = %s, pg_catalog", r->schema);
    if (tly_ctl_replay__exec(r, sp, err, errcap) != 0 || tly_ctl_replay__exec(r, "SET synchronous_commit = off", err, errcap) != 0)
        goto fail;
    if (r->o.mode == TLY_REPLAY_COPY && r->created) {
        /* a point-in-time copy: targets fixed now (resumes keep them) */
        if (tly_ctl_replay__set_targets(r, err, errcap) != 0 || tly_ctl_replay__exec(r, "BEGIN", err, errcap) != 0 ||
            tly_ctl_replay__save_positions(r, r->reached, err, errcap) != 0 || tly_ctl_replay__exec(r, "COMMIT", err, errcap) != 0)
            goto fail;
    }
    if (!r->o.quiet)
        fprintf(stderr, "tallyctl: replaying %s (%s) into %s\n", r->s->kafka_topic, r->models_text, r->schema);
    return r;
fail:
    tly_ctl_replay_close(r);
    return NULL;
}

int
tly_ctl_replay_bulk(tly_ctl_replay_t *r, char *err, size_t errcap)
{
    for (int round = 0;; ++round) {
        if (r->o.mode != TLY_REPLAY_COPY && tly_ctl_replay__set_targets(r, err, errcap) != 0)
            return -1;
        for (int p = 0; p < r->nparts; ++p)
            r->staged[p] = r->pos[p];
        int64_t left = tly_ctl_replay__remaining(r);
        if (r->o.mode != TLY_REPLAY_COPY && round > 0 && (left < CATCHUP_CLOSE_ENOUGH || round >= CATCHUP_ROUNDS))
            break;
        int rc = tly_ctl_replay__run_phase(r, true, err, errcap);
        if (rc != 0)
            return rc;
        if (r->o.mode == TLY_REPLAY_COPY)
            break;
    }
    tly_ctl_replay__progress(r, true);
    return tly_ctl_replay__create_deferred_indexes(r, err, errcap);
}

static bool
lock_failure(const char *err)
{
    return strstr(err, "lock timeout") != NULL || strstr(err, "deadlock") != NULL || strstr(err, "could not obtain lock") != NULL;
}

int
tly_ctl_replay_final(tly_ctl_replay_t *r, const char *lockmode, char *err, size_t errcap)
{
    char tables[512] = "";
    size_t used = 0;
    for (int i = 0; i < r->ntables; ++i)
        used += (size_t)snprintf(tables + used, sizeof(tables) - used, "%spublic.%s", i > 0 ? ", " : "", r->tables[i]);
    memcpy(r->saved_pos, r->pos, sizeof(int64_t) * (size_t)r->nparts);
    for (int attempt = 1;; ++attempt) {
        r->nfresh = 0;
        if (tly_ctl_replay__exec(r, "BEGIN ISOLATION LEVEL REPEATABLE READ", err, errcap) != 0 ||
            tly_ctl_replay__exec(r, "SET LOCAL lock_timeout = '10s'", err, errcap) != 0 ||
            tly_ctl_replay__exec(r, "SET LOCAL synchronous_commit = on", err, errcap) != 0 ||
            tly_ctl_replay__execf(r, err, errcap, "LOCK TABLE %s IN %s MODE", tables, lockmode) != 0 ||
            /* the live projector cannot commit into these tables now: its positions are what they hold */
            tly_ctl_replay__set_targets(r, err, errcap) != 0)
            goto retry;
        for (int p = 0; p < r->nparts; ++p) {
            if (r->end[p] < r->pos[p]) {
                snprintf(err, errcap,
                         "partition %d: the shadow is at offset %" PRId64 ", ahead of the projector (%" PRId64 "); "
                         "its positions were reset? run with --restart",
                         p, r->pos[p], r->end[p]);
                tly_ctl_replay__rollback(r);
                return -1;
            }
        }
        int rc = tly_ctl_replay__run_phase(r, false, err, errcap);
        if (rc == 0)
            rc = tly_ctl_replay__write_positions(r, false, err, errcap); /* positions of the final range */
        if (rc == 0) {
            for (int p = 0; p < r->nparts; ++p)
                r->pos[p] = r->staged[p];
            return 0;
        }
        if (rc == -1) {
            tly_ctl_replay__rollback(r);
            tly_ctl_replay__forget_fresh(r, 0);
            memcpy(r->pos, r->saved_pos, sizeof(int64_t) * (size_t)r->nparts);
            return -1;
        }
    retry:
        tly_ctl_replay__rollback(r);
        tly_ctl_replay__forget_fresh(r, 0);
        memcpy(r->pos, r->saved_pos, sizeof(int64_t) * (size_t)r->nparts);
        if (attempt >= FINAL_TRIES || !(lock_failure(err) || tly_pgx_last_transient(r->conn))) {
            char tmp[1024];
            snprintf(tmp, sizeof(tmp), "%s", err);
            snprintf(err, errcap, "final catch-up failed (attempt %d): %s", attempt, tmp);
            return -1;
        }
        fprintf(stderr, "tallyctl: final catch-up: %s; retrying\n", err);
        tly_ctl_replay__sleep_ms(500 * attempt);
    }
}

int
tly_ctl_replay_swap(tly_ctl_replay_t *r, char *err, size_t errcap)
{
    char backup[TLY_CTL_SCHEMA_MAX + 16];
    snprintf(backup, sizeof(backup), "tally_backup_%d", r->shadow_n);
    if (tly_ctl_replay__execf(r, err, errcap, "DROP SCHEMA IF EXISTS %s CASCADE", backup) != 0 ||
        tly_ctl_replay__execf(r, err, errcap, "CREATE SCHEMA %s", backup) != 0)
        goto fail;
    for (int i = 0; i < r->ntables; ++i) {
        if (tly_ctl_replay__execf(r, err, errcap, "ALTER TABLE public.%s SET SCHEMA %s", r->tables[i], backup) != 0 ||
            tly_ctl_replay__execf(r, err, errcap, "ALTER TABLE %s.%s SET SCHEMA public", r->schema, r->tables[i]) != 0)
            goto fail;
        /* the query API's conditional-GET cache hears of new versions through these (migrations/0004) */
        bool accounts = strcmp(r->tables[i], "accounts") == 0, transfers = strcmp(r->tables[i], "transfers") == 0;
        if ((accounts || transfers) &&
            tly_ctl_replay__execf(r, err, errcap,
                                  "CREATE TRIGGER %s_notify_versions AFTER UPDATE ON public.%s REFERENCING NEW TABLE AS changed "
                                  "FOR EACH STATEMENT EXECUTE FUNCTION public.tally_notify_versions('%s')",
                                  r->tables[i], r->tables[i], accounts ? "a" : "t") != 0)
            goto fail;
    }
    /* at commit: every query API empties its cache and checks the triggers again */
    if (tly_ctl_replay__exec(r, "NOTIFY tally_versions, '*'", err, errcap) != 0 ||
        tly_ctl_replay__execf(r, err, errcap, "UPDATE %s._replay_meta SET state = 'swapped', finished_at = now()", r->schema) !=
            0 ||
        tly_ctl_replay__exec(r, "COMMIT", err, errcap) != 0)
        goto fail;
    if (!r->o.quiet)
        fprintf(stderr, "tallyctl: swapped %s into public; dropping the old tables\n", r->models_text);
    if (tly_ctl_replay__drop_schema(r, backup, err, errcap) != 0 || tly_ctl_replay__drop_schema(r, r->schema, err, errcap) != 0)
        return -1;
    return 0;
fail:
    tly_ctl_replay__rollback(r);
    return -1;
}

int
tly_ctl_replay_finish_copy(tly_ctl_replay_t *r, char *err, size_t errcap)
{
    return tly_ctl_replay__execf(r, err, errcap, "UPDATE %s._replay_meta SET state = 'done', finished_at = now()", r->schema);
}

int
tly_ctl_replay_drop(tly_ctl_replay_t *r, char *err, size_t errcap)
{
    tly_ctl_replay__rollback(r);
    return tly_ctl_replay__drop_schema(r, r->schema, err, errcap);
}

void
tly_ctl_replay_close(tly_ctl_replay_t *r)
{
    if (r == NULL)
        return;
    tly_ctl_livewatch_stop(r->watch);
    if (r->rk != NULL) {
        rd_kafka_assign(r->rk, NULL);
        rd_kafka_consumer_close(r->rk);
        rd_kafka_destroy(r->rk);
    }
    if (r->conn != NULL)
        PQfinish(r->conn);
    free(r->pos);
    free(r->staged);
    free(r->end);
    free(r->gpos);
    free(r->saved_pos);
    free(r->reached);
    for (int i = 0; i < 2; ++i) {
        free(r->units[i].msgs);
        free(r->units[i].prep);
        free(r->units[i].fate);
        free(r->units[i].ids);
        for (int k = 0; k < (int)(sizeof(r->units[i].segs) / sizeof(r->units[i].segs[0])); ++k)
            tly_projection_batch_destroy(r->units[i].segs[k]);
        free(r->units[i].reached);
        for (int t = 0; t < PARSE_THREADS; ++t)
            tly_ctl_jarena_free(&r->units[i].arenas[t]);
    }
    free(r->fresh);
    free(r->seen.keys);
    free(r->seen.state);
    free(r->jobs.keys);
    free(r->jobs.state);
    free(r);
}

/* --- the command --------------------------------------------------------- */

int
tly_ctl_replay_cmd(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[2048];
    const char *batch = tly_ctl_arg(cmd, args, "batch"), *max_rate = tly_ctl_arg(cmd, args, "max-rate"),
               *busy_rate = tly_ctl_arg(cmd, args, "busy-rate");
    tly_ctl_replay_opts_t o = {
        .projections = tly_ctl_arg(cmd, args, "projection"),
        .until = tly_ctl_arg(cmd, args, "until"),
        .into = tly_ctl_arg(cmd, args, "into"),
        .restart = tly_ctl_arg(cmd, args, "restart") != NULL,
        .batch = batch != NULL ? atoi(batch) : 40000,
        .max_rate = max_rate != NULL ? atoll(max_rate) : 0,
        .busy_rate = busy_rate != NULL ? atoll(busy_rate) : TLY_CTL_REPLAY_BUSY_RATE,
        .quiet = tly_ctl_arg(cmd, args, "quiet") != NULL,
    };
    if (o.max_rate < 0) {
        tly_ctl_error("--max-rate must be 0 (no limit) or more");
        return TLY_CTL_USAGE;
    }
    if (o.busy_rate < 0) {
        tly_ctl_error("--busy-rate must be 0 (never slow down) or more");
        return TLY_CTL_USAGE;
    }
    const char *stop = getenv("TALLY_REPLAY_MAX_BATCHES"); /* tests: stop after N batches, as if killed */
    o.max_batches = stop != NULL ? atoi(stop) : 0;
    if (o.batch < 1 || o.batch > 100000) {
        tly_ctl_error("--batch must be 1 to 100000");
        return TLY_CTL_USAGE;
    }
    o.mode = (o.until != NULL || o.into != NULL) ? TLY_REPLAY_COPY : TLY_REPLAY_SWAP;
    tly_ctl_replay_t *r = tly_ctl_replay_open(settings, &o, err, sizeof(err));
    if (r == NULL) {
        tly_ctl_error("%s", err);
        return TLY_CTL_FAIL;
    }
    int ret = TLY_CTL_FAIL, rc = tly_ctl_replay_bulk(r, err, sizeof(err));
    if (rc == 1) {
        tly_ctl_error("stopped after %d batches (TALLY_REPLAY_MAX_BATCHES); run again to resume", o.max_batches);
        goto out;
    }
    if (rc != 0) {
        tly_ctl_error("%s", err);
        goto out;
    }
    if (o.mode == TLY_REPLAY_COPY) {
        if (tly_ctl_replay_finish_copy(r, err, sizeof(err)) != 0) {
            tly_ctl_error("%s", err);
            goto out;
        }
        tly_ctl_replay_summary(r, stdout);
        printf("point-in-time copy in schema %s (tables: %s)\n", r->schema, r->models_text);
        ret = TLY_CTL_OK;
        goto out;
    }
    if (tly_ctl_replay_final(r, "EXCLUSIVE", err, sizeof(err)) != 0 || tly_ctl_replay_swap(r, err, sizeof(err)) != 0) {
        tly_ctl_error("%s", err);
        goto out;
    }
    tly_ctl_replay_summary(r, stdout);
    printf("swapped into public: %s\n", r->models_text);
    if (r->failed > 0)
        printf("%" PRId64 " events failed to apply (as the live projector parks them); see the log above\n", r->failed);
    ret = TLY_CTL_OK;
out:
    tly_ctl_replay_close(r);
    return ret;
}
