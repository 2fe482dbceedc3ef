/*
 * Projections of account and transfer events into accounts, ledger_entries,
 * transfers and jobs.
 *
 * Each event type has one fold function per read model: it validates the
 * event and merges it into the batch's pending row for its key (account,
 * job, transfer; a ledger entry is a row of its own). projection_sql.c then
 * writes each table with one set-based statement. Every merge here is the
 * same rule as the statement's ON CONFLICT clause and is associative, so
 * "fold the batch, merge once" equals "apply each event in turn" (see each
 * model's comment). The consumer also dedups by event id, so a redelivery
 * never bumps a version twice. Timestamps come from the events
 * (occurred_at), never from the clock, so a replay writes the same rows as
 * the live projector.
 */
#include "tally/ledger/projection.h"
#include "tally/ledger/decider.h"
#include "projection_batch.h"
#include "tally/clock.h"
#include "tally/json.h"
#include "tally/pg.h"
#include "tally/ledger/catalogue.h"
#include "tally/ledger/job.h"
#include "tally/ledger/upcast.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Folds `env` into `b`. With `dry` it only validates (and says whether the
 * batch must be flushed first) and changes nothing, so that an invalid event
 * leaves no trace in any model. 0, 1 (flush first) or -1 with `err`.
 */
typedef int (*fold_fn)(tly_projection_batch_t *b, const tly_envelope_t *env, bool dry, char *err, size_t errcap);

/* A type's folds; the newest version it reads (events are upcast to it) is the catalogue's. */
typedef struct st_projection_row_t {
    const char *type;
    fold_fn accounts;
    fold_fn ledger;
    fold_fn jobs;
    fold_fn transfers;
} projection_row_t;

/* --- event fields -------------------------------------------------------- */

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

/* --- accounts ------------------------------------------------------------ */

/*
 * AccountOpened inserts the row (version 1, or nothing when it exists);
 * every later event of the account updates it: balance and status are the
 * last event's, version counts the events, updated_at is the last event's
 * time. An update of an account with no row is the event's own failure
 * (its AccountOpened was never applied): projection_sql.c reports it.
 */
static tly_projection__account_t *
account_row(tly_projection_batch_t *b, const tly_uuid_t *id)
{
    int i = tly_projection__map_find(&b->account_map, id);
    if (i >= 0)
        return &b->accounts[i];
    TLY_PROJECTION__GROW(b->accounts, b->naccounts, b->cap_accounts);
    tly_projection__account_t *a = &b->accounts[b->naccounts];
    memset(a, 0, sizeof(*a));
    a->id = *id;
    tly_projection__map_put(&b->account_map, id, b->naccounts++);
    return a;
}

static int
accounts_opened(tly_projection_batch_t *b, const tly_envelope_t *env, bool dry, char *err, size_t errcap)
{
    const char *currency, *label;
    if (str_field(env, "currency", &currency, err, errcap) != 0 || str_field(env, "label", &label, err, errcap) != 0)
        return -1;
    int i = tly_projection__map_find(&b->account_map, &env->aggregate_id);
    if (i >= 0 && !b->accounts[i].opened)
        return 1; /* updates of this account came first: they must meet the table as it is now */
    if (dry || i >= 0)
        return 0; /* opened twice in the batch: the second insert would do nothing */
    tly_projection__account_t *a = account_row(b, &env->aggregate_id);
    a->opened = true;
    a->tenant = env->tenant_id;
    a->currency = tly_projection__str_put(b, currency);
    a->label = tly_projection__str_put(b, label);
    a->opened_at = env->occurred_at_us;
    return 0;
}

static const projection_row_t *find_row(const char *type);

static tly_projection__account_t *
account_update(tly_projection_batch_t *b, const tly_envelope_t *env)
{
    tly_projection__account_t *a = account_row(b, &env->aggregate_id);
    if (a->nupdates++ == 0)
        a->first_type = find_row(env->type)->type; /* static: outlives the envelope */
    a->updated_at = env->occurred_at_us;
    return a;
}

