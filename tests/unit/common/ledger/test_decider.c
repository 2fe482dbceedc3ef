/* Unit tests of the ledger decider: every rule and rejection code, ids, evolve. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/ledger/decider.h"
#include "tally/json.h"

#include <string.h>

#define NOW 1795000000000000LL

static tly_uuid_t account_id, tenant_a, tenant_b;

static int
setup(void **state)
{
    account_id = tly_uuid_v4();
    tenant_a = tly_uuid_v4();
    tenant_b = tly_uuid_v4();
    return 0;
}

/* A request event as the command API writes it; takes ownership of `data`. */
static tly_envelope_t
request(const char *type, const tly_uuid_t *tenant, json_t *data)
{
    tly_envelope_t e;
    memset(&e, 0, sizeof(e));
    e.id = tly_uuid_v4();
    snprintf(e.type, sizeof(e.type), "%s", type);
    e.version = 1;
    snprintf(e.aggregate_type, sizeof(e.aggregate_type), "account");
    e.aggregate_id = account_id;
    e.tenant_id = *tenant;
    e.job_id = tly_uuid_v4();
    e.correlation_id = e.id;
    e.occurred_at_us = NOW - 1000;
    e.data = data;
    return e;
}

static tly_envelope_t
money(const char *type, json_int_t amount, const char *currency)
{
    return request(type, &tenant_a, json_pack("{s:I, s:s, s:s}", "amount", amount, "currency", currency, "reference", "r-1"));
}

/* Decides and returns the decision; the request is cleared. */
static tly_decision_t
decide(const tly_account_state_t *s, tly_envelope_t req)
{
    tly_decision_t d;
    assert_int_equal(tly_decider_decide_at(s, &req, NOW, &d), 0);
    assert_int_equal(d.nevents, 1);
    assert_true(memcmp(&d.events[0].causation_id, &req.id, sizeof(req.id)) == 0);
    assert_true(memcmp(&d.events[0].job_id, &req.job_id, sizeof(req.id)) == 0);
    assert_true(memcmp(&d.events[0].correlation_id, &req.id, sizeof(req.id)) == 0);
    assert_true(memcmp(&d.events[0].aggregate_id, &account_id, sizeof(req.id)) == 0);
    assert_int_equal(d.events[0].occurred_at_us, NOW);
    tly_envelope_clear(&req);
    return d;
}

/* Asserts a rejection of `type` with `code`, and that the state did not move. */
static void
expect_rejected(const tly_account_state_t *s, tly_envelope_t req, const char *type, const char *code)
{
    tly_decision_t d = decide(s, req);
    assert_true(d.rejected);
    assert_false(d.state_changed);
    assert_string_equal(d.events[0].type, type);
    assert_string_equal(tly_json_str(d.events[0].data, "code"), code);
    assert_non_null(tly_json_str(d.events[0].data, "detail"));
    if (s != NULL)
        assert_memory_equal(&d.next, s, sizeof(*s));
    tly_decision_clear(&d);
}

/* Applies an accepted request to `s`, returning the outcome's data member `key` (or -1). */
static int64_t
accept(tly_account_state_t *s, tly_envelope_t req, const char *type, const char *key)
{
    tly_decision_t d = decide(s, req);
    assert_false(d.rejected);
    assert_true(d.state_changed);
    assert_string_equal(d.events[0].type, type);
    int64_t v = key != NULL ? (int64_t)json_integer_value(json_object_get(d.events[0].data, key)) : -1;
    /* evolve of the outcome gives exactly the decided next state */
    tly_account_state_t replayed = *s;
    assert_int_equal(tly_decider_evolve(&replayed, &d.events[0]), 0);
    assert_memory_equal(&replayed, &d.next, sizeof(replayed));
    *s = d.next;
    tly_decision_clear(&d);
    return v;
}

static tly_account_state_t
open_account(const char *currency, int64_t balance)
{
    tly_account_state_t s;
    memset(&s, 0, sizeof(s));
    accept(&s, request("AccountOpenRequested", &tenant_a, json_pack("{s:s, s:s}", "currency", currency, "label", "main")),
           "AccountOpened", NULL);
    if (balance > 0)
        accept(&s, money("DepositRequested", balance, currency), "FundsDeposited", NULL);
    return s;
}

