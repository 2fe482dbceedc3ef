/* Table-driven settings: defaults, environment, flags, bounds, help. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *dsn;
    int64_t port;
    bool verbose;
} cfg_t;

static const tly_config_def_t defs[] = {
    {"dsn", "TEST_DSN", TLY_CONFIG_STRING, NULL, 0, 0, offsetof(cfg_t, dsn), "database"},
    {"port", "TEST_PORT", TLY_CONFIG_INT, "8080", 1, 65535, offsetof(cfg_t, port), "port"},
    {"verbose", "TEST_VERBOSE", TLY_CONFIG_BOOL, "false", 0, 0, offsetof(cfg_t, verbose), "chatty"},
};
#define NDEFS (sizeof(defs) / sizeof(defs[0]))

static int
load(cfg_t *cfg, int argc, char **argv, char *err)
{
    memset(cfg, 0, sizeof(*cfg));
    FILE *devnull = fopen("/dev/null", "w");
    int rc = tly_config_load(defs, NDEFS, cfg, argc, argv, "usage: test", devnull, err, 256);
    fclose(devnull);
    return rc;
}

static void
test_env_then_flags(void **state)
{
    cfg_t cfg;
    char err[256];
    setenv("TEST_DSN", "host=x", 1);
    setenv("TEST_PORT", "9000", 1);
    char *argv[] = {"prog", "--port=9100", "--verbose=true"};
    assert_int_equal(load(&cfg, 3, argv, err), 0);
    assert_string_equal(cfg.dsn, "host=x");
    assert_int_equal(cfg.port, 9100);
    assert_true(cfg.verbose);
    tly_config_free(defs, NDEFS, &cfg);
    unsetenv("TEST_PORT");
}

static void
test_errors_name_the_key(void **state)
{
    cfg_t cfg;
    char err[256];
    setenv("TEST_DSN", "host=x", 1);
    char *bad_port[] = {"prog", "--port=70000"};
    assert_int_equal(load(&cfg, 2, bad_port, err), -1);
    assert_non_null(strstr(err, "port"));
    tly_config_free(defs, NDEFS, &cfg);
    char *unknown[] = {"prog", "--nope=1"};
    assert_int_equal(load(&cfg, 2, unknown, err), -1);
    assert_non_null(strstr(err, "unknown setting"));
    tly_config_free(defs, NDEFS, &cfg);
    unsetenv("TEST_DSN");
    char *none[] = {"prog"};
    assert_int_equal(load(&cfg, 1, none, err), -1);
    assert_non_null(strstr(err, "TEST_DSN"));
    tly_config_free(defs, NDEFS, &cfg);
}

static void
test_help(void **state)
{
    cfg_t cfg;
    char err[256];
    char *argv[] = {"prog", "--help"};
    assert_int_equal(load(&cfg, 2, argv, err), 1);
    tly_config_free(defs, NDEFS, &cfg);
    char buf[2048] = "";
    FILE *f = fmemopen(buf, sizeof(buf), "w");
    tly_config_print_help(defs, NDEFS, "usage: test", f);
    fclose(f);
    assert_non_null(strstr(buf, "--port=N"));
    assert_non_null(strstr(buf, "TEST_PORT"));
    assert_non_null(strstr(buf, "1..65535"));
}

/* A renamed flag keeps working under its old name, and --help says the old name is deprecated. */
static void
test_old_name(void **state)
{
    static const tly_config_def_t renamed[] = {
        {"kafka-topic", "TEST_TOPIC", TLY_CONFIG_STRING, "t.default", 0, 0, offsetof(cfg_t, dsn), "the topic", "topic"},
    };
    cfg_t cfg;
    char err[256];
    memset(&cfg, 0, sizeof(cfg));
    char *old[] = {"prog", "--topic=t.old"};
    assert_int_equal(tly_config_load(renamed, 1, &cfg, 2, old, "usage: test", stdout, err, sizeof(err)), 0);
    assert_string_equal(cfg.dsn, "t.old");
    tly_config_free(renamed, 1, &cfg);
    char *now[] = {"prog", "--kafka-topic=t.new"};
    assert_int_equal(tly_config_load(renamed, 1, &cfg, 2, now, "usage: test", stdout, err, sizeof(err)), 0);
    assert_string_equal(cfg.dsn, "t.new");
    tly_config_free(renamed, 1, &cfg);
    char buf[1024] = "";
    FILE *f = fmemopen(buf, sizeof(buf), "w");
    tly_config_print_help(renamed, 1, "usage: test", f);
    fclose(f);
    assert_non_null(strstr(buf, "--kafka-topic=VALUE"));
    assert_non_null(strstr(buf, "--topic: deprecated name of --kafka-topic"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_env_then_flags),
        cmocka_unit_test(test_errors_name_the_key),
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_old_name),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