static int
accounts_balance(tly_projection_batch_t *b, const tly_envelope_t *env, bool dry, char *err, size_t errcap)
{
    int64_t after;
    if (int_field(env, "balance_after", &after, err, errcap) != 0)
        return -1;
    if (dry)
        return 0;
    tly_projection__account_t *a = account_update(b, env);
    a->has_balance = true;
    a->balance = after;
    return 0;
}

/*
 * A status event is also appended to the account's status history
 * (accounts.status_changes, for reads as of a past instant): the batch keeps
 * every one of them, in order, as the elements of a json array.
 */
static int
accounts_status(tly_projection_batch_t *b, const tly_envelope_t *env, const char *status, bool dry)
{
    if (dry)
        return 0;
    tly_projection__account_t *a = account_update(b, env);
    char at[40];
    tly_clock_format_rfc3339(env->occurred_at_us, at, sizeof(at));
    const char *prev = a->status_changes != 0 ? tly_projection__str(b, a->status_changes) : "";
    size_t cap = strlen(prev) + strlen(at) + strlen(status) + 32;
    char *changes = malloc(cap);
    if (changes == NULL)
        abort();
    snprintf(changes, cap, "%s%s{\"at\":\"%s\",\"status\":\"%s\"}", prev, prev[0] != '\0' ? "," : "", at, status);
    a->status = status;
    a->status_changes = tly_projection__str_put(b, changes);
    free(changes);
    return 0;
}

static int
accounts_frozen(tly_projection_batch_t *b, const tly_envelope_t *env, bool dry, char *err, size_t errcap)
{
    return accounts_status(b, env, "frozen", dry);
}

static int
accounts_unfrozen(tly_projection_batch_t *b, const tly_envelope_t *env, bool dry, char *err, size_t errcap)
{
    return accounts_status(b, env, "open", dry);
}

static int
accounts_closed(tly_projection_batch_t *b, const tly_envelope_t *env, bool dry, char *err, size_t errcap)
{
    return accounts_status(b, env, "closed", dry);
}

/* --- ledger_entries ------------------------------------------------------ */

/* One row per event (its id), inserted once. */
static int
ledger_entry(tly_projection_batch_t *b, const tly_envelope_t *env, const char *kind, int sign, bool dry, char *err, size_t errcap)
{
    int64_t amount, after;
    const char *currency;
    if (int_field(env, "amount", &amount, err, errcap) != 0 || int_field(env, "balance_after", &after, err, errcap) != 0 ||
        str_field(env, "currency", &currency, err, errcap) != 0)
        return -1;
    if (dry)
        return 0;
    TLY_PROJECTION__GROW(b->ledger, b->nledger, b->cap_ledger);
    tly_projection__ledger_t *l = &b->ledger[b->nledger++];
    memset(l, 0, sizeof(*l));
    l->id = env->id;
    l->tenant = env->tenant_id;
    l->account = env->aggregate_id;
    l->kind = kind;
    l->amount = sign * amount;
    l->balance_after = after;
    l->currency = tly_projection__str_put(b, currency);
    l->has_job = !tly_uuid_is_nil(&env->job_id);
    l->job = env->job_id;
    l->at = env->occurred_at_us;
    const char *t = tly_json_str(env->data, "transfer_id");
    l->has_transfer = t != NULL && tly_uuid_parse(t, &l->transfer);
    return 0;
}

static int
ledger_deposit(tly_projection_batch_t *b, const tly_envelope_t *env, bool dry, char *err, size_t errcap)
{
    return ledger_entry(b, env, "deposit", 1, dry, err, errcap);
}

static int
ledger_withdrawal(tly_projection_batch_t *b, const tly_envelope_t *env, bool dry, char *err, size_t errcap)
{
    return ledger_entry(b, env, "withdrawal", -1, dry, err, errcap);
}

static int
ledger_transfer_debit(tly_projection_batch_t *b, const tly_envelope_t *env, bool dry, char *err, size_t errcap)
{
    return ledger_entry(b, env, "transfer_debit", -1, dry, err, errcap);
}

static int
ledger_transfer_credit(tly_projection_batch_t *b, const tly_envelope_t *env, bool dry, char *err, size_t errcap)
{
    return ledger_entry(b, env, "transfer_credit", 1, dry, err, errcap);
}

