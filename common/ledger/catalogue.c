/*
 * The catalogue of the ledger's events. See tally/ledger/catalogue.h; each
 * row mirrors schemas/events/<Type>.v<N>.json (test_catalogue.c checks it).
 */
#include "tally/ledger/catalogue.h"
#include "tally/clock.h"
#include "tally/utf8.h"
#include "tally/uuid.h"

#include <pthread.h>
#include <string.h>

static const char *const problem_codes[TLY_PROBLEM__COUNT] = {
    [TLY_PROBLEM_ACCOUNT_NOT_FOUND] = TLY_CODE_ACCOUNT_NOT_FOUND,   [TLY_PROBLEM_ACCOUNT_EXISTS] = TLY_CODE_ACCOUNT_EXISTS,
    [TLY_PROBLEM_CURRENCY_MISMATCH] = TLY_CODE_CURRENCY_MISMATCH,   [TLY_PROBLEM_INSUFFICIENT_FUNDS] = TLY_CODE_INSUFFICIENT_FUNDS,
    [TLY_PROBLEM_ACCOUNT_FROZEN] = TLY_CODE_ACCOUNT_FROZEN,         [TLY_PROBLEM_ACCOUNT_CLOSED] = TLY_CODE_ACCOUNT_CLOSED,
    [TLY_PROBLEM_ACCOUNT_NOT_FROZEN] = TLY_CODE_ACCOUNT_NOT_FROZEN, [TLY_PROBLEM_BALANCE_NOT_ZERO] = TLY_CODE_BALANCE_NOT_ZERO,
    [TLY_PROBLEM_INVALID_REQUEST] = TLY_CODE_INVALID_REQUEST,       [TLY_PROBLEM_DEAD_LETTERED] = TLY_CODE_DEAD_LETTERED,
};

/* --- fields ------------------------------------------------------------------ */

#define REQ .required = true
#define UUID_F(n)                                                                                                                  \
    {                                                                                                                              \
        n, TLY_FIELD_UUID, REQ                                                                                                     \
    }
#define AMOUNT_F                                                                                                                   \
    {                                                                                                                              \
        "amount", TLY_FIELD_AMOUNT, REQ                                                                                            \
    }
#define CURRENCY_F                                                                                                                 \
    {                                                                                                                              \
        "currency", TLY_FIELD_CURRENCY, REQ                                                                                        \
    }
#define BALANCE_F                                                                                                                  \
    {                                                                                                                              \
        "balance_after", TLY_FIELD_BALANCE, REQ                                                                                    \
    }
#define LABEL_F                                                                                                                    \
    {                                                                                                                              \
        "label", TLY_FIELD_TEXT, REQ, .max_chars = TLY_LABEL_MAX_CHARS                                                             \
    }
#define CODE_F                                                                                                                     \
    {                                                                                                                              \
        "code", TLY_FIELD_CODE, REQ                                                                                                \
    }
/* A step's refusal carries a bounded detail; an account command's does not (its schemas say so). */
#define DETAIL_F                                                                                                                   \
    {                                                                                                                              \
        "detail", TLY_FIELD_TEXT, REQ                                                                                              \
    }
#define STEP_DETAIL_F                                                                                                              \
    {                                                                                                                              \
        "detail", TLY_FIELD_TEXT, REQ, .max_chars = 2000                                                                           \
    }
/* A request may omit its reference; an outcome always says it, null when there was none. */
#define REQUEST_REFERENCE_F                                                                                                        \
    {                                                                                                                              \
        "reference", TLY_FIELD_TEXT, .max_chars = TLY_REFERENCE_MAX_CHARS                                                          \
    }
#define OUTCOME_REFERENCE_F                                                                                                        \
    {                                                                                                                              \
        "reference", TLY_FIELD_TEXT, REQ, .nullable = true, .max_chars = TLY_REFERENCE_MAX_CHARS                                   \
    }

static const tly_field_spec_t open_fields[] = {CURRENCY_F, LABEL_F};
static const tly_field_spec_t money_request_fields[] = {AMOUNT_F, CURRENCY_F, REQUEST_REFERENCE_F};
static const tly_field_spec_t money_outcome_fields[] = {AMOUNT_F, CURRENCY_F, BALANCE_F, OUTCOME_REFERENCE_F};
static const tly_field_spec_t deposited_v2_fields[] = {
    AMOUNT_F, CURRENCY_F, BALANCE_F, OUTCOME_REFERENCE_F, {"channel", TLY_FIELD_TEXT, REQ, .min_chars = 1, .max_chars = 32}};
