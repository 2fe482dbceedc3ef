/*
 * Unit tests of the transfer saga as a pure function: every path (completed,
 * rejected for each debit refusal, compensated), with the real decider
 * deciding the steps against account states; then duplicates, out-of-order,
 * foreign and late events; deadlines (re-send with the same id and content,
 * never for a finished saga); reversal attempts after a refused reversal.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/ledger/decider.h"
#include "tally/ledger/saga.h"
#include "tally/ledger/catalogue.h"
#include "tally/json.h"

#include <stdlib.h>
#include <string.h>

#define NOW 1795000000000000LL
#define SEC 1000000LL

static const tly_saga_config_t cfg = {.step_timeout_us = 5 * SEC, .stuck_after_us = 60 * SEC};
static tly_uuid_t tenant, other_tenant;

typedef struct {
    tly_account_state_t from, to;
    tly_envelope_t request;
    tly_saga_state_t saga;
} world_t;

static bool
uuid_eq(const tly_uuid_t *a, const tly_uuid_t *b)
{
    return memcmp(a, b, sizeof(*a)) == 0;
}

static tly_account_state_t
account(const char *currency, int64_t balance, tly_account_status_t status)
{
    tly_account_state_t s;
    memset(&s, 0, sizeof(s));
    s.exists = true;
    s.id = tly_uuid_v4();
    s.tenant_id = tenant;
    memcpy(s.currency, currency, 4);
    s.balance = balance;
    s.status = status;
    s.version = 1;
    return s;
}

/* A TransferRequested as the command API writes it. */
static tly_envelope_t
transfer_request(const tly_uuid_t *from, const tly_uuid_t *to, json_int_t amount, const char *currency)
{
    char f[TLY_UUID_STR_LEN + 1], t[TLY_UUID_STR_LEN + 1];
    tly_envelope_t e;
    memset(&e, 0, sizeof(e));
    tly_uuid_format(from, f);
    tly_uuid_format(to, t);
    e.id = tly_uuid_v4();
    snprintf(e.type, sizeof(e.type), "TransferRequested");
    e.version = 1;
    snprintf(e.aggregate_type, sizeof(e.aggregate_type), "transfer");
    e.aggregate_id = tly_uuid_v4();
    e.tenant_id = tenant;
    e.job_id = tly_uuid_v4();
    e.correlation_id = e.id;
    e.occurred_at_us = NOW - 1000;
    e.data = json_pack("{s:s, s:s, s:I, s:s}", "from_account", f, "to_account", t, "amount", amount, "currency", currency);
    return e;
}

static void
world_init(world_t *w, tly_account_state_t from, tly_account_state_t to, json_int_t amount)
{
    memset(w, 0, sizeof(*w));
    w->from = from;
    w->to = to;
    w->request = transfer_request(&from.id, &to.id, amount, "EUR");
}

static void
world_clear(world_t *w)
{
    tly_envelope_clear(&w->request);
}

/* Feeds `ev` to the saga at `now`; stores the next state; returns the step (caller clears). */
static tly_saga_step_t
feed(world_t *w, const tly_envelope_t *ev, int64_t now)
{
    tly_saga_step_t st;
    assert_int_equal(tly_saga_on_event(&w->saga, ev, &cfg, now, &st), 0);
    if (st.changed)
        w->saga = st.next;
    else
        assert_memory_equal(&st.next, &w->saga, sizeof(w->saga)); /* no change means no change */
    return st;
}

/* The decider decides the saga's step command against the right account; returns its outcome (caller clears). */
static tly_envelope_t
decide(world_t *w, const tly_envelope_t *cmd)
{
    tly_decision_t d;
    tly_account_state_t *acc = uuid_eq(&cmd->aggregate_id, &w->from.id) ? &w->from : &w->to;
    assert_true(uuid_eq(&cmd->aggregate_id, &acc->id));
    assert_int_equal(tly_decider_decide_at(acc, cmd, NOW, &d), 0);
    assert_int_equal(d.nevents, 1);
    if (d.state_changed)
        *acc = d.next;
    tly_envelope_t out = d.events[0];
    return out; /* ownership of data moves to the caller */
}

