/*
 * Projections of account events into accounts, ledger_entries and jobs.
 *
 * Every apply function is idempotent on its own (ON CONFLICT, guarded
 * updates) but the consumer also dedups by event id, so a redelivery never
 * bumps a version twice. Timestamps come from the events (occurred_at), never
 * from the clock, so a replay writes the same rows as the live projector.
 */
#include "projection.h"
#include "decider.h"
#include "pgx.h"
#include "tally/clock.h"
#include "tally/json.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

typedef int (*apply_fn)(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap);

typedef struct st_projection_row_t {
    const char *type;
    int max_version;
    apply_fn accounts;
    apply_fn ledger;
    apply_fn jobs;
} projection_row_t;

/* Text forms of an envelope's common fields, as statement parameters. */
typedef struct st_fields_t {
    char id[TLY_UUID_STR_LEN + 1];
    char aggregate[TLY_UUID_STR_LEN + 1];
    char tenant[TLY_UUID_STR_LEN + 1];
    char job[TLY_UUID_STR_LEN + 1];
    char when[40];
} fields_t;

static void
fields_of(const tly_envelope_t *env, fields_t *f)
{
    tly_uuid_format(&env->id, f->id);
    tly_uuid_format(&env->aggregate_id, f->aggregate);
    tly_uuid_format(&env->tenant_id, f->tenant);
    tly_uuid_format(&env->job_id, f->job);
    tly_clock_format_rfc3339(env->occurred_at_us, f->when, sizeof(f->when));
}

static int
int_field(const tly_envelope_t *env, const char *key, int64_t *out, char *err, size_t errcap)
{
    json_t *v = json_object_get(env->data, key);
    if (!json_is_integer(v)) {
        snprintf(err, errcap, "could not apply %s: data.%s is not an integer", env->type, key);
        return -1;
    }
    *out = (int64_t)json_integer_value(v);
    return 0;
}

static int
str_field(const tly_envelope_t *env, const char *key, const char **out, char *err, size_t errcap)
{
    if ((*out = tly_json_str(env->data, key)) == NULL) {
        snprintf(err, errcap, "could not apply %s: data.%s is not a string", env->type, key);
        return -1;
    }
    return 0;
}

/* Runs an UPDATE of one account row; an absent row is an error (its AccountOpened was never applied). */
static int
update_account(PGconn *conn, const tly_envelope_t *env, const char *sql, int n, const char *const *vals, char *err, size_t errcap)
{
    long affected = 0;
    if (tly_pgx_exec(conn, "update account", sql, n, vals, &affected, err, errcap) != 0)
        return -1;
    if (affected != 1) {
        snprintf(err, errcap, "could not apply %s: account %s is not in the read model", env->type, vals[0]);
        return -1;
    }
    return 0;
}

/* --- accounts ------------------------------------------------------------ */

static int
accounts_opened(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    fields_t f;
    const char *currency, *label;
    if (str_field(env, "currency", &currency, err, errcap) != 0 || str_field(env, "label", &label, err, errcap) != 0)
        return -1;
    fields_of(env, &f);
    const char *vals[] = {f.aggregate, f.tenant, currency, label, f.when};
    return tly_pgx_exec(conn, "insert account",
                        "INSERT INTO accounts (id, tenant_id, currency, label, status, balance, version, created_at, updated_at) "
                        "VALUES ($1, $2, $3, $4, 'open', 0, 1, $5, $5) ON CONFLICT (id) DO NOTHING",
                        5, vals, NULL, err, errcap);
}

static int
accounts_balance(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    fields_t f;
    int64_t after;
    char after_s[24];
    if (int_field(env, "balance_after", &after, err, errcap) != 0)
        return -1;
    fields_of(env, &f);
    snprintf(after_s, sizeof(after_s), "%" PRId64, after);
    const char *vals[] = {f.aggregate, after_s, f.when};
    return update_account(conn, env, "UPDATE accounts SET balance = $2, version = version + 1, updated_at = $3 WHERE id = $1", 3,
                          vals, err, errcap);
}