static tly_account_state_t
with_status(tly_account_state_t s, const char *req, const char *outcome)
{
    accept(&s, request(req, &tenant_a, json_object()), outcome, NULL);
    return s;
}

/* --- open ---------------------------------------------------------------- */

static void
test_open_new_account(void **state)
{
    tly_envelope_t req = request("AccountOpenRequested", &tenant_a, json_pack("{s:s, s:s}", "currency", "EUR", "label", "rent"));
    tly_decision_t d;
    assert_int_equal(tly_decider_decide_at(NULL, &req, NOW, &d), 0);
    assert_string_equal(d.events[0].type, "AccountOpened");
    assert_string_equal(tly_json_str(d.events[0].data, "currency"), "EUR");
    assert_string_equal(tly_json_str(d.events[0].data, "label"), "rent");
    assert_true(d.next.exists);
    assert_string_equal(d.next.currency, "EUR");
    assert_int_equal(d.next.status, TLY_ACCOUNT_OPEN);
    assert_int_equal(d.next.balance, 0);
    assert_int_equal(d.next.version, 1);
    assert_memory_equal(&d.next.tenant_id, &tenant_a, sizeof(tenant_a));
    tly_decision_clear(&d);
    tly_envelope_clear(&req);
}

static void
test_open_existing_is_rejected(void **state)
{
    tly_account_state_t s = open_account("EUR", 0);
    expect_rejected(&s, request("AccountOpenRequested", &tenant_a, json_pack("{s:s, s:s}", "currency", "EUR", "label", "x")),
                    "AccountOpenRejected", "account_exists");
}

static void
test_open_invalid_request(void **state)
{
    expect_rejected(NULL, request("AccountOpenRequested", &tenant_a, json_pack("{s:s, s:s}", "currency", "eur", "label", "x")),
                    "AccountOpenRejected", "invalid_request");
    expect_rejected(NULL, request("AccountOpenRequested", &tenant_a, json_pack("{s:s}", "currency", "EUR")), "AccountOpenRejected",
                    "invalid_request");
    expect_rejected(NULL, request("AccountOpenRequested", &tenant_a, json_pack("{s:i, s:s}", "currency", 978, "label", "x")),
                    "AccountOpenRejected", "invalid_request");
}

/* --- deposit ------------------------------------------------------------- */

static void
test_deposit(void **state)
{
    tly_account_state_t s = open_account("EUR", 0);
    assert_int_equal(accept(&s, money("DepositRequested", 1500, "EUR"), "FundsDeposited", "balance_after"), 1500);
    assert_int_equal(accept(&s, money("DepositRequested", 1, "EUR"), "FundsDeposited", "amount"), 1);
    assert_int_equal(s.balance, 1501);
    assert_int_equal(s.version, 3);
}

static void
test_deposit_rejections(void **state)
{
    tly_account_state_t s = open_account("EUR", 10);
    expect_rejected(NULL, money("DepositRequested", 5, "EUR"), "DepositRejected", "account_not_found");
    expect_rejected(&s, request("DepositRequested", &tenant_b, json_pack("{s:i, s:s}", "amount", 5, "currency", "EUR")),
                    "DepositRejected", "account_not_found");
    expect_rejected(&s, money("DepositRequested", 5, "USD"), "DepositRejected", "currency_mismatch");
    expect_rejected(&s, money("DepositRequested", 0, "EUR"), "DepositRejected", "invalid_request");
    expect_rejected(&s, money("DepositRequested", -5, "EUR"), "DepositRejected", "invalid_request");
    expect_rejected(&s, request("DepositRequested", &tenant_a, json_pack("{s:s, s:s}", "amount", "5", "currency", "EUR")),
                    "DepositRejected", "invalid_request");
    expect_rejected(&s, money("DepositRequested", INT64_MAX, "EUR"), "DepositRejected", "invalid_request"); /* overflow */
    tly_account_state_t frozen = with_status(s, "AccountFreezeRequested", "AccountFrozen");
    expect_rejected(&frozen, money("DepositRequested", 5, "EUR"), "DepositRejected", "account_frozen");
}

