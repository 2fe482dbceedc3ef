/* common/ledger/upcast.c: FundsDeposited v1 -> v2, and tallyctl's replay option parsing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/ledger/projection.h"
#include "replay/replay.h"

#include "tally/envelope.h"
#include "tally/ledger/upcast.h"

#include <string.h>

static void
make(tly_envelope_t *env, const char *type, int version, json_t *data)
{
    memset(env, 0, sizeof(*env));
    env->id = tly_uuid_v4();
    snprintf(env->type, sizeof(env->type), "%s", type);
    env->version = version;
    snprintf(env->aggregate_type, sizeof(env->aggregate_type), "account");
    env->occurred_at_us = 1700000000000000LL;
    env->data = data;
}

static void
test_latest(void **state)
{
    assert_int_equal(tly_event_latest_version("FundsDeposited"), 2);
    assert_int_equal(tly_event_latest_version("FundsWithdrawn"), 1);
    assert_int_equal(tly_event_latest_version("NoSuchEvent"), 1);
}

static void
test_deposit_v1_to_v2(void **state)
{
    char err[256];
    tly_envelope_t v1, out;
    make(&v1, "FundsDeposited", 1,
         json_pack("{s:I, s:s, s:I, s:n}", "amount", 5, "currency", "EUR", "balance_after", 5, "reference"));
    assert_int_equal(tly_upcast(&v1, 0, &out, err, sizeof(err)), 0);
    assert_int_equal(out.version, 2);
    assert_string_equal(json_string_value(json_object_get(out.data, "channel")), "api");
    assert_int_equal(json_integer_value(json_object_get(out.data, "balance_after")), 5);
    assert_memory_equal(&out.id, &v1.id, sizeof(v1.id));
    /* the input is untouched */
    assert_int_equal(v1.version, 1);
    assert_null(json_object_get(v1.data, "channel"));
    tly_envelope_clear(&out);
    /* to an explicit version; to the version it has: a copy */
    assert_int_equal(tly_upcast(&v1, 1, &out, err, sizeof(err)), 0);
    assert_int_equal(out.version, 1);
    assert_ptr_equal(out.data, v1.data);
    tly_envelope_clear(&out);
    tly_envelope_clear(&v1);
}

static void
test_v2_unchanged(void **state)
{
    char err[256];
    tly_envelope_t v2, out;
    make(&v2, "FundsDeposited", 2, json_pack("{s:I, s:s}", "amount", 5, "channel", "branch"));
    assert_int_equal(tly_upcast(&v2, 0, &out, err, sizeof(err)), 0);
    assert_int_equal(out.version, 2);
    assert_string_equal(json_string_value(json_object_get(out.data, "channel")), "branch");
    tly_envelope_clear(&out);
    tly_envelope_clear(&v2);
}

/* Both versions of the same deposit upcast to equal data: what makes a mixed log replay to the same rows. */
static void
test_mixed_equal(void **state)
{
    char err[256];
    tly_envelope_t v1, v2, a, b;
    make(&v1, "FundsDeposited", 1,
         json_pack("{s:I, s:s, s:I, s:n}", "amount", 5, "currency", "EUR", "balance_after", 5, "reference"));
    make(&v2, "FundsDeposited", 2,
         json_pack("{s:I, s:s, s:I, s:n, s:s}", "amount", 5, "currency", "EUR", "balance_after", 5, "reference", "channel", "api"));
    assert_int_equal(tly_upcast(&v1, 0, &a, err, sizeof(err)), 0);
    assert_int_equal(tly_upcast(&v2, 0, &b, err, sizeof(err)), 0);
    assert_true(json_equal(a.data, b.data));
    tly_envelope_clear(&a);
    tly_envelope_clear(&b);
    tly_envelope_clear(&v1);
    tly_envelope_clear(&v2);
}

static void
test_errors(void **state)
{
    char err[256];
    tly_envelope_t bad, out;
    make(&bad, "FundsDeposited", 1, json_pack("{s:i}", "channel", 3));
    assert_int_equal(tly_upcast(&bad, 2, &out, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "channel"));
    assert_null(out.data);
    tly_envelope_clear(&bad);
    make(&bad, "FundsWithdrawn", 1, json_object());
    assert_int_equal(tly_upcast(&bad, 2, &out, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "no upcaster"));
    tly_envelope_clear(&bad);
}

static void
test_replay_options(void **state)
{
    char err[256];
    unsigned mask;
    const char *tables[8];
    int n;
    int64_t us, ends[16];
    bool has_time;
    int nends;
    assert_int_equal(tly_ctl_models_parse(NULL, NULL, &mask, tables, &n, err, sizeof(err)), 0);
    /* accounts, ledger_entries, jobs, and transfers once projection.h has a model beyond those */
    bool transfers = ((unsigned)TLY_MODEL_ALL & ~(unsigned)(TLY_MODEL_ACCOUNTS | TLY_MODEL_LEDGER | TLY_MODEL_JOBS)) != 0;
    assert_int_equal(n, transfers ? 4 : 3);
    assert_int_equal(tly_ctl_models_parse(NULL, "ledger,accounts,ledger_entries", &mask, tables, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 2);
    assert_string_equal(tables[0], "ledger_entries");
    assert_int_equal(tly_ctl_models_parse(NULL, "balances", &mask, tables, &n, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "unknown read model"));
    assert_int_equal(tly_ctl_until_parse("2026-11-22T14:00:00Z", &us, &has_time, ends, 16, &nends, err, sizeof(err)), 0);
    assert_true(has_time);
    assert_int_equal(tly_ctl_until_parse("0:120,3:7", &us, &has_time, ends, 16, &nends, err, sizeof(err)), 0);
    assert_false(has_time);
    assert_int_equal(nends, 4);
    assert_int_equal(ends[0], 120);
    assert_int_equal(ends[1], -1);
    assert_int_equal(ends[3], 7);
    assert_int_equal(tly_ctl_until_parse("yesterday", &us, &has_time, ends, 16, &nends, err, sizeof(err)), -1);
    assert_int_equal(tly_ctl_until_parse("0:", &us, &has_time, ends, 16, &nends, err, sizeof(err)), -1);
    assert_true(tly_ctl_schema_name_ok("balances_1400"));
    assert_false(tly_ctl_schema_name_ok("public"));
    assert_false(tly_ctl_schema_name_ok("pg_temp"));
    assert_false(tly_ctl_schema_name_ok("Robert'); DROP"));
    assert_false(tly_ctl_schema_name_ok("1abc"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_latest),      cmocka_unit_test(test_deposit_v1_to_v2), cmocka_unit_test(test_v2_unchanged),
        cmocka_unit_test(test_mixed_equal), cmocka_unit_test(test_errors),           cmocka_unit_test(test_replay_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