static int
accounts_status(PGconn *conn, const tly_envelope_t *env, const char *status, char *err, size_t errcap)
{
    fields_t f;
    fields_of(env, &f);
    const char *vals[] = {f.aggregate, status, f.when};
    return update_account(conn, env, "UPDATE accounts SET status = $2, version = version + 1, updated_at = $3 WHERE id = $1", 3,
                          vals, err, errcap);
}

static int
accounts_frozen(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    return accounts_status(conn, env, "frozen", err, errcap);
}

static int
accounts_unfrozen(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    return accounts_status(conn, env, "open", err, errcap);
}

static int
accounts_closed(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    return accounts_status(conn, env, "closed", err, errcap);
}

/* --- ledger_entries ------------------------------------------------------ */

static int
ledger_entry(PGconn *conn, const tly_envelope_t *env, const char *kind, int sign, char *err, size_t errcap)
{
    fields_t f;
    int64_t amount, after;
    const char *currency;
    char amount_s[24], after_s[24];
    if (int_field(env, "amount", &amount, err, errcap) != 0 || int_field(env, "balance_after", &after, err, errcap) != 0 ||
        str_field(env, "currency", &currency, err, errcap) != 0)
        return -1;
    fields_of(env, &f);
    snprintf(amount_s, sizeof(amount_s), "%" PRId64, sign * amount);
    snprintf(after_s, sizeof(after_s), "%" PRId64, after);
    const char *vals[] = {
        f.id, f.tenant, f.aggregate, kind, amount_s, currency, after_s, tly_uuid_is_nil(&env->job_id) ? NULL : f.job, f.when};
    return tly_pgx_exec(conn, "insert ledger entry",
                        "INSERT INTO ledger_entries (id, tenant_id, account_id, kind, amount, currency, balance_after, job_id, "
                        "created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
                        9, vals, NULL, err, errcap);
}

static int
ledger_deposit(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    return ledger_entry(conn, env, "deposit", 1, err, errcap);
}

static int
ledger_withdrawal(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    return ledger_entry(conn, env, "withdrawal", -1, err, errcap);
}

/* --- jobs ---------------------------------------------------------------- */

static int
jobs_queued(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    fields_t f;
    if (tly_uuid_is_nil(&env->job_id))
        return 0;
    fields_of(env, &f);
    const char *vals[] = {f.job, f.tenant, f.aggregate, f.when};
    return tly_pgx_exec(conn, "insert job",
                        "INSERT INTO jobs (id, tenant_id, status, resource_type, resource_id, version, created_at, updated_at) "
                        "VALUES ($1, $2, 'queued', 'account', $3, 1, $4, $4) ON CONFLICT (id) DO NOTHING",
                        4, vals, NULL, err, errcap);
}

/*
 * Moves a job to a terminal state once; a job already terminal is left alone.
 * NOTIFY tally_jobs '<job id>' tells long-polling readers (GET /v1/jobs/{id}
 * with Prefer: wait) to look again.
 */
static int
job_finish(PGconn *conn, const tly_envelope_t *env, const char *status, const char *code, const char *detail, char *err,
           size_t errcap)
{
    fields_t f;
    if (tly_uuid_is_nil(&env->job_id))
        return 0;
    fields_of(env, &f);
    const char *vals[] = {f.job, f.tenant, status, f.aggregate, code, detail, f.when};
    return tly_pgx_exec(conn, "finish job",
                        "WITH done AS (INSERT INTO jobs (id, tenant_id, status, resource_type, resource_id, error_code, "
                        "error_detail, version, created_at, updated_at) VALUES ($1, $2, $3, 'account', $4, $5, $6, 1, $7, $7) "
                        "ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, error_code = EXCLUDED.error_code, "
                        "error_detail = EXCLUDED.error_detail, version = jobs.version + 1, updated_at = EXCLUDED.updated_at "
                        "WHERE jobs.status NOT IN ('succeeded', 'failed') RETURNING id) "
                        /* wakes the query API's Prefer: wait requests; delivered at commit */
                        "SELECT pg_notify('tally_jobs', id::text) FROM done",
                        7, vals, NULL, err, errcap);
}

