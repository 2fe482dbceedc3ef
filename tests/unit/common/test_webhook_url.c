/* SSRF rules for webhook URLs: which URLs and addresses are refused. */
#include "tally/webhook_url.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

static bool
v4_ok(const char *ip, bool allow_private)
{
    struct sockaddr_in s = {.sin_family = AF_INET};
    assert_int_equal(inet_pton(AF_INET, ip, &s.sin_addr), 1);
    return tly_webhook_addr_allowed((struct sockaddr *)&s, sizeof(s), allow_private);
}

static bool
v6_ok(const char *ip, bool allow_private)
{
    struct sockaddr_in6 s = {.sin6_family = AF_INET6};
    assert_int_equal(inet_pton(AF_INET6, ip, &s.sin6_addr), 1);
    return tly_webhook_addr_allowed((struct sockaddr *)&s, sizeof(s), allow_private);
}

static void
test_ipv4_ranges(void **state)
{
    (void)state;
    const char *refused[] = {
        "0.0.0.0", "10.1.2.3", "100.64.0.1", "127.0.0.1", "127.255.255.254", "169.254.169.254", "172.16.0.1", "172.31.255.255",
        "192.168.1.1", "192.0.2.5", "198.18.0.1", "224.0.0.1", "255.255.255.255", "240.0.0.1",
        /* the rest of the IANA special-purpose registry */
        "192.0.0.8", "192.31.196.1", "192.52.193.1", "192.88.99.1", "192.175.48.6", "198.51.100.7", "203.0.113.9"};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); ++i) {
        assert_false(v4_ok(refused[i], false));
        assert_true(v4_ok(refused[i], true)); /* the tests' setting lets everything through */
    }
    const char *allowed[] = {"8.8.8.8", "1.1.1.1", "172.32.0.1", "172.15.255.255", "100.128.0.1", "93.184.216.34"};
    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); ++i)
        assert_true(v4_ok(allowed[i], false));
}

static void
test_ipv6_ranges(void **state)
{
    (void)state;
    const char *refused[] = {"::", "::1", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "::ffff:127.0.0.1",
                             "::ffff:169.254.169.254", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:a00:1::", "2001:db8::1",
                             /* embedded IPv4 forms and the rest of the IANA IPv6 special-purpose registry */
                             "::ffff:8.8.8.8",                  /* mapped: refused even with a public IPv4 inside */
                             "::ffff:0:127.0.0.1",              /* translated (SIIT) */
                             "::ffff:0:8.8.8.8", "::127.0.0.1", /* compatible */
                             "64:ff9b::8.8.8.8",                /* NAT64 well-known prefix */
                             "64:ff9b:1::a00:1",                /* NAT64 local-use prefix */
                             "2001::a00:1",                     /* Teredo */
                             "2001:2::1",                       /* benchmarking */
                             "2001:20::1",                      /* ORCHIDv2 */
                             "2002:808:808::1",                 /* 6to4 of a public IPv4 */
                             "100::1",                          /* discard-only */
                             "2620:4f:8000::1",                 /* AS112 */
                             "3fff::1",                         /* documentation */
                             "5f00::1",                         /* SRv6 SIDs: outside global unicast */
                             "fec0::1",                         /* site-local */
                             "4000::1"};                        /* unassigned, outside 2000::/3 */
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); ++i)
        assert_false(v6_ok(refused[i], false));
    assert_true(v6_ok("2606:4700:4700::1111", false));
    assert_true(v6_ok("2a00:1450:4001:80b::200e", false));
    assert_true(v6_ok("::1", true));
}

static void
test_other_families_refused(void **state)
{
    (void)state;
    struct sockaddr s = {.sa_family = AF_UNIX};
    assert_false(tly_webhook_addr_allowed(&s, sizeof(s), true));
    assert_false(tly_webhook_addr_allowed(NULL, 0, true));
    struct sockaddr_in short4 = {.sin_family = AF_INET};
    assert_false(tly_webhook_addr_allowed((struct sockaddr *)&short4, 4, false)); /* truncated length */
}