static void
expect_no_change(world_t *w, const tly_envelope_t *ev, int64_t now)
{
    tly_saga_state_t before = w->saga;
    tly_saga_step_t st = feed(w, ev, now);
    assert_false(st.changed);
    assert_int_equal(st.nevents, 0);
    assert_memory_equal(&before, &w->saga, sizeof(before));
    tly_saga_step_clear(&st);
}

/* Runs the request; returns the step command the saga sent (caller clears). */
static tly_envelope_t
start(world_t *w)
{
    tly_saga_step_t st = feed(w, &w->request, NOW);
    assert_true(st.changed);
    assert_int_equal(st.nevents, 1);
    tly_envelope_t cmd = st.events[0];
    return cmd;
}

/* Feeds an outcome and returns the single event the saga sent in answer. */
static tly_envelope_t
answer(world_t *w, const tly_envelope_t *outcome, int64_t now)
{
    tly_saga_step_t st = feed(w, outcome, now);
    assert_true(st.changed);
    assert_int_equal(st.nevents, 1);
    return st.events[0];
}

/* --- paths ---------------------------------------------------------------- */

static void
test_completed(void **state)
{
    world_t w;
    world_init(&w, account("EUR", 100, TLY_ACCOUNT_OPEN), account("EUR", 7, TLY_ACCOUNT_OPEN), 60);
    tly_envelope_t debit = start(&w);
    assert_string_equal(debit.type, "TransferDebitRequested");
    assert_string_equal(debit.aggregate_type, "account");
    assert_true(uuid_eq(&debit.aggregate_id, &w.from.id)); /* Kafka key = the source account */
    assert_true(uuid_eq(&debit.job_id, &w.request.job_id));
    assert_true(uuid_eq(&debit.tenant_id, &tenant));
    assert_true(uuid_eq(&debit.causation_id, &w.request.id));
    assert_true(uuid_eq(&debit.correlation_id, &w.request.id));
    assert_int_equal(json_integer_value(json_object_get(debit.data, "amount")), 60);
    char t[TLY_UUID_STR_LEN + 1];
    tly_uuid_format(&w.request.aggregate_id, t);
    assert_string_equal(tly_json_str(debit.data, "transfer_id"), t);
    assert_int_equal(w.saga.status, TLY_SAGA_DEBITING);
    assert_int_equal(w.saga.deadline_us, NOW + cfg.step_timeout_us);
    assert_int_equal(w.saga.stuck_at_us, NOW + cfg.stuck_after_us);
    /* the id is derived from the request: deterministic */
    tly_envelope_t expect;
    tly_envelope_derive(&expect, &w.request, "TransferDebitRequested", 1, json_object(), NULL);
    assert_true(uuid_eq(&expect.id, &debit.id));
    tly_envelope_clear(&expect);

    tly_envelope_t debited = decide(&w, &debit);
    assert_string_equal(debited.type, "AccountDebited");
    tly_envelope_t credit = answer(&w, &debited, NOW + SEC);
    assert_string_equal(credit.type, "TransferCreditRequested");
    assert_true(uuid_eq(&credit.aggregate_id, &w.to.id));
    assert_true(uuid_eq(&credit.causation_id, &debited.id));
    assert_int_equal(w.saga.status, TLY_SAGA_CREDITING);
    assert_int_equal(w.saga.deadline_us, NOW + SEC + cfg.step_timeout_us);

    tly_envelope_t credited = decide(&w, &credit);
    assert_string_equal(credited.type, "AccountCredited");
    tly_envelope_t done = answer(&w, &credited, NOW + 2 * SEC);
    assert_string_equal(done.type, "TransferCompleted");
    assert_string_equal(done.aggregate_type, "transfer");
    assert_true(uuid_eq(&done.aggregate_id, &w.request.aggregate_id)); /* key = the transfer */
    assert_true(uuid_eq(&done.job_id, &w.request.job_id));
    assert_int_equal(done.occurred_at_us, NOW + 2 * SEC);
    assert_int_equal(w.saga.status, TLY_SAGA_COMPLETED);
    assert_int_equal(w.saga.deadline_us, 0);
    assert_int_equal(w.saga.stuck_at_us, 0);
    assert_int_equal(w.from.balance, 40);
    assert_int_equal(w.to.balance, 67);
    assert_true(tly_saga_finished(w.saga.status));

    /* every delivery again, in any order: nothing moves */
    expect_no_change(&w, &w.request, NOW + 3 * SEC);
    expect_no_change(&w, &debited, NOW + 3 * SEC);
    expect_no_change(&w, &credited, NOW + 3 * SEC);
    tly_saga_step_t st;
    assert_int_equal(tly_saga_on_timeout(&w.saga, &cfg, NOW + 100 * SEC, &st), 0);
    assert_false(st.changed);
    assert_int_equal(st.nevents, 0);

    tly_envelope_clear(&debit);
    tly_envelope_clear(&debited);
    tly_envelope_clear(&credit);
    tly_envelope_clear(&credited);
    tly_envelope_clear(&done);
    world_clear(&w);
}