static int
jobs_succeeded(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    return job_finish(conn, env, "succeeded", NULL, NULL, err, errcap);
}

static int
jobs_rejected(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    const char *code = tly_json_str(env->data, "code"), *detail = tly_json_str(env->data, "detail");
    return job_finish(conn, env, "failed", code != NULL ? code : "rejected", detail, err, errcap);
}

int
tly_projection_job_dead_lettered(PGconn *conn, const tly_envelope_t *env, const char *detail, char *err, size_t errcap)
{
    return job_finish(conn, env, "failed", TLY_CODE_DEAD_LETTERED, detail, err, errcap);
}

/* --- the table ----------------------------------------------------------- */

#define V TLY_DECIDER_EVENT_VERSION
static const projection_row_t rows[] = {
    /* requests: the job exists as soon as the event is in the log */
    {"AccountOpenRequested", V, NULL, NULL, jobs_queued},
    {"DepositRequested", V, NULL, NULL, jobs_queued},
    {"WithdrawalRequested", V, NULL, NULL, jobs_queued},
    {"AccountFreezeRequested", V, NULL, NULL, jobs_queued},
    {"AccountUnfreezeRequested", V, NULL, NULL, jobs_queued},
    {"AccountCloseRequested", V, NULL, NULL, jobs_queued},
    /* outcomes */
    {"AccountOpened", V, accounts_opened, NULL, jobs_succeeded},
    {"FundsDeposited", V, accounts_balance, ledger_deposit, jobs_succeeded},
    {"FundsWithdrawn", V, accounts_balance, ledger_withdrawal, jobs_succeeded},
    {"AccountFrozen", V, accounts_frozen, NULL, jobs_succeeded},
    {"AccountUnfrozen", V, accounts_unfrozen, NULL, jobs_succeeded},
    {"AccountClosed", V, accounts_closed, NULL, jobs_succeeded},
    {"AccountOpenRejected", V, NULL, NULL, jobs_rejected},
    {"DepositRejected", V, NULL, NULL, jobs_rejected},
    {"WithdrawalRejected", V, NULL, NULL, jobs_rejected},
    {"AccountFreezeRejected", V, NULL, NULL, jobs_rejected},
    {"AccountUnfreezeRejected", V, NULL, NULL, jobs_rejected},
    {"AccountCloseRejected", V, NULL, NULL, jobs_rejected},
};
#undef V

static const projection_row_t *
find_row(const char *type)
{
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); ++i)
        if (strcmp(rows[i].type, type) == 0)
            return &rows[i];
    return NULL;
}

bool
tly_projection_knows(const char *type)
{
    return find_row(type) != NULL;
}

int
tly_projection_max_version(const char *type)
{
    const projection_row_t *row = find_row(type);
    return row != NULL ? row->max_version : 0;
}

int
tly_projection_apply(PGconn *conn, const tly_envelope_t *env, unsigned models, char *err, size_t errcap)
{
    const projection_row_t *row = find_row(env->type);
    if (row == NULL)
        return 0;
    if (env->version > row->max_version) {
        snprintf(err, errcap, "could not apply %s: version %d is newer than %d", env->type, env->version, row->max_version);
        return -1;
    }
    if ((models & TLY_MODEL_ACCOUNTS) && row->accounts != NULL && row->accounts(conn, env, err, errcap) != 0)
        return -1;
    if ((models & TLY_MODEL_LEDGER) && row->ledger != NULL && row->ledger(conn, env, err, errcap) != 0)
        return -1;
    if ((models & TLY_MODEL_JOBS) && row->jobs != NULL && row->jobs(conn, env, err, errcap) != 0)
        return -1;
    return 0;
}
