/*
 * Projections of account and transfer events into accounts, ledger_entries,
 * transfers and jobs.
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
#include "tally/upcast.h"

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
    apply_fn transfers;
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
    tly_uuid_t transfer;
    char transfer_s[TLY_UUID_STR_LEN + 1];
    const char *t = tly_json_str(env->data, "transfer_id");
    bool has_transfer = t != NULL && tly_uuid_parse(t, &transfer);
    if (has_transfer)
        tly_uuid_format(&transfer, transfer_s);
    const char *vals[] = {f.id,        f.tenant,
                          f.aggregate, kind,
                          amount_s,    currency,
                          after_s,     tly_uuid_is_nil(&env->job_id) ? NULL : f.job,
                          f.when,      has_transfer ? transfer_s : NULL};
    return tly_pgx_exec(conn, "insert ledger entry",
                        "INSERT INTO ledger_entries (id, tenant_id, account_id, kind, amount, currency, balance_after, job_id, "
                        "created_at, transfer_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
                        10, vals, NULL, err, errcap);
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

static int
ledger_transfer_debit(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    return ledger_entry(conn, env, "transfer_debit", -1, err, errcap);
}

static int
ledger_transfer_credit(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    return ledger_entry(conn, env, "transfer_credit", 1, err, errcap);
}

static int
ledger_transfer_reversal(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    return ledger_entry(conn, env, "transfer_reversal", 1, err, errcap);
}

/* --- transfers ------------------------------------------------------------ */

/*
 * The events of one transfer come from three partitions (the transfer's and
 * both accounts'), so the projector may see them in any order. Every event
 * is therefore one merging upsert: the status only moves forward
 * (requested < debited < compensating < completed | rejected | failed: each
 * saga walks one path of that order), fields are filled once, the timeline
 * stays sorted by time whatever the arrival order, and the version counts
 * the events applied (the consumer dedups, so a redelivery never counts).
 * A row created by an account event before its TransferRequested has no
 * from_account yet; the query API hides it until then.
 */
typedef struct st_transfer_change_t {
    const char *step;   /* timeline entry */
    const char *status; /* NULL: unchanged */
    bool compensated;
    bool error; /* take code and detail from data */
} transfer_change_t;

static int
transfer_merge(PGconn *conn, const tly_envelope_t *env, const transfer_change_t *c, char *err, size_t errcap)
{
    fields_t f;
    tly_uuid_t transfer;
    char transfer_s[TLY_UUID_STR_LEN + 1], amount_s[24];
    bool requested = strcmp(env->type, "TransferRequested") == 0;
    fields_of(env, &f);
    if (requested) {
        transfer = env->aggregate_id;
    } else if (strcmp(env->aggregate_type, "transfer") == 0) {
        transfer = env->aggregate_id;
    } else {
        const char *t = tly_json_str(env->data, "transfer_id");
        if (t == NULL || !tly_uuid_parse(t, &transfer)) {
            snprintf(err, errcap, "could not apply %s: data.transfer_id is not a uuid", env->type);
            return -1;
        }
    }
    tly_uuid_format(&transfer, transfer_s);
    json_t *amount = json_object_get(env->data, "amount");
    if (json_is_integer(amount))
        snprintf(amount_s, sizeof(amount_s), "%" PRId64, (int64_t)json_integer_value(amount));
    const char *currency = tly_json_str(env->data, "currency");
    if (currency != NULL && strlen(currency) != 3)
        currency = NULL;
    const char *vals[] = {transfer_s,
                          f.tenant,
                          requested ? tly_json_str(env->data, "from_account") : NULL,
                          requested ? tly_json_str(env->data, "to_account") : NULL,
                          json_is_integer(amount) ? amount_s : NULL,
                          currency,
                          requested ? tly_json_str(env->data, "reference") : NULL,
                          c->status,
                          c->compensated ? "true" : "false",
                          c->error ? tly_json_str(env->data, "code") : NULL,
                          c->error ? tly_json_str(env->data, "detail") : NULL,
                          tly_uuid_is_nil(&env->job_id) ? NULL : f.job,
                          c->step,
                          f.when};
    return tly_pgx_exec(
        conn, "project transfer",
        "INSERT INTO transfers AS t (id, tenant_id, from_account, to_account, amount, currency, reference, status, compensated, "
        "error_code, error_detail, job_id, version, timeline, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, "
        "COALESCE($8::text, 'requested'), $9, $10, $11, $12, 1, jsonb_build_array(jsonb_build_object('step', $13::text, 'at', "
        "$14::text)), $14::timestamptz, $14::timestamptz) "
        "ON CONFLICT (id) DO UPDATE SET from_account = COALESCE(t.from_account, EXCLUDED.from_account), "
        "to_account = COALESCE(t.to_account, EXCLUDED.to_account), amount = COALESCE(t.amount, EXCLUDED.amount), "
        "currency = COALESCE(t.currency, EXCLUDED.currency), reference = COALESCE(t.reference, EXCLUDED.reference), "
        "job_id = COALESCE(t.job_id, EXCLUDED.job_id), "
        "status = CASE WHEN $8::text IS NOT NULL AND array_position(ARRAY['requested', 'debited', 'compensating', 'completed', "
        "'rejected', 'failed'], $8::text) > array_position(ARRAY['requested', 'debited', 'compensating', 'completed', "
        "'rejected', 'failed'], t.status) THEN $8::text ELSE t.status END, "
        "compensated = t.compensated OR EXCLUDED.compensated, error_code = COALESCE(EXCLUDED.error_code, t.error_code), "
        "error_detail = COALESCE(EXCLUDED.error_detail, t.error_detail), version = t.version + 1, "
        "timeline = (SELECT jsonb_agg(e ORDER BY e->>'at', e->>'step') FROM jsonb_array_elements(t.timeline || "
        "EXCLUDED.timeline) e), "
        "created_at = CASE WHEN $13::text = 'requested' THEN EXCLUDED.created_at ELSE t.created_at END, "
        "updated_at = GREATEST(t.updated_at, EXCLUDED.updated_at)",
        14, vals, NULL, err, errcap);
}