/* A debit refused for `code`: TransferRejected with it, no money moved, no further step. */
static void
rejected_with(tly_account_state_t from, tly_account_state_t to, json_int_t amount, const char *code)
{
    world_t w;
    world_init(&w, from, to, amount);
    int64_t before_from = w.from.balance, before_to = w.to.balance;
    tly_envelope_t debit = start(&w);
    tly_envelope_t refused = decide(&w, &debit);
    assert_string_equal(refused.type, "AccountDebitRejected");
    tly_envelope_t out = answer(&w, &refused, NOW + SEC);
    assert_string_equal(out.type, "TransferRejected");
    assert_true(uuid_eq(&out.aggregate_id, &w.request.aggregate_id));
    assert_string_equal(tly_json_str(out.data, "code"), code);
    assert_non_null(tly_json_str(out.data, "detail"));
    assert_int_equal(w.saga.status, TLY_SAGA_REJECTED);
    assert_string_equal(w.saga.error_code, code);
    assert_int_equal(w.saga.deadline_us, 0);
    assert_int_equal(w.from.balance, before_from);
    assert_int_equal(w.to.balance, before_to);
    expect_no_change(&w, &refused, NOW + 2 * SEC);
    tly_envelope_clear(&debit);
    tly_envelope_clear(&refused);
    tly_envelope_clear(&out);
    world_clear(&w);
}

static void
test_rejected(void **state)
{
    tly_account_state_t to = account("EUR", 0, TLY_ACCOUNT_OPEN);
    rejected_with(account("EUR", 10, TLY_ACCOUNT_OPEN), to, 11, "insufficient_funds");
    rejected_with(account("EUR", 10, TLY_ACCOUNT_FROZEN), to, 5, "account_frozen");
    rejected_with(account("EUR", 0, TLY_ACCOUNT_CLOSED), to, 5, "account_closed");
    rejected_with(account("USD", 10, TLY_ACCOUNT_OPEN), to, 5, "currency_mismatch");
    tly_account_state_t ghost = account("EUR", 10, TLY_ACCOUNT_OPEN);
    ghost.exists = false;
    rejected_with(ghost, to, 5, "account_not_found");
    tly_account_state_t foreign = account("EUR", 10, TLY_ACCOUNT_OPEN);
    foreign.tenant_id = other_tenant;
    rejected_with(foreign, to, 5, "account_not_found");
}

