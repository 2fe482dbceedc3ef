/*
 * The catalogue (common/ledger/catalogue.c) against schemas/events/ both
 * ways: one row per schema file and one schema file per row, with the same
 * aggregate, fields, field types, limits and required fields. Also its own
 * shape (sorted, versions from 1 up, each command's outcome and rejection),
 * the upcasters against its versions, and the field checks.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/ledger/catalogue.h"
#include "tally/ledger/upcast.h"

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef TLY_SCHEMAS_DIR
#define TLY_SCHEMAS_DIR "schemas/events"
#endif

#define UUID_PATTERN "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

static json_t *
load_schema(const char *file)
{
    char path[PATH_MAX];
    json_error_t jerr;
    snprintf(path, sizeof(path), "%s/%s", TLY_SCHEMAS_DIR, file);
    json_t *s = json_load_file(path, 0, &jerr);
    if (s == NULL)
        fail_msg("could not read %s: %s", path, jerr.text);
    return s;
}

static bool
schema_nullable(const json_t *prop)
{
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(prop, "type"), i, t)
    {
        if (strcmp(json_string_value(t), "null") == 0)
            return true;
    }
    return false;
}

/* True when every member of the schema's enum is a problem code. */
static bool
enum_of_codes(const json_t *e)
{
    size_t i;
    json_t *v;
    tly_problem_t p;
    json_array_foreach(e, i, v)
    {
        if (!json_is_string(v) || !tly_problem_parse(json_string_value(v), &p))
            return false;
    }
    return json_array_size(e) > 0;
}

/* The catalogue's type for a schema property, by the shape the schema files use. */
static tly_field_type_t
schema_field_type(const json_t *prop)
{
    const char *pattern = json_string_value(json_object_get(prop, "pattern"));
    json_t *e = json_object_get(prop, "enum"), *min = json_object_get(prop, "minimum");
    if (json_is_true(json_object_get(prop, "const")))
        return TLY_FIELD_TRUE;
    if (e != NULL)
        return enum_of_codes(e) ? TLY_FIELD_CODE : TLY_FIELD_WORD;
    if (pattern != NULL && strcmp(pattern, UUID_PATTERN) == 0)
        return TLY_FIELD_UUID;
    if (pattern != NULL && strcmp(pattern, "^[A-Z]{3}$") == 0)
        return TLY_FIELD_CURRENCY;
    if (pattern != NULL && strcmp(pattern, "^[a-z_]{1,64}$") == 0)
        return TLY_FIELD_CODE;
    if (pattern != NULL && strncmp(pattern, "^[0-9]{4}-", 10) == 0)
        return TLY_FIELD_TIMESTAMP;
    if (min != NULL)
        return json_integer_value(min) >= 1 ? TLY_FIELD_AMOUNT : TLY_FIELD_BALANCE;
    return TLY_FIELD_TEXT;
}

static bool
schema_requires(const json_t *data, const char *name)
{
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(data, "required"), i, r)
    {
        if (strcmp(json_string_value(r), name) == 0)
            return true;
    }
    return false;
}

static void
check_field(const char *file, const tly_field_spec_t *f, const json_t *prop, const json_t *data)
{
    tly_field_type_t t = schema_field_type(prop);
    if (f->type != t)
        fail_msg("%s: %s is of type %d in the catalogue, %d in the schema", file, f->name, (int)f->type, (int)t);
    if (f->required != schema_requires(data, f->name) || f->nullable != schema_nullable(prop))
        fail_msg("%s: %s differs in required or nullable", file, f->name);
    if (t == TLY_FIELD_TEXT) {
        json_t *max = json_object_get(prop, "maxLength"), *min = json_object_get(prop, "minLength");
        assert_int_equal(f->max_chars, max != NULL ? (size_t)json_integer_value(max) : 0);
        assert_int_equal(f->min_chars, min != NULL ? (size_t)json_integer_value(min) : 0);
    }
    if (t == TLY_FIELD_AMOUNT)
        assert_int_equal(json_integer_value(json_object_get(prop, "maximum")), TLY_AMOUNT_MAX - 1);
    if (t == TLY_FIELD_WORD) {
        json_t *e = json_object_get(prop, "enum");
        size_t n = 0;
        while (f->words[n] != NULL) {
            json_t *w = json_array_get(e, n);
            assert_non_null(w);
            assert_string_equal(json_string_value(w), f->words[n]);
            ++n;
        }
        assert_int_equal(n, json_array_size(e));
    }
}

