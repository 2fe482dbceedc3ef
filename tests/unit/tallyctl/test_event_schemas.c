/*
 * Every event Tally produces validates against schemas/events/<Type>.v<N>.json:
 * request events built by the command API's own code (commands.c), outcome
 * and rejection events built by the decider (decider.c), and FundsDeposited
 * v1 upcast to v2 (common/ledger/upcast.c), and WebhookEndpointDisabled as the
 * webhooks role builds it (webhook.c). Every schema file is exercised.
 *
 * The validator is a small one for the subset of JSON Schema the files use:
 * type (one or a list), const, enum, properties, required,
 * additionalProperties: false, minimum, maximum, minLength, maxLength
 * (characters), pattern (POSIX extended regex).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "commands.h"
#include "tally/ledger/decider.h"
#include "tally/ledger/saga.h"
#include "webhooks/webhook.h"

#include "tally/clock.h"
#include "tally/envelope.h"
#include "tally/ledger/upcast.h"

#include <dirent.h>
#include <limits.h>
#include <jansson.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef TLY_SCHEMAS_DIR
#define TLY_SCHEMAS_DIR "schemas/events"
#endif

/* --- the validator --------------------------------------------------------- */

static bool
type_is(const json_t *v, const char *t)
{
    if (strcmp(t, "object") == 0)
        return json_is_object(v);
    if (strcmp(t, "array") == 0)
        return json_is_array(v);
    if (strcmp(t, "string") == 0)
        return json_is_string(v);
    if (strcmp(t, "integer") == 0)
        return json_is_integer(v);
    if (strcmp(t, "number") == 0)
        return json_is_number(v);
    if (strcmp(t, "boolean") == 0)
        return json_is_boolean(v);
    if (strcmp(t, "null") == 0)
        return json_is_null(v);
    return false;
}

static size_t
utf8_len(const char *s)
{
    size_t n = 0;
    for (; *s != '\0'; ++s)
        n += ((unsigned char)*s & 0xc0) != 0x80;
    return n;
}

static const char *known_keywords[] = {"$schema", "$id",     "title",      "description", "type",
                                       "const",   "enum",    "properties", "required",    "additionalProperties",
                                       "minimum", "maximum", "minLength",  "maxLength",   "pattern"};

