/*
 * Unit tests of the projection batch's folding (no database): what a batch
 * accepts, refuses, and when it asks to be written first. That the written
 * rows equal one-by-one application is tests/integration/test_projection_batch.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/ledger/projection.h"
#include "tally/ledger/catalogue.h"

#include <stdlib.h>
#include <string.h>

static tly_envelope_t
event(const char *type, int version, const tly_uuid_t *account, json_t *data)
{
    tly_envelope_t e;
    memset(&e, 0, sizeof(e));
    e.id = tly_uuid_v4();
    snprintf(e.type, sizeof(e.type), "%s", type);
    e.version = version;
    snprintf(e.aggregate_type, sizeof(e.aggregate_type), "account");
    e.aggregate_id = *account;
    e.tenant_id = tly_uuid_v4();
    e.job_id = tly_uuid_v4();
    e.occurred_at_us = 1700000000000000LL;
    e.data = data;
    return e;
}

static json_t *
money(void)
{
    return json_pack("{s:i, s:s, s:i}", "amount", 5, "currency", "EUR", "balance_after", 5);
}

static void
test_same_account_many_times(void **state)
{
    char err[256];
    tly_uuid_t acc = tly_uuid_v4();
    tly_projection_batch_t *b = tly_projection_batch_create(TLY_MODEL_ALL);
    tly_envelope_t open = event("AccountOpened", 1, &acc, json_pack("{s:s, s:s}", "currency", "EUR", "label", "a"));
    assert_int_equal(tly_projection_batch_add(b, &open, err, sizeof(err)), 0);
    for (int i = 0; i < 10; ++i) {
        tly_envelope_t dep = event("FundsDeposited", 1, &acc, money()); /* v1: upcast to v2 on the way */
        assert_int_equal(tly_projection_batch_add(b, &dep, err, sizeof(err)), 0);
        tly_envelope_clear(&dep);
    }
    /* opened again after its updates: still folds (the second insert would do nothing) */
    assert_int_equal(tly_projection_batch_add(b, &open, err, sizeof(err)), 0);
    assert_int_equal(tly_projection_batch_count(b), 12);
    tly_envelope_clear(&open);
    tly_projection_batch_destroy(b);
}

static void
test_open_after_updates_asks_for_a_flush(void **state)
{
    char err[256];
    tly_uuid_t acc = tly_uuid_v4();
    tly_projection_batch_t *b = tly_projection_batch_create(TLY_MODEL_ALL);
    tly_envelope_t dep = event("FundsDeposited", 2, &acc, money());
    tly_envelope_t open = event("AccountOpened", 1, &acc, json_pack("{s:s, s:s}", "currency", "EUR", "label", "a"));
    assert_int_equal(tly_projection_batch_add(b, &dep, err, sizeof(err)), 0);
    assert_int_equal(tly_projection_batch_add(b, &open, err, sizeof(err)), 1);
    assert_int_equal(tly_projection_batch_count(b), 1); /* nothing of the refused event was taken */
    tly_projection_batch_reset(b);
    assert_int_equal(tly_projection_batch_add(b, &open, err, sizeof(err)), 0);
    /* the accounts model alone decides: without it there is nothing to wait for */
    tly_projection_batch_t *jobs = tly_projection_batch_create(TLY_MODEL_JOBS);
    assert_int_equal(tly_projection_batch_add(jobs, &dep, err, sizeof(err)), 0);
    assert_int_equal(tly_projection_batch_add(jobs, &open, err, sizeof(err)), 0);
    tly_envelope_clear(&dep);
    tly_envelope_clear(&open);
    tly_projection_batch_destroy(jobs);
    tly_projection_batch_destroy(b);
}

static void
test_invalid_events_are_refused_whole(void **state)
{
    char err[256];
    tly_uuid_t acc = tly_uuid_v4();
    tly_projection_batch_t *b = tly_projection_batch_create(TLY_MODEL_ALL);
    /* accounts would take it (balance_after is fine), the ledger refuses it: nothing of it is folded */
    tly_envelope_t bad =
        event("FundsDeposited", 2, &acc, json_pack("{s:s, s:s, s:i}", "amount", "x", "currency", "EUR", "balance_after", 1));
    assert_int_equal(tly_projection_batch_add(b, &bad, err, sizeof(err)), -1);
    assert_string_equal(err, "could not apply FundsDeposited: data.amount is not an integer");
    assert_int_equal(tly_projection_batch_count(b), 0);
    tly_envelope_t debit =
        event("AccountDebited", 1, &acc,
              json_pack("{s:i, s:s, s:i, s:s}", "amount", 1, "currency", "EUR", "balance_after", 0, "transfer_id", "not-a-uuid"));
    assert_int_equal(tly_projection_batch_add(b, &debit, err, sizeof(err)), -1);
    assert_string_equal(err, "could not apply AccountDebited: data.transfer_id is not a uuid");
    tly_envelope_t future = event("FundsDeposited", 99, &acc, money());
    assert_int_equal(tly_projection_batch_add(b, &future, err, sizeof(err)), -1);
    tly_envelope_t unknown = event("SomethingElse", 1, &acc, json_object());
    assert_int_equal(tly_projection_batch_add(b, &unknown, err, sizeof(err)), 0);
    assert_int_equal(tly_projection_batch_count(b), 0);
    tly_envelope_clear(&bad);
    tly_envelope_clear(&debit);
    tly_envelope_clear(&future);
    tly_envelope_clear(&unknown);
    tly_projection_batch_destroy(b);
}

/* The projector reads every ledger type of the catalogue but the saga's steps (their outcomes say it all), at its newest version.
 */
static void
test_dispatch_matches_catalogue(void **state)
{
    size_t n;
    const tly_event_spec_t *all = tly_catalogue_all(&n);
    for (size_t i = 0; i < n; ++i) {
        bool ledger = (strcmp(all[i].aggregate, "account") == 0 || strcmp(all[i].aggregate, "transfer") == 0) &&
                      all[i].kind != TLY_EVENT_SAGA_STEP;
        if (tly_projection_knows(all[i].type) != ledger)
            fail_msg("%s: the projector %s it", all[i].type, ledger ? "does not know" : "knows");
        if (ledger)
            assert_int_equal(tly_projection_max_version(all[i].type), tly_catalogue_latest_version(all[i].type));
    }
    assert_false(tly_projection_knows("SomethingElse"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_account_many_times),
        cmocka_unit_test(test_open_after_updates_asks_for_a_flush),
        cmocka_unit_test(test_invalid_events_are_refused_whole),
        cmocka_unit_test(test_dispatch_matches_catalogue),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
