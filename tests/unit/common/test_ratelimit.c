/*
 * The rate limiter without Redis (every bucket on its local share), tenant
 * budgets, concurrency and long-poll slots, shadow limits, the tier table,
 * the headers' policies and the load-shedding order.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/clock.h"
#include "tally/guard.h"
#include "tally/metrics.h"
#include "tally/ratelimit.h"
#include "tally/redisasync.h"

#include <string.h>

typedef struct st_fixture_t {
    h2o_evloop_t *loop;
    tly_limiter_t *lim;
    tly_limiter_thread_t *thr;
    tly_uuid_t tenant;
} fixture_t;

static fixture_t fx;

static int
setup(void **state)
{
    tly_limiter_config_t cfg = {.instances = 1, .lease_pct = 10, .enabled = true};
    fx.loop = h2o_evloop_create();
    fx.lim = tly_limiter_create(&cfg);
    fx.thr = tly_limiter_thread_create(fx.lim, fx.loop, true);
    fx.tenant = tly_uuid_v4();
    return 0;
}

static int
teardown(void **state)
{
    tly_limiter_thread_destroy(fx.thr);
    tly_limiter_destroy(fx.lim);
    h2o_evloop_destroy(fx.loop);
    return 0;
}

static tly_limit_key_t
key_of(const char *id, const char *tier, int64_t rate, int64_t burst)
{
    return (tly_limit_key_t){id, &fx.tenant, tier, rate, burst};
}

static uint64_t
counter(const char *name, const char *labels)
{
    size_t len;
    char *text = tly_metrics_render(tly_metrics_default(), &len), line[256];
    snprintf(line, sizeof(line), "\n%s%s ", name, labels);
    const char *at = strstr(text, line);
    uint64_t v = at != NULL ? strtoull(at + strlen(line), NULL, 10) : 0;
    free(text);
    return v;
}

static void
test_tiers(void **state)
{
    int64_t rate, burst;
    assert_true(tly_rate_tier("free", &rate, &burst));
    assert_int_equal(rate, 10);
    assert_int_equal(burst, 20);
    assert_true(tly_rate_tier("standard", &rate, &burst));
    assert_int_equal(rate, 100);
    assert_false(tly_rate_tier("contract", &rate, &burst)); /* no key is created "contract": it gets its own numbers */
    assert_false(tly_rate_tier("gold", &rate, &burst));
    assert_non_null(tly_tier_find("contract"));
    assert_int_equal(tly_tier_find("free")->store_down, TLY_STORE_DOWN_REFUSE);
    assert_int_equal(tly_tier_find("standard")->store_down, TLY_STORE_DOWN_LOCAL);
}

/* Without Redis one instance's bucket is the whole bucket: 20 at once, then 10/s. */
static void
test_local_bucket(void **state)
{
    tly_limit_key_t k = key_of("localbucket00001", "free", 10, 20);
    tly_rate_t r;
    int64_t now = tly_clock_mono_us();
    for (int i = 0; i < 20; ++i) {
        tly_limiter_take(fx.thr, &k, false, now, &r);
        assert_true(r.allowed);
        assert_int_equal(r.npolicies, 1);
        assert_string_equal(r.policies[0].name, "burst");
        assert_int_equal(r.policies[0].remaining, 19 - i);
        tly_limiter_release(&r);
    }
    tly_limiter_take(fx.thr, &k, false, now, &r);
    assert_false(r.allowed);
    assert_int_equal(r.verdict, TLY_RATE_LIMITED);
    assert_int_equal(r.retry_after, 1);
    assert_int_equal(r.policies[0].quota, 20);
    assert_int_equal(r.policies[0].window, 2);
    assert_int_equal(r.policies[0].reset, 2);
    tly_limiter_take(fx.thr, &k, false, now + 100000, &r); /* 0.1 s at 10/s: one token back */
    assert_true(r.allowed);
    tly_limiter_release(&r);
}

/* Two keys of one tenant share its budget; the headers name the policy nearest exhaustion. */
static void
test_tenant_budget(void **state)
{
    char tenant[TLY_UUID_STR_LEN + 1];
    tly_uuid_format(&fx.tenant, tenant);
    tly_limiter_set(fx.lim, "tenant", tenant, false, 5, 10, 0, 0);
    tly_limit_key_t a = key_of("tenantkeyaaaaaa1", "standard", 100, 200), b = key_of("tenantkeybbbbbb1", "standard", 100, 200);
    tly_rate_t r;
    int64_t now = tly_clock_mono_us();
    int allowed = 0;
    for (int i = 0; i < 12; ++i) {
        tly_limiter_take(fx.thr, i % 2 ? &a : &b, false, now, &r);
        allowed += r.allowed;
        assert_int_equal(r.npolicies, 2);
        assert_string_equal(r.policies[1].name, "tenant");
        assert_string_equal(r.policies[r.nearest].name, "tenant");
        tly_limiter_release(&r);
    }
    assert_int_equal(allowed, 10);
    assert_int_equal(r.verdict, TLY_RATE_LIMITED);
    /* the key's bucket got its token back when the tenant refused */
    assert_int_equal(r.policies[0].remaining, 195);
    tly_limiter_set(fx.lim, "tenant", tenant, false, 0, 0, 0, 0); /* cleared: live, no restart */
    tly_limiter_take(fx.thr, &a, false, now, &r);
    assert_true(r.allowed);
    assert_int_equal(r.npolicies, 1);
    tly_limiter_release(&r);
}

