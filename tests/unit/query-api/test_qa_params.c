/* Query strings, list filters, If-None-Match, Prefer and Accept-Encoding. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "qa_params.h"

#include <string.h>

static int
split(const char *q, qa_pair_t *pairs, char *buf, size_t cap)
{
    return qa_query_split(q, strlen(q), pairs, QA_MAX_PARAMS, buf, cap);
}

static void
test_split(void **state)
{
    qa_pair_t p[QA_MAX_PARAMS];
    char buf[256];
    assert_int_equal(split("", p, buf, sizeof(buf)), 0);
    assert_int_equal(split("a=1&&b=%41%2b+&c", p, buf, sizeof(buf)), 3);
    assert_string_equal(p[0].name, "a");
    assert_string_equal(p[0].value, "1");
    assert_string_equal(p[1].value, "A++");
    assert_string_equal(p[2].name, "c");
    assert_string_equal(p[2].value, "");
    assert_int_equal(split("a=%4", p, buf, sizeof(buf)), -1);
    assert_int_equal(split("a=%zz", p, buf, sizeof(buf)), -1);
    assert_int_equal(split("a=%00", p, buf, sizeof(buf)), -1);
    assert_int_equal(split("a=1234567890", p, buf, 8), -1);
    assert_int_equal(split("a&a&a&a&a&a&a&a&a&a&a&a&a&a&a&a&a", p, buf, sizeof(buf)), -1);
}

static bool
parse(qa_list_t list, const char *q, qa_list_query_t *out, json_t **errors)
{
    static char buf[1024];
    qa_pair_t p[QA_MAX_PARAMS];
    int n = split(q, p, buf, sizeof(buf));
    assert_true(n >= 0);
    *errors = json_array();
    return qa_list_query_parse(list, p, (size_t)n, out, *errors);
}

static const char *
error_field(json_t *errors, size_t i)
{
    return json_string_value(json_object_get(json_array_get(errors, i), "field"));
}

static void
test_accounts_filters(void **state)
{
    qa_list_query_t q;
    json_t *e;
    assert_true(parse(QA_LIST_ACCOUNTS, "", &q, &e));
    assert_int_equal(q.limit, 20);
    json_decref(e);
    assert_true(
        parse(QA_LIST_ACCOUNTS,
              "limit=100&status=frozen&currency=EUR&created_after=2026-01-01T00:00:00Z&created_before=2026-01-01T01:00:00%2B01:00",
              &q, &e));
    assert_int_equal(q.limit, 100);
    assert_string_equal(q.status, "frozen");
    assert_string_equal(q.currency, "EUR");
    assert_true(q.has_after && q.has_before);
    assert_int_equal(q.after_us, q.before_us); /* same instant, other zone */
    json_decref(e);
    assert_false(parse(QA_LIST_ACCOUNTS, "limit=0&status=gone&currency=EURO&created_after=yesterday&kind=deposit&limit=5", &q, &e));
    assert_int_equal(json_array_size(e), 6);
    assert_string_equal(error_field(e, 0), "limit");
    assert_string_equal(error_field(e, 4), "kind");  /* entries only */
    assert_string_equal(error_field(e, 5), "limit"); /* repeated */
    json_decref(e);
    const char *bad_limits[] = {"limit=", "limit=101", "limit=-1", "limit=1.5", "limit=0020", "limit=abc"};
    for (size_t i = 0; i < sizeof(bad_limits) / sizeof(bad_limits[0]); ++i) {
        assert_false(parse(QA_LIST_ACCOUNTS, bad_limits[i], &q, &e));
        json_decref(e);
    }
}

static void
test_entries_filters(void **state)
{
    qa_list_query_t q;
    json_t *e;
    assert_true(parse(QA_LIST_ENTRIES, "kind=transfer_debit&after=2026-01-01T00:00:00.5Z&limit=1", &q, &e));
    assert_string_equal(q.kind, "transfer_debit");
    assert_true(q.has_after);
    json_decref(e);
    assert_false(parse(QA_LIST_ENTRIES, "kind=Deposit&status=open&created_after=2026-01-01T00:00:00Z", &q, &e));
    assert_int_equal(json_array_size(e), 3);
    json_decref(e);
}

static void
test_canonical_and_next(void **state)
{
    qa_list_query_t a, b;
    json_t *e;
    char ca[512], cb[512], next[512];
    assert_true(parse(QA_LIST_ACCOUNTS, "status=open&created_after=2026-01-01T01:00:00%2B01:00&limit=5", &a, &e));
    json_decref(e);
    assert_true(parse(QA_LIST_ACCOUNTS, "created_after=2026-01-01T00:00:00.000Z&status=open&limit=7&cursor=x", &b, &e));
    json_decref(e);
    qa_list_query_canonical(&a, "t/", ca, sizeof(ca));
    qa_list_query_canonical(&b, "t/", cb, sizeof(cb));
    assert_string_equal(ca, cb); /* limit and cursor are not filters; times are instants */
    qa_list_query_canonical(&a, "u/", cb, sizeof(cb));
    assert_string_not_equal(ca, cb);
    qa_list_query_next(&a, "CUR-_", next, sizeof(next));
    assert_string_equal(next, "status=open&created_after=2026-01-01T00:00:00.000000Z&limit=5&cursor=CUR-_");
}

