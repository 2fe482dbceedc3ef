/*
 * tallyctl's pure parts: the command table and what is generated from it
 * (lookup, help, option parsing, settings), and migration files (names,
 * order, checksums). The database commands are exercised against a real
 * PostgreSQL by the integration tests.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "bootstrap.h"
#include "cli.h"
#include "migrations.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NELEMS(a) (sizeof(a) / sizeof((a)[0]))

/* --- command table ------------------------------------------------------- */

static const tly_ctl_cmd_t *
find(int argc, char **argv, int *consumed)
{
    *consumed = -1;
    return tly_ctl_find(argc, argv, consumed);
}

static void
test_find_commands(void **state)
{
    int n;
    char *one[] = {"migrate", "--dir", "x"}, *two[] = {"keys", "create", "--tenant", "a"};
    const tly_ctl_cmd_t *c = find(3, one, &n);
    assert_non_null(c);
    assert_string_equal(c->name, "migrate");
    assert_int_equal(n, 1);
    c = find(4, two, &n);
    assert_non_null(c);
    assert_string_equal(c->name, "keys create");
    assert_int_equal(n, 2);
}

static void
test_find_unknown(void **state)
{
    int n;
    char *group[] = {"keys"}, *bad[] = {"keys", "nope"}, *none[] = {"nope"}, *prefix[] = {"migr"}, *joined[] = {"keys create"};
    assert_null(find(1, group, &n));
    assert_null(find(2, bad, &n));
    assert_null(find(1, none, &n));
    assert_null(find(1, prefix, &n));
    assert_null(find(1, joined, &n));
    assert_null(find(0, none, &n));
    assert_true(tly_ctl_is_group("keys"));
    assert_true(tly_ctl_is_group("tenants"));
    assert_true(tly_ctl_is_group("topics"));
    assert_false(tly_ctl_is_group("migrate"));
    assert_false(tly_ctl_is_group("key"));
    assert_false(tly_ctl_is_group(""));
}

/* Every row is complete; usage and examples name the command. */
static void
test_table_rows(void **state)
{
    assert_true(tly_ctl_ncommands >= 8);
    for (size_t i = 0; i < tly_ctl_ncommands; ++i) {
        const tly_ctl_cmd_t *c = &tly_ctl_commands[i];
        char prefix[64];
        assert_non_null(c->name);
        assert_non_null(c->summary);
        assert_non_null(c->handler);
        assert_int_equal(strncmp(c->usage, c->name, strlen(c->name)), 0);
        assert_non_null(c->examples[0]);
        snprintf(prefix, sizeof(prefix), "tallyctl %s", c->name);
        assert_non_null(strstr(c->examples[0], prefix));
        for (size_t j = 0; j < i; ++j)
            assert_string_not_equal(c->name, tly_ctl_commands[j].name);
        for (int o = 0; o < TLY_CTL_MAX_OPTS && c->options[o].name != NULL; ++o) {
            char flag[64];
            snprintf(flag, sizeof(flag), "--%s", c->options[o].name);
            assert_non_null(strstr(c->usage, flag)); /* usage shows every option */
            assert_non_null(c->options[o].metavar);
        }
    }
}

/* --- help ---------------------------------------------------------------- */

static char *
capture(void (*print)(FILE *))
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    print(f);
    fclose(f);
    return buf;
}

static const char *help_group;
static const tly_ctl_cmd_t *help_cmd;
static void
print_group(FILE *f)
{
    tly_ctl_print_group_help(help_group, f);
}
static void
print_cmd(FILE *f)
{
    tly_ctl_print_cmd_help(help_cmd, f);
}

static void
test_help_overview(void **state)
{
    char *text = capture(tly_ctl_print_help);
    for (size_t i = 0; i < tly_ctl_ncommands; ++i) {
        assert_non_null(strstr(text, tly_ctl_commands[i].name));
        assert_non_null(strstr(text, tly_ctl_commands[i].summary));
    }
    const char *envs[] = {"TALLY_PG_DSN",         "TALLY_KAFKA_BROKERS", "TALLY_KAFKA_TOPIC", "TALLY_KAFKA_PARTITIONS",
                          "TALLY_MIGRATIONS_DIR", "127.0.0.1:9092",      "tally.events"};
    for (size_t i = 0; i < NELEMS(envs); ++i)
        assert_non_null(strstr(text, envs[i]));
    free(text);
}