static int
ledger_transfer_reversal(tly_projection_batch_t *b, const tly_envelope_t *env, bool dry, char *err, size_t errcap)
{
    return ledger_entry(b, env, "transfer_reversal", 1, dry, err, errcap);
}

/* --- transfers ------------------------------------------------------------ */

/*
 * The events of one transfer come from three partitions (the transfer's and
 * both accounts'), so the projector may see them in any order. Every event
 * is therefore a merge: the status only moves forward (requested < debited <
 * compensating < completed | rejected | failed: each saga walks one path of
 * that order), fields are filled once (the first non-null wins), error code
 * and detail are the last non-null, the timeline stays sorted by time
 * whatever the arrival order, the version counts the events applied (the
 * consumer dedups, so a redelivery never counts), created_at is the
 * TransferRequested's time once it is applied (before, the first event's),
 * updated_at the latest time. Each of these is associative, which is what
 * lets a batch fold a transfer's events before the one upsert. A row created
 * by an account event before its TransferRequested has no from_account yet;
 * the query API hides it until then.
 */
typedef struct st_transfer_change_t {
    const char *step;   /* timeline entry */
    const char *status; /* NULL: unchanged */
    bool compensated;
    bool error; /* take code and detail from data */
} transfer_change_t;

static int
status_rank(const char *s)
{
    static const char *order[] = {"requested", "debited", "compensating", "completed", "rejected", "failed"};
    for (int i = 0; s != NULL && i < (int)(sizeof(order) / sizeof(order[0])); ++i)
        if (strcmp(order[i], s) == 0)
            return i + 1;
    return 0;
}

static tly_projection__transfer_t *
transfer_row(tly_projection_batch_t *b, const tly_uuid_t *id, const tly_envelope_t *env)
{
    int i = tly_projection__map_find(&b->transfer_map, id);
    if (i >= 0)
        return &b->transfers[i];
    TLY_PROJECTION__GROW(b->transfers, b->ntransfers, b->cap_transfers);
    tly_projection__transfer_t *t = &b->transfers[b->ntransfers];
    memset(t, 0, sizeof(*t));
    t->id = *id;
    t->tenant = env->tenant_id;
    t->created_at = env->occurred_at_us;
    t->updated_at = env->occurred_at_us;
    t->first_step = t->last_step = -1;
    tly_projection__map_put(&b->transfer_map, id, b->ntransfers++);
    return t;
}

static void
fill_once(tly_projection_batch_t *b, tly_projection__str_t *field, const char *v)
{
    if (*field == 0 && v != NULL)
        *field = tly_projection__str_put(b, v);
}

static void
transfer_step(tly_projection_batch_t *b, tly_projection__transfer_t *t, const char *step, int64_t at)
{
    TLY_PROJECTION__GROW(b->steps, b->nsteps, b->cap_steps);
    b->steps[b->nsteps] = (tly_projection__step_t){step, at, -1};
    if (t->last_step >= 0)
        b->steps[t->last_step].next = b->nsteps;
    else
        t->first_step = b->nsteps;
    t->last_step = b->nsteps++;
}