/* Returns true when `v` matches `schema`; else false with the path and reason in `why`. */
static bool
validate(const json_t *schema, const json_t *v, const char *path, char *why, size_t cap)
{
    const char *key;
    json_t *kw;
    json_object_foreach((json_t *)schema, key, kw)
    {
        bool known = false;
        for (size_t i = 0; i < sizeof(known_keywords) / sizeof(known_keywords[0]); ++i)
            known = known || strcmp(key, known_keywords[i]) == 0;
        if (!known) {
            snprintf(why, cap, "%s: schema keyword %s is not supported by this validator", path, key);
            return false;
        }
    }
    json_t *type = json_object_get(schema, "type");
    if (json_is_string(type) && !type_is(v, json_string_value(type))) {
        snprintf(why, cap, "%s: not of type %s", path, json_string_value(type));
        return false;
    }
    if (json_is_array(type)) {
        bool any = false;
        size_t i;
        json_t *t;
        json_array_foreach(type, i, t) any = any || type_is(v, json_string_value(t));
        if (!any) {
            snprintf(why, cap, "%s: none of the allowed types", path);
            return false;
        }
    }
    json_t *c = json_object_get(schema, "const");
    if (c != NULL && !json_equal(c, (json_t *)v)) {
        snprintf(why, cap, "%s: differs from the const", path);
        return false;
    }
    json_t *e = json_object_get(schema, "enum");
    if (e != NULL) {
        bool any = false;
        size_t i;
        json_t *x;
        json_array_foreach(e, i, x) any = any || json_equal(x, (json_t *)v);
        if (!any) {
            snprintf(why, cap, "%s: not one of the enum", path);
            return false;
        }
    }
    if (json_is_integer(v)) {
        json_t *mn = json_object_get(schema, "minimum"), *mx = json_object_get(schema, "maximum");
        if ((mn != NULL && json_integer_value(v) < json_integer_value(mn)) ||
            (mx != NULL && json_integer_value(v) > json_integer_value(mx))) {
            snprintf(why, cap, "%s: out of range", path);
            return false;
        }
    }
    if (json_is_string(v)) {
        json_t *mn = json_object_get(schema, "minLength"), *mx = json_object_get(schema, "maxLength");
        size_t n = utf8_len(json_string_value(v));
        if ((mn != NULL && (json_int_t)n < json_integer_value(mn)) || (mx != NULL && (json_int_t)n > json_integer_value(mx))) {
            snprintf(why, cap, "%s: length %zu out of range", path, n);
            return false;
        }
        json_t *pat = json_object_get(schema, "pattern");
        if (pat != NULL) {
            regex_t re;
            assert_int_equal(regcomp(&re, json_string_value(pat), REG_EXTENDED | REG_NOSUB), 0);
            int m = regexec(&re, json_string_value(v), 0, NULL, 0);
            regfree(&re);
            if (m != 0) {
                snprintf(why, cap, "%s: \"%s\" does not match %s", path, json_string_value(v), json_string_value(pat));
                return false;
            }
        }
    }
    if (json_is_object(v)) {
        json_t *props = json_object_get(schema, "properties"), *req = json_object_get(schema, "required");
        size_t i;
        json_t *r;
        json_array_foreach(req, i, r)
        {
            if (json_object_get(v, json_string_value(r)) == NULL) {
                snprintf(why, cap, "%s: %s is required", path, json_string_value(r));
                return false;
            }
        }
        json_t *val;
        json_object_foreach((json_t *)v, key, val)
        {
            char sub[256];
            snprintf(sub, sizeof(sub), "%s.%s", path, key);
            json_t *ps = json_object_get(props, key);
            if (ps == NULL) {
                if (json_is_false(json_object_get(schema, "additionalProperties"))) {
                    snprintf(why, cap, "%s: not allowed", sub);
                    return false;
                }
                continue;
            }
            if (!validate(ps, val, sub, why, cap))
                return false;
        }
    }
    return true;
}

/* --- schema files ------------------------------------------------------------ */

#define MAX_SCHEMAS 64
static char schema_names[MAX_SCHEMAS][NAME_MAX + 1];
static bool schema_used[MAX_SCHEMAS];
static int nschemas;

static int
load_names(void **state)
{
    DIR *d = opendir(TLY_SCHEMAS_DIR);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);
        if (n > 5 && strcmp(de->d_name + n - 5, ".json") == 0 && nschemas < MAX_SCHEMAS)
            snprintf(schema_names[nschemas++], sizeof(schema_names[0]), "%s", de->d_name);
    }
    closedir(d);
    return 0;
}

static json_t *
load_schema(const char *type, int version)
{
    char name[128], path[512];
    json_error_t jerr;
    snprintf(name, sizeof(name), "%s.v%d.json", type, version);
    snprintf(path, sizeof(path), "%s/%s", TLY_SCHEMAS_DIR, name);
    json_t *s = json_load_file(path, 0, &jerr);
    if (s == NULL)
        fail_msg("no schema %s (%s)", path, jerr.text);
    for (int i = 0; i < nschemas; ++i)
        if (strcmp(schema_names[i], name) == 0)
            schema_used[i] = true;
    return s;
}

/* Serialises `env` as it goes on the wire and validates it against its schema. */
static void
assert_valid(const tly_envelope_t *env)
{
    char why[512];
    char *wire = tly_envelope_to_json(env);
    json_error_t jerr;
    json_t *v = json_loads(wire, 0, &jerr);
    assert_non_null(v);
    json_t *schema = load_schema(env->type, env->version);
    if (!validate(schema, v, "$", why, sizeof(why)))
        fail_msg("%s v%d does not validate: %s\n  %s", env->type, env->version, why, wire);
    json_decref(schema);
    json_decref(v);
    free(wire);
}