/* --- withdraw ------------------------------------------------------------ */

static void
test_withdraw(void **state)
{
    tly_account_state_t s = open_account("GBP", 100);
    assert_int_equal(accept(&s, money("WithdrawalRequested", 40, "GBP"), "FundsWithdrawn", "balance_after"), 60);
    assert_int_equal(accept(&s, money("WithdrawalRequested", 60, "GBP"), "FundsWithdrawn", "balance_after"), 0);
    assert_int_equal(s.balance, 0);
}

static void
test_withdraw_rejections(void **state)
{
    tly_account_state_t s = open_account("GBP", 100);
    expect_rejected(&s, money("WithdrawalRequested", 101, "GBP"), "WithdrawalRejected", "insufficient_funds");
    expect_rejected(&s, money("WithdrawalRequested", 10, "EUR"), "WithdrawalRejected", "currency_mismatch");
    expect_rejected(&s, money("WithdrawalRequested", 0, "GBP"), "WithdrawalRejected", "invalid_request");
    expect_rejected(NULL, money("WithdrawalRequested", 1, "GBP"), "WithdrawalRejected", "account_not_found");
    tly_account_state_t frozen = with_status(s, "AccountFreezeRequested", "AccountFrozen");
    expect_rejected(&frozen, money("WithdrawalRequested", 1, "GBP"), "WithdrawalRejected", "account_frozen");
}

/* --- freeze, unfreeze, close --------------------------------------------- */

static void
test_freeze_unfreeze(void **state)
{
    tly_account_state_t s = open_account("EUR", 0);
    s = with_status(s, "AccountFreezeRequested", "AccountFrozen");
    assert_int_equal(s.status, TLY_ACCOUNT_FROZEN);
    expect_rejected(&s, request("AccountFreezeRequested", &tenant_a, json_object()), "AccountFreezeRejected", "account_frozen");
    s = with_status(s, "AccountUnfreezeRequested", "AccountUnfrozen");
    assert_int_equal(s.status, TLY_ACCOUNT_OPEN);
    assert_int_equal(s.version, 3);
    expect_rejected(&s, request("AccountUnfreezeRequested", &tenant_a, json_object()), "AccountUnfreezeRejected",
                    "account_not_frozen");
    expect_rejected(NULL, request("AccountFreezeRequested", &tenant_a, json_object()), "AccountFreezeRejected",
                    "account_not_found");
    expect_rejected(&s, request("AccountFreezeRequested", &tenant_b, json_object()), "AccountFreezeRejected", "account_not_found");
}

static void
test_close(void **state)
{
    tly_account_state_t s = open_account("EUR", 5);
    expect_rejected(&s, request("AccountCloseRequested", &tenant_a, json_object()), "AccountCloseRejected", "balance_not_zero");
    tly_account_state_t frozen = with_status(s, "AccountFreezeRequested", "AccountFrozen");
    expect_rejected(&frozen, request("AccountCloseRequested", &tenant_a, json_object()), "AccountCloseRejected", "account_frozen");
    accept(&s, money("WithdrawalRequested", 5, "EUR"), "FundsWithdrawn", NULL);
    s = with_status(s, "AccountCloseRequested", "AccountClosed");
    assert_int_equal(s.status, TLY_ACCOUNT_CLOSED);
    expect_rejected(NULL, request("AccountCloseRequested", &tenant_a, json_object()), "AccountCloseRejected", "account_not_found");
}

