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
    /* API input: exact names only */
    assert_int_equal(tly_scope_bit("admin", 5), TLY_SCOPE_ADMIN);
    assert_int_equal(tly_scope_bit("{admin}", 7), 0);
    assert_int_equal(tly_scope_bit("admin,read", 10), 0);
    assert_int_equal(tly_scope_bit("Admin", 5), 0);
    tly_scopes_names(TLY_SCOPE_READ | TLY_SCOPE_WRITE, s, sizeof(s));
    assert_string_equal(s, "read, write");
    tly_scopes_format_pg(TLY_SCOPE_READ | TLY_SCOPE_ADMIN, s, sizeof(s));
    assert_string_equal(s, "{read,admin}");
    tly_scopes_format_pg(TLY_SCOPE_WRITE, s, sizeof(s));
    assert_string_equal(s, "{write}");
}

/* The attributes of a read-only free-tier key of `tenant` with secret hash `hash`. */
static tly_key_attrs_t
read_key(const tly_uuid_t *tenant, const uint8_t *hash, bool revoked, int64_t expires_us)
{
    tly_key_attrs_t a = {.tenant_id = *tenant,
                         .scopes = TLY_SCOPE_READ,
                         .tier = "free",
                         .rate = 10,
                         .burst = 20,
                         .expires_us = expires_us,
                         .revoked = revoked};
    memcpy(a.hash, hash, TLY_KEY_HASH_LEN);
    return a;
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
    tly_key_attrs_t a = read_key(&tenant, hash, false, 0);
    tly_keycache_put(kc, parts.id, &a);
    snprintf(header, sizeof(header), "Bearer %s", key);
    assert_int_equal(tly_keycache_check(kc, header, strlen(header), &p), TLY_AUTH_OK);
    assert_memory_equal(p.tenant_id.b, tenant.b, 16);
    assert_string_equal(p.tier, "free");
    assert_int_equal(p.rate, 10);
    assert_int_equal(p.scopes, TLY_SCOPE_READ);
    assert_int_equal(tly_keycache_check(kc, NULL, 0, &p), TLY_AUTH_MISSING);
    header[strlen(header) - 1] ^= 1; /* wrong secret */
    assert_int_equal(tly_keycache_check(kc, header, strlen(header), &p), TLY_AUTH_INVALID);
    header[strlen(header) - 1] ^= 1;
    a = read_key(&tenant, hash, true, 0); /* revoked */
    tly_keycache_put(kc, parts.id, &a);
    assert_int_equal(tly_keycache_check(kc, header, strlen(header), &p), TLY_AUTH_INVALID);
    a = read_key(&tenant, hash, false, tly_clock_now_us() - 1); /* expired a moment ago */
    tly_keycache_put(kc, parts.id, &a);
    assert_int_equal(tly_keycache_check(kc, header, strlen(header), &p), TLY_AUTH_INVALID);
    a = read_key(&tenant, hash, false, tly_clock_now_us() + 60000000); /* expires in a minute */
    tly_keycache_put(kc, parts.id, &a);
    assert_int_equal(tly_keycache_check(kc, header, strlen(header), &p), TLY_AUTH_OK);
    tly_keycache_destroy(kc);
}

/* The principal carries what the rate limiter needs (tally/ratelimit.h decides; test_ratelimit.c). */
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
    tly_key_attrs_t a = read_key(&tenant, hash, false, 0);
    tly_keycache_put(kc, parts.id, &a);
    snprintf(header, sizeof(header), "Bearer %s", key);
    assert_int_equal(tly_keycache_check(kc, header, strlen(header), &p), TLY_AUTH_OK);
    assert_string_equal(p.tier, "free");
    assert_false(p.contract);
    assert_int_equal(p.rate, 10);
    assert_int_equal(p.burst, 20);
    a.contract = true, a.rate = 7, a.burst = 9;
    tly_keycache_put(kc, parts.id, &a);
    assert_int_equal(tly_keycache_check(kc, header, strlen(header), &p), TLY_AUTH_OK);
    assert_true(p.contract);
    assert_int_equal(p.rate, 7);
    assert_int_equal(p.burst, 9);
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