static void
test_help_group(void **state)
{
    help_group = "keys";
    char *text = capture(print_group);
    assert_non_null(strstr(text, "keys create"));
    assert_non_null(strstr(text, "keys verify"));
    assert_null(strstr(text, "migrate"));
    assert_null(strstr(text, "tenants"));
    free(text);
}

static void
test_help_command(void **state)
{
    int n;
    char *argv[] = {"keys", "create"};
    help_cmd = tly_ctl_find(2, argv, &n);
    char *text = capture(print_cmd);
    assert_non_null(strstr(text, "usage: tallyctl keys create --tenant TENANT"));
    assert_non_null(strstr(text, help_cmd->summary));
    assert_non_null(strstr(text, "--tenant TENANT"));
    assert_non_null(strstr(text, "(required)"));
    assert_non_null(strstr(text, "--label TEXT"));
    assert_non_null(strstr(text, "examples:\n  tallyctl keys create"));
    free(text);
}

/* --- option parsing ------------------------------------------------------ */

static const tly_ctl_cmd_t *
cmd_named(const char *name)
{
    for (size_t i = 0; i < tly_ctl_ncommands; ++i)
        if (strcmp(tly_ctl_commands[i].name, name) == 0)
            return &tly_ctl_commands[i];
    fail_msg("no command %s", name);
    return NULL;
}

static int
parse(const char *name, int argc, char **argv, tly_ctl_args_t *a, char *err)
{
    err[0] = '\0';
    return tly_ctl_parse_args(cmd_named(name), argc, argv, a, err, 256);
}

static void
test_args_ok(void **state)
{
    char err[256];
    tly_ctl_args_t a;
    char *argv[] = {"--tenant", "acme", "--scopes=read,write", "--label", "--x"};
    assert_int_equal(parse("keys create", 5, argv, &a, err), 0);
    const tly_ctl_cmd_t *c = cmd_named("keys create");
    assert_string_equal(tly_ctl_arg(c, &a, "tenant"), "acme");
    assert_string_equal(tly_ctl_arg(c, &a, "scopes"), "read,write");
    assert_string_equal(tly_ctl_arg(c, &a, "label"), "--x"); /* a value may start with -- */
    assert_null(tly_ctl_arg(c, &a, "tier"));
    char *pos[] = {"--", "--odd-key"};
    assert_int_equal(parse("keys revoke", 2, pos, &a, err), 0);
    assert_int_equal(a.npos, 1);
    assert_string_equal(a.pos[0], "--odd-key");
    char *help[] = {"--tenant", "x", "--help"};
    assert_int_equal(parse("keys create", 3, help, &a, err), 1);
}

static void
test_args_errors(void **state)
{
    char err[256];
    tly_ctl_args_t a;
    char *missing[] = {"--tenant", "acme"}, *unknown[] = {"--dir", "x", "--force"}, *twice[] = {"--name", "a", "--name=b"};
    char *novalue[] = {"--dir"}, *extra[] = {"x"}, *none[] = {"x"}, *many[] = {"a", "b"};
    assert_int_equal(parse("keys create", 2, missing, &a, err), -1);
    assert_non_null(strstr(err, "missing option \"--scopes SCOPES\""));
    assert_int_equal(parse("migrate", 3, unknown, &a, err), -1);
    assert_non_null(strstr(err, "unknown option \"--force\""));
    assert_int_equal(parse("tenants create", 3, twice, &a, err), -1);
    assert_non_null(strstr(err, "more than once"));
    assert_int_equal(parse("migrate", 1, novalue, &a, err), -1);
    assert_non_null(strstr(err, "needs a value"));
    assert_int_equal(parse("tenants list", 1, extra, &a, err), -1);
    assert_non_null(strstr(err, "takes no arguments"));
    assert_int_equal(parse("keys verify", 0, none, &a, err), -1);
    assert_non_null(strstr(err, "takes one argument, KEY"));
    assert_int_equal(parse("keys verify", 2, many, &a, err), -1);
}

