/* Strict JSON parsing of untrusted bodies. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/json.h"

#include <stdlib.h>
#include <string.h>

static tly_json_error_t
parse(const char *s, json_t **out)
{
    char detail[128];
    return tly_json_parse_strict(s, strlen(s), out, detail, sizeof(detail));
}

static void
test_accepts_valid(void **state)
{
    json_t *v = NULL;
    assert_int_equal(parse("{\"a\":1,\"b\":[1,2,{\"c\":\"é\"}]}", &v), TLY_JSON_OK);
    assert_int_equal(tly_json_depth(v), 3);
    assert_null(tly_json_str(v, "a"));
    json_decref(v);
}

static void
test_rejects_duplicates(void **state)
{
    json_t *v = NULL;
    assert_int_equal(parse("{\"a\":1,\"a\":2}", &v), TLY_JSON_DUPLICATE);
    assert_null(v);
}

static void
test_rejects_syntax_and_utf8(void **state)
{
    json_t *v = NULL;
    assert_int_equal(parse("{\"a\":", &v), TLY_JSON_SYNTAX);
    assert_int_equal(parse("{\"a\":1} x", &v), TLY_JSON_SYNTAX);
    assert_int_equal(parse("{\"a\":\"\xff\xfe\"}", &v), TLY_JSON_SYNTAX);
    assert_int_equal(parse("{\"a\":\"\\u0000\"}", &v), TLY_JSON_SYNTAX);
    assert_int_equal(parse("", &v), TLY_JSON_SYNTAX);
}

static void
test_depth_limit(void **state)
{
    char deep[200], ok[200];
    json_t *v = NULL;
    memset(deep, '[', 33);
    memset(deep + 33, ']', 33);
    deep[66] = '\0';
    memset(ok, '[', 32);
    memset(ok + 32, ']', 32);
    ok[64] = '\0';
    assert_int_equal(parse(deep, &v), TLY_JSON_TOO_DEEP);
    assert_int_equal(parse(ok, &v), TLY_JSON_OK);
    json_decref(v);
    /* brackets inside strings do not count */
    assert_int_equal(parse("{\"a\":\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"}", &v), TLY_JSON_OK);
    json_decref(v);
}

/* PostgreSQL's JSON text in the command API's style: no whitespace between tokens, strings untouched. */
static void
test_compact(void **state)
{
    const char *pg = "{\"id\" : \"a b\", \"q\" : \"x \\\" : y\", \"n\" : [1, \n 2], \"o\" : {}}";
    char out[128];
    size_t n = tly_json_compact(pg, strlen(pg), out);
    out[n] = '\0';
    assert_string_equal(out, "{\"id\":\"a b\",\"q\":\"x \\\" : y\",\"n\":[1,2],\"o\":{}}");
    json_t *a = json_loads(pg, 0, NULL), *b = json_loads(out, 0, NULL);
    assert_true(json_equal(a, b));
    json_decref(a);
    json_decref(b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepts_valid),
        cmocka_unit_test(test_rejects_duplicates),
        cmocka_unit_test(test_rejects_syntax_and_utf8),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_compact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
