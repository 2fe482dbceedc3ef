/*
 * The read cache's rules without a database: versions only go up, a read
 * stores only what it may (tickets), the tenant is always checked, only small
 * bodies are kept, evictions and '*' forget safely.
 */
#include "qa_versions.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#define MAX 1024

static tly_uuid_t
uuid_of(int n)
{
    tly_uuid_t u;
    memset(&u, 0, sizeof(u));
    u.b[0] = 0x40;
    u.b[14] = (uint8_t)(n >> 8);
    u.b[15] = (uint8_t)n;
    return u;
}

static void
note(qa_versions_t *v, qa_versions_ticket_t t, const tly_uuid_t *id, const tly_uuid_t *tenant, int64_t version, const char *body)
{
    qa_versions_note(v, t, 'a', id, tenant, version, body, strlen(body), MAX);
}

static bool
lookup(qa_versions_t *v, const tly_uuid_t *id, const tly_uuid_t *tenant, int64_t *version, const char **body)
{
    size_t len;
    return qa_versions_lookup(v, 'a', id, tenant, version, body, &len);
}

static void
payload(char *out, size_t cap, const tly_uuid_t *id, int64_t version)
{
    char idtext[TLY_UUID_STR_LEN + 1];
    tly_uuid_format(id, idtext);
    snprintf(out, cap, "a %s:%lld", idtext, (long long)version);
}

static void
test_read_then_hit(void **state)
{
    qa_versions_t *v = qa_versions_create_offline(64);
    tly_uuid_t id = uuid_of(1), tenant = uuid_of(100), other = uuid_of(101);
    int64_t version;
    const char *body;
    assert_false(lookup(v, &id, &tenant, &version, &body));
    note(v, qa_versions_ticket(v, 'a', &id), &id, &tenant, 3, "{\"v\":3}");
    assert_true(lookup(v, &id, &tenant, &version, &body));
    assert_int_equal(version, 3);
    assert_string_equal(body, "{\"v\":3}");
    assert_false(lookup(v, &id, &other, &version, &body)); /* another tenant: nothing */
    /* a transfer with the same id is another resource */
    size_t len;
    assert_false(qa_versions_lookup(v, 't', &id, &tenant, &version, &body, &len));
    qa_versions_destroy(v);
}

static void
test_notification_makes_it_miss_until_read(void **state)
{
    qa_versions_t *v = qa_versions_create_offline(64);
    tly_uuid_t id = uuid_of(2), tenant = uuid_of(100);
    int64_t version;
    const char *body;
    char p[128];
    note(v, qa_versions_ticket(v, 'a', &id), &id, &tenant, 3, "v3");
    payload(p, sizeof(p), &id, 4);
    qa_versions_notify(v, p);
    assert_false(lookup(v, &id, &tenant, &version, &body)); /* knows v4 exists, has v3's body */
    note(v, qa_versions_ticket(v, 'a', &id), &id, &tenant, 4, "v4");
    assert_true(lookup(v, &id, &tenant, &version, &body));
    assert_int_equal(version, 4);
    assert_string_equal(body, "v4");
    qa_versions_destroy(v);
}

/* A read that returns an older version than a notification already raised never goes back. */
static void
test_late_read_never_goes_back(void **state)
{
    qa_versions_t *v = qa_versions_create_offline(64);
    tly_uuid_t id = uuid_of(3), tenant = uuid_of(100);
    int64_t version;
    const char *body;
    char p[128];
    note(v, qa_versions_ticket(v, 'a', &id), &id, &tenant, 5, "v5");
    qa_versions_ticket_t t = qa_versions_ticket(v, 'a', &id);
    payload(p, sizeof(p), &id, 6);
    qa_versions_notify(v, p);
    note(v, t, &id, &tenant, 5, "v5 again"); /* the read's snapshot was older */
    assert_false(lookup(v, &id, &tenant, &version, &body));
    qa_versions_destroy(v);
}

/* The entry was not there when the notification came: the read in flight must not store its (older) answer. */
static void
test_read_in_flight_when_unknown_resource_changes(void **state)
{
    qa_versions_t *v = qa_versions_create_offline(64);
    tly_uuid_t id = uuid_of(4), tenant = uuid_of(100);
    int64_t version;
    const char *body;
    char p[128];
    qa_versions_ticket_t t = qa_versions_ticket(v, 'a', &id);
    payload(p, sizeof(p), &id, 2);
    qa_versions_notify(v, p);
    note(v, t, &id, &tenant, 1, "v1");
    assert_false(lookup(v, &id, &tenant, &version, &body));
    /* the next read stores */
    note(v, qa_versions_ticket(v, 'a', &id), &id, &tenant, 2, "v2");
    assert_true(lookup(v, &id, &tenant, &version, &body));
    assert_int_equal(version, 2);
    qa_versions_destroy(v);
}

