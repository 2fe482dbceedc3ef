/*
 * Property: for generated command bodies, "the command API accepts it"
 * implies "the decider (or, for a transfer, the saga) does not refuse it as
 * invalid_request" (tests/support/tly_test_accept.c says how each body is
 * run). Bodies mix valid values with the edges of every rule: amounts at
 * 2^53, currencies that are three capitals but not ISO 4217, texts of 200 and
 * 201 characters in one- to four-byte UTF-8, malformed and equal account ids,
 * unknown and missing fields. TALLY_PROPERTY_SEED replays a run.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tly_test_accept.h"
#include "tally/json.h"
#include "tally/ledger/catalogue.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BODIES_PER_COMMAND 4000

static uint64_t rng;

static uint32_t
next(void)
{
    rng ^= rng << 13; /* xorshift64 */
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static json_t *
gen_amount(void)
{
    if (next() % 2 == 0)
        return json_integer(1 + next() % 100000);
    switch (next() % 10) {
    case 0:
        return json_integer(0);
    case 1:
        return json_integer(-1);
    case 2:
        return json_integer(((json_int_t)1 << 53) - 1);
    case 3:
        return json_integer((json_int_t)1 << 53);
    case 4:
        return json_real(1.5);
    case 5:
        return json_string("5");
    case 6:
        return json_null();
    default:
        return json_integer(1 + next() % 100000);
    }
}

static json_t *
gen_currency(void)
{
    static const char *const pool[] = {"EUR", "USD", "JPY", "CHF", "ZWG", "eur", "QQQ", "ABC", "EURO", "", "E\xc3\x9cR"};
    if (next() % 2 == 0)
        return json_string(pool[next() % 5]);
    unsigned i = next() % (sizeof(pool) / sizeof(pool[0]) + 2);
    if (i == sizeof(pool) / sizeof(pool[0]))
        return json_integer(978);
    if (i > sizeof(pool) / sizeof(pool[0]))
        return json_null();
    return json_string(pool[i]);
}

static json_t *
gen_text(void)
{
    static const char *const chars[] = {"a", " ", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9d\x84\x9e", "\"", "\n"};
    static const int lengths[] = {0, 1, 17, 199, 200, 200, 201, 260};
    unsigned k = next() % 24; /* half of the time a length from the edges, else 0-200 */
    if (k == 10)
        return json_integer(5);
    if (k == 11)
        return json_null();
    int n = k < 10 ? lengths[next() % (sizeof(lengths) / sizeof(lengths[0]))] : (int)(next() % 201);
    char *s = malloc((size_t)n * 4 + 1), *p = s;
    for (int i = 0; i < n; ++i) {
        const char *c = chars[next() % (sizeof(chars) / sizeof(chars[0]))];
        size_t len = strlen(c);
        memcpy(p, c, len);
        p += len;
    }
    *p = '\0';
    json_t *v = json_string(s);
    free(s);
    return v;
}

static json_t *
gen_uuid(const char *same_as)
{
    char id[TLY_UUID_STR_LEN + 1];
    tly_uuid_t u = tly_uuid_v4();
    tly_uuid_format(&u, id);
    switch (next() % 16) {
    case 0:
        return json_string("not-a-uuid");
    case 1:
        return json_null();
    case 2:
        for (char *c = id; *c != '\0'; ++c)
            if (*c >= 'a' && *c <= 'f')
                *c = (char)(*c - 'a' + 'A');
        return json_string(id);
    case 3:
        return same_as != NULL ? json_string(same_as) : json_string(id);
    default:
        return json_string(id);
    }
}

/* A body for `kind`: each of its fields most of the time, any other field now and then. */
static json_t *
gen_body(tly_command_kind_t kind)
{
    const tly_event_spec_t *spec = tly_catalogue_find(tly_command_spec(kind)->request_event, 0);
    static const char *const names[] = {"from_account", "to_account", "amount", "currency", "label", "reference", "extra"};
    json_t *body = json_object();
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); ++i) {
        bool own = tly_catalogue_field(spec, names[i]) != NULL;
        if (next() % 100 >= (own ? 95u : 3u))
            continue;
        json_t *v;
        if (strcmp(names[i], "amount") == 0)
            v = gen_amount();
        else if (strcmp(names[i], "currency") == 0)
            v = gen_currency();
        else if (strcmp(names[i], "label") == 0 || strcmp(names[i], "reference") == 0 || strcmp(names[i], "extra") == 0)
            v = gen_text();
        else
            v = gen_uuid(tly_json_str(body, "from_account"));
        json_object_set_new(body, names[i], v);
    }
    return body;
}

static void
test_accepted_is_never_invalid(void **state)
{
    for (int k = 0; k < TLY_CMD__COUNT; ++k) {
        int accepted = 0;
        for (int i = 0; i < BODIES_PER_COMMAND; ++i) {
            json_t *body = gen_body((tly_command_kind_t)k);
            char why[512];
            bool ok;
            if (!tly_test_accept_check((tly_command_kind_t)k, body, &ok, why, sizeof(why))) {
                char *text = json_dumps(body, JSON_COMPACT | JSON_ENSURE_ASCII);
                fail_msg("%s accepted by the API, then %s; body %s", tly_command_spec((tly_command_kind_t)k)->request_event, why,
                         text);
            }
            accepted += ok;
            json_decref(body);
        }
        /* not vacuous: a good share of the bodies get through the API */
        if (accepted < BODIES_PER_COMMAND / 20)
            fail_msg("%s: only %d of %d bodies accepted", tly_command_spec((tly_command_kind_t)k)->request_event, accepted,
                     BODIES_PER_COMMAND);
    }
}

int
main(void)
{
    const char *seed = getenv("TALLY_PROPERTY_SEED");
    rng = seed != NULL ? strtoull(seed, NULL, 10) : (uint64_t)time(NULL) * 2654435761u;
    if (rng == 0)
        rng = 1;
    fprintf(stderr, "TALLY_PROPERTY_SEED=%llu\n", (unsigned long long)rng);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepted_is_never_invalid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