static void
test_closed_accepts_nothing(void **state)
{
    tly_account_state_t s = with_status(open_account("EUR", 0), "AccountCloseRequested", "AccountClosed");
    expect_rejected(&s, money("DepositRequested", 1, "EUR"), "DepositRejected", "account_closed");
    expect_rejected(&s, money("WithdrawalRequested", 1, "EUR"), "WithdrawalRejected", "account_closed");
    expect_rejected(&s, request("AccountFreezeRequested", &tenant_a, json_object()), "AccountFreezeRejected", "account_closed");
    expect_rejected(&s, request("AccountUnfreezeRequested", &tenant_a, json_object()), "AccountUnfreezeRejected", "account_closed");
    expect_rejected(&s, request("AccountCloseRequested", &tenant_a, json_object()), "AccountCloseRejected", "account_closed");
    expect_rejected(&s, request("AccountOpenRequested", &tenant_a, json_pack("{s:s, s:s}", "currency", "EUR", "label", "x")),
                    "AccountOpenRejected", "account_exists");
}

/* --- ids, rebuild, helpers ----------------------------------------------- */

static void
test_redelivery_yields_same_outcome_id(void **state)
{
    tly_account_state_t s = open_account("EUR", 10);
    tly_envelope_t req = money("DepositRequested", 5, "EUR"), other = money("DepositRequested", 5, "EUR");
    tly_decision_t d1, d2, d3, r1, r2;
    assert_int_equal(tly_decider_decide_at(&s, &req, NOW, &d1), 0);
    assert_int_equal(tly_decider_decide_at(&s, &req, NOW + 999, &d2), 0);
    assert_int_equal(tly_decider_decide_at(&s, &other, NOW, &d3), 0);
    assert_memory_equal(&d1.events[0].id, &d2.events[0].id, sizeof(tly_uuid_t));
    assert_memory_not_equal(&d1.events[0].id, &d3.events[0].id, sizeof(tly_uuid_t));
    assert_memory_not_equal(&d1.events[0].id, &req.id, sizeof(tly_uuid_t));
    /* a rejection is deterministic too */
    assert_int_equal(tly_decider_decide_at(NULL, &req, NOW, &r1), 0);
    assert_int_equal(tly_decider_decide_at(NULL, &req, NOW, &r2), 0);
    assert_string_equal(r1.events[0].type, "DepositRejected");
    assert_memory_equal(&r1.events[0].id, &r2.events[0].id, sizeof(tly_uuid_t));
    /* same wire form at the same time: nothing random besides the id source */
    char *j1 = tly_envelope_to_json(&d1.events[0]), *j2 = tly_envelope_to_json(&d2.events[0]);
    d2.events[0].occurred_at_us = NOW;
    free(j2);
    j2 = tly_envelope_to_json(&d2.events[0]);
    assert_string_equal(j1, j2);
    free(j1);
    free(j2);
    tly_decision_clear(&d1);
    tly_decision_clear(&d2);
    tly_decision_clear(&d3);
    tly_decision_clear(&r1);
    tly_decision_clear(&r2);
    tly_envelope_clear(&req);
    tly_envelope_clear(&other);
}

static void
test_state_rebuilds_from_outcomes(void **state)
{
    tly_envelope_t reqs[] = {
        request("AccountOpenRequested", &tenant_a, json_pack("{s:s, s:s}", "currency", "CHF", "label", "x")),
        money("DepositRequested", 300, "CHF"),
        money("WithdrawalRequested", 500, "CHF"), /* rejected */
        money("WithdrawalRequested", 120, "CHF"),
        request("AccountFreezeRequested", &tenant_a, json_object()),
        money("DepositRequested", 1, "CHF"), /* rejected: frozen */
        request("AccountUnfreezeRequested", &tenant_a, json_object()),
    };
    tly_account_state_t live, rebuilt;
    memset(&live, 0, sizeof(live));
    memset(&rebuilt, 0, sizeof(rebuilt));
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); ++i) {
        tly_decision_t d;
        assert_int_equal(tly_decider_decide_at(&live, &reqs[i], NOW, &d), 0);
        live = d.next;
        for (int k = 0; k < d.nevents; ++k)
            assert_int_equal(tly_decider_evolve(&rebuilt, &d.events[k]), 0);
        tly_decision_clear(&d);
        tly_envelope_clear(&reqs[i]);
    }
    assert_memory_equal(&live, &rebuilt, sizeof(live));
    assert_int_equal(live.balance, 180);
    assert_int_equal(live.version, 5);
    assert_int_equal(live.status, TLY_ACCOUNT_OPEN);
}