static int
transfer_merge(tly_projection_batch_t *b, const tly_envelope_t *env, const transfer_change_t *c, bool dry, char *err, size_t errcap)
{
    tly_uuid_t id;
    bool requested = strcmp(env->type, "TransferRequested") == 0;
    if (requested || strcmp(env->aggregate_type, "transfer") == 0) {
        id = env->aggregate_id;
    } else {
        const char *s = tly_json_str(env->data, "transfer_id");
        if (s == NULL || !tly_uuid_parse(s, &id)) {
            snprintf(err, errcap, "could not apply %s: data.transfer_id is not a uuid", env->type);
            return -1;
        }
    }
    if (dry)
        return 0;
    tly_projection__transfer_t *t = transfer_row(b, &id, env);
    if (requested) {
        fill_once(b, &t->from, tly_json_str(env->data, "from_account"));
        fill_once(b, &t->to, tly_json_str(env->data, "to_account"));
        fill_once(b, &t->reference, tly_json_str(env->data, "reference"));
        t->has_requested = true;
        t->created_at = env->occurred_at_us;
    }
    json_t *amount = json_object_get(env->data, "amount");
    if (!t->has_amount && json_is_integer(amount)) {
        t->has_amount = true;
        t->amount = (int64_t)json_integer_value(amount);
    }
    const char *currency = tly_json_str(env->data, "currency");
    if (currency != NULL && strlen(currency) == 3)
        fill_once(b, &t->currency, currency);
    if (!t->has_job && !tly_uuid_is_nil(&env->job_id)) {
        t->has_job = true;
        t->job = env->job_id;
    }
    if (c->status != NULL && status_rank(c->status) > status_rank(t->status))
        t->status = c->status;
    t->compensated = t->compensated || c->compensated;
    if (c->error && tly_json_str(env->data, "code") != NULL)
        t->code = tly_projection__str_put(b, tly_json_str(env->data, "code"));
    if (c->error && tly_json_str(env->data, "detail") != NULL)
        t->detail = tly_projection__str_put(b, tly_json_str(env->data, "detail"));
    t->events++;
    if (env->occurred_at_us > t->updated_at)
        t->updated_at = env->occurred_at_us;
    transfer_step(b, t, c->step, env->occurred_at_us);
    return 0;
}

#define TRANSFER_FOLD(fn, step, status, compensated, error)                                                                        \
    static int fn(tly_projection_batch_t *b, const tly_envelope_t *env, bool dry, char *err, size_t errcap)                        \
    {                                                                                                                              \
        static const transfer_change_t c = {step, status, compensated, error};                                                     \
        return transfer_merge(b, env, &c, dry, err, errcap);                                                                       \
    }
TRANSFER_FOLD(transfers_requested, "requested", "requested", false, false)
TRANSFER_FOLD(transfers_debited, "debited", "debited", false, false)
TRANSFER_FOLD(transfers_debit_rejected, "debit_rejected", NULL, false, true)
TRANSFER_FOLD(transfers_credited, "credited", NULL, false, false)
TRANSFER_FOLD(transfers_credit_rejected, "credit_rejected", "compensating", false, true)
TRANSFER_FOLD(transfers_reversed, "debit_reversed", NULL, false, false)
TRANSFER_FOLD(transfers_reversal_rejected, "debit_reversal_rejected", NULL, false, false)
TRANSFER_FOLD(transfers_completed, "completed", "completed", false, false)
TRANSFER_FOLD(transfers_rejected, "rejected", "rejected", false, true)
TRANSFER_FOLD(transfers_failed, "failed", "failed", true, true)
#undef TRANSFER_FOLD

/* --- jobs ---------------------------------------------------------------- */

/*
 * A job's events come from several partitions (a transfer's from the transfer
 * and from both accounts), so the live projector and a replay can apply them
 * in different orders. Every write here is therefore order-independent: the
 * version is the rank of the status (tally/ledger/job.h: queued 1, running 2,
 * succeeded or failed 3) and only a higher rank changes status, error and updated_at (an equal
 * rank keeps the earlier updated_at); created_at is the earliest event's
 * time. Any order of the same events converges to the same row, so a replay
 * equals live; and the merge is associative, so a batch folds a job's events
 * before its one upsert. A job that reaches a terminal state NOTIFYs
 * tally_jobs '<job id>' (delivered at commit) for Prefer: wait readers.
 */