static void
test_concurrency(void **state)
{
    tly_limit_key_t k = key_of("concurrencykey01", "free", 10, 20);
    tly_rate_t held[8], r, poll[3];
    int64_t now = tly_clock_mono_us();
    for (int i = 0; i < 8; ++i) { /* the free tier: 8 in flight */
        tly_limiter_take(fx.thr, &k, false, now, &held[i]);
        assert_true(held[i].allowed);
    }
    tly_limiter_take(fx.thr, &k, false, now, &r);
    assert_false(r.allowed);
    assert_int_equal(r.verdict, TLY_RATE_CONCURRENCY);
    assert_int_equal(r.policies[0].remaining, 12); /* a refused slot costs no token */
    tly_limiter_release(&held[0]);
    tly_limiter_release(&held[0]); /* idempotent */
    tly_limiter_take(fx.thr, &k, false, now, &held[0]);
    assert_true(held[0].allowed);
    /* long-polls are counted apart: two for the free tier, and they free their request slot */
    assert_true(tly_limiter_become_long_poll(&held[1]));
    assert_true(tly_limiter_become_long_poll(&held[2]));
    assert_false(tly_limiter_become_long_poll(&held[3]));
    tly_limiter_take(fx.thr, &k, false, now, &poll[0]);
    assert_true(poll[0].allowed); /* two request slots were freed by the long-polls */
    tly_limiter_take(fx.thr, &k, false, now, &poll[1]);
    assert_true(poll[1].allowed);
    tly_limiter_take(fx.thr, &k, false, now, &poll[2]);
    assert_false(poll[2].allowed);
    for (int i = 0; i < 8; ++i)
        tly_limiter_release(&held[i]);
    tly_limiter_release(&poll[0]);
    tly_limiter_release(&poll[1]);
}

/* A shadow limit counts what it would refuse and refuses nothing. */
static void
test_shadow(void **state)
{
    tly_limit_key_t k = key_of("shadowlimitkey01", "standard", 100, 200);
    tly_limiter_set(fx.lim, "key", k.key_id, true, 1, 2, 0, 0);
    uint64_t before = counter("tally_rate_limit_shadow_rejections_total", "{scope=\"key\"}");
    tly_rate_t r;
    int64_t now = tly_clock_mono_us();
    for (int i = 0; i < 6; ++i) {
        tly_limiter_take(fx.thr, &k, false, now, &r);
        assert_true(r.allowed);
        tly_limiter_release(&r);
    }
    assert_int_equal(counter("tally_rate_limit_shadow_rejections_total", "{scope=\"key\"}") - before, 4);
    /* an enforced override wins over the key's own tier */
    tly_limiter_set(fx.lim, "key", k.key_id, false, 1, 1, 0, 0);
    tly_limiter_take(fx.thr, &k, false, now, &r);
    assert_true(r.allowed);
    assert_int_equal(r.policies[0].quota, 1);
    tly_limiter_release(&r);
    tly_limiter_take(fx.thr, &k, false, now, &r);
    assert_false(r.allowed);
}

/* Disabled, nothing is limited and no policy is reported. */
static void
test_disabled(void **state)
{
    tly_limiter_config_t cfg = {.instances = 1, .lease_pct = 10, .enabled = false};
    tly_limiter_t *lim = tly_limiter_create(&cfg);
    tly_limiter_thread_t *thr = tly_limiter_thread_create(lim, fx.loop, false);
    tly_limit_key_t k = key_of("disabledlimiter1", "free", 10, 20);
    tly_rate_t r;
    for (int i = 0; i < 50; ++i) {
        tly_limiter_take(thr, &k, false, tly_clock_mono_us(), &r);
        assert_true(r.allowed);
        assert_int_equal(r.npolicies, 0);
        tly_limiter_release(&r);
    }
    tly_limiter_thread_destroy(thr);
    tly_limiter_destroy(lim);
}

static void
test_shed_order(void **state)
{
    /* below 1.0 nothing is shed; then long-polls, bulk, single reads, commands, in that order */
    for (int c = TLY_SHED_LONG_POLL; c <= TLY_SHED_COMMAND; ++c)
        assert_false(tly_guard_sheds((tly_shed_class_t)c, 0.99));
    double loads[] = {1.0, 1.5, 2.0, 2.5};
    for (int at = 0; at < 4; ++at)
        for (int c = TLY_SHED_LONG_POLL; c <= TLY_SHED_COMMAND; ++c)
            assert_int_equal(tly_guard_sheds((tly_shed_class_t)c, loads[at]), c <= at);
}

static void
test_redis_url(void **state)
{
    char host[64];
    int port;
    assert_true(tly_redis_url_parse("redis://127.0.0.1:6380", host, sizeof(host), &port));
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 6380);
    assert_true(tly_redis_url_parse("redis://redis/", host, sizeof(host), &port));
    assert_string_equal(host, "redis");
    assert_int_equal(port, 6379);
    assert_false(tly_redis_url_parse("http://redis", host, sizeof(host), &port));
    assert_false(tly_redis_url_parse("redis://:6379", host, sizeof(host), &port));
    assert_false(tly_redis_url_parse("redis://h:0", host, sizeof(host), &port));
    assert_false(tly_redis_url_parse("redis://h:12x", host, sizeof(host), &port));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiers),       cmocka_unit_test(test_local_bucket), cmocka_unit_test(test_tenant_budget),
        cmocka_unit_test(test_concurrency), cmocka_unit_test(test_shadow),       cmocka_unit_test(test_disabled),
        cmocka_unit_test(test_shed_order),  cmocka_unit_test(test_redis_url),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
