/* Stateless validation of every command. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "commands.h"
#include "tally/ledger/catalogue.h"

#include <string.h>

static json_t *
validate(tly_command_kind_t kind, const char *body, bool *ok, tly_command_t *cmd)
{
    json_error_t jerr;
    json_t *v = json_loads(body, 0, &jerr);
    json_t *errors = json_array();
    assert_non_null(v);
    memset(cmd, 0, sizeof(*cmd));
    *ok = tly_command_validate(kind, v, cmd, errors);
    json_decref(v); /* cmd's borrowed strings are not used after this */
    return errors;
}

static bool
has_error(json_t *errors, const char *field)
{
    size_t i;
    json_t *e;
    json_array_foreach(errors, i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "field")), field) == 0)
            return true;
    }
    return false;
}

static void
test_open_account(void **state)
{
    bool ok;
    tly_command_t cmd;
    json_t *errors = validate(TLY_CMD_OPEN_ACCOUNT, "{\"currency\":\"EUR\",\"label\":\"savings\"}", &ok, &cmd);
    assert_true(ok);
    assert_string_equal(cmd.currency, "EUR");
    json_decref(errors);
    errors = validate(TLY_CMD_OPEN_ACCOUNT, "{\"currency\":\"XXX\",\"extra\":1}", &ok, &cmd);
    assert_false(ok);
    assert_true(has_error(errors, "currency"));
    assert_true(has_error(errors, "label"));
    assert_true(has_error(errors, "extra"));
    json_decref(errors);
}

static void
test_label_length_in_characters(void **state)
{
    char body[1200];
    bool ok;
    tly_command_t cmd;
    /* 200 two-byte characters are fine, 201 are not */
    strcpy(body, "{\"currency\":\"EUR\",\"label\":\"");
    for (int i = 0; i < 200; ++i)
        strcat(body, "é");
    strcat(body, "\"}");
    json_t *errors = validate(TLY_CMD_OPEN_ACCOUNT, body, &ok, &cmd);
    assert_true(ok);
    json_decref(errors);
    body[strlen(body) - 2] = '\0';
    strcat(body, "éé\"}");
    errors = validate(TLY_CMD_OPEN_ACCOUNT, body, &ok, &cmd);
    assert_false(ok);
    assert_true(has_error(errors, "label"));
    json_decref(errors);
}

static void
test_amounts(void **state)
{
    bool ok;
    tly_command_t cmd;
    const char *bad[] = {"{\"amount\":0,\"currency\":\"EUR\"}",
                         "{\"amount\":-5,\"currency\":\"EUR\"}",
                         "{\"amount\":1.5,\"currency\":\"EUR\"}",
                         "{\"amount\":\"10\",\"currency\":\"EUR\"}",
                         "{\"amount\":9007199254740992,\"currency\":\"EUR\"}",
                         "{\"currency\":\"EUR\"}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
        json_t *errors = validate(TLY_CMD_DEPOSIT, bad[i], &ok, &cmd);
        assert_false(ok);
        assert_true(has_error(errors, "amount"));
        json_decref(errors);
    }
    json_t *errors =
        validate(TLY_CMD_DEPOSIT, "{\"amount\":9007199254740991,\"currency\":\"JPY\",\"reference\":\"r1\"}", &ok, &cmd);
    assert_true(ok);
    assert_int_equal(cmd.amount, 9007199254740991LL);
    json_decref(errors);
}

static void
test_transfer(void **state)
{
    bool ok;
    tly_command_t cmd;
    json_t *errors = validate(TLY_CMD_TRANSFER,
                              "{\"from_account\":\"6b1f2e51-8c0d-4a3e-9f27-440b5da193c8\",\"to_account\":"
                              "\"6b1f2e51-8c0d-4a3e-9f27-440b5da193c8\",\"amount\":5,\"currency\":\"EUR\"}",
                              &ok, &cmd);
    assert_false(ok);
    assert_true(has_error(errors, "to_account"));
    json_decref(errors);
    errors = validate(TLY_CMD_TRANSFER, "{\"from_account\":\"nope\",\"amount\":5,\"currency\":\"EUR\"}", &ok, &cmd);
    assert_false(ok);
    assert_true(has_error(errors, "from_account"));
    assert_true(has_error(errors, "to_account"));
    json_decref(errors);
}

static void
test_routes(void **state)
{
    tly_command_kind_t k;
    assert_true(tly_command_route("accounts", NULL, &k));
    assert_int_equal(k, TLY_CMD_OPEN_ACCOUNT);
    assert_true(tly_command_route("accounts", "withdrawals", &k));
    assert_int_equal(k, TLY_CMD_WITHDRAW);
    assert_true(tly_command_route("transfers", NULL, &k));
    assert_int_equal(k, TLY_CMD_TRANSFER);
    assert_true(tly_command_spec(TLY_CMD_TRANSFER)->needs_idempotency_key);
    assert_string_equal(tly_command_spec(TLY_CMD_TRANSFER)->aggregate_type, "transfer");
    assert_false(tly_command_route("transfers", "deposits", &k));
    assert_false(tly_command_route("accounts", "explode", &k));
    assert_true(tly_command_spec(TLY_CMD_DEPOSIT)->needs_idempotency_key);
    assert_false(tly_command_spec(TLY_CMD_OPEN_ACCOUNT)->needs_idempotency_key);
}

static void
test_event_data(void **state)
{
    bool ok;
    tly_command_t cmd;
    json_error_t jerr;
    json_t *body = json_loads("{\"amount\":250,\"currency\":\"USD\",\"reference\":\"inv-7\"}", 0, &jerr);
    json_t *errors = json_array();
    memset(&cmd, 0, sizeof(cmd));
    cmd.kind = TLY_CMD_DEPOSIT;
    ok = tly_command_validate(TLY_CMD_DEPOSIT, body, &cmd, errors);
    assert_true(ok);
    json_t *data = tly_command_event_data(&cmd);
    assert_int_equal(json_integer_value(json_object_get(data, "amount")), 250);
    assert_string_equal(json_string_value(json_object_get(data, "reference")), "inv-7");
    assert_null(json_object_get(data, "label"));
    json_decref(data);
    json_decref(errors);
    json_decref(body);
}

/* Each command writes a request of the catalogue, of the command's aggregate, whose fields the command can hold. */
static void
test_specs_match_catalogue(void **state)
{
    static const char *const holdable[] = {"from_account", "to_account", "amount", "currency", "label", "reference"};
    for (int k = 0; k < TLY_CMD__COUNT; ++k) {
        const tly_command_spec_t *c = tly_command_spec((tly_command_kind_t)k);
        const tly_event_spec_t *e = tly_catalogue_find(c->request_event, 0);
        assert_non_null(e);
        assert_int_equal(e->kind, TLY_EVENT_REQUEST);
        assert_string_equal(e->aggregate, c->aggregate_type);
        for (size_t f = 0; f < e->nfields; ++f) {
            bool held = false;
            for (size_t h = 0; h < sizeof(holdable) / sizeof(holdable[0]); ++h)
                held |= strcmp(holdable[h], e->fields[f].name) == 0;
            if (!held)
                fail_msg("%s: tly_command_t has no place for %s", c->request_event, e->fields[f].name);
        }
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_account),
        cmocka_unit_test(test_label_length_in_characters),
        cmocka_unit_test(test_amounts),
        cmocka_unit_test(test_transfer),
        cmocka_unit_test(test_routes),
        cmocka_unit_test(test_event_data),
        cmocka_unit_test(test_specs_match_catalogue),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
