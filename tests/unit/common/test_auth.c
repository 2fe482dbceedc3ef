/* API key shape, hashing, scopes and the key cache. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/auth.h"
#include "tally/clock.h"
#include "tally/keycache.h"

#include <stdio.h>
#include <string.h>

static void
test_generate_parse(void **state)
{
    tly_key_parts_t parts, back;
    char key[TLY_KEY_LEN + 1];
    tly_key_generate(&parts, key);
    assert_int_equal(strlen(key), TLY_KEY_LEN);
    assert_true(tly_key_parse(key, strlen(key), &back));
    assert_string_equal(back.id, parts.id);
    assert_string_equal(back.secret, parts.secret);
    key[5] = 'X';
    assert_false(tly_key_parse(key, strlen(key), &back));
    assert_false(tly_key_parse("tly_live_short_x", 16, &back));
}

static void
test_scopes(void **state)
{
    char s[64];
    assert_int_equal(tly_scopes_parse("read,write"), TLY_SCOPE_READ | TLY_SCOPE_WRITE);
    assert_int_equal(tly_scopes_parse("{admin}"), TLY_SCOPE_ADMIN);
    assert_int_equal(tly_scopes_parse("read,root"), -1);
    tly_scopes_format_pg(TLY_SCOPE_READ | TLY_SCOPE_ADMIN, s, sizeof(s));
    assert_string_equal(s, "{read,admin}");
    tly_scopes_format_pg(TLY_SCOPE_WRITE, s, sizeof(s));
    assert_string_equal(s, "{write}");
}

static void
test_cache_check(void **state)
{
    tly_keycache_t *kc = tly_keycache_create_offline();
    tly_key_parts_t parts;
    char key[TLY_KEY_LEN + 1], header[TLY_KEY_LEN + 16];
    uint8_t hash[TLY_KEY_HASH_LEN];
    tly_uuid_t tenant = tly_uuid_v4();
    tly_principal_t p;
    tly_key_generate(&parts, key);
    tly_key_hash(parts.secret, hash);
    tly_keycache_put(kc, parts.id, &tenant, hash, TLY_SCOPE_READ, 10, 20, false);
    snprintf(header, sizeof(header), "Bearer %s", key);
    assert_int_equal(tly_keycache_check(kc, header, strlen(header), &p), TLY_AUTH_OK);
    assert_memory_equal(p.tenant_id.b, tenant.b, 16);
    assert_int_equal(p.scopes, TLY_SCOPE_READ);
    assert_int_equal(tly_keycache_check(kc, NULL, 0, &p), TLY_AUTH_MISSING);
    header[strlen(header) - 1] ^= 1; /* wrong secret */
    assert_int_equal(tly_keycache_check(kc, header, strlen(header), &p), TLY_AUTH_INVALID);
    header[strlen(header) - 1] ^= 1;
    tly_keycache_put(kc, parts.id, &tenant, hash, TLY_SCOPE_READ, 10, 20, true); /* revoked */
    assert_int_equal(tly_keycache_check(kc, header, strlen(header), &p), TLY_AUTH_INVALID);
    tly_keycache_destroy(kc);
}

/* The principal carries what the rate limiter needs: tier, rate, burst (tally/ratelimit.h decides). */
static void
test_principal_limits(void **state)
{
    tly_keycache_t *kc = tly_keycache_create_offline();
    tly_key_parts_t parts;
    char key[TLY_KEY_LEN + 1], header[TLY_KEY_LEN + 16];
    uint8_t hash[TLY_KEY_HASH_LEN];
    tly_uuid_t tenant = tly_uuid_v4();
    tly_principal_t p;
    tly_key_generate(&parts, key);
    tly_key_hash(parts.secret, hash);
    snprintf(header, sizeof(header), "Bearer %s", key);
    tly_keycache_put(kc, parts.id, &tenant, hash, TLY_SCOPE_READ, 10, 20, false);
    assert_int_equal(tly_keycache_check(kc, header, strlen(header), &p), TLY_AUTH_OK);
    assert_string_equal(p.tier, "free");
    assert_false(p.contract);
    assert_int_equal(p.rate, 10);
    assert_int_equal(p.burst, 20);
    tly_keycache_put(kc, parts.id, &tenant, hash, TLY_SCOPE_READ, 7, 9, false); /* no tier has 7/9 */
    assert_int_equal(tly_keycache_check(kc, header, strlen(header), &p), TLY_AUTH_OK);
    assert_string_equal(p.tier, "contract");
    assert_true(p.contract);
    assert_int_equal(p.rate, 7);
    tly_keycache_destroy(kc);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generate_parse),
        cmocka_unit_test(test_scopes),
        cmocka_unit_test(test_cache_check),
        cmocka_unit_test(test_principal_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