static const tly_field_spec_t rejection_fields[] = {CODE_F, DETAIL_F};
static const tly_field_spec_t step_fields[] = {UUID_F("transfer_id"), AMOUNT_F, CURRENCY_F};
static const tly_field_spec_t step_outcome_fields[] = {UUID_F("transfer_id"), AMOUNT_F, CURRENCY_F, BALANCE_F};
static const tly_field_spec_t step_rejection_fields[] = {UUID_F("transfer_id"), CODE_F, STEP_DETAIL_F};
static const tly_field_spec_t transfer_request_fields[] = {
    UUID_F("from_account"),
    UUID_F("to_account"),
    AMOUNT_F,
    CURRENCY_F,
    {"reference", TLY_FIELD_TEXT, .nullable = true, .max_chars = TLY_REFERENCE_MAX_CHARS}};
static const tly_field_spec_t transfer_completed_fields[] = {UUID_F("from_account"), UUID_F("to_account"), AMOUNT_F, CURRENCY_F};
static const tly_field_spec_t transfer_rejected_fields[] = {CODE_F, STEP_DETAIL_F};
static const tly_field_spec_t transfer_failed_fields[] = {CODE_F, STEP_DETAIL_F, {"compensated", TLY_FIELD_TRUE, REQ}};
static const char *const disabled_reasons[] = {"gone", "failing", NULL};
static const tly_field_spec_t endpoint_disabled_fields[] = {
    UUID_F("endpoint_id"),
    {"url", TLY_FIELD_TEXT, REQ, .min_chars = 1, .max_chars = 2048},
    {"reason", TLY_FIELD_WORD, REQ, .words = disabled_reasons},
    {"failing_since", TLY_FIELD_TIMESTAMP, REQ, .nullable = true},
};

/* --- problems ---------------------------------------------------------------- */

#define P(x) (1u << TLY_PROBLEM_##x)
/* Every request can end parked in dead_letters, and so refused as dead_lettered. */
#define ANY P(DEAD_LETTERED)
#define USABLE (P(ACCOUNT_NOT_FOUND) | P(ACCOUNT_CLOSED) | P(ACCOUNT_FROZEN))
#define MONEY (P(INVALID_REQUEST) | P(CURRENCY_MISMATCH))

/* --- the table, sorted by type then version ------------------------------------ */

#define FIELDS(a) a, sizeof(a) / sizeof(a[0])
#define NONE NULL, 0
#define ACCOUNT_REJECTION(t)                                                                                                       \
    {                                                                                                                              \
        t, 1, "account", TLY_EVENT_REJECTION, FIELDS(rejection_fields)                                                             \
    }
#define STEP_REJECTION(t)                                                                                                          \
    {                                                                                                                              \
        t, 1, "account", TLY_EVENT_REJECTION, FIELDS(step_rejection_fields)                                                        \
    }