static int
job_fold(tly_projection_batch_t *b, const tly_envelope_t *env, const char *rtype, const tly_uuid_t *resource, tly_job_status_t to,
         const char *code, const char *detail, bool dry)
{
    if (dry || tly_uuid_is_nil(&env->job_id))
        return 0;
    const char *status = tly_job_status_name(to);
    int rank = tly_job_rank(to);
    int64_t at = env->occurred_at_us;
    int i = tly_projection__map_find(&b->job_map, &env->job_id);
    if (i < 0) {
        TLY_PROJECTION__GROW(b->jobs, b->njobs, b->cap_jobs);
        b->jobs[b->njobs] = (tly_projection__job_t){
            .id = env->job_id,
            .tenant = env->tenant_id,
            .resource = resource != NULL ? *resource : env->aggregate_id,
            .status = status,
            .rtype = rtype,
            .rank = rank,
            .code = tly_projection__str_put(b, code),
            .detail = tly_projection__str_put(b, detail),
            .created_at = at,
            .updated_at = at,
        };
        tly_projection__map_put(&b->job_map, &env->job_id, b->njobs++);
        return 0;
    }
    tly_projection__job_t *j = &b->jobs[i];
    if (at < j->created_at)
        j->created_at = at;
    if (rank > j->rank) {
        j->rank = rank;
        j->status = status;
        j->code = tly_projection__str_put(b, code);
        j->detail = tly_projection__str_put(b, detail);
        j->updated_at = at;
    } else if (rank == j->rank && at < j->updated_at) {
        j->updated_at = at;
    }
    return 0;
}

/* A job failed by a refusal: its code (or "rejected") and detail are the event's. */
static int
job_failed(tly_projection_batch_t *b, const tly_envelope_t *env, const char *rtype, bool dry)
{
    const char *code = tly_json_str(env->data, "code"), *detail = tly_json_str(env->data, "detail");
    return job_fold(b, env, rtype, NULL, TLY_JOB_FAILED, code != NULL ? code : "rejected", detail, dry);
}

static int
jobs_queued(tly_projection_batch_t *b, const tly_envelope_t *env, bool dry, char *err, size_t errcap)
{
    return job_fold(b, env, "account", NULL, TLY_JOB_QUEUED, NULL, NULL, dry);
}

static int
jobs_succeeded(tly_projection_batch_t *b, const tly_envelope_t *env, bool dry, char *err, size_t errcap)
{
    return job_fold(b, env, "account", NULL, TLY_JOB_SUCCEEDED, NULL, NULL, dry);
}

static int
jobs_rejected(tly_projection_batch_t *b, const tly_envelope_t *env, bool dry, char *err, size_t errcap)
{
    return job_failed(b, env, "account", dry);
}

/* A transfer's job: queued with its TransferRequested, running once the source is debited, ended by the saga's last event. */
static int
jobs_transfer_queued(tly_projection_batch_t *b, const tly_envelope_t *env, bool dry, char *err, size_t errcap)
{
    return job_fold(b, env, "transfer", NULL, TLY_JOB_QUEUED, NULL, NULL, dry);
}

/* AccountDebited (on the source's partition: it may come before or after the transfer's own events). */
static int
jobs_transfer_running(tly_projection_batch_t *b, const tly_envelope_t *env, bool dry, char *err, size_t errcap)
{
    tly_uuid_t transfer;
    const char *t = tly_json_str(env->data, "transfer_id");
    if (t == NULL || !tly_uuid_parse(t, &transfer))
        return 0;
    return job_fold(b, env, "transfer", &transfer, TLY_JOB_RUNNING, NULL, NULL, dry);
}

static int
jobs_transfer_succeeded(tly_projection_batch_t *b, const tly_envelope_t *env, bool dry, char *err, size_t errcap)
{
    return job_fold(b, env, "transfer", NULL, TLY_JOB_SUCCEEDED, NULL, NULL, dry);
}

static int
jobs_transfer_failed(tly_projection_batch_t *b, const tly_envelope_t *env, bool dry, char *err, size_t errcap)
{
    return job_failed(b, env, "transfer", dry);
}

/* --- the table ----------------------------------------------------------- */