static void
test_evolve_refuses_impossible_events(void **state)
{
    tly_account_state_t s;
    memset(&s, 0, sizeof(s));
    tly_envelope_t cause = money("DepositRequested", 5, "EUR"), ev;
    tly_envelope_derive(&ev, &cause, "FundsDeposited", 1,
                        json_pack("{s:i, s:s, s:i}", "amount", 5, "currency", "EUR", "balance_after", 5), NULL);
    assert_int_equal(tly_decider_evolve(&s, &ev), -1); /* no such account */
    assert_false(s.exists);
    tly_envelope_clear(&ev);
    tly_envelope_clear(&cause);
}

static void
test_reject_helper_and_tables(void **state)
{
    tly_envelope_t req = money("WithdrawalRequested", 5, "EUR");
    tly_decision_t d;
    assert_int_equal(tly_decider_reject(&req, "dead_lettered", "boom", NOW, &d), 0);
    assert_string_equal(d.events[0].type, "WithdrawalRejected");
    assert_string_equal(tly_json_str(d.events[0].data, "code"), "dead_lettered");
    tly_decision_clear(&d);
    assert_true(tly_decider_is_request("AccountCloseRequested"));
    assert_false(tly_decider_is_request("AccountClosed"));
    assert_true(tly_decider_is_outcome("AccountClosed"));
    assert_true(tly_decider_is_outcome("AccountCloseRejected"));
    assert_true(tly_decider_is_rejection("DepositRejected"));
    assert_string_equal(tly_decider_rejection_of("AccountOpenRequested"), "AccountOpenRejected");
    snprintf(req.type, sizeof(req.type), "TransferRequested");
    assert_int_equal(tly_decider_decide_at(NULL, &req, NOW, &d), -1);
    tly_envelope_clear(&req);
}

/* --- transfer steps (sent by the saga) ------------------------------------ */

#define TRANSFER_ID "0b7e8a3c-5d7f-4c51-9a43-6f1c2d7e9b10"

static tly_envelope_t
step(const char *type, json_int_t amount, const char *currency)
{
    return request(type, &tenant_a,
                   json_pack("{s:s, s:I, s:s}", "transfer_id", TRANSFER_ID, "amount", amount, "currency", currency));
}

static void
expect_step_rejected(const tly_account_state_t *s, tly_envelope_t req, const char *type, const char *code)
{
    tly_decision_t d = decide(s, req);
    assert_true(d.rejected);
    assert_string_equal(d.events[0].type, type);
    assert_string_equal(tly_json_str(d.events[0].data, "code"), code);
    assert_string_equal(tly_json_str(d.events[0].data, "transfer_id"), TRANSFER_ID); /* the saga finds its row by it */
    tly_decision_clear(&d);
}

static void
test_transfer_debit(void **state)
{
    tly_account_state_t s = open_account("EUR", 100);
    assert_int_equal(accept(&s, step("TransferDebitRequested", 60, "EUR"), "AccountDebited", "balance_after"), 40);
    assert_int_equal(s.balance, 40);
    assert_int_equal(s.version, 3);
    assert_int_equal(accept(&s, step("TransferDebitRequested", 40, "EUR"), "AccountDebited", "balance_after"), 0);
    expect_step_rejected(&s, step("TransferDebitRequested", 1, "EUR"), "AccountDebitRejected", "insufficient_funds");
    s = open_account("EUR", 100);
    expect_step_rejected(&s, step("TransferDebitRequested", 1, "USD"), "AccountDebitRejected", "currency_mismatch");
    expect_step_rejected(NULL, step("TransferDebitRequested", 1, "EUR"), "AccountDebitRejected", "account_not_found");
    tly_account_state_t frozen = with_status(s, "AccountFreezeRequested", "AccountFrozen");
    expect_step_rejected(&frozen, step("TransferDebitRequested", 1, "EUR"), "AccountDebitRejected", "account_frozen");
    tly_account_state_t closed = with_status(open_account("EUR", 0), "AccountCloseRequested", "AccountClosed");
    expect_step_rejected(&closed, step("TransferDebitRequested", 1, "EUR"), "AccountDebitRejected", "account_closed");
    tly_account_state_t other = s;
    other.tenant_id = tenant_b; /* another tenant's account does not exist for this one */
    expect_step_rejected(&other, step("TransferDebitRequested", 1, "EUR"), "AccountDebitRejected", "account_not_found");
    /* the step carries its transfer: without it the request is invalid */
    expect_rejected(&s, money("TransferDebitRequested", 1, "EUR"), "AccountDebitRejected", "invalid_request");
}

