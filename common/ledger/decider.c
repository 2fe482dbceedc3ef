/*
 * Ledger decider rules for accounts, as two tables: commands (request type ->
 * rule -> outcome or rejection type) and outcomes (outcome type -> evolve).
 * The next state is always computed by evolving the input state with the
 * outcome just decided, so the live state and a rebuild from outcome events
 * cannot diverge.
 */
#include "tally/ledger/decider.h"
#include "tally/clock.h"
#include "tally/currency.h"
#include "tally/ledger/catalogue.h"
#include "tally/json.h"
#include "tally/names.h"
#include "tally/ledger/upcast.h"

#include <stdio.h>
#include <string.h>

typedef struct st_rejection_t {
    const char *code;
    char detail[160];
} rejection_t;

/* Returns true when accepted (`*data` is the outcome's data), false when rejected (`rej` filled). */
typedef bool (*decide_fn)(const tly_account_state_t *s, const tly_envelope_t *req, json_t **data, rejection_t *rej);
typedef int (*evolve_fn)(tly_account_state_t *s, const tly_envelope_t *ev);

/* A request type and its rule; its outcome and rejection types are the catalogue's. */
typedef struct st_command_row_t {
    const char *request_type;
    decide_fn decide;
} command_row_t;

typedef struct st_outcome_row_t {
    const char *type;
    evolve_fn evolve;
} outcome_row_t;

static bool
reject(rejection_t *rej, const char *code, const char *detail)
{
    rej->code = code;
    snprintf(rej->detail, sizeof(rej->detail), "%s", detail);
    return false;
}

/* --- request field checks ------------------------------------------------ */

/*
 * The request's fields against the catalogue (tally/ledger/catalogue.h), the
 * same rules the command API applied before it wrote the request: a request
 * the API accepted is never refused here as invalid_request.
 */
static bool
request_fields_ok(const tly_event_spec_t *spec, const tly_envelope_t *req, rejection_t *rej)
{
    const tly_field_spec_t *bad = tly_catalogue_check(spec, req->data);
    if (bad == NULL)
        return true;
    rej->code = TLY_CODE_INVALID_REQUEST;
    switch (bad->type) {
    case TLY_FIELD_UUID:
        snprintf(rej->detail, sizeof(rej->detail), "%s must be a uuid", bad->name);
        break;
    case TLY_FIELD_AMOUNT:
        snprintf(rej->detail, sizeof(rej->detail), "%s must be a positive integer below 2^53", bad->name);
        break;
    case TLY_FIELD_CURRENCY:
        snprintf(rej->detail, sizeof(rej->detail), "%s must be an ISO 4217 code", bad->name);
        break;
    case TLY_FIELD_TEXT:
        snprintf(rej->detail, sizeof(rej->detail), "%s must be a string of at most %zu characters", bad->name, bad->max_chars);
        break;
    default:
        snprintf(rej->detail, sizeof(rej->detail), "%s is not valid", bad->name);
        break;
    }
    return false;
}

/* The amount and currency of a request whose fields were checked. */
static void
money_of(const tly_envelope_t *req, int64_t *amount, const char **currency)
{
    *amount = (int64_t)json_integer_value(json_object_get(req->data, "amount"));
    *currency = tly_json_str(req->data, "currency");
}

/* The account must exist and belong to the request's tenant (another tenant's is "not found"). */
static bool
account_visible(const tly_account_state_t *s, const tly_envelope_t *req, rejection_t *rej)
{
    if (s == NULL || !s->exists || memcmp(&s->tenant_id, &req->tenant_id, sizeof(s->tenant_id)) != 0)
        return reject(rej, TLY_CODE_ACCOUNT_NOT_FOUND, "account not found");
    return true;
}

/* Visible and not closed. */
static bool
account_open(const tly_account_state_t *s, const tly_envelope_t *req, rejection_t *rej)
{
    if (!account_visible(s, req, rej))
        return false;
    if (s->status == TLY_ACCOUNT_CLOSED)
        return reject(rej, TLY_CODE_ACCOUNT_CLOSED, "account is closed");
    return true;
}

/* Visible, not closed, not frozen. */
static bool
account_usable(const tly_account_state_t *s, const tly_envelope_t *req, rejection_t *rej)
{
    if (!account_open(s, req, rej))
        return false;
    if (s->status == TLY_ACCOUNT_FROZEN)
        return reject(rej, TLY_CODE_ACCOUNT_FROZEN, "account is frozen");
    return true;
}

static json_t *
reference_of(const tly_envelope_t *req)
{
    const char *r = tly_json_str(req->data, "reference");
    return r != NULL ? json_string(r) : json_null();
}