/* Evicted while a read was in flight, then changed: the read must not store. */
static void
test_eviction_during_read(void **state)
{
    qa_versions_t *v = qa_versions_create_offline(4); /* one set of four ways */
    tly_uuid_t tenant = uuid_of(100), ids[6];
    int64_t version;
    const char *body;
    char p[128];
    for (int i = 0; i < 6; ++i)
        ids[i] = uuid_of(10 + i);
    note(v, qa_versions_ticket(v, 'a', &ids[0]), &ids[0], &tenant, 7, "v7");
    qa_versions_ticket_t t = qa_versions_ticket(v, 'a', &ids[0]);
    payload(p, sizeof(p), &ids[0], 8);
    qa_versions_notify(v, p); /* raised to 8 in place */
    for (int i = 1; i < 6; ++i)
        note(v, qa_versions_ticket(v, 'a', &ids[i]), &ids[i], &tenant, 1, "x"); /* evicts ids[0] at some point */
    note(v, t, &ids[0], &tenant, 7, "v7");                                      /* late answer from before version 8 */
    if (lookup(v, &ids[0], &tenant, &version, &body))
        fail_msg("stored version %lld after its entry was evicted and raised", (long long)version);
    qa_versions_destroy(v);
}

static void
test_star_forgets_everything(void **state)
{
    qa_versions_t *v = qa_versions_create_offline(64);
    tly_uuid_t id = uuid_of(5), tenant = uuid_of(100);
    int64_t version;
    const char *body;
    qa_versions_ticket_t t = qa_versions_ticket(v, 'a', &id);
    note(v, qa_versions_ticket(v, 'a', &id), &id, &tenant, 2, "v2");
    qa_versions_notify(v, "*");
    assert_false(lookup(v, &id, &tenant, &version, &body));
    note(v, t, &id, &tenant, 2, "v2"); /* a read that started before the swap */
    assert_false(lookup(v, &id, &tenant, &version, &body));
    qa_versions_destroy(v);
}

static void
test_big_bodies_and_bad_payloads(void **state)
{
    qa_versions_t *v = qa_versions_create_offline(64);
    tly_uuid_t id = uuid_of(6), tenant = uuid_of(100);
    int64_t version;
    const char *body;
    char big[MAX + 2];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    note(v, qa_versions_ticket(v, 'a', &id), &id, &tenant, 1, big);
    assert_false(lookup(v, &id, &tenant, &version, &body)); /* over the threshold: never from memory */
    note(v, qa_versions_ticket(v, 'a', &id), &id, &tenant, 2, "small");
    assert_true(lookup(v, &id, &tenant, &version, &body));
    const char *junk[] = {"",
                          "a",
                          "x 00000000-0000-0000-0000-000000000000:9",
                          "a not-a-uuid:3",
                          "a 40000000-0000-0000-0000-000000000006",
                          "a 40000000-0000-0000-0000-000000000006:-4"};
    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); ++i)
        qa_versions_notify(v, junk[i]);
    assert_true(lookup(v, &id, &tenant, &version, &body));
    assert_int_equal(version, 2);
    /* several ids in one notification */
    tly_uuid_t id2 = uuid_of(7);
    note(v, qa_versions_ticket(v, 'a', &id2), &id2, &tenant, 1, "one");
    char p1[128], p2[128], both[300];
    payload(p1, sizeof(p1), &id, 3);
    payload(p2, sizeof(p2), &id2, 2);
    snprintf(both, sizeof(both), "%s,%s", p1, p2 + 2);
    qa_versions_notify(v, both);
    assert_false(lookup(v, &id, &tenant, &version, &body));
    assert_false(lookup(v, &id2, &tenant, &version, &body));
    qa_versions_destroy(v);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_then_hit),
        cmocka_unit_test(test_notification_makes_it_miss_until_read),
        cmocka_unit_test(test_late_read_never_goes_back),
        cmocka_unit_test(test_read_in_flight_when_unknown_resource_changes),
        cmocka_unit_test(test_eviction_during_read),
        cmocka_unit_test(test_star_forgets_everything),
        cmocka_unit_test(test_big_bodies_and_bad_payloads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