static void
test_transfer_credit(void **state)
{
    tly_account_state_t s = open_account("EUR", 5);
    tly_decision_t d = decide(&s, step("TransferCreditRequested", 20, "EUR"));
    assert_string_equal(d.events[0].type, "AccountCredited");
    assert_string_equal(tly_json_str(d.events[0].data, "transfer_id"), TRANSFER_ID);
    assert_int_equal(json_integer_value(json_object_get(d.events[0].data, "balance_after")), 25);
    assert_int_equal(json_integer_value(json_object_get(d.events[0].data, "amount")), 20);
    assert_int_equal(d.next.balance, 25);
    tly_decision_clear(&d);
    expect_step_rejected(&s, step("TransferCreditRequested", 1, "GBP"), "AccountCreditRejected", "currency_mismatch");
    expect_step_rejected(NULL, step("TransferCreditRequested", 1, "EUR"), "AccountCreditRejected", "account_not_found");
    tly_account_state_t frozen = with_status(s, "AccountFreezeRequested", "AccountFrozen");
    expect_step_rejected(&frozen, step("TransferCreditRequested", 1, "EUR"), "AccountCreditRejected", "account_frozen");
    tly_account_state_t closed = with_status(open_account("EUR", 0), "AccountCloseRequested", "AccountClosed");
    expect_step_rejected(&closed, step("TransferCreditRequested", 1, "EUR"), "AccountCreditRejected", "account_closed");
}

static void
test_reversal_is_never_refused_for_state(void **state)
{
    tly_account_state_t s = open_account("EUR", 100);
    accept(&s, step("TransferDebitRequested", 70, "EUR"), "AccountDebited", NULL);
    /* frozen or closed after the debit: the money still goes back */
    tly_account_state_t frozen = with_status(s, "AccountFreezeRequested", "AccountFrozen");
    assert_int_equal(accept(&frozen, step("DebitReversalRequested", 70, "EUR"), "DebitReversed", "balance_after"), 100);
    assert_int_equal(frozen.status, TLY_ACCOUNT_FROZEN);
    tly_account_state_t closed = s;
    closed.status = TLY_ACCOUNT_CLOSED;
    assert_int_equal(accept(&closed, step("DebitReversalRequested", 70, "EUR"), "DebitReversed", "balance_after"), 100);
    assert_int_equal(accept(&s, step("DebitReversalRequested", 70, "EUR"), "DebitReversed", "balance_after"), 100);
    /* only what cannot follow a real debit is refused */
    expect_step_rejected(NULL, step("DebitReversalRequested", 1, "EUR"), "DebitReversalRejected", "account_not_found");
    assert_true(tly_decider_is_request("DebitReversalRequested"));
    assert_true(tly_decider_is_outcome("DebitReversed"));
    assert_true(tly_decider_is_rejection("AccountCreditRejected"));
    assert_string_equal(tly_decider_rejection_of("TransferDebitRequested"), "AccountDebitRejected");
}

static void
test_parked_step_rejection_keeps_transfer(void **state)
{
    tly_envelope_t req = step("TransferCreditRequested", 5, "EUR");
    tly_decision_t d;
    assert_int_equal(tly_decider_reject(&req, "dead_lettered", "boom", NOW, &d), 0);
    assert_string_equal(d.events[0].type, "AccountCreditRejected");
    assert_string_equal(tly_json_str(d.events[0].data, "transfer_id"), TRANSFER_ID);
    tly_decision_clear(&d);
    tly_envelope_clear(&req);
}