/* One schema file against its row. */
static void
check_schema(const char *file)
{
    char type[128];
    int version;
    if (sscanf(file, "%127[^.].v%d.json", type, &version) != 2)
        fail_msg("%s: not named <Type>.v<N>.json", file);
    const tly_event_spec_t *spec = tly_catalogue_find(type, version);
    if (spec == NULL)
        fail_msg("%s: the catalogue has no %s v%d", file, type, version);
    json_t *schema = load_schema(file), *props = json_object_get(schema, "properties");
    json_t *data = json_object_get(props, "data"), *dprops = json_object_get(data, "properties");
    assert_string_equal(json_string_value(json_object_get(json_object_get(props, "aggregate_type"), "const")), spec->aggregate);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(props, "version"), "const")), version);
    assert_int_equal(json_object_size(dprops), spec->nfields);
    for (size_t i = 0; i < spec->nfields; ++i) {
        json_t *prop = json_object_get(dprops, spec->fields[i].name);
        if (prop == NULL)
            fail_msg("%s: the schema has no field %s", file, spec->fields[i].name);
        check_field(file, &spec->fields[i], prop, data);
    }
    json_decref(schema);
}

static void
test_matches_schemas(void **state)
{
    DIR *d = opendir(TLY_SCHEMAS_DIR);
    assert_non_null(d);
    size_t files = 0, n;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strstr(de->d_name, ".json") == NULL)
            continue;
        check_schema(de->d_name);
        ++files;
    }
    closedir(d);
    (void)tly_catalogue_all(&n);
    assert_int_equal(files, n); /* and every row has its file: the rows are unique (test_shape) */
}

static void
test_shape(void **state)
{
    size_t n;
    const tly_event_spec_t *all = tly_catalogue_all(&n);
    for (size_t i = 0; i < n; ++i) {
        int cmp = i == 0 ? -1 : strcmp(all[i - 1].type, all[i].type);
        if (cmp < 0)
            assert_int_equal(all[i].version, 1); /* a new type starts at v1 */
        else if (cmp == 0)
            assert_int_equal(all[i].version, all[i - 1].version + 1);
        else
            fail_msg("%s is out of order", all[i].type);
    }
    size_t ntypes;
    const char *const *types = tly_catalogue_types(&ntypes);
    for (size_t i = 1; i < ntypes; ++i)
        assert_true(strcmp(types[i - 1], types[i]) < 0);
    assert_int_equal(tly_catalogue_latest_version("FundsDeposited"), 2);
    assert_int_equal(tly_catalogue_find("FundsDeposited", 0)->version, 2);
    assert_null(tly_catalogue_find("FundsDeposited", 3));
    assert_int_equal(tly_catalogue_latest_version("Nothing"), 0);
}

/* Each request and step names an outcome and a rejection of the catalogue, whose codes cover its problems. */
static void
test_commands(void **state)
{
    size_t n;
    const tly_event_spec_t *all = tly_catalogue_all(&n);
    for (size_t i = 0; i < n; ++i) {
        const tly_event_spec_t *s = &all[i];
        if (s->kind != TLY_EVENT_REQUEST && s->kind != TLY_EVENT_SAGA_STEP) {
            assert_null(s->outcome);
            assert_int_equal(s->problems, 0);
            continue;
        }
        const tly_event_spec_t *ok = tly_catalogue_find(s->outcome, 0), *no = tly_catalogue_find(s->rejection, 0);
        assert_non_null(ok);
        assert_non_null(no);
        assert_int_equal(ok->kind, TLY_EVENT_OUTCOME);
        assert_int_equal(no->kind, TLY_EVENT_REJECTION);
        assert_string_equal(ok->aggregate, s->aggregate);
        assert_true(tly_catalogue_can_produce(s, TLY_PROBLEM_DEAD_LETTERED));
        /* where the rejection's schema lists its codes, each problem is one of them */
        char file[160];
        snprintf(file, sizeof(file), "%s.v%d.json", no->type, no->version);
        json_t *schema = load_schema(file);
        json_t *code = json_object_get(
            json_object_get(json_object_get(json_object_get(json_object_get(schema, "properties"), "data"), "properties"), "code"),
            "enum");
        for (int p = 0; code != NULL && p < TLY_PROBLEM__COUNT; ++p) {
            if (!tly_catalogue_can_produce(s, (tly_problem_t)p))
                continue;
            bool listed = false;
            for (size_t k = 0; k < json_array_size(code); ++k)
                listed |= strcmp(json_string_value(json_array_get(code, k)), tly_problem_code((tly_problem_t)p)) == 0;
            if (!listed)
                fail_msg("%s: %s is not in %s's codes", s->type, tly_problem_code((tly_problem_t)p), no->type);
        }
        json_decref(schema);
    }
}