/* A money request (deposit, withdrawal, transfer step), its fields checked: amount, currency, the step's transfer. */
typedef struct st_money_t {
    int64_t amount;
    const char *currency, *transfer;
} money_t;

/*
 * Reads money request `req` for account `s`: the account must be usable (or,
 * with `usable` false, only visible) and in the request's currency
 * (`mismatch` is the refusal's detail).
 */
static bool
money_begin(const tly_account_state_t *s, const tly_envelope_t *req, bool usable, const char *mismatch, money_t *st,
            rejection_t *rej)
{
    money_of(req, &st->amount, &st->currency);
    st->transfer = tly_json_str(req->data, "transfer_id");
    if (!(usable ? account_usable(s, req, rej) : account_visible(s, req, rej)))
        return false;
    if (strcmp(st->currency, s->currency) != 0)
        return reject(rej, TLY_CODE_CURRENCY_MISMATCH, mismatch);
    return true;
}

/* The step's outcome data, with the account's balance after it. */
static bool
step_done(const money_t *st, int64_t after, json_t **data)
{
    *data = json_pack("{s:s, s:I, s:s, s:I}", "transfer_id", st->transfer, "amount", (json_int_t)st->amount, "currency",
                      st->currency, "balance_after", (json_int_t)after);
    return true;
}

/* balance + amount into `*after`, refused as invalid_request when it would overflow. */
static bool
credit_ok(const tly_account_state_t *s, int64_t amount, int64_t *after, rejection_t *rej)
{
    if (__builtin_add_overflow(s->balance, amount, after))
        return reject(rej, TLY_CODE_INVALID_REQUEST, "balance would overflow");
    return true;
}

/* --- rules --------------------------------------------------------------- */

static bool
decide_open(const tly_account_state_t *s, const tly_envelope_t *req, json_t **data, rejection_t *rej)
{
    const char *currency = tly_json_str(req->data, "currency");
    if (s != NULL && s->exists)
        return reject(rej, TLY_CODE_ACCOUNT_EXISTS, "account already exists");
    *data = json_pack("{s:s, s:s}", "currency", currency, "label", tly_json_str(req->data, "label"));
    return true;
}

static bool
decide_deposit(const tly_account_state_t *s, const tly_envelope_t *req, json_t **data, rejection_t *rej)
{
    money_t m;
    int64_t after;
    if (!money_begin(s, req, true, "currency differs from the account's", &m, rej) || !credit_ok(s, m.amount, &after, rej))
        return false;
    *data = json_pack("{s:I, s:s, s:I, s:o, s:s}", "amount", (json_int_t)m.amount, "currency", m.currency, "balance_after",
                      (json_int_t)after, "reference", reference_of(req), "channel", "api");
    return true;
}

static bool
decide_withdraw(const tly_account_state_t *s, const tly_envelope_t *req, json_t **data, rejection_t *rej)
{
    money_t m;
    if (!money_begin(s, req, true, "currency differs from the account's", &m, rej))
        return false;
    if (m.amount > s->balance) /* the floor is zero; both are non-negative so no overflow */
        return reject(rej, TLY_CODE_INSUFFICIENT_FUNDS, "balance is lower than the amount");
    *data = json_pack("{s:I, s:s, s:I, s:o}", "amount", (json_int_t)m.amount, "currency", m.currency, "balance_after",
                      (json_int_t)(s->balance - m.amount), "reference", reference_of(req));
    return true;
}

static bool
decide_freeze(const tly_account_state_t *s, const tly_envelope_t *req, json_t **data, rejection_t *rej)
{
    if (!account_usable(s, req, rej)) /* frozen -> account_frozen, closed -> account_closed */
        return false;
    *data = json_object();
    return true;
}

static bool
decide_unfreeze(const tly_account_state_t *s, const tly_envelope_t *req, json_t **data, rejection_t *rej)
{
    if (!account_open(s, req, rej))
        return false;
    if (s->status != TLY_ACCOUNT_FROZEN)
        return reject(rej, TLY_CODE_ACCOUNT_NOT_FROZEN, "account is not frozen");
    *data = json_object();
    return true;
}

static bool
decide_close(const tly_account_state_t *s, const tly_envelope_t *req, json_t **data, rejection_t *rej)
{
    if (!account_usable(s, req, rej)) /* closed -> account_closed, frozen -> account_frozen */
        return false;
    if (s->balance != 0)
        return reject(rej, TLY_CODE_BALANCE_NOT_ZERO, "balance is not zero");
    *data = json_object();
    return true;
}