static void
test_url_refusals(void **state)
{
    (void)state;
    char err[256];
    const char *refused[] = {
        "",
        "ftp://example.com/hook",
        "example.com/hook",
        "http://example.com/hook",          /* plain http to a public host */
        "https://user:pw@example.com/hook", /* userinfo */
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[fe80::1%25eth0]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://127.1/hook",      /* inet_aton short form of 127.0.0.1 */
        "https://0x7f000001/hook", /* hex form */
        "https://2130706433/hook", /* decimal form */
        "https://localhost/hook",
        "https://localhost./hook",
        "https://localhost../hook", /* any number of trailing dots */
        "https://localhost.../hook",
        "https://api.localhost.../hook",
        "https://metadata.google.internal../hook",
        "https://.../hook",
        "https://[64:ff9b:1::a00:1]/hook",
        "https://[::ffff:0:a00:1]/hook",
        "https://[2001::a00:1]/hook",
        "https://[2002:a00:1::1]/hook",
        "https://LOCALHOST/hook",
        "https://api.localhost/hook",
        "https://metadata.google.internal/computeMetadata",
        "https://intranet/hook", /* single-label names resolve through search domains */
        "https://example.com:0/hook",
        "https://example.com:99999/hook",
        "https://exa mple.com/hook",
        "https:///hook",
        "https://[::1/hook",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); ++i) {
        err[0] = '\0';
        if (tly_webhook_url_check(refused[i], false, false, err, sizeof(err)) != -1)
            fail_msg("accepted %s", refused[i]);
        assert_true(strlen(err) > 0);
    }
    char longurl[2100] = "https://example.com/";
    memset(longurl + strlen(longurl), 'a', sizeof(longurl) - strlen(longurl) - 1);
    longurl[sizeof(longurl) - 1] = '\0';
    assert_int_equal(tly_webhook_url_check(longurl, false, false, err, sizeof(err)), -1);
}

static void
test_url_accepted(void **state)
{
    (void)state;
    char err[256];
    const char *ok[] = {"https://example.com/hook", "https://hooks.example.com:8443/a/b?c=d#e", "https://8.8.8.8/x",
                        "https://[2606:4700:4700::1111]/x", "HTTPS://Example.COM"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); ++i)
        if (tly_webhook_url_check(ok[i], false, false, err, sizeof(err)) != 0)
            fail_msg("refused %s: %s", ok[i], err);
    /* with the setting for tests and local stacks: loopback and plain http */
    assert_int_equal(tly_webhook_url_check("http://127.0.0.1:9000/hook", true, false, err, sizeof(err)), 0);
    assert_int_equal(tly_webhook_url_check("http://localhost:9000/hook", true, true, err, sizeof(err)), 0);
    /* the setting never admits a non-http scheme or userinfo */
    assert_int_equal(tly_webhook_url_check("file:///etc/passwd", true, false, err, sizeof(err)), -1);
    assert_int_equal(tly_webhook_url_check("http://a:b@127.0.0.1/", true, false, err, sizeof(err)), -1);
}

static void
test_url_resolution(void **state)
{
    (void)state;
    char err[256];
    /* a name that does not resolve is refused when resolution is asked for, and only then */
    assert_int_equal(tly_webhook_url_check("https://hooks.tally-test.invalid/", false, true, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "could not be resolved"));
    assert_int_equal(tly_webhook_url_check("https://hooks.tally-test.invalid/", false, false, err, sizeof(err)), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ipv4_ranges),  cmocka_unit_test(test_ipv6_ranges),  cmocka_unit_test(test_other_families_refused),
        cmocka_unit_test(test_url_refusals), cmocka_unit_test(test_url_accepted), cmocka_unit_test(test_url_resolution),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