/* Every version step of the catalogue has its upcaster, and no upcaster goes past the newest version. */
static void
test_upcasters(void **state)
{
    size_t n;
    const tly_event_spec_t *all = tly_catalogue_all(&n);
    for (size_t i = 0; i < n; ++i) {
        int latest = tly_catalogue_latest_version(all[i].type);
        assert_int_equal(tly_event_latest_version(all[i].type), latest);
        if (all[i].version < latest)
            assert_true(tly_upcast_has_step(all[i].type, all[i].version));
        else
            assert_false(tly_upcast_has_step(all[i].type, all[i].version));
    }
}

static void
test_field_checks(void **state)
{
    const tly_event_spec_t *dep = tly_catalogue_find("DepositRequested", 1);
    const tly_field_spec_t *ref = tly_catalogue_field(dep, "reference"), *amount = tly_catalogue_field(dep, "amount");
    char text[3 * 201 + 1];
    for (int i = 0; i < 201; ++i)
        memcpy(text + 3 * i, "\xe2\x82\xac", 3);
    text[3 * 200] = '\0';
    json_t *v = json_string(text);
    assert_true(tly_field_value_ok(ref, v)); /* 600 bytes, 200 characters */
    json_decref(v);
    text[3 * 200] = '\xe2';
    text[3 * 201] = '\0';
    v = json_string(text);
    assert_false(tly_field_value_ok(ref, v));
    json_decref(v);
    assert_true(tly_field_value_ok(ref, NULL)); /* optional */
    assert_false(tly_field_value_ok(amount, NULL));
    json_t *data = json_pack("{s:I, s:s}", "amount", (json_int_t)TLY_AMOUNT_MAX, "currency", "EUR");
    assert_ptr_equal(tly_catalogue_check(dep, data), amount);
    json_object_set_new(data, "amount", json_integer(TLY_AMOUNT_MAX - 1));
    assert_null(tly_catalogue_check(dep, data));
    json_object_set_new(data, "currency", json_string("QQQ")); /* three capitals, not ISO 4217 */
    assert_ptr_equal(tly_catalogue_check(dep, data), tly_catalogue_field(dep, "currency"));
    json_decref(data);
    const tly_field_spec_t *since = tly_catalogue_field(tly_catalogue_find("WebhookEndpointDisabled", 1), "failing_since");
    v = json_null();
    assert_true(tly_field_value_ok(since, v)); /* nullable */
    json_decref(v);
    assert_false(tly_field_value_ok(since, NULL)); /* but required */
}

static void
test_problem_codes(void **state)
{
    for (int p = 0; p < TLY_PROBLEM__COUNT; ++p) {
        tly_problem_t back;
        assert_true(tly_problem_parse(tly_problem_code((tly_problem_t)p), &back));
        assert_int_equal(back, p);
    }
    tly_problem_t p;
    assert_false(tly_problem_parse("rejected", &p));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_schemas), cmocka_unit_test(test_shape),        cmocka_unit_test(test_commands),
        cmocka_unit_test(test_upcasters),       cmocka_unit_test(test_field_checks), cmocka_unit_test(test_problem_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