/* --- settings ------------------------------------------------------------ */

/* bootstrap refuses a missing or malformed key and bad options before any
   connection (the DSN names nothing that answers). */
static void
test_bootstrap_refuses_bad_input(void **state)
{
    (void)state;
    char err[256];
    tly_ctl_args_t a;
    const tly_ctl_cmd_t *c = cmd_named("bootstrap");
    tly_ctl_settings_t settings = {.pg_dsn = "host=/nonexistent"};
    char *ok[] = {"--tenant", "dev"};
    assert_int_equal(parse("bootstrap", 2, ok, &a, err), 0);
    unsetenv(TLY_CTL_BOOTSTRAP_KEY_ENV);
    assert_int_equal(tly_ctl_bootstrap(c, &settings, &a), TLY_CTL_USAGE);
    setenv(TLY_CTL_BOOTSTRAP_KEY_ENV, "tly_live_short_secret", 1);
    assert_int_equal(tly_ctl_bootstrap(c, &settings, &a), TLY_CTL_USAGE);
    setenv(TLY_CTL_BOOTSTRAP_KEY_ENV, "tly_live_abcdefghijklmnop_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG", 1);
    char *scopes[] = {"--tenant", "dev", "--scopes", "read,owner"};
    assert_int_equal(parse("bootstrap", 4, scopes, &a, err), 0);
    assert_int_equal(tly_ctl_bootstrap(c, &settings, &a), TLY_CTL_USAGE);
    char *empty[] = {"--tenant", ""};
    assert_int_equal(parse("bootstrap", 2, empty, &a, err), 0);
    assert_int_equal(tly_ctl_bootstrap(c, &settings, &a), TLY_CTL_USAGE);
    /* a well-formed request gets as far as the connection */
    assert_int_equal(parse("bootstrap", 2, ok, &a, err), 0);
    assert_int_equal(tly_ctl_bootstrap(c, &settings, &a), TLY_CTL_FAIL);
    unsetenv(TLY_CTL_BOOTSTRAP_KEY_ENV);
}

static void
test_settings(void **state)
{
    char err[256];
    tly_ctl_settings_t s;
    unsetenv("TALLY_PG_DSN");
    unsetenv("TALLY_KAFKA_BROKERS");
    setenv("TALLY_KAFKA_PARTITIONS", "3", 1);
    assert_int_equal(tly_ctl_settings_load(0, &s, err, sizeof(err)), 0);
    assert_string_equal(s.kafka_brokers, "127.0.0.1:9092");
    assert_int_equal(s.kafka_partitions, 3);
    assert_null(s.pg_dsn);
    tly_ctl_settings_free(&s);
    assert_int_equal(tly_ctl_settings_load(TLY_CTL_NEEDS_PG, &s, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "TALLY_PG_DSN"));
    tly_ctl_settings_free(&s);
    setenv("TALLY_KAFKA_PARTITIONS", "zero", 1);
    assert_int_equal(tly_ctl_settings_load(0, &s, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "TALLY_KAFKA_PARTITIONS"));
    tly_ctl_settings_free(&s);
    unsetenv("TALLY_KAFKA_PARTITIONS");
}

/* --- migration files ----------------------------------------------------- */

static void
test_migration_names(void **state)
{
    int v = -1;
    char name[TLY_MIGRATION_NAME_MAX];
    assert_true(tly_migration_parse_name("0001_init.sql", &v, name, sizeof(name)));
    assert_int_equal(v, 1);
    assert_string_equal(name, "init");
    assert_true(tly_migration_parse_name("0042_add-index_2.sql", &v, name, sizeof(name)));
    assert_int_equal(v, 42);
    assert_string_equal(name, "add-index_2");
    assert_true(tly_migration_parse_name("7_x.sql", &v, name, sizeof(name)));
    assert_int_equal(v, 7);
    const char *bad[] = {"0001init.sql", "0001_.sql",    "abcd_x.sql", "0000_x.sql",       "0001_x.SQL", "0001_x.sql.bak",
                         "0001_a b.sql", "_x.sql",       "0001_x.sq",  "1234567890_x.sql", "0001_x",     "",
                         ".sql",         "0001_a.b.sql", "0001_x/.sql"};
    for (size_t i = 0; i < NELEMS(bad); ++i)
        assert_false(tly_migration_parse_name(bad[i], &v, name, sizeof(name)));
    assert_false(tly_migration_parse_name("0001_longname.sql", &v, name, 4)); /* name does not fit */
}