/* entries?as_of=: an instant (any zone), bound into the cursor's filters, carried to the next page; accounts have none */
static void
test_entries_as_of(void **state)
{
    qa_list_query_t a, b, c;
    json_t *e;
    char ca[512], cb[512], next[512];
    assert_true(parse(QA_LIST_ENTRIES, "as_of=2026-01-01T01:00:00%2B01:00", &a, &e));
    json_decref(e);
    assert_true(a.has_as_of);
    assert_true(parse(QA_LIST_ENTRIES, "as_of=2026-01-01T00:00:00Z&limit=3", &b, &e));
    json_decref(e);
    assert_true(parse(QA_LIST_ENTRIES, "limit=3", &c, &e));
    json_decref(e);
    qa_list_query_canonical(&a, "t/x", ca, sizeof(ca));
    qa_list_query_canonical(&b, "t/x", cb, sizeof(cb));
    assert_string_equal(ca, cb);
    qa_list_query_canonical(&c, "t/x", cb, sizeof(cb));
    assert_string_not_equal(ca, cb); /* a cursor of the present does not page the past */
    qa_list_query_next(&b, "C", next, sizeof(next));
    assert_string_equal(next, "as_of=2026-01-01T00:00:00.000000Z&limit=3&cursor=C");
    assert_false(parse(QA_LIST_ENTRIES, "as_of=yesterday", &a, &e));
    assert_int_equal(json_array_size(e), 1);
    json_decref(e);
    assert_false(parse(QA_LIST_ACCOUNTS, "as_of=2026-01-01T00:00:00Z", &a, &e));
    json_decref(e);
}

static void
test_if_none_match(void **state)
{
#define M(v, tag) qa_etag_matches(v, strlen(v), tag)
    assert_true(M("\"a\"", "\"a\""));
    assert_true(M("*", "\"a\""));
    assert_true(M("W/\"a\"", "\"a\""));
    assert_true(M("\"a\"", "W/\"a\""));
    assert_true(M("\"x\", \"y\" ,W/\"a\"", "\"a\""));
    assert_true(M("\"x,y\", \"a\"", "\"a\""));
    assert_false(M("\"x,\"a\"\"", "\"a\""));
    assert_false(M("\"ab\"", "\"a\""));
    assert_false(M("a", "\"a\""));
    assert_false(M("", "\"a\""));
    assert_false(M("\"x\", \"y\"", "\"a\""));
#undef M
}

static void
test_prefer(void **state)
{
#define W(v) qa_prefer_wait(v, strlen(v))
    assert_int_equal(W("wait=10"), 10);
    assert_int_equal(W("respond-async, wait=5"), 5);
    assert_int_equal(W("WAIT = 7 ; foo"), 7);
    assert_int_equal(W("wait=\"3\""), 3);
    assert_int_equal(W("wait=0"), 0);
    assert_int_equal(W("wait=100"), 100); /* clamped by the caller */
    assert_int_equal(W("wait=-1"), -1);
    assert_int_equal(W("wait=abc"), -1);
    assert_int_equal(W("wait"), -1);
    assert_int_equal(W("waiting=3"), -1);
    assert_int_equal(W("return=minimal"), -1);
    assert_int_equal(W(""), -1);
#undef W
}

static void
test_accept_encoding(void **state)
{
#define G(v) qa_accepts_gzip(v, strlen(v))
    assert_true(G("gzip"));
    assert_true(G("deflate, gzip;q=0.5, br"));
    assert_true(G("GZIP"));
    assert_true(G("*"));
    assert_true(G("x-gzip"));
    assert_false(G("gzip;q=0"));
    assert_false(G("gzip; q=0.000"));
    assert_false(G("*;q=0.5, gzip;q=0"));
    assert_true(G("*;q=0, gzip"));
    assert_false(G("identity"));
    assert_false(G("br, deflate"));
    assert_false(G(""));
#undef G
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split),           cmocka_unit_test(test_accounts_filters),
        cmocka_unit_test(test_entries_filters), cmocka_unit_test(test_canonical_and_next),
        cmocka_unit_test(test_entries_as_of),   cmocka_unit_test(test_if_none_match),
        cmocka_unit_test(test_prefer),          cmocka_unit_test(test_accept_encoding),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