/* The credit refused for `code`: reversal on the source (even when frozen meanwhile), then TransferFailed{compensated}. */
static void
compensated_with(tly_account_state_t to, const char *code, bool freeze_source_meanwhile)
{
    world_t w;
    world_init(&w, account("EUR", 100, TLY_ACCOUNT_OPEN), to, 30);
    int64_t to_before = w.to.balance;
    tly_envelope_t debit = start(&w);
    tly_envelope_t debited = decide(&w, &debit);
    tly_envelope_t credit = answer(&w, &debited, NOW + SEC);
    tly_envelope_t refused = decide(&w, &credit);
    assert_string_equal(refused.type, "AccountCreditRejected");
    assert_int_equal(w.from.balance, 70);
    tly_envelope_t reversal = answer(&w, &refused, NOW + 2 * SEC);
    assert_string_equal(reversal.type, "DebitReversalRequested");
    assert_true(uuid_eq(&reversal.aggregate_id, &w.from.id));
    assert_int_equal(json_integer_value(json_object_get(reversal.data, "amount")), 30);
    assert_int_equal(w.saga.status, TLY_SAGA_COMPENSATING);
    assert_string_equal(w.saga.error_code, code);
    assert_int_equal(w.saga.deadline_us, NOW + 2 * SEC + cfg.step_timeout_us);
    assert_int_equal(w.saga.stuck_at_us, NOW + cfg.stuck_after_us);
    if (freeze_source_meanwhile)
        w.from.status = TLY_ACCOUNT_FROZEN;
    tly_envelope_t reversed = decide(&w, &reversal);
    assert_string_equal(reversed.type, "DebitReversed");
    tly_envelope_t failed = answer(&w, &reversed, NOW + 3 * SEC);
    assert_string_equal(failed.type, "TransferFailed");
    assert_true(json_is_true(json_object_get(failed.data, "compensated")));
    assert_string_equal(tly_json_str(failed.data, "code"), code);
    assert_int_equal(w.saga.status, TLY_SAGA_FAILED);
    assert_int_equal(w.saga.deadline_us, 0);
    assert_int_equal(w.from.balance, 100); /* the money is back */
    assert_int_equal(w.to.balance, to_before);
    /* duplicates of every step after the end */
    expect_no_change(&w, &debited, NOW + 4 * SEC);
    expect_no_change(&w, &refused, NOW + 4 * SEC);
    expect_no_change(&w, &reversed, NOW + 4 * SEC);
    tly_envelope_clear(&debit);
    tly_envelope_clear(&debited);
    tly_envelope_clear(&credit);
    tly_envelope_clear(&refused);
    tly_envelope_clear(&reversal);
    tly_envelope_clear(&reversed);
    tly_envelope_clear(&failed);
    world_clear(&w);
}

static void
test_compensated(void **state)
{
    compensated_with(account("EUR", 5, TLY_ACCOUNT_FROZEN), "account_frozen", false);
    compensated_with(account("EUR", 0, TLY_ACCOUNT_CLOSED), "account_closed", false);
    compensated_with(account("USD", 5, TLY_ACCOUNT_OPEN), "currency_mismatch", false);
    tly_account_state_t ghost = account("EUR", 0, TLY_ACCOUNT_OPEN);
    ghost.exists = false;
    compensated_with(ghost, "account_not_found", false);
    /* the source frozen between debit and reversal: the reversal still applies */
    compensated_with(account("EUR", 5, TLY_ACCOUNT_FROZEN), "account_frozen", true);
}

static void
test_invalid_request_rejected_at_once(void **state)
{
    world_t w;
    tly_account_state_t a = account("EUR", 10, TLY_ACCOUNT_OPEN);
    world_init(&w, a, a, 5); /* from == to */
    tly_envelope_t out = start(&w);
    assert_string_equal(out.type, "TransferRejected");
    assert_string_equal(tly_json_str(out.data, "code"), "invalid_request");
    assert_int_equal(w.saga.status, TLY_SAGA_REJECTED);
    tly_envelope_clear(&out);
    world_clear(&w);

    world_init(&w, account("EUR", 10, TLY_ACCOUNT_OPEN), account("EUR", 10, TLY_ACCOUNT_OPEN), 5);
    json_object_set_new(w.request.data, "amount", json_integer(-5));
    out = start(&w);
    assert_string_equal(out.type, "TransferRejected");
    tly_envelope_clear(&out);
    world_clear(&w);
}

/* --- duplicates and out-of-order ---------------------------------------- */