static const tly_event_spec_t events[] = {
    ACCOUNT_REJECTION("AccountCloseRejected"),
    {"AccountCloseRequested", 1, "account", TLY_EVENT_REQUEST, NONE, "AccountClosed", "AccountCloseRejected",
     ANY | P(ACCOUNT_NOT_FOUND) | P(ACCOUNT_CLOSED) | P(ACCOUNT_FROZEN) | P(BALANCE_NOT_ZERO)},
    {"AccountClosed", 1, "account", TLY_EVENT_OUTCOME, NONE},
    STEP_REJECTION("AccountCreditRejected"),
    {"AccountCredited", 1, "account", TLY_EVENT_OUTCOME, FIELDS(step_outcome_fields)},
    STEP_REJECTION("AccountDebitRejected"),
    {"AccountDebited", 1, "account", TLY_EVENT_OUTCOME, FIELDS(step_outcome_fields)},
    ACCOUNT_REJECTION("AccountFreezeRejected"),
    {"AccountFreezeRequested", 1, "account", TLY_EVENT_REQUEST, NONE, "AccountFrozen", "AccountFreezeRejected", ANY | USABLE},
    {"AccountFrozen", 1, "account", TLY_EVENT_OUTCOME, NONE},
    ACCOUNT_REJECTION("AccountOpenRejected"),
    {"AccountOpenRequested", 1, "account", TLY_EVENT_REQUEST, FIELDS(open_fields), "AccountOpened", "AccountOpenRejected",
     ANY | P(INVALID_REQUEST) | P(ACCOUNT_EXISTS)},
    {"AccountOpened", 1, "account", TLY_EVENT_OUTCOME, FIELDS(open_fields)},
    ACCOUNT_REJECTION("AccountUnfreezeRejected"),
    {"AccountUnfreezeRequested", 1, "account", TLY_EVENT_REQUEST, NONE, "AccountUnfrozen", "AccountUnfreezeRejected",
     ANY | P(ACCOUNT_NOT_FOUND) | P(ACCOUNT_CLOSED) | P(ACCOUNT_NOT_FROZEN)},
    {"AccountUnfrozen", 1, "account", TLY_EVENT_OUTCOME, NONE},
    STEP_REJECTION("DebitReversalRejected"),
    /* a reversal is never refused for the account's state (decider.c says why) */
    {"DebitReversalRequested", 1, "account", TLY_EVENT_SAGA_STEP, FIELDS(step_fields), "DebitReversed", "DebitReversalRejected",
     ANY | MONEY | P(ACCOUNT_NOT_FOUND)},
    {"DebitReversed", 1, "account", TLY_EVENT_OUTCOME, FIELDS(step_outcome_fields)},
    ACCOUNT_REJECTION("DepositRejected"),
    {"DepositRequested", 1, "account", TLY_EVENT_REQUEST, FIELDS(money_request_fields), "FundsDeposited", "DepositRejected",
     ANY | MONEY | USABLE},
    {"FundsDeposited", 1, "account", TLY_EVENT_OUTCOME, FIELDS(money_outcome_fields)},
    {"FundsDeposited", 2, "account", TLY_EVENT_OUTCOME, FIELDS(deposited_v2_fields)},
    {"FundsWithdrawn", 1, "account", TLY_EVENT_OUTCOME, FIELDS(money_outcome_fields)},
    {"TransferCompleted", 1, "transfer", TLY_EVENT_OUTCOME, FIELDS(transfer_completed_fields)},
    {"TransferCreditRequested", 1, "account", TLY_EVENT_SAGA_STEP, FIELDS(step_fields), "AccountCredited", "AccountCreditRejected",
     ANY | MONEY | USABLE},
    {"TransferDebitRequested", 1, "account", TLY_EVENT_SAGA_STEP, FIELDS(step_fields), "AccountDebited", "AccountDebitRejected",
     ANY | MONEY | USABLE | P(INSUFFICIENT_FUNDS)},
    /* a transfer whose credit was refused, its debit reversed */
    {"TransferFailed", 1, "transfer", TLY_EVENT_REJECTION, FIELDS(transfer_failed_fields)},
    /* a malformed transfer, or one whose debit was refused */
    {"TransferRejected", 1, "transfer", TLY_EVENT_REJECTION, FIELDS(transfer_rejected_fields)},
    /* the saga answers it with TransferCompleted, or with the refusal of its debit or its credit */
    {"TransferRequested", 1, "transfer", TLY_EVENT_REQUEST, FIELDS(transfer_request_fields), "TransferCompleted",
     "TransferRejected", ANY | MONEY | USABLE | P(INSUFFICIENT_FUNDS)},
    {"WebhookEndpointDisabled", 1, "webhook_endpoint", TLY_EVENT_NOTICE, FIELDS(endpoint_disabled_fields)},
    ACCOUNT_REJECTION("WithdrawalRejected"),
    {"WithdrawalRequested", 1, "account", TLY_EVENT_REQUEST, FIELDS(money_request_fields), "FundsWithdrawn", "WithdrawalRejected",
     ANY | MONEY | USABLE | P(INSUFFICIENT_FUNDS)},
};
#define NEVENTS (sizeof(events) / sizeof(events[0]))

/* --- lookups ----------------------------------------------------------------- */

const char *
tly_problem_code(tly_problem_t p)
{
    return problem_codes[p];
}