/* --- transfer steps (sent by the saga, one account each) ------------------ */

static bool
decide_transfer_debit(const tly_account_state_t *s, const tly_envelope_t *req, json_t **data, rejection_t *rej)
{
    money_t st;
    if (!money_begin(s, req, true, "currency differs from the source account's", &st, rej))
        return false;
    if (st.amount > s->balance)
        return reject(rej, TLY_CODE_INSUFFICIENT_FUNDS, "balance is lower than the amount");
    return step_done(&st, s->balance - st.amount, data);
}

static bool
decide_transfer_credit(const tly_account_state_t *s, const tly_envelope_t *req, json_t **data, rejection_t *rej)
{
    money_t st;
    int64_t after;
    if (!money_begin(s, req, true, "currency differs from the destination account's", &st, rej) ||
        !credit_ok(s, st.amount, &after, rej))
        return false;
    return step_done(&st, after, data);
}

/*
 * The compensation of a debit whose credit failed. It is NEVER rejected for
 * the account's state: a frozen or closed source still gets its money back,
 * because the alternative is money that left one account and reached none.
 * The only refusals are a malformed request or an account this tenant never
 * had (neither can follow a real debit); the saga re-sends the reversal until
 * it is applied, so a compensation is never abandoned. No overflow is
 * possible in practice (the amount was on this account before) but it is
 * checked rather than wrapped.
 */
static bool
decide_debit_reversal(const tly_account_state_t *s, const tly_envelope_t *req, json_t **data, rejection_t *rej)
{
    money_t st;
    int64_t after;
    if (!money_begin(s, req, false, "currency differs from the account's", &st, rej) || !credit_ok(s, st.amount, &after, rej))
        return false;
    return step_done(&st, after, data);
}

static const command_row_t commands[] = {
    {"AccountOpenRequested", decide_open},
    {"DepositRequested", decide_deposit},
    {"WithdrawalRequested", decide_withdraw},
    {"AccountFreezeRequested", decide_freeze},
    {"AccountUnfreezeRequested", decide_unfreeze},
    {"AccountCloseRequested", decide_close},
    {"TransferDebitRequested", decide_transfer_debit},
    {"TransferCreditRequested", decide_transfer_credit},
    /* its rejection exists only for a reversal that cannot be applied at all (see decide_debit_reversal) */
    {"DebitReversalRequested", decide_debit_reversal},
};
#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

/* --- evolve -------------------------------------------------------------- */

static int
evolve_opened(tly_account_state_t *s, const tly_envelope_t *ev)
{
    const char *currency = tly_json_str(ev->data, "currency");
    if (s->exists || currency == NULL || !tly_currency_valid(currency))
        return -1;
    memset(s, 0, sizeof(*s));
    s->exists = true;
    s->id = ev->aggregate_id;
    s->tenant_id = ev->tenant_id;
    memcpy(s->currency, currency, 4);
    s->status = TLY_ACCOUNT_OPEN;
    s->balance = 0;
    s->version = 1;
    return 0;
}

static int
evolve_balance(tly_account_state_t *s, const tly_envelope_t *ev)
{
    json_t *after = json_object_get(ev->data, "balance_after");
    if (!s->exists || !json_is_integer(after) || json_integer_value(after) < 0)
        return -1;
    s->balance = (int64_t)json_integer_value(after);
    s->version++;
    return 0;
}

static int
evolve_status(tly_account_state_t *s, tly_account_status_t status)
{
    if (!s->exists)
        return -1;
    s->status = status;
    s->version++;
    return 0;
}

static int
evolve_frozen(tly_account_state_t *s, const tly_envelope_t *ev)
{
    return evolve_status(s, TLY_ACCOUNT_FROZEN);
}

static int
evolve_unfrozen(tly_account_state_t *s, const tly_envelope_t *ev)
{
    return evolve_status(s, TLY_ACCOUNT_OPEN);
}

static int
evolve_closed(tly_account_state_t *s, const tly_envelope_t *ev)
{
    return evolve_status(s, TLY_ACCOUNT_CLOSED);
}

static const outcome_row_t outcomes[] = {
    {"AccountOpened", evolve_opened},   {"FundsDeposited", evolve_balance},   {"FundsWithdrawn", evolve_balance},
    {"AccountFrozen", evolve_frozen},   {"AccountUnfrozen", evolve_unfrozen}, {"AccountClosed", evolve_closed},
    {"AccountDebited", evolve_balance}, {"AccountCredited", evolve_balance},  {"DebitReversed", evolve_balance},
};
#define NOUTCOMES (sizeof(outcomes) / sizeof(outcomes[0]))

