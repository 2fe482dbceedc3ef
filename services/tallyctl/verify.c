/*
 * `tallyctl verify`: rebuild the read models into a throw-away shadow, catch
 * it up to the live projector under a SHARE lock (readers go on, the
 * projector waits), and compare inside that one REPEATABLE READ transaction:
 * row counts, checksums, the first differing rows; then the ledger invariants
 * on the live tables. Exit 1 on any difference; the report either way.
 */
#include "verify.h"
#include "db.h"
#include "replay/replay.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SHOW_ROWS 5

static PGresult *
q(PGconn *conn, const char *sql, char *err, size_t errcap)
{
    return tly_ctl_db_query(conn, "verify query failed", sql, 0, NULL, err, errcap);
}

/* Compares one table; returns the number of differences (0 or 1), -1 on error. */
static int
compare_table(PGconn *conn, const char *schema, const char *t, FILE *out, char *err, size_t errcap)
{
    char sql[2048];
    /* md5 of the rows' md5s in id order: every column counts (updated_at comes from the event, so it matches too) */
    snprintf(sql, sizeof(sql),
             "SELECT (SELECT count(*) FROM public.%s), (SELECT count(*) FROM %s.%s), "
             "(SELECT md5(coalesce(string_agg(md5(x::text), '' ORDER BY x.id), '')) FROM public.%s x), "
             "(SELECT md5(coalesce(string_agg(md5(x::text), '' ORDER BY x.id), '')) FROM %s.%s x)",
             t, schema, t, t, schema, t);
    PGresult *res = q(conn, sql, err, errcap);
    if (res == NULL)
        return -1;
    bool same =
        strcmp(PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1)) == 0 && strcmp(PQgetvalue(res, 0, 2), PQgetvalue(res, 0, 3)) == 0;
    fprintf(out, "  %-16s live %8s rows md5 %.12s   rebuilt %8s rows md5 %.12s   %s\n", t, PQgetvalue(res, 0, 0),
            PQgetvalue(res, 0, 2), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 3), same ? "same" : "DIFFERENT");
    PQclear(res);
    if (same)
        return 0;
    snprintf(sql, sizeof(sql),
             "SELECT coalesce(l.id, s.id), l::text, s::text FROM public.%s l FULL JOIN %s.%s s ON l.id = s.id "
             "WHERE l::text IS DISTINCT FROM s::text ORDER BY 1 LIMIT %d",
             t, schema, t, SHOW_ROWS);
    if ((res = q(conn, sql, err, errcap)) == NULL)
        return -1;
    fprintf(out, "    first differing rows (id order):\n");
    for (int i = 0; i < PQntuples(res); ++i) {
        fprintf(out, "    id %s\n      live:    %s\n      rebuilt: %s\n", PQgetvalue(res, i, 0),
                PQgetisnull(res, i, 1) ? "(missing)" : PQgetvalue(res, i, 1),
                PQgetisnull(res, i, 2) ? "(missing)" : PQgetvalue(res, i, 2));
    }
    PQclear(res);
    return 1;
}

/* Runs `sql` (rows = violations); prints up to SHOW_ROWS of them. Returns the number of violations, -1 on error. */
static int
check(PGconn *conn, const char *name, const char *sql, FILE *out, char *err, size_t errcap)
{
    PGresult *res = q(conn, sql, err, errcap);
    if (res == NULL)
        return -1;
    int n = PQntuples(res);
    fprintf(out, "  %-44s %s\n", name, n == 0 ? "ok" : "VIOLATED");
    for (int i = 0; i < n && i < SHOW_ROWS; ++i) {
        fprintf(out, "    ");
        for (int c = 0; c < PQnfields(res); ++c)
            fprintf(out, "%s%s=%s", c > 0 ? " " : "", PQfname(res, c), PQgetisnull(res, i, c) ? "-" : PQgetvalue(res, i, c));
        fputc('\n', out);
    }
    if (n > SHOW_ROWS)
        fprintf(out, "    ... %d more\n", n - SHOW_ROWS);
    PQclear(res);
    return n;
}

static bool
exists(PGconn *conn, const char *relation)
{
    char err[256];
    const char *vals[] = {relation};
    PGresult *res = tly_ctl_db_query(conn, "look up", "SELECT to_regclass($1) IS NOT NULL", 1, vals, err, sizeof(err));
    bool yes = res != NULL && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return yes;
}