#define TRANSFER_APPLY(fn, step, status, compensated, error)                                                                       \
    static int fn(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)                                               \
    {                                                                                                                              \
        static const transfer_change_t c = {step, status, compensated, error};                                                     \
        return transfer_merge(conn, env, &c, err, errcap);                                                                         \
    }
TRANSFER_APPLY(transfers_requested, "requested", "requested", false, false)
TRANSFER_APPLY(transfers_debited, "debited", "debited", false, false)
TRANSFER_APPLY(transfers_debit_rejected, "debit_rejected", NULL, false, true)
TRANSFER_APPLY(transfers_credited, "credited", NULL, false, false)
TRANSFER_APPLY(transfers_credit_rejected, "credit_rejected", "compensating", false, true)
TRANSFER_APPLY(transfers_reversed, "debit_reversed", NULL, false, false)
TRANSFER_APPLY(transfers_reversal_rejected, "debit_reversal_rejected", NULL, false, false)
TRANSFER_APPLY(transfers_completed, "completed", "completed", false, false)
TRANSFER_APPLY(transfers_rejected, "rejected", "rejected", false, true)
TRANSFER_APPLY(transfers_failed, "failed", "failed", true, true)
#undef TRANSFER_APPLY

/* --- jobs ---------------------------------------------------------------- */

/*
 * A job's events come from several partitions (a transfer's from the transfer
 * and from both accounts), so the live projector and a replay can apply them
 * in different orders. Every write here is therefore order-independent: the
 * version is the rank of the status (queued 1, running 2, succeeded or failed
 * 3) and only a higher rank changes status, error and updated_at; created_at
 * is the earliest event's time. Any order of the same events converges to the
 * same row, so a replay equals live. A job that reaches a terminal state
 * NOTIFYs tally_jobs '<job id>' (delivered at commit) for Prefer: wait readers.
 */
enum { JOB_QUEUED = 1, JOB_RUNNING = 2, JOB_TERMINAL = 3 };

static int
job_upsert(PGconn *conn, const tly_envelope_t *env, const char *rtype, const char *resource, const char *status, int rank,
           const char *code, const char *detail, char *err, size_t errcap)
{
    fields_t f;
    char rank_s[4];
    if (tly_uuid_is_nil(&env->job_id))
        return 0;
    fields_of(env, &f);
    snprintf(rank_s, sizeof(rank_s), "%d", rank);
    const char *vals[] = {f.job, f.tenant, status, resource != NULL ? resource : f.aggregate, code, detail, f.when, rtype, rank_s};
    return tly_pgx_exec(conn, "write job",
                        "WITH up AS (INSERT INTO jobs (id, tenant_id, status, resource_type, resource_id, error_code, "
                        "error_detail, version, created_at, updated_at) VALUES ($1, $2, $3, $8, $4, $5, $6, $9::bigint, $7, $7) "
                        "ON CONFLICT (id) DO UPDATE SET "
                        "created_at = LEAST(jobs.created_at, EXCLUDED.created_at), "
                        "status = CASE WHEN EXCLUDED.version > jobs.version THEN EXCLUDED.status ELSE jobs.status END, "
                        "error_code = CASE WHEN EXCLUDED.version > jobs.version THEN EXCLUDED.error_code "
                        "ELSE jobs.error_code END, "
                        "error_detail = CASE WHEN EXCLUDED.version > jobs.version THEN EXCLUDED.error_detail "
                        "ELSE jobs.error_detail END, "
                        "updated_at = CASE WHEN EXCLUDED.version > jobs.version THEN EXCLUDED.updated_at "
                        "WHEN EXCLUDED.version = jobs.version THEN LEAST(jobs.updated_at, EXCLUDED.updated_at) "
                        "ELSE jobs.updated_at END, "
                        "version = GREATEST(jobs.version, EXCLUDED.version) RETURNING id, status) "
                        "SELECT pg_notify('tally_jobs', id::text) FROM up WHERE status IN ('succeeded', 'failed')",
                        9, vals, NULL, err, errcap);
}