static bool
is_valid_as(const tly_envelope_t *env, const char *type, int version)
{
    char why[512];
    char *wire = tly_envelope_to_json(env);
    json_error_t jerr;
    json_t *v = json_loads(wire, 0, &jerr);
    json_t *schema = load_schema(type, version);
    bool ok = validate(schema, v, "$", why, sizeof(why));
    json_decref(schema);
    json_decref(v);
    free(wire);
    return ok;
}

/* --- request events, as the command API builds them (op.c) ------------------ */

static tly_uuid_t account_id, tenant_id;

static void
request_event(tly_command_kind_t kind, const char *body, tly_envelope_t *env)
{
    json_error_t jerr;
    json_t *b = json_loads(body, 0, &jerr), *errors = json_array();
    tly_command_t cmd;
    assert_non_null(b);
    assert_true(tly_command_validate(kind, b, &cmd, errors));
    cmd.account_id = account_id;
    const tly_command_spec_t *spec = tly_command_spec(kind);
    memset(env, 0, sizeof(*env));
    env->id = tly_uuid_v4();
    snprintf(env->type, sizeof(env->type), "%s", spec->request_event);
    env->version = 1;
    snprintf(env->aggregate_type, sizeof(env->aggregate_type), "%s", spec->aggregate_type);
    env->aggregate_id = account_id;
    env->tenant_id = tenant_id;
    env->job_id = tly_uuid_v4();
    env->correlation_id = env->id;
    env->occurred_at_us = tly_clock_now_us();
    env->data = tly_command_event_data(&cmd);
    json_decref(b);
    json_decref(errors);
}