static void
test_sha256(void **state)
{
    char hex[TLY_SHA256_HEX_LEN + 1];
    tly_sha256_hex("", 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    tly_sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static char tmpdir[64];

static void
write_file(const char *name, const char *content, size_t len)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(content, 1, len, f), len);
    fclose(f);
}

static int
make_dir(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_tallyctl.XXXXXX");
    return mkdtemp(tmpdir) != NULL ? 0 : -1;
}

static int
remove_dir(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void
test_load_ordered(void **state)
{
    char err[512], hex[TLY_SHA256_HEX_LEN + 1];
    tly_migration_set_t set;
    write_file("0010_c.sql", "SELECT 10;", 10);
    write_file("0002_b.sql", "SELECT 2;", 9);
    write_file("0001_a.sql", "abc", 3);
    write_file("README.md", "not a migration", 15);
    write_file(".0003_editor.sql", "ignored", 7);
    assert_int_equal(tly_migrations_load(tmpdir, &set, err, sizeof(err)), 0);
    assert_int_equal(set.n, 3);
    assert_int_equal(set.items[0].version, 1);
    assert_int_equal(set.items[1].version, 2);
    assert_int_equal(set.items[2].version, 10);
    assert_string_equal(set.items[2].file, "0010_c.sql");
    assert_string_equal(set.items[2].name, "c");
    assert_string_equal(set.items[2].sql, "SELECT 10;");
    assert_string_equal(set.items[0].checksum, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    tly_sha256_hex("SELECT 2;", 9, hex);
    assert_string_equal(set.items[1].checksum, hex);
    assert_ptr_equal(tly_migrations_find(&set, 10), &set.items[2]);
    assert_null(tly_migrations_find(&set, 3));
    tly_migrations_free(&set);
}

static void
expect_load_error(const char *needle)
{
    char err[512] = "";
    tly_migration_set_t set;
    assert_int_equal(tly_migrations_load(tmpdir, &set, err, sizeof(err)), -1);
    if (strstr(err, needle) == NULL)
        fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
    tly_migrations_free(&set);
}

static void
test_load_errors(void **state)
{
    write_file("0001_a.sql", "SELECT 1;", 9);
    write_file("0001_b.sql", "SELECT 1;", 9);
    expect_load_error("have the same version 1");
    write_file("0001_b.sql", "x", 1);
    char path[256];
    snprintf(path, sizeof(path), "%s/0001_b.sql", tmpdir);
    assert_int_equal(unlink(path), 0);
    write_file("01-bad.sql", "", 0);
    expect_load_error("/01-bad.sql\" is not NNNN_name.sql");
    snprintf(path, sizeof(path), "%s/01-bad.sql", tmpdir);
    assert_int_equal(unlink(path), 0);
    write_file("0002_nul.sql", "SELECT\0 1;", 10);
    expect_load_error("NUL byte");
    snprintf(path, sizeof(path), "%s/0002_nul.sql", tmpdir);
    assert_int_equal(unlink(path), 0);
    char err[512];
    tly_migration_set_t set;
    assert_int_equal(tly_migrations_load("/nonexistent/tally", &set, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "could not open migrations directory \"/nonexistent/tally\""));
    tly_migrations_free(&set);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_find_commands),
        cmocka_unit_test(test_find_unknown),
        cmocka_unit_test(test_table_rows),
        cmocka_unit_test(test_help_overview),
        cmocka_unit_test(test_help_group),
        cmocka_unit_test(test_help_command),
        cmocka_unit_test(test_args_ok),
        cmocka_unit_test(test_args_errors),
        cmocka_unit_test(test_bootstrap_refuses_bad_input),
        cmocka_unit_test(test_settings),
        cmocka_unit_test(test_migration_names),
        cmocka_unit_test(test_sha256),
        cmocka_unit_test_setup_teardown(test_load_ordered, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_load_errors, make_dir, remove_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