/* A hand-made outcome for the saga's transfer: `type`, caused by `cause`, on `account`. */
static tly_envelope_t
fake_outcome(const world_t *w, const char *type, const tly_envelope_t *cause, const tly_uuid_t *acc, const tly_uuid_t *ten)
{
    char t[TLY_UUID_STR_LEN + 1];
    tly_envelope_t e;
    tly_uuid_format(&w->request.aggregate_id, t);
    tly_envelope_derive(&e, cause, type, 1,
                        json_pack("{s:s, s:I, s:s, s:I, s:s, s:s}", "transfer_id", t, "amount", (json_int_t)1, "currency", "EUR",
                                  "balance_after", (json_int_t)1, "code", "account_frozen", "detail", "x"),
                        NULL);
    e.aggregate_id = *acc;
    e.tenant_id = *ten;
    return e;
}

static void
test_out_of_order_and_foreign_events(void **state)
{
    world_t w;
    world_init(&w, account("EUR", 100, TLY_ACCOUNT_OPEN), account("EUR", 0, TLY_ACCOUNT_OPEN), 10);

    /* an outcome before its saga exists: nothing (the saga row comes with the request) */
    tly_envelope_t early = fake_outcome(&w, "AccountDebited", &w.request, &w.from.id, &tenant);
    expect_no_change(&w, &early, NOW);
    tly_envelope_clear(&early);

    tly_envelope_t debit = start(&w);
    /* the request again, even under another event id (a retried command): no second saga */
    expect_no_change(&w, &w.request, NOW);
    tly_envelope_t copy = w.request;
    copy.id = tly_uuid_v4();
    expect_no_change(&w, &copy, NOW);

    /* outcomes of steps not in flight, or not caused by the step's command */
    tly_envelope_t credited = fake_outcome(&w, "AccountCredited", &debit, &w.to.id, &tenant);
    expect_no_change(&w, &credited, NOW); /* a credit while debiting */
    tly_envelope_t reversed = fake_outcome(&w, "DebitReversed", &debit, &w.from.id, &tenant);
    expect_no_change(&w, &reversed, NOW);
    tly_envelope_t stray = fake_outcome(&w, "AccountDebited", &w.request, &w.from.id, &tenant); /* wrong causation */
    expect_no_change(&w, &stray, NOW);
    tly_envelope_t foreign = fake_outcome(&w, "AccountDebited", &debit, &w.from.id, &other_tenant);
    expect_no_change(&w, &foreign, NOW);
    tly_envelope_t other_transfer = fake_outcome(&w, "AccountDebited", &debit, &w.from.id, &tenant);
    json_object_set_new(other_transfer.data, "transfer_id", json_string("6b1f2e51-8c0d-4a3e-9f27-440b5da193c8"));
    expect_no_change(&w, &other_transfer, NOW);
    json_object_del(other_transfer.data, "transfer_id");
    expect_no_change(&w, &other_transfer, NOW);

    /* the real outcome, twice */
    tly_envelope_t debited = decide(&w, &debit);
    tly_envelope_t credit = answer(&w, &debited, NOW + SEC);
    expect_no_change(&w, &debited, NOW + SEC);
    /* a debit rejection now (impossible, but harmless): the debit step is over */
    tly_envelope_t late_reject = fake_outcome(&w, "AccountDebitRejected", &debit, &w.from.id, &tenant);
    expect_no_change(&w, &late_reject, NOW + SEC);
    /* a reversal outcome while crediting */
    tly_envelope_t early_reversed = fake_outcome(&w, "DebitReversed", &credit, &w.from.id, &tenant);
    expect_no_change(&w, &early_reversed, NOW + SEC);

    /* types the saga does not handle are an error for the caller (it classifies first) */
    tly_saga_step_t st;
    tly_envelope_t unknown = debit;
    snprintf(unknown.type, sizeof(unknown.type), "FundsDeposited");
    assert_int_equal(tly_saga_on_event(&w.saga, &unknown, &cfg, NOW, &st), -1);
    assert_false(tly_saga_handles("TransferCompleted"));
    assert_true(tly_saga_handles("AccountCreditRejected"));

    tly_envelope_t *all[] = {&debit,          &credited, &reversed, &stray,       &foreign,
                             &other_transfer, &debited,  &credit,   &late_reject, &early_reversed};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); ++i)
        tly_envelope_clear(all[i]);
    world_clear(&w);
}

