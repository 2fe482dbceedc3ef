/*
 * PostgreSQL ceiling for the projector: the same read-model row shape as
 * `accounts`, written into a scratch table of the stack's database
 *   (a) as batched upserts: one multi-row INSERT ... ON CONFLICT (id) DO UPDATE
 *       of --batch rows per statement and transaction, over --distinct ids
 *       (the first pass inserts, the rest update, like a projector on a busy
 *       set of accounts);
 *   (b) as COPY of the same number of rows into an empty table.
 * Tables bench_accounts and bench_accounts_copy are dropped at the end.
 *
 *   ceiling_pg --dsn=DSN [--rows=200000] [--batch=500] [--distinct=20000]
 * Prints JSON.
 */
#include "bench_args.h"

#include <libpq-fe.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int64_t
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
ok(PGconn *c, PGresult *r, const char *what)
{
    ExecStatusType s = PQresultStatus(r);
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK && s != PGRES_COPY_IN) {
        fprintf(stderr, "ceiling_pg: %s: %s", what, PQerrorMessage(c));
        exit(1);
    }
    PQclear(r);
}

static void
row_id(long i, char *out)
{
    snprintf(out, 37, "00000000-0000-4000-8000-%012lx", (unsigned long)i & 0xffffffffffffUL);
}

#define TABLE_DDL(name)                                                                                                            \
    "CREATE TABLE " name " (id uuid PRIMARY KEY, tenant_id uuid NOT NULL, currency char(3) NOT NULL, label text "                  \
    "NOT NULL, status text NOT NULL, balance bigint NOT NULL, version bigint NOT NULL, created_at timestamptz NOT "                \
    "NULL, updated_at timestamptz NOT NULL)"

int
main(int argc, char **argv)
{
    const char *dsn = NULL;
    long rows = 200000, batch = 500, distinct = 20000;
    const bench_arg_t args[] = {{"dsn", BENCH_ARG_STR, &dsn},
                                {"rows", BENCH_ARG_LONG, &rows},
                                {"batch", BENCH_ARG_LONG, &batch},
                                {"distinct", BENCH_ARG_LONG, &distinct}};
    if (bench_args_parse(argc, argv, args, sizeof(args) / sizeof(args[0]),
                         "ceiling_pg --dsn=DSN [--rows=N] [--batch=N] [--distinct=N]") != 0)
        return 2;
    if (dsn == NULL || batch < 1 || distinct < batch) {
        fprintf(stderr, "ceiling_pg: --dsn is required; --distinct must be >= --batch\n");
        return 2;
    }
    PGconn *c = PQconnectdb(dsn);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "ceiling_pg: %s", PQerrorMessage(c));
        return 1;
    }
    ok(c, PQexec(c, "DROP TABLE IF EXISTS bench_accounts, bench_accounts_copy"), "drop");
    ok(c, PQexec(c, TABLE_DDL("bench_accounts")), "create");
    ok(c, PQexec(c, TABLE_DDL("bench_accounts_copy")), "create");

    /* (a) one statement: INSERT ... VALUES ($1..$5), ... ON CONFLICT DO UPDATE */
    size_t cap = (size_t)batch * 200 + 512;
    char *sql = malloc(cap);
    size_t len = (size_t)snprintf(sql, cap,
                                  "INSERT INTO bench_accounts (id, tenant_id, currency, label, status, balance, "
                                  "version, created_at, updated_at) VALUES ");
    for (long j = 0; j < batch; ++j)
        len += (size_t)snprintf(sql + len, cap - len,
                                "%s($%ld::uuid,$%ld::uuid,'EUR','bench','open',$%ld::bigint,1,$%ld::timestamptz,$%ld::timestamptz)",
                                j ? "," : "", 5 * j + 1, 5 * j + 2, 5 * j + 3, 5 * j + 4, 5 * j + 5);
    snprintf(sql + len, cap - len,
             " ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance, version = "
             "bench_accounts.version + 1, updated_at = EXCLUDED.updated_at");
    ok(c, PQprepare(c, "upsert", sql, (int)(5 * batch), NULL), "prepare");
    char(*ids)[37] = calloc((size_t)batch, 37), (*bal)[24] = calloc((size_t)batch, 24);
    const char **vals = calloc((size_t)(5 * batch), sizeof(char *));
    const char *tenant = "00000000-0000-4000-8000-00000000beef", *when = "2025-11-22T11:40:00.123456Z";
    long done = 0, seq = 0;
    int64_t t0 = now_us();
    while (done < rows) {
        long n = rows - done < batch ? rows - done : batch;
        for (long j = 0; j < batch; ++j) {
            long k = j < n ? seq++ % distinct : (seq + j) % distinct; /* pad a short last batch with distinct ids */
            row_id(k, ids[j]);
            snprintf(bal[j], 24, "%ld", done + j);
            vals[5 * j] = ids[j];
            vals[5 * j + 1] = tenant;
            vals[5 * j + 2] = bal[j];
            vals[5 * j + 3] = when;
            vals[5 * j + 4] = when;
        }
        ok(c, PQexecPrepared(c, "upsert", (int)(5 * batch), vals, NULL, NULL, 0), "upsert");
        done += n;
    }
    int64_t t1 = now_us();

    /* (b) COPY the same number of rows */
    ok(c, PQexec(c, "COPY bench_accounts_copy FROM STDIN"), "copy");
    char line[256];
    for (long i = 0; i < rows; ++i) {
        char id[37];
        row_id(i, id);
        int n = snprintf(line, sizeof(line), "%s\t%s\tEUR\tbench\topen\t%ld\t1\t%s\t%s\n", id, tenant, i, when, when);
        if (PQputCopyData(c, line, n) != 1) {
            fprintf(stderr, "ceiling_pg: copy: %s", PQerrorMessage(c));
            return 1;
        }
    }
    PQputCopyEnd(c, NULL);
    ok(c, PQgetResult(c), "copy end");
    int64_t t2 = now_us();
    ok(c, PQexec(c, "DROP TABLE IF EXISTS bench_accounts, bench_accounts_copy"), "drop");
    PQfinish(c);
    double up_s = (double)(t1 - t0) / 1e6, cp_s = (double)(t2 - t1) / 1e6;
    printf("{\"rows\":%ld,\"batch\":%ld,\"distinct\":%ld,\"upsert_s\":%.3f,\"upsert_rows_per_s\":%.0f,\"copy_s\":%.3f,"
           "\"copy_rows_per_s\":%.0f}\n",
           rows, batch, distinct, up_s, (double)rows / up_s, cp_s, (double)rows / cp_s);
    return 0;
}