int
tly_ctl_verify_invariants(PGconn *conn, FILE *out, char *err, size_t errcap)
{
    int bad = 0, n;
    fprintf(out, "ledger invariants (live tables):\n");
    /* per currency: the balances hold exactly what the entries moved: deposits - withdrawals + transfer entries
       (which net to 0 once no transfer is in flight; a debited transfer's money is in no balance meanwhile) */
    n = check(conn, "sum of balances = deposits - withdrawals",
              "WITH b AS (SELECT currency, sum(balance) AS balances FROM public.accounts GROUP BY currency), "
              "e AS (SELECT currency, coalesce(sum(amount) FILTER (WHERE kind = 'deposit'), 0) AS deposits, "
              "coalesce(-sum(amount) FILTER (WHERE kind = 'withdrawal'), 0) AS withdrawals, "
              "coalesce(sum(amount) FILTER (WHERE kind NOT IN ('deposit', 'withdrawal')), 0) AS other "
              "FROM public.ledger_entries GROUP BY currency) "
              "SELECT coalesce(b.currency, e.currency) AS currency, coalesce(b.balances, 0) AS balances, "
              "coalesce(e.deposits, 0) AS deposits, coalesce(e.withdrawals, 0) AS withdrawals, coalesce(e.other, 0) AS other "
              "FROM b FULL JOIN e ON b.currency = e.currency "
              "WHERE coalesce(b.balances, 0) <> coalesce(e.deposits, 0) - coalesce(e.withdrawals, 0) + coalesce(e.other, 0)",
              out, err, errcap);
    if (n < 0)
        return -1;
    bad += n;
    n = check(conn, "no balance below its floor (0)", "SELECT id, balance FROM public.accounts WHERE balance < 0 ORDER BY id", out,
              err, errcap);
    if (n < 0)
        return -1;
    bad += n;
    n = check(conn, "each balance = sum of its entries",
              "SELECT a.id, a.balance, coalesce(e.total, 0) AS entries FROM public.accounts a LEFT JOIN "
              "(SELECT account_id, sum(amount) AS total FROM public.ledger_entries GROUP BY account_id) e "
              "ON e.account_id = a.id WHERE a.balance <> coalesce(e.total, 0) ORDER BY a.id",
              out, err, errcap);
    if (n < 0)
        return -1;
    bad += n;
    n = check(conn, "every entry belongs to a known account",
              "SELECT e.id, e.account_id FROM public.ledger_entries e LEFT JOIN public.accounts a ON a.id = e.account_id "
              "WHERE a.id IS NULL ORDER BY e.id",
              out, err, errcap);
    if (n < 0)
        return -1;
    bad += n;
    if (exists(conn, "public.transfers")) {
        /* terminal or in flight; in flight for more than 15 minutes counts as stuck */
        n = check(conn, "every transfer terminal or in flight (< 15 min)",
                  "SELECT id, status, updated_at FROM public.transfers WHERE status IS NULL OR (status NOT IN "
                  "('completed', 'rejected', 'failed') AND updated_at < now() - "
                  "interval '15 minutes') ORDER BY id",
                  out, err, errcap);
        if (n < 0)
            return -1;
        bad += n;
    } else {
        fprintf(out, "  %-44s %s\n", "every transfer terminal or in flight", "n/a (no transfers table)");
    }
    return bad;
}

int
tly_ctl_verify_cmd(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[2048];
    const char *batch = tly_ctl_arg(cmd, args, "batch");
    tly_ctl_replay_opts_t o = {
        .mode = TLY_REPLAY_VERIFY,
        .projections = tly_ctl_arg(cmd, args, "projection"),
        .batch = batch != NULL ? atoi(batch) : 40000,
        .busy_rate = TLY_CTL_REPLAY_BUSY_RATE,
        .quiet = tly_ctl_arg(cmd, args, "quiet") != NULL,
    };
    if (o.batch < 1 || o.batch > 100000) {
        tly_ctl_error("--batch must be 1 to 100000");
        return TLY_CTL_USAGE;
    }
    tly_ctl_replay_t *r = tly_ctl_replay_open(settings, &o, err, sizeof(err));
    if (r == NULL) {
        tly_ctl_error("%s", err);
        return TLY_CTL_FAIL;
    }
    int ret = TLY_CTL_FAIL, diffs = 0;
    if (tly_ctl_replay_bulk(r, err, sizeof(err)) != 0 || tly_ctl_replay_final(r, "SHARE", err, sizeof(err)) != 0) {
        tly_ctl_error("%s", err);
        goto out;
    }
    PGconn *conn = tly_ctl_replay_conn(r);
    const char *const *tables;
    int ntables = tly_ctl_replay_tables(r, &tables);
    printf("verify: live read models against a rebuild from %s (schema %s)\n", settings->kafka_topic, tly_ctl_replay_schema(r));
    printf("rebuild: ");
    tly_ctl_replay_summary(r, stdout);
    printf("tables:\n");
    for (int i = 0; i < ntables; ++i) {
        int d = compare_table(conn, tly_ctl_replay_schema(r), tables[i], stdout, err, sizeof(err));
        if (d < 0) {
            tly_ctl_error("%s", err);
            goto out;
        }
        diffs += d;
    }
    int bad = tly_ctl_verify_invariants(conn, stdout, err, sizeof(err));
    if (bad < 0) {
        tly_ctl_error("%s", err);
        goto out;
    }
    if (tly_ctl_replay_failed(r) > 0)
        printf("note: %" PRId64 " events failed to apply during the rebuild (the live projector parks such events)\n",
               tly_ctl_replay_failed(r));
    printf("result: %s (%d table%s differ, %d invariant violation%s)\n", diffs == 0 && bad == 0 ? "OK" : "DIFFERENCES", diffs,
           diffs == 1 ? "" : "s", bad, bad == 1 ? "" : "s");
    ret = diffs == 0 && bad == 0 ? TLY_CTL_OK : TLY_CTL_FAIL;
out:
    if (tly_ctl_replay_drop(r, err, sizeof(err)) != 0)
        tly_ctl_error("could not drop the verify shadow: %s", err);
    tly_ctl_replay_close(r);
    return ret;
}