/* --- deadlines -------------------------------------------------------------- */

static void
test_deadline_resends_same_event(void **state)
{
    world_t w;
    world_init(&w, account("EUR", 100, TLY_ACCOUNT_OPEN), account("EUR", 0, TLY_ACCOUNT_OPEN), 10);
    tly_envelope_t debit = start(&w);
    char *first = tly_envelope_to_json(&debit);
    tly_saga_step_t st;

    /* before the deadline: nothing */
    assert_int_equal(tly_saga_on_timeout(&w.saga, &cfg, NOW + cfg.step_timeout_us - 1, &st), 0);
    assert_false(st.changed);
    assert_int_equal(st.nevents, 0);

    /* at it: the same event (id and bytes), a new deadline */
    assert_int_equal(tly_saga_on_timeout(&w.saga, &cfg, NOW + cfg.step_timeout_us, &st), 0);
    assert_true(st.changed);
    assert_int_equal(st.nevents, 1);
    char *again = tly_envelope_to_json(&st.events[0]);
    assert_string_equal(first, again);
    free(again);
    assert_int_equal(st.next.sends, 2);
    assert_int_equal(st.next.deadline_us, NOW + 3 * cfg.step_timeout_us); /* backs off: twice the timeout */
    assert_int_equal(st.next.status, TLY_SAGA_DEBITING);
    w.saga = st.next;
    tly_saga_step_clear(&st);

    /* the outcome of the first send still counts (same command id) */
    tly_envelope_t debited = decide(&w, &debit);
    tly_envelope_t credit = answer(&w, &debited, NOW + 11 * SEC);
    assert_int_equal(w.saga.sends, 1);
    char *credit_json = tly_envelope_to_json(&credit);
    assert_int_equal(tly_saga_on_timeout(&w.saga, &cfg, NOW + 30 * SEC, &st), 0);
    assert_int_equal(st.nevents, 1);
    again = tly_envelope_to_json(&st.events[0]);
    assert_string_equal(credit_json, again);
    free(again);
    tly_saga_step_clear(&st);

    /* re-sends back off: 2, 4, 8, 16, 32 times the timeout, then 32 */
    tly_saga_state_t cur = w.saga;
    int64_t t = cur.deadline_us;
    for (int k = 1; k <= 8; ++k) {
        assert_int_equal(tly_saga_on_timeout(&cur, &cfg, t, &st), 0);
        assert_int_equal(st.nevents, 1);
        assert_int_equal(st.next.deadline_us, t + (cfg.step_timeout_us << (k < 5 ? k : 5)));
        cur = st.next;
        t = cur.deadline_us;
        tly_saga_step_clear(&st);
    }

    free(first);
    free(credit_json);
    tly_envelope_clear(&debit);
    tly_envelope_clear(&debited);
    tly_envelope_clear(&credit);
    world_clear(&w);
}