bool
tly_problem_parse(const char *code, tly_problem_t *out)
{
    for (int p = 0; p < TLY_PROBLEM__COUNT; ++p) {
        if (strcmp(problem_codes[p], code) == 0) {
            *out = (tly_problem_t)p;
            return true;
        }
    }
    return false;
}

const tly_event_spec_t *
tly_catalogue_all(size_t *n)
{
    *n = NEVENTS;
    return events;
}

const tly_event_spec_t *
tly_catalogue_find(const char *type, int version)
{
    const tly_event_spec_t *found = NULL;
    for (size_t i = 0; i < NEVENTS; ++i) {
        if (strcmp(events[i].type, type) != 0)
            continue;
        if (events[i].version == version)
            return &events[i];
        if (version == 0)
            found = &events[i]; /* sorted: the last one is the newest */
    }
    return found;
}

int
tly_catalogue_latest_version(const char *type)
{
    const tly_event_spec_t *spec = tly_catalogue_find(type, 0);
    return spec != NULL ? spec->version : 0;
}

static const char *type_names[NEVENTS];
static size_t ntype_names;
static pthread_once_t type_names_once = PTHREAD_ONCE_INIT;

static void
collect_type_names(void)
{
    for (size_t i = 0; i < NEVENTS; ++i)
        if (ntype_names == 0 || strcmp(type_names[ntype_names - 1], events[i].type) != 0)
            type_names[ntype_names++] = events[i].type;
}

const char *const *
tly_catalogue_types(size_t *n)
{
    pthread_once(&type_names_once, collect_type_names);
    *n = ntype_names;
    return type_names;
}

bool
tly_catalogue_can_produce(const tly_event_spec_t *spec, tly_problem_t p)
{
    return (spec->problems & (1u << p)) != 0;
}

const tly_field_spec_t *
tly_catalogue_field(const tly_event_spec_t *spec, const char *name)
{
    for (size_t i = 0; i < spec->nfields; ++i)
        if (strcmp(spec->fields[i].name, name) == 0)
            return &spec->fields[i];
    return NULL;
}

/* --- checks ------------------------------------------------------------------ */

static bool
text_ok(const tly_field_spec_t *f, const json_t *v)
{
    if (!json_is_string(v))
        return false;
    size_t n = tly_utf8_chars(json_string_value(v));
    return n >= f->min_chars && (f->max_chars == 0 || n <= f->max_chars);
}

static bool
word_ok(const tly_field_spec_t *f, const json_t *v)
{
    if (!json_is_string(v))
        return false;
    for (const char *const *w = f->words; *w != NULL; ++w)
        if (strcmp(*w, json_string_value(v)) == 0)
            return true;
    return false;
}

bool
tly_field_value_ok(const tly_field_spec_t *f, const json_t *v)
{
    tly_uuid_t id;
    int64_t us;
    tly_problem_t p;
    if (v == NULL || json_is_null(v))
        return !f->required || (v != NULL && f->nullable);
    switch (f->type) {
    case TLY_FIELD_UUID:
        return json_is_string(v) && tly_uuid_parse(json_string_value(v), &id);
    case TLY_FIELD_AMOUNT:
        return json_is_integer(v) && json_integer_value(v) > 0 && json_integer_value(v) < TLY_AMOUNT_MAX;
    case TLY_FIELD_BALANCE:
        return json_is_integer(v) && json_integer_value(v) >= 0;
    case TLY_FIELD_CURRENCY:
        return tly_field_currency_ok(v);
    case TLY_FIELD_TEXT:
        return text_ok(f, v);
    case TLY_FIELD_CODE:
        return json_is_string(v) && tly_problem_parse(json_string_value(v), &p);
    case TLY_FIELD_TRUE:
        return json_is_true(v);
    case TLY_FIELD_TIMESTAMP:
        return json_is_string(v) && tly_clock_parse_rfc3339(json_string_value(v), &us);
    case TLY_FIELD_WORD:
        return word_ok(f, v);
    }
    return false;
}

const tly_field_spec_t *
tly_catalogue_check(const tly_event_spec_t *spec, const json_t *data)
{
    for (size_t i = 0; i < spec->nfields; ++i)
        if (!tly_field_value_ok(&spec->fields[i], json_object_get(data, spec->fields[i].name)))
            return &spec->fields[i];
    return NULL;
}