static const projection_row_t rows[] = {
    /* requests: the job exists as soon as the event is in the log */
    {"AccountOpenRequested", NULL, NULL, jobs_queued},
    {"DepositRequested", NULL, NULL, jobs_queued},
    {"WithdrawalRequested", NULL, NULL, jobs_queued},
    {"AccountFreezeRequested", NULL, NULL, jobs_queued},
    {"AccountUnfreezeRequested", NULL, NULL, jobs_queued},
    {"AccountCloseRequested", NULL, NULL, jobs_queued},
    /* outcomes */
    {"AccountOpened", accounts_opened, NULL, jobs_succeeded},
    {"FundsDeposited", accounts_balance, ledger_deposit, jobs_succeeded},
    {"FundsWithdrawn", accounts_balance, ledger_withdrawal, jobs_succeeded},
    {"AccountFrozen", accounts_frozen, NULL, jobs_succeeded},
    {"AccountUnfrozen", accounts_unfrozen, NULL, jobs_succeeded},
    {"AccountClosed", accounts_closed, NULL, jobs_succeeded},
    {"AccountOpenRejected", NULL, NULL, jobs_rejected},
    {"DepositRejected", NULL, NULL, jobs_rejected},
    {"WithdrawalRejected", NULL, NULL, jobs_rejected},
    {"AccountFreezeRejected", NULL, NULL, jobs_rejected},
    {"AccountUnfreezeRejected", NULL, NULL, jobs_rejected},
    {"AccountCloseRejected", NULL, NULL, jobs_rejected},
    /* transfers: the request, the saga's steps on both accounts, the saga's outcome */
    {"TransferRequested", NULL, NULL, jobs_transfer_queued, transfers_requested},
    {"AccountDebited", accounts_balance, ledger_transfer_debit, jobs_transfer_running, transfers_debited},
    {"AccountDebitRejected", NULL, NULL, NULL, transfers_debit_rejected},
    {"AccountCredited", accounts_balance, ledger_transfer_credit, NULL, transfers_credited},
    {"AccountCreditRejected", NULL, NULL, NULL, transfers_credit_rejected},
    {"DebitReversed", accounts_balance, ledger_transfer_reversal, NULL, transfers_reversed},
    {"DebitReversalRejected", NULL, NULL, NULL, transfers_reversal_rejected},
    {"TransferCompleted", NULL, NULL, jobs_transfer_succeeded, transfers_completed},
    {"TransferRejected", NULL, NULL, jobs_transfer_failed, transfers_rejected},
    {"TransferFailed", NULL, NULL, jobs_transfer_failed, transfers_failed},
};

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
    return row != NULL ? tly_catalogue_latest_version(row->type) : 0;
}

/* Runs the row's fold functions of the selected models: all dry first, so that a refusal changes nothing. */
static int
fold_all(tly_projection_batch_t *b, const projection_row_t *row, const tly_envelope_t *env, char *err, size_t errcap)
{
    const struct {
        unsigned model;
        fold_fn fn;
    } fns[] = {{TLY_MODEL_ACCOUNTS, row->accounts},
               {TLY_MODEL_LEDGER, row->ledger},
               {TLY_MODEL_JOBS, row->jobs},
               {TLY_MODEL_TRANSFERS, row->transfers}};
    int wait = 0;
    for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); ++i) {
        if (!(b->models & fns[i].model) || fns[i].fn == NULL)
            continue;
        int r = fns[i].fn(b, env, true, err, errcap);
        if (r < 0)
            return -1;
        wait |= r;
    }
    if (wait)
        return 1;
    for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); ++i)
        if ((b->models & fns[i].model) && fns[i].fn != NULL)
            (void)fns[i].fn(b, env, false, err, errcap);
    b->nevents++;
    return 0;
}

int
tly_projection_batch_add(tly_projection_batch_t *b, const tly_envelope_t *env, char *err, size_t errcap)
{
    const projection_row_t *row = find_row(env->type);
    if (row == NULL)
        return 0;
    int max_version = tly_catalogue_latest_version(row->type);
    if (env->version > max_version) {
        snprintf(err, errcap, "could not apply %s: version %d is newer than %d", env->type, env->version, max_version);
        return -1;
    }
    if (env->version == max_version)
        return fold_all(b, row, env, err, errcap);
    /* older versions are read through the upcasters: the fold functions see only the newest shape */
    tly_envelope_t up;
    if (tly_upcast(env, max_version, &up, err, errcap) != 0)
        return -1;
    int ret = fold_all(b, row, &up, err, errcap);
    tly_envelope_clear(&up);
    return ret;
}