/* A refused reversal is never the end: the next deadline sends a new attempt (new id), until one applies. */
static void
test_refused_reversal_is_retried(void **state)
{
    world_t w;
    world_init(&w, account("EUR", 100, TLY_ACCOUNT_OPEN), account("EUR", 0, TLY_ACCOUNT_FROZEN), 10);
    tly_envelope_t debit = start(&w);
    tly_envelope_t debited = decide(&w, &debit);
    tly_envelope_t credit = answer(&w, &debited, NOW + SEC);
    tly_envelope_t refused = decide(&w, &credit);
    tly_envelope_t reversal = answer(&w, &refused, NOW + 2 * SEC);

    /* the decider parks the reversal (say, a bug): DebitReversalRejected {dead_lettered} */
    tly_decision_t d;
    assert_int_equal(tly_decider_reject(&reversal, "dead_lettered", "boom", NOW, &d), 0);
    tly_envelope_t reversal_refused = d.events[0];
    tly_saga_step_t st = feed(&w, &reversal_refused, NOW + 3 * SEC);
    assert_true(st.changed);
    assert_int_equal(st.nevents, 0); /* nothing now: the deadline sends the next attempt */
    assert_int_equal(w.saga.status, TLY_SAGA_COMPENSATING);
    assert_int_equal(w.saga.attempt, 1);
    tly_saga_step_clear(&st);
    expect_no_change(&w, &reversal_refused, NOW + 3 * SEC); /* the same rejection again */

    assert_int_equal(tly_saga_on_timeout(&w.saga, &cfg, NOW + 3 * SEC + cfg.step_timeout_us, &st), 0);
    assert_int_equal(st.nevents, 1);
    tly_envelope_t attempt1 = st.events[0];
    assert_string_equal(attempt1.type, "DebitReversalRequested");
    assert_false(uuid_eq(&attempt1.id, &reversal.id));
    w.saga = st.next;
    /* its deadline passes too: the same attempt again (same id) */
    assert_int_equal(tly_saga_on_timeout(&w.saga, &cfg, NOW + 3 * SEC + 2 * cfg.step_timeout_us, &st), 0);
    assert_int_equal(st.nevents, 1);
    assert_true(uuid_eq(&st.events[0].id, &attempt1.id));
    w.saga = st.next;
    tly_saga_step_clear(&st);

    /* the stale rejection of attempt 0 changes nothing now */
    expect_no_change(&w, &reversal_refused, NOW + 30 * SEC);
    tly_envelope_t reversed = decide(&w, &attempt1);
    assert_string_equal(reversed.type, "DebitReversed");
    tly_envelope_t failed = answer(&w, &reversed, NOW + 31 * SEC);
    assert_string_equal(failed.type, "TransferFailed");
    assert_string_equal(tly_json_str(failed.data, "code"), "account_frozen");
    assert_int_equal(w.from.balance, 100);

    tly_envelope_t *all[] = {&debit, &debited, &credit, &refused, &reversal, &reversal_refused, &attempt1, &reversed, &failed};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); ++i)
        tly_envelope_clear(all[i]);
    world_clear(&w);
}

static void
test_status_names(void **state)
{
    tly_saga_status_t s;
    for (int i = TLY_SAGA_DEBITING; i <= TLY_SAGA_FAILED; ++i) {
        assert_true(tly_saga_status_parse(tly_saga_status_name((tly_saga_status_t)i), &s));
        assert_int_equal(s, i);
    }
    assert_false(tly_saga_status_parse("none", &s));
    assert_false(tly_saga_status_parse("done", &s));
    tly_uuid_t t;
    tly_envelope_t e;
    memset(&e, 0, sizeof(e));
    snprintf(e.type, sizeof(e.type), "AccountDebited");
    e.data = json_pack("{s:s}", "transfer_id", "nope");
    assert_false(tly_saga_transfer_of(&e, &t));
    json_decref(e.data);
}

static int
setup(void **state)
{
    tenant = tly_uuid_v4();
    other_tenant = tly_uuid_v4();
    return 0;
}

/* The saga follows every step of the catalogue: each outcome and rejection of a transfer step. */
static void
test_steps_match_catalogue(void **state)
{
    size_t n;
    const tly_event_spec_t *all = tly_catalogue_all(&n);
    int steps = 0;
    for (size_t i = 0; i < n; ++i) {
        if (all[i].kind != TLY_EVENT_SAGA_STEP)
            continue;
        ++steps;
        assert_true(tly_saga_handles(all[i].outcome));
        assert_true(tly_saga_handles(all[i].rejection));
        assert_false(tly_saga_handles(all[i].type)); /* the decider's */
    }
    assert_int_equal(steps, 3);
    assert_true(tly_saga_handles("TransferRequested"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_completed),
        cmocka_unit_test(test_rejected),
        cmocka_unit_test(test_compensated),
        cmocka_unit_test(test_invalid_request_rejected_at_once),
        cmocka_unit_test(test_out_of_order_and_foreign_events),
        cmocka_unit_test(test_deadline_resends_same_event),
        cmocka_unit_test(test_refused_reversal_is_retried),
        cmocka_unit_test(test_status_names),
        cmocka_unit_test(test_steps_match_catalogue),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