/* --- public -------------------------------------------------------------- */

static const command_row_t *
find_command(const char *type)
{
    for (size_t i = 0; i < NCOMMANDS; ++i)
        if (strcmp(commands[i].request_type, type) == 0)
            return &commands[i];
    return NULL;
}

bool
tly_decider_is_request(const char *type)
{
    return find_command(type) != NULL;
}

/* The catalogue's entry of a row's request type (test_decider.c checks that every row has one). */
static const tly_event_spec_t *
spec_of(const command_row_t *row)
{
    return tly_catalogue_find(row->request_type, 0);
}

bool
tly_decider_is_rejection(const char *type)
{
    for (size_t i = 0; i < NCOMMANDS; ++i)
        if (strcmp(spec_of(&commands[i])->rejection, type) == 0)
            return true;
    return false;
}

bool
tly_decider_is_outcome(const char *type)
{
    for (size_t i = 0; i < NOUTCOMES; ++i)
        if (strcmp(outcomes[i].type, type) == 0)
            return true;
    return tly_decider_is_rejection(type);
}

const char *
tly_decider_rejection_of(const char *type)
{
    const command_row_t *row = find_command(type);
    return row != NULL ? spec_of(row)->rejection : NULL;
}

int
tly_decider_evolve(tly_account_state_t *state, const tly_envelope_t *event)
{
    for (size_t i = 0; i < NOUTCOMES; ++i) {
        if (strcmp(outcomes[i].type, event->type) == 0) {
            tly_account_state_t next = *state;
            if (outcomes[i].evolve(&next, event) != 0)
                return -1;
            *state = next;
            return 0;
        }
    }
    return 0; /* rejections and unknown types change nothing */
}

static void
emit(tly_decision_t *out, const tly_envelope_t *req, const char *type, json_t *data, int64_t now_us)
{
    tly_envelope_t *ev = &out->events[out->nevents++];
    tly_envelope_derive(ev, req, type, tly_event_latest_version(type), data, NULL);
    ev->occurred_at_us = now_us;
}

int
tly_decider_reject(const tly_envelope_t *request, const char *code, const char *detail, int64_t now_us, tly_decision_t *out)
{
    const command_row_t *row = find_command(request->type);
    memset(out, 0, sizeof(*out));
    if (row == NULL)
        return -1;
    json_t *data = json_pack("{s:s, s:s}", "code", code, "detail", detail);
    const char *transfer = tly_json_str(request->data, "transfer_id");
    if (transfer != NULL) /* the saga finds its transfer by it */
        json_object_set_new(data, "transfer_id", json_string(transfer));
    emit(out, request, spec_of(row)->rejection, data, now_us);
    out->rejected = true;
    return 0;
}

int
tly_decider_decide_at(const tly_account_state_t *state, const tly_envelope_t *request, int64_t now_us, tly_decision_t *out)
{
    const command_row_t *row = find_command(request->type);
    json_t *data = NULL;
    rejection_t rej = {NULL, ""};
    memset(out, 0, sizeof(*out));
    if (row == NULL)
        return -1;
    if (!request_fields_ok(spec_of(row), request, &rej) || !row->decide(state, request, &data, &rej)) {
        if (tly_decider_reject(request, rej.code, rej.detail, now_us, out) != 0)
            return -1;
        if (state != NULL)
            out->next = *state;
        return 0;
    }
    if (state != NULL)
        out->next = *state;
    emit(out, request, spec_of(row)->outcome, data, now_us);
    if (tly_decider_evolve(&out->next, &out->events[0]) != 0) { /* a rule produced an event evolve refuses: a bug */
        tly_decision_clear(out);
        return -1;
    }
    out->state_changed = true;
    return 0;
}

int
tly_decider_decide(const tly_account_state_t *state, const tly_envelope_t *request, tly_decision_t *out)
{
    return tly_decider_decide_at(state, request, tly_clock_now_us(), out);
}

void
tly_decision_clear(tly_decision_t *d)
{
    for (int i = 0; i < d->nevents; ++i)
        tly_envelope_clear(&d->events[i]);
    d->nevents = 0;
}

static const char *const status_names[] = {"open", "frozen", "closed"};

const char *
tly_account_status_name(tly_account_status_t s)
{
    return status_names[s];
}

bool
tly_account_status_parse(const char *s, tly_account_status_t *out)
{
    int i = tly_name_find(status_names, 0, 3, s);
    if (i >= 0)
        *out = (tly_account_status_t)i;
    return i >= 0;
}