static void
test_request_events(void **state)
{
    static const struct {
        tly_command_kind_t kind;
        const char *body;
    } cases[] = {
        {TLY_CMD_OPEN_ACCOUNT, "{\"currency\":\"EUR\",\"label\":\"savings \\u00e9\"}"},
        {TLY_CMD_DEPOSIT, "{\"amount\":1500,\"currency\":\"EUR\"}"},
        {TLY_CMD_DEPOSIT, "{\"amount\":9007199254740991,\"currency\":\"USD\",\"reference\":\"invoice 7\"}"},
        {TLY_CMD_WITHDRAW, "{\"amount\":1,\"currency\":\"EUR\",\"reference\":\"\"}"},
        {TLY_CMD_FREEZE, "{}"},
        {TLY_CMD_UNFREEZE, "{}"},
        {TLY_CMD_CLOSE, "{}"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
        tly_envelope_t env;
        request_event(cases[i].kind, cases[i].body, &env);
        assert_valid(&env);
        tly_envelope_clear(&env);
    }
}

/* --- outcome events, as the decider builds them ------------------------------ */

static void
decide(const tly_account_state_t *s, tly_command_kind_t kind, const char *body, const char *expect_type)
{
    tly_envelope_t req;
    tly_decision_t d;
    request_event(kind, body, &req);
    assert_int_equal(tly_decider_decide_at(s, &req, tly_clock_now_us(), &d), 0);
    assert_true(d.nevents >= 1);
    assert_string_equal(d.events[0].type, expect_type);
    for (int i = 0; i < d.nevents; ++i)
        assert_valid(&d.events[i]);
    tly_decision_clear(&d);
    /* the rejection a parked request gets */
    assert_int_equal(tly_decider_reject(&req, TLY_CODE_DEAD_LETTERED, "could not apply: a long\nmulti-line error", 1, &d), 0);
    assert_valid(&d.events[0]);
    tly_decision_clear(&d);
    tly_envelope_clear(&req);
}

static void
test_outcome_events(void **state)
{
    tly_account_state_t open = {.exists = true,
                                .id = account_id,
                                .tenant_id = tenant_id,
                                .currency = "EUR",
                                .status = TLY_ACCOUNT_OPEN,
                                .balance = 1000,
                                .version = 3};
    tly_account_state_t frozen = open, empty = open;
    frozen.status = TLY_ACCOUNT_FROZEN;
    empty.balance = 0;
    decide(NULL, TLY_CMD_OPEN_ACCOUNT, "{\"currency\":\"EUR\",\"label\":\"x\"}", "AccountOpened");
    decide(&open, TLY_CMD_OPEN_ACCOUNT, "{\"currency\":\"EUR\",\"label\":\"x\"}", "AccountOpenRejected");
    decide(&open, TLY_CMD_DEPOSIT, "{\"amount\":5,\"currency\":\"EUR\",\"reference\":\"r\"}", "FundsDeposited");
    decide(&open, TLY_CMD_DEPOSIT, "{\"amount\":5,\"currency\":\"EUR\"}", "FundsDeposited");
    decide(&open, TLY_CMD_DEPOSIT, "{\"amount\":5,\"currency\":\"USD\"}", "DepositRejected");
    decide(&open, TLY_CMD_WITHDRAW, "{\"amount\":1000,\"currency\":\"EUR\"}", "FundsWithdrawn");
    decide(&open, TLY_CMD_WITHDRAW, "{\"amount\":1001,\"currency\":\"EUR\"}", "WithdrawalRejected");
    decide(&open, TLY_CMD_FREEZE, "{}", "AccountFrozen");
    decide(&frozen, TLY_CMD_FREEZE, "{}", "AccountFreezeRejected");
    decide(&frozen, TLY_CMD_UNFREEZE, "{}", "AccountUnfrozen");
    decide(&open, TLY_CMD_UNFREEZE, "{}", "AccountUnfreezeRejected");
    decide(&empty, TLY_CMD_CLOSE, "{}", "AccountClosed");
    decide(&open, TLY_CMD_CLOSE, "{}", "AccountCloseRejected");
}

/* --- transfer events, as the saga and the decider build them ------------------ */

/* Feeds `ev` to the saga (state `s`), validates what it sends, returns its first event. */
static void
saga_step(tly_saga_state_t *s, const tly_envelope_t *ev, const char *expect_type, tly_envelope_t *out)
{
    static const tly_saga_config_t cfg = {.step_timeout_us = 5000000, .stuck_after_us = 60000000};
    tly_saga_step_t step;
    assert_int_equal(tly_saga_on_event(s->exists ? s : NULL, ev, &cfg, tly_clock_now_us(), &step), 0);
    assert_true(step.nevents >= 1);
    assert_string_equal(step.events[0].type, expect_type);
    for (int i = 0; i < step.nevents; ++i)
        assert_valid(&step.events[i]);
    *s = step.next;
    *out = step.events[0];
    out->data = json_incref(step.events[0].data);
    tly_saga_step_clear(&step);
}

/* The decider decides a saga command against `account`; validates and returns the outcome. */
static void
decide_step(const tly_account_state_t *account, const tly_envelope_t *cmd, const char *expect_type, tly_envelope_t *out)
{
    tly_decision_t d;
    assert_int_equal(tly_decider_decide_at(account, cmd, tly_clock_now_us(), &d), 0);
    assert_true(d.nevents >= 1);
    assert_string_equal(d.events[0].type, expect_type);
    assert_valid(&d.events[0]);
    *out = d.events[0];
    out->data = json_incref(d.events[0].data);
    tly_decision_clear(&d);
}

/* One transfer from `from` to `to` through the saga until `final` (the decider deciding each step). */
static void
run_transfer(const tly_account_state_t *from, const tly_account_state_t *to, const char *const *types, const char *final)
{
    char body[256], to_s[TLY_UUID_STR_LEN + 1];
    tly_envelope_t req, cmd, outcome, next;
    tly_saga_state_t saga;
    memset(&saga, 0, sizeof(saga));
    tly_uuid_format(&to->id, to_s);
    snprintf(body, sizeof(body),
             "{\"from_account\":\"6b1f2e51-8c0d-4a3e-9f27-440b5da193c8\",\"to_account\":\"%s\",\"amount\":300,"
             "\"currency\":\"EUR\",\"reference\":\"rent\"}",
             to_s);
    request_event(TLY_CMD_TRANSFER, body, &req);
    assert_valid(&req);
    saga_step(&saga, &req, "TransferDebitRequested", &cmd);
    for (int i = 0; types[i] != NULL; i += 2) {
        /* types: outcome of the step in flight, then what the saga sends next */
        const tly_account_state_t *who = memcmp(&cmd.aggregate_id, &to->id, sizeof(to->id)) == 0 ? to : from;
        decide_step(who, &cmd, types[i], &outcome);
        saga_step(&saga, &outcome, types[i + 1], &next);
        tly_envelope_clear(&outcome);
        tly_envelope_clear(&cmd);
        cmd = next;
    }
    assert_string_equal(cmd.type, final);
    tly_envelope_clear(&cmd);
    tly_envelope_clear(&req);
}

static void
test_transfer_events(void **state)
{
    tly_account_state_t from = {.exists = true,
                                .id = account_id,
                                .tenant_id = tenant_id,
                                .currency = "EUR",
                                .status = TLY_ACCOUNT_OPEN,
                                .balance = 1000,
                                .version = 3};
    tly_account_state_t to = from, frozen_to, poor = from;
    to.id = tly_uuid_v4();
    frozen_to = to;
    frozen_to.status = TLY_ACCOUNT_FROZEN;
    poor.balance = 10;
    static const char *completed[] = {"AccountDebited", "TransferCreditRequested", "AccountCredited", "TransferCompleted", NULL};
    static const char *rejected[] = {"AccountDebitRejected", "TransferRejected", NULL};
    static const char *compensated[] = {"AccountDebited",
                                        "TransferCreditRequested",
                                        "AccountCreditRejected",
                                        "DebitReversalRequested",
                                        "DebitReversed",
                                        "TransferFailed",
                                        NULL};
    run_transfer(&from, &to, completed, "TransferCompleted");
    run_transfer(&poor, &to, rejected, "TransferRejected");
    run_transfer(&from, &frozen_to, compensated, "TransferFailed");

    /* a reversal is refused only when the source account is gone */
    tly_envelope_t req, cmd, gone;
    tly_saga_state_t saga;
    memset(&saga, 0, sizeof(saga));
    request_event(TLY_CMD_TRANSFER,
                  "{\"from_account\":\"6b1f2e51-8c0d-4a3e-9f27-440b5da193c8\",\"to_account\":"
                  "\"7b1f2e51-8c0d-4a3e-9f27-440b5da193c8\",\"amount\":5,\"currency\":\"EUR\"}",
                  &req);
    saga_step(&saga, &req, "TransferDebitRequested", &cmd);
    snprintf(cmd.type, sizeof(cmd.type), "DebitReversalRequested");
    decide_step(NULL, &cmd, "DebitReversalRejected", &gone);
    tly_envelope_clear(&gone);
    tly_envelope_clear(&cmd);
    tly_envelope_clear(&req);
}

/* --- versions ------------------------------------------------------------------ */

static void
test_deposit_v2(void **state)
{
    tly_account_state_t open = {.exists = true,
                                .id = account_id,
                                .tenant_id = tenant_id,
                                .currency = "EUR",
                                .status = TLY_ACCOUNT_OPEN,
                                .balance = 0,
                                .version = 1};
    tly_envelope_t req, up;
    tly_decision_t d;
    char err[256];
    request_event(TLY_CMD_DEPOSIT, "{\"amount\":5,\"currency\":\"EUR\"}", &req);
    assert_int_equal(tly_decider_decide_at(&open, &req, 1, &d), 0);
    assert_int_equal(tly_upcast(&d.events[0], 2, &up, err, sizeof(err)), 0);
    assert_int_equal(up.version, 2);
    assert_valid(&up);
    /* each version's schema refuses the other's shape */
    if (d.events[0].version == 1)
        assert_false(is_valid_as(&d.events[0], "FundsDeposited", 2));
    assert_false(is_valid_as(&up, "FundsDeposited", 1));
    tly_envelope_clear(&up);
    tly_decision_clear(&d);
    tly_envelope_clear(&req);
}

/* --- the webhooks role's event ------------------------------------------------ */

static void
test_webhook_events(void **state)
{
    tly_uuid_t ep = tly_uuid_v4(), tenant = tly_uuid_v4();
    tly_envelope_t ev;
    tly_webhook_disabled_event(&ev, &ep, &tenant, 4, "https://hooks.example.com/tally", "failing", tly_clock_now_us() - 1000,
                               tly_clock_now_us());
    assert_valid(&ev);
    tly_envelope_clear(&ev);
    tly_webhook_disabled_event(&ev, &ep, &tenant, 5, "https://hooks.example.com/tally", "gone", 0, tly_clock_now_us());
    assert_valid(&ev);
    tly_envelope_clear(&ev);
}

/* The validator itself refuses what it should. */
static void
test_validator(void **state)
{
    char why[256];
    json_error_t jerr;
    json_t *schema = load_schema("DepositRejected", 1);
    const char *bad[] = {
        "{}",
        "{\"id\":\"x\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
        json_t *v = json_loads(bad[i], 0, &jerr);
        assert_false(validate(schema, v, "$", why, sizeof(why)));
        json_decref(v);
    }
    tly_envelope_t req;
    tly_decision_t d;
    request_event(TLY_CMD_DEPOSIT, "{\"amount\":5,\"currency\":\"EUR\"}", &req);
    assert_int_equal(tly_decider_reject(&req, "no_such_code", "x", 1, &d), 0);
    assert_false(is_valid_as(&d.events[0], "DepositRejected", 1)); /* code outside the enum */
    tly_decision_clear(&d);
    json_object_set_new(req.data, "amount", json_integer(0));
    assert_false(is_valid_as(&req, "DepositRequested", 1)); /* below minimum */
    json_object_set_new(req.data, "amount", json_integer(5));
    json_object_set_new(req.data, "currency", json_string("eur"));
    assert_false(is_valid_as(&req, "DepositRequested", 1)); /* pattern */
    json_object_set_new(req.data, "currency", json_string("EUR"));
    json_object_set_new(req.data, "extra", json_true());
    assert_false(is_valid_as(&req, "DepositRequested", 1)); /* additionalProperties */
    tly_envelope_clear(&req);
    json_decref(schema);
}

/* Runs last: every file in schemas/events/ was used by a test above. */
static void
test_every_schema_used(void **state)
{
    assert_true(nschemas >= 19);
    for (int i = 0; i < nschemas; ++i)
        if (!schema_used[i])
            fail_msg("schema %s is not exercised by any produced event", schema_names[i]);
}

int
main(void)
{
    assert_true(tly_uuid_parse("0b9c6f7e-1d2a-4c3b-9e8f-7a6b5c4d3e2f", &account_id));
    assert_true(tly_uuid_parse("5d1e2c3b-4a59-4f68-8e7d-6c5b4a392817", &tenant_id));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_events),    cmocka_unit_test(test_outcome_events), cmocka_unit_test(test_transfer_events),
        cmocka_unit_test(test_deposit_v2),        cmocka_unit_test(test_validator),      cmocka_unit_test(test_webhook_events),
        cmocka_unit_test(test_every_schema_used),
    };
    return cmocka_run_group_tests(tests, load_names, NULL);
}