/* Text limits count characters, as the command API does: 200 x "\u20ac" (600 bytes) fits, 201 does not. */
static void
test_text_limits_in_characters(void **state)
{
    char text[4 * 202];
    for (int n = 200; n <= 201; ++n) {
        for (int i = 0; i < n; ++i)
            memcpy(text + 3 * i, "\xe2\x82\xac", 3);
        text[3 * n] = '\0';
        tly_account_state_t s;
        memset(&s, 0, sizeof(s));
        tly_envelope_t open = request("AccountOpenRequested", &tenant_a, json_pack("{s:s, s:s}", "currency", "EUR", "label", text));
        tly_envelope_t dep =
            request("DepositRequested", &tenant_a, json_pack("{s:i, s:s, s:s}", "amount", 5, "currency", "EUR", "reference", text));
        if (n == 200) {
            accept(&s, open, "AccountOpened", NULL);
            assert_int_equal(accept(&s, dep, "FundsDeposited", "balance_after"), 5);
        } else {
            expect_rejected(NULL, open, "AccountOpenRejected", TLY_CODE_INVALID_REQUEST);
            s = open_account("EUR", 0);
            expect_rejected(&s, dep, "DepositRejected", TLY_CODE_INVALID_REQUEST);
        }
    }
}

/* The currency is one of ISO 4217's, not any three capitals. */
static void
test_currency_is_iso(void **state)
{
    expect_rejected(NULL, request("AccountOpenRequested", &tenant_a, json_pack("{s:s, s:s}", "currency", "QQQ", "label", "x")),
                    "AccountOpenRejected", TLY_CODE_INVALID_REQUEST);
    tly_account_state_t s = open_account("EUR", 10);
    expect_rejected(&s, money("WithdrawalRequested", 1, "ABC"), "WithdrawalRejected", TLY_CODE_INVALID_REQUEST);
}

/* The decider handles exactly the catalogue's account requests and steps, with the catalogue's outcome and rejection types. */
static void
test_rows_match_catalogue(void **state)
{
    size_t n;
    const tly_event_spec_t *all = tly_catalogue_all(&n);
    for (size_t i = 0; i < n; ++i) {
        const tly_event_spec_t *s = &all[i];
        bool ours = (s->kind == TLY_EVENT_REQUEST || s->kind == TLY_EVENT_SAGA_STEP) && strcmp(s->aggregate, "account") == 0;
        assert_int_equal(tly_decider_is_request(s->type), ours);
        if (!ours)
            continue;
        assert_string_equal(tly_decider_rejection_of(s->type), s->rejection);
        assert_true(tly_decider_is_outcome(s->outcome));
        assert_true(tly_decider_is_rejection(s->rejection));
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_new_account),
        cmocka_unit_test(test_open_existing_is_rejected),
        cmocka_unit_test(test_open_invalid_request),
        cmocka_unit_test(test_deposit),
        cmocka_unit_test(test_deposit_rejections),
        cmocka_unit_test(test_withdraw),
        cmocka_unit_test(test_withdraw_rejections),
        cmocka_unit_test(test_freeze_unfreeze),
        cmocka_unit_test(test_close),
        cmocka_unit_test(test_closed_accepts_nothing),
        cmocka_unit_test(test_redelivery_yields_same_outcome_id),
        cmocka_unit_test(test_state_rebuilds_from_outcomes),
        cmocka_unit_test(test_evolve_refuses_impossible_events),
        cmocka_unit_test(test_reject_helper_and_tables),
        cmocka_unit_test(test_transfer_debit),
        cmocka_unit_test(test_transfer_credit),
        cmocka_unit_test(test_reversal_is_never_refused_for_state),
        cmocka_unit_test(test_parked_step_rejection_keeps_transfer),
        cmocka_unit_test(test_text_limits_in_characters),
        cmocka_unit_test(test_currency_is_iso),
        cmocka_unit_test(test_rows_match_catalogue),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
