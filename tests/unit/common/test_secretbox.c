/* Secrets at rest: seal and open, bound to the owner, tamper-evident, plaintext passthrough, rotation with two keys. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/secretbox.h"

#include <stdio.h>
#include <string.h>

#define KEY_A "ka:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define KEY_B "kb:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="
static const char secret[] = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
static const char owner[] = "5d1e2c3b-4a59-4f68-8e7d-6c5b4a392817";

static void
test_seal_open(void **state)
{
    char err[256], sealed[TLY_SECRETBOX_SEALED_MAX], sealed2[TLY_SECRETBOX_SEALED_MAX], plain[128];
    assert_int_equal(tly_secretbox_configure(KEY_A, err, sizeof(err)), 1);
    assert_int_equal(tly_secretbox_seal(secret, owner, sealed, sizeof(sealed)), 0);
    assert_int_equal(strncmp(sealed, "enc:v1:ka:", 10), 0);
    assert_null(strstr(sealed, "whsec_"));
    assert_true(tly_secretbox_is_current(sealed));
    assert_int_equal(tly_secretbox_open(sealed, owner, plain, sizeof(plain), err, sizeof(err)), 0);
    assert_string_equal(plain, secret);
    /* a fresh nonce each time */
    assert_int_equal(tly_secretbox_seal(secret, owner, sealed2, sizeof(sealed2)), 0);
    assert_string_not_equal(sealed, sealed2);
    /* another row's value does not open here */
    assert_int_equal(tly_secretbox_open(sealed, "00000000-0000-4000-8000-000000000000", plain, sizeof(plain), err, sizeof(err)),
                     -1);
    /* one flipped character is refused */
    sealed[20] = sealed[20] == 'A' ? 'B' : 'A';
    assert_int_equal(tly_secretbox_open(sealed, owner, plain, sizeof(plain), err, sizeof(err)), -1);
    /* plaintext (written before encryption) opens as itself and is not current */
    assert_int_equal(tly_secretbox_open(secret, owner, plain, sizeof(plain), err, sizeof(err)), 0);
    assert_string_equal(plain, secret);
    assert_false(tly_secretbox_is_current(secret));
}

static void
test_rotation(void **state)
{
    char err[256], old[TLY_SECRETBOX_SEALED_MAX], plain[128];
    assert_int_equal(tly_secretbox_configure(KEY_A, err, sizeof(err)), 1);
    assert_int_equal(tly_secretbox_seal(secret, owner, old, sizeof(old)), 0);
    /* step 1 of the rotation: the new key first, the old one still opens */
    assert_int_equal(tly_secretbox_configure(KEY_B "," KEY_A, err, sizeof(err)), 1);
    assert_false(tly_secretbox_is_current(old));
    assert_int_equal(tly_secretbox_open(old, owner, plain, sizeof(plain), err, sizeof(err)), 0);
    assert_string_equal(plain, secret);
    char fresh[TLY_SECRETBOX_SEALED_MAX];
    assert_int_equal(tly_secretbox_seal(plain, owner, fresh, sizeof(fresh)), 0);
    assert_int_equal(strncmp(fresh, "enc:v1:kb:", 10), 0);
    /* last step: the old key removed; what it sealed no longer opens */
    assert_int_equal(tly_secretbox_configure(KEY_B, err, sizeof(err)), 1);
    assert_int_equal(tly_secretbox_open(old, owner, plain, sizeof(plain), err, sizeof(err)), -1);
    assert_non_null(strstr(err, "does not hold"));
    assert_int_equal(tly_secretbox_open(fresh, owner, plain, sizeof(plain), err, sizeof(err)), 0);
}

static void
test_configuration(void **state)
{
    char err[256], out[TLY_SECRETBOX_SEALED_MAX];
    assert_int_equal(tly_secretbox_configure("", err, sizeof(err)), 0);
    assert_int_equal(tly_secretbox_seal(secret, owner, out, sizeof(out)), 0);
    assert_string_equal(out, secret); /* no key: stored as it is */
    const char *bad[] = {"ka", "ka:", "KA:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "ka:AAECAwQ=", KEY_A ",,", "ka:!!!!"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
        if (tly_secretbox_configure(bad[i], err, sizeof(err)) != -1)
            fail_msg("accepted %s", bad[i]);
        assert_int_equal(tly_secretbox_seal(secret, owner, out, sizeof(out)), -1);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_seal_open), cmocka_unit_test(test_rotation),
                                       cmocka_unit_test(test_configuration)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