void
tly_projection_batch_set_bulk(tly_projection_batch_t *b, tly_projection_exists_fn job_exists, void *ctx)
{
    b->job_exists = job_exists;
    b->exists_ctx = ctx;
}

/* Bulk loading: marks the jobs that are not in the table yet (COPY); returns how many the upsert still writes. */
static int
mark_new_jobs(tly_projection_batch_t *b)
{
    int upserts = 0;
    for (int i = 0; i < b->njobs; ++i) {
        b->jobs[i].copy = b->job_exists != NULL && !b->job_exists(b->exists_ctx, &b->jobs[i].id);
        upserts += !b->jobs[i].copy;
    }
    return upserts;
}

int
tly_projection_batch_flush(tly_projection_batch_t *b, PGconn *conn, char *err, size_t errcap)
{
    int ret = -1;
    bool bulk = b->job_exists != NULL;
    /* Tables in one order for every batch (row locks, projection_sql.c). Accounts last: their update is the one
       statement whose result is read (every row found), so when the caller defers (tly_pgx_defer) the others go out
       ahead of it in the same round trip. */
    if (b->nledger > 0 &&
        (bulk ? tly_projection__copy_ledger(b, conn, err, errcap) : tly_projection__write_ledger(b, conn, err, errcap)) != 0)
        goto out;
    if (b->njobs > 0 && mark_new_jobs(b) > 0 && tly_projection__write_jobs(b, conn, err, errcap) != 0)
        goto out;
    if (bulk && b->njobs > 0 && tly_projection__copy_jobs(b, conn, err, errcap) != 0)
        goto out;
    if (b->ntransfers > 0 && tly_projection__write_transfers(b, conn, err, errcap) != 0)
        goto out;
    if (b->naccounts > 0 && tly_projection__write_accounts(b, conn, err, errcap) != 0)
        goto out;
    ret = 0;
out:
    tly_projection_batch_reset(b);
    return ret;
}

int
tly_projection_apply(PGconn *conn, const tly_envelope_t *env, unsigned models, char *err, size_t errcap)
{
    tly_projection_batch_t *b = tly_projection_batch_create(models);
    int ret = tly_projection_batch_add(b, env, err, errcap); /* an empty batch never asks for a flush first */
    if (ret == 0)
        ret = tly_projection_batch_flush(b, conn, err, errcap);
    tly_projection_batch_destroy(b);
    return ret == 0 ? 0 : -1;
}

int
tly_projection_job_dead_lettered(PGconn *conn, const tly_envelope_t *env, const char *detail, char *err, size_t errcap)
{
    tly_projection_batch_t *b = tly_projection_batch_create(TLY_MODEL_JOBS);
    (void)job_fold(b, env, "account", NULL, TLY_JOB_FAILED, TLY_CODE_DEAD_LETTERED, detail, false);
    int ret = tly_projection_batch_flush(b, conn, err, errcap);
    tly_projection_batch_destroy(b);
    return ret;
}

/* The job that tly_projection_job_dead_lettered failed for `env`, back to queued (the one move down of tally/ledger/job.h). */
static int
reopen_parked_job(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    char job[TLY_UUID_STR_LEN + 1];
    tly_uuid_format(&env->job_id, job);
    const char *vals[] = {job};
    PGresult *res = PQexecParams(conn, TLY_JOB_REOPEN_SQL, 1, NULL, vals, NULL, NULL, 0);
    bool ok = tly_pg_ok(conn, res, "could not reopen the job", err, errcap);
    PQclear(res);
    return ok ? 0 : -1;
}

int
tly_projection_retry_parked(PGconn *conn, const tly_envelope_t *env, char *err, size_t errcap)
{
    const tly_event_spec_t *spec = tly_catalogue_find(env->type, 0);
    bool request = spec != NULL && (spec->kind == TLY_EVENT_REQUEST || spec->kind == TLY_EVENT_SAGA_STEP);
    if (!request && !tly_uuid_is_nil(&env->job_id) && reopen_parked_job(conn, env, err, errcap) != 0)
        return -1;
    return tly_projection_apply(conn, env, TLY_MODEL_ALL, err, errcap);
}
