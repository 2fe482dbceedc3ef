/* Operator overrides of librdkafka properties (TALLY_KAFKA_*_CONFIG). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/kafka.h"

#include <stdlib.h>
#include <string.h>

static void
expect_prop(rd_kafka_conf_t *conf, const char *name, const char *want)
{
    char v[256];
    size_t n = sizeof(v);
    assert_int_equal(rd_kafka_conf_get(conf, name, v, &n), RD_KAFKA_CONF_OK);
    assert_string_equal(v, want);
}

static void
test_list_is_applied_in_order(void **state)
{
    char err[256] = "";
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    assert_int_equal(
        tly_kafka_conf_apply(conf, " fetch.wait.max.ms = 25 ;;client.id=tally-a; client.id=tally-b;", "T", err, sizeof(err)), 0);
    expect_prop(conf, "fetch.wait.max.ms", "25");
    expect_prop(conf, "client.id", "tally-b"); /* the later item wins */
    assert_int_equal(tly_kafka_conf_apply(conf, NULL, "T", err, sizeof(err)), 0);
    assert_int_equal(tly_kafka_conf_apply(conf, "", "T", err, sizeof(err)), 0);
    rd_kafka_conf_destroy(conf);
}

static void
test_errors_name_the_source(void **state)
{
    char err[256] = "";
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    assert_int_equal(tly_kafka_conf_apply(conf, "linger.ms", "TALLY_KAFKA_PRODUCER_CONFIG", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "TALLY_KAFKA_PRODUCER_CONFIG"));
    assert_non_null(strstr(err, "not name=value"));
    assert_int_equal(tly_kafka_conf_apply(conf, "=1", "X", err, sizeof(err)), -1);
    assert_int_equal(tly_kafka_conf_apply(conf, "no.such.property=1", "TALLY_KAFKA_CONFIG", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "no.such.property"));
    assert_non_null(strstr(err, "(from TALLY_KAFKA_CONFIG)"));
    assert_int_equal(tly_kafka_conf_apply(conf, "fetch.wait.max.ms=-5", "X", err, sizeof(err)), -1);
    rd_kafka_conf_destroy(conf);
}

static void
expect_rk_prop(rd_kafka_t *rk, const char *name, const char *want)
{
    char v[64];
    size_t n = sizeof(v);
    assert_int_equal(rd_kafka_conf_get(rd_kafka_conf(rk), name, v, &n), RD_KAFKA_CONF_OK);
    assert_string_equal(v, want);
}

/* A consumer's prefetch: the default, or a deeper one (bytes, and a message count to match); its fetch wait: answer at once, or
 * gather. */
static void
test_consumer_prefetch(void **state)
{
    char err[256] = "";
    rd_kafka_t *rk = tly_kafka_consumer_create("127.0.0.1:1", "g", NULL, 0, 0, NULL, NULL, err, sizeof(err));
    assert_non_null(rk);
    expect_rk_prop(rk, "queued.max.messages.kbytes", "4096");
    expect_rk_prop(rk, "queued.min.messages", "5120");
    rd_kafka_destroy(rk);
    rk = tly_kafka_consumer_create("127.0.0.1:1", "g", NULL, 16384, 0, NULL, NULL, err, sizeof(err));
    assert_non_null(rk);
    expect_rk_prop(rk, "queued.max.messages.kbytes", "16384");
    expect_rk_prop(rk, "queued.min.messages", "20480");
    expect_rk_prop(rk, "fetch.wait.max.ms", "100");
    expect_rk_prop(rk, "fetch.min.bytes", "1");
    rd_kafka_destroy(rk);
    rk = tly_kafka_consumer_create("127.0.0.1:1", "g", NULL, 0, 50, NULL, NULL, err, sizeof(err)); /* gathering */
    assert_non_null(rk);
    expect_rk_prop(rk, "fetch.wait.max.ms", "50");
    expect_rk_prop(rk, "fetch.min.bytes", "1048576");
    rd_kafka_destroy(rk);
}

/* The services' constructors apply the environment after their own settings, and refuse a bad one. */
static void
test_constructors_apply_the_environment(void **state)
{
    char err[256] = "";
    setenv("TALLY_KAFKA_CONSUMER_CONFIG", "no.such.property=1", 1);
    rd_kafka_t *rk = tly_kafka_consumer_create("127.0.0.1:1", "g", NULL, 0, 0, NULL, NULL, err, sizeof(err));
    assert_null(rk);
    assert_non_null(strstr(err, "TALLY_KAFKA_CONSUMER_CONFIG"));
    unsetenv("TALLY_KAFKA_CONSUMER_CONFIG");
    setenv("TALLY_KAFKA_CONFIG", "client.id=from-env", 1);
    rk = tly_kafka_producer_create("127.0.0.1:1", 1000, NULL, NULL, err, sizeof(err));
    assert_non_null(rk);
    expect_rk_prop(rk, "client.id", "from-env");
    rd_kafka_destroy(rk);
    unsetenv("TALLY_KAFKA_CONFIG");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_list_is_applied_in_order),
        cmocka_unit_test(test_errors_name_the_source),
        cmocka_unit_test(test_consumer_prefetch),
        cmocka_unit_test(test_constructors_apply_the_environment),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