static int
jobs_queued(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    return job_upsert(conn, env, "account", NULL, "queued", JOB_QUEUED, NULL, NULL, err, errcap);
}

static int
job_finish(PGconn *conn, const tly_envelope_t *env, const char *status, const char *code, const char *detail, char *err,
           size_t errcap)
{
    return job_upsert(conn, env, "account", NULL, status, JOB_TERMINAL, code, detail, err, errcap);
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

/* A transfer's job: queued with its TransferRequested, running once the source is debited, ended by the saga's last event. */
static int
jobs_transfer_queued(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    return job_upsert(conn, env, "transfer", NULL, "queued", JOB_QUEUED, NULL, NULL, err, errcap);
}

/* AccountDebited (on the source's partition: it may come before or after the transfer's own events). */
static int
jobs_transfer_running(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    tly_uuid_t transfer;
    char transfer_s[TLY_UUID_STR_LEN + 1];
    const char *t = tly_json_str(env->data, "transfer_id");
    if (t == NULL || !tly_uuid_parse(t, &transfer))
        return 0;
    tly_uuid_format(&transfer, transfer_s);
    return job_upsert(conn, env, "transfer", transfer_s, "running", JOB_RUNNING, NULL, NULL, err, errcap);
}

static int
jobs_transfer_succeeded(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    return job_upsert(conn, env, "transfer", NULL, "succeeded", JOB_TERMINAL, NULL, NULL, err, errcap);
}

static int
jobs_transfer_failed(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    const char *code = tly_json_str(env->data, "code"), *detail = tly_json_str(env->data, "detail");
    return job_upsert(conn, env, "transfer", NULL, "failed", JOB_TERMINAL, code != NULL ? code : "rejected", detail, err, errcap);
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
    {"FundsDeposited", 2, accounts_balance, ledger_deposit, jobs_succeeded},
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
    /* transfers: the request, the saga's steps on both accounts, the saga's outcome */
    {"TransferRequested", V, NULL, NULL, jobs_transfer_queued, transfers_requested},
    {"AccountDebited", V, accounts_balance, ledger_transfer_debit, jobs_transfer_running, transfers_debited},
    {"AccountDebitRejected", V, NULL, NULL, NULL, transfers_debit_rejected},
    {"AccountCredited", V, accounts_balance, ledger_transfer_credit, NULL, transfers_credited},
    {"AccountCreditRejected", V, NULL, NULL, NULL, transfers_credit_rejected},
    {"DebitReversed", V, accounts_balance, ledger_transfer_reversal, NULL, transfers_reversed},
    {"DebitReversalRejected", V, NULL, NULL, NULL, transfers_reversal_rejected},
    {"TransferCompleted", V, NULL, NULL, jobs_transfer_succeeded, transfers_completed},
    {"TransferRejected", V, NULL, NULL, jobs_transfer_failed, transfers_rejected},
    {"TransferFailed", V, NULL, NULL, jobs_transfer_failed, transfers_failed},
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
    /* older versions are read through the upcasters: the apply functions see only the newest shape */
    tly_envelope_t up;
    if (tly_upcast(env, row->max_version, &up, err, errcap) != 0)
        return -1;
    int ret = -1;
    if ((models & TLY_MODEL_ACCOUNTS) && row->accounts != NULL && row->accounts(conn, &up, err, errcap) != 0)
        goto out;
    if ((models & TLY_MODEL_LEDGER) && row->ledger != NULL && row->ledger(conn, &up, err, errcap) != 0)
        goto out;
    if ((models & TLY_MODEL_JOBS) && row->jobs != NULL && row->jobs(conn, &up, err, errcap) != 0)
        goto out;
    if ((models & TLY_MODEL_TRANSFERS) && row->transfers != NULL && row->transfers(conn, &up, err, errcap) != 0)
        goto out;
    ret = 0;
out:
    tly_envelope_clear(&up);
    return ret;
}
