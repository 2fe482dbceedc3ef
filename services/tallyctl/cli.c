/*
 * tallyctl's command table, and the lookup, help texts, option parsing and
 * settings generated from it. Handlers live in one file per subject
 * (migrate.c, tenants.c, keys.c, topics.c) and never parse argv themselves.
 */
#include "cli.h"
#include "bootstrap.h"
#include "dlq.h"
#include "sagas.h"
#include "events.h"
#include "audit.h"
#include "keys.h"
#include "limits.h"
#include "secrets.h"
#include "migrate.h"
#include "tenants.h"
#include "topics.h"
#include "verify.h"
#include "replay/replay.h"
#include "webhooks_listen.h"

#include "tally/config.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#ifndef TLY_CTL_DEFAULT_MIGRATIONS_DIR
#define TLY_CTL_DEFAULT_MIGRATIONS_DIR "migrations"
#endif

const tly_ctl_cmd_t tly_ctl_commands[] = {
    {.name = "migrate",
     .summary = "apply the migrations the database does not have yet",
     .usage = "migrate [--dir DIR]",
     .options = {{"dir", "DIR", false, "directory of NNNN_name.sql files (default: TALLY_MIGRATIONS_DIR)"}},
     .examples = {"tallyctl migrate", "TALLY_MIGRATIONS_DIR=./migrations tallyctl migrate"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_migrate},
    {.name = "topics create",
     .summary = "create the event topic (succeeds when it exists already)",
     .usage = "topics create",
     .examples = {"TALLY_KAFKA_BROKERS=127.0.0.1:9092 tallyctl topics create"},
     .handler = tly_ctl_topics_create},
    {.name = "tenants create",
     .summary = "create a tenant and print its id (the existing id when the name is taken)",
     .usage = "tenants create --name NAME",
     .options = {{"name", "NAME", true, "unique tenant name"}},
     .examples = {"tallyctl tenants create --name acme"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_tenants_create},
    {.name = "tenants list",
     .summary = "list tenants",
     .usage = "tenants list",
     .examples = {"tallyctl tenants list"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_tenants_list},
    {.name = "tenants quota",
     .summary = "show a tenant's quotas, or change them (recorded in the audit trail)",
     .usage = "tenants quota TENANT [--api-keys N] [--webhook-endpoints N] [--long-polls N]",
     .positional = "TENANT",
     .options = {{"api-keys", "N", false, "live (neither revoked nor expired) API keys"},
                 {"webhook-endpoints", "N", false, "webhook endpoints not deleted"},
                 {"long-polls", "N", false, "concurrent Prefer: wait requests per query API instance"}},
     .examples = {"tallyctl tenants quota acme", "tallyctl tenants quota acme --api-keys 200 --long-polls 500"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_tenants_quota},
    {.name = "webhooks reencrypt",
     .summary = "seal every webhook secret with the first key of TALLY_SECRET_KEYS (the step of a key rotation)",
     .usage = "webhooks reencrypt",
     .examples = {"TALLY_SECRET_KEYS=k2:...,k1:... tallyctl webhooks reencrypt"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_webhooks_reencrypt},
    {.name = "audit",
     .summary = "print the audit trail: who created, revoked, rotated or changed keys, endpoints and quotas",
     .usage = "audit [--tenant TENANT] [--last N]",
     .options = {{"tenant", "TENANT", false, "only this tenant's events (id or name)"},
                 {"last", "N", false, "the last N events (default 50)"}},
     .examples = {"tallyctl audit", "tallyctl audit --tenant acme --last 200"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_audit_list},
    {.name = "keys create",
     .summary = "create an API key and print it (the only time it is shown)",
     .usage = "keys create --tenant TENANT --scopes SCOPES [--tier free|standard] [--rate N --burst N] [--label TEXT] "
              "[--expires-at TIME]",
     .options = {{"tenant", "TENANT", true, "tenant id or name"},
                 {"scopes", "SCOPES", true, "comma-separated: read, write, admin"},
                 {"tier", "TIER", false, "rate tier: free or standard (default standard)"},
                 {"rate", "N", false, "requests per second, overriding the tier (needs --burst)"},
                 {"burst", "N", false, "burst size, overriding the tier (needs --rate)"},
                 {"label", "TEXT", false, "free text shown by keys list"},
                 {"expires-at", "TIME", false, "RFC 3339 time after which the key is refused (default: never)"}},
     .examples = {"tallyctl keys create --tenant acme --scopes read,write",
                  "tallyctl keys create --tenant acme --scopes read --rate 50 --burst 100 --label reporting"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_keys_create},
    {.name = "keys list",
     .summary = "list API keys (never their secrets)",
     .usage = "keys list [--tenant TENANT]",
     .options = {{"tenant", "TENANT", false, "only the keys of this tenant (id or name)"}},
     .examples = {"tallyctl keys list", "tallyctl keys list --tenant acme"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_keys_list},
    {.name = "keys revoke",
     .summary = "revoke an API key",
     .usage = "keys revoke KEY_ID",
     .positional = "KEY_ID",
     .examples = {"tallyctl keys revoke abcdefghijklmnop"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_keys_revoke},
    {.name = "keys verify",
     .summary = "check that an API key exists, matches and is not revoked",
     .usage = "keys verify KEY",
     .positional = "KEY",
     .examples = {"tallyctl keys verify \"$TALLY_API_KEY\"", "printenv TALLY_API_KEY | tallyctl keys verify -"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_keys_verify},
    {.name = "limits show",
     .summary = "show the rate limits of an API key or a tenant (its tier, overrides, budget, shadow limits)",
     .usage = "limits show --key KEY_ID | --tenant TENANT",
     .options = {{"key", "KEY_ID", false, "an API key id"}, {"tenant", "TENANT", false, "tenant id or name"}},
     .examples = {"tallyctl limits show --key abcdefghijklmnop", "tallyctl limits show --tenant acme"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_limits_show},
    {.name = "limits set",
     .summary = "set (or clear) the limits of an API key or a tenant; live on every instance, no restart",
     .usage = "limits set --key KEY_ID | --tenant TENANT [--plan free|standard] [--rate N [--burst N]] [--concurrency N] "
              "[--long-polls N] [--shadow] [--clear]",
     .options = {{"key", "KEY_ID", false, "an API key id: overrides its tier or contract"},
                 {"tenant", "TENANT", false, "tenant id or name: the budget all its keys share"},
                 {"plan", "TIER", false, "a tier's rate and burst: free or standard"},
                 {"rate", "N", false, "tokens per second (a contract)"},
                 {"burst", "N", false, "bucket size (default: the rate, or the plan's)"},
                 {"concurrency", "N", false, "requests in flight (a key's; default the tier's)"},
                 {"long-polls", "N", false, "Prefer: wait requests in flight (a key's; default the tier's)"},
                 {"shadow", "", false, "a new limit evaluated and counted beside the real one, never enforced", .flag = true},
                 {"clear", "", false, "the row limits nothing any more (the key's tier applies; no tenant budget)", .flag = true}},
     .examples = {"tallyctl limits set --tenant acme --plan standard",
                  "tallyctl limits set --key abcdefghijklmnop --rate 500 --burst 1000",
                  "tallyctl limits set --tenant acme --rate 50 --shadow", "tallyctl limits set --tenant acme --clear"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_limits_set},
    {.name = "bootstrap",
     .summary = "create the tenant and the api key of TALLY_BOOTSTRAP_API_KEY unless they exist (containers, test stacks)",
     .usage = "bootstrap --tenant NAME [--scopes SCOPES]",
     .options = {{"tenant", "NAME", true, "tenant of the key (created unless the name exists)"},
                 {"scopes", "SCOPES", false, "comma-separated: read, write, admin (default read,write,admin)"}},
     .examples = {"TALLY_BOOTSTRAP_API_KEY=tly_live_<16 base32>_<43 base64url> tallyctl bootstrap --tenant dev"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_bootstrap},
    {.name = "webhooks listen",
     .summary = "register a temporary webhook endpoint here, print and check each delivery, forward it; deleted on exit",
     .usage = "webhooks listen [--forward-to URL] [--events TYPES] [--listen ADDRESS:PORT] [--url URL]",
     .options = {{"forward-to", "URL", false, "POST each delivery (body and webhook-* headers) here; Tally gets its status"},
                 {"events", "TYPES", false, "comma-separated event types to receive (default *: all)"},
                 {"listen", "ADDRESS:PORT", false, "where to listen (default 127.0.0.1:0, a free port)"},
                 {"url", "URL", false, "the endpoint URL to register, when the worker reaches this listener another way"}},
     .examples = {"TALLY_URL=http://127.0.0.1:8080 TALLY_API_KEY=tly_live_... tallyctl webhooks listen "
                  "--forward-to http://127.0.0.1:3000/webhooks",
                  "tallyctl webhooks listen --events FundsDeposited,FundsWithdrawn"},
     .handler = tly_ctl_webhooks_listen},
    {.name = "replay",
     .summary = "rebuild read models from the event log into a shadow schema and swap them in (or keep a copy)",
     .usage = "replay [--projection NAME...] [--until TIME|P:O,...] [--into SCHEMA] [--restart] [--batch N] [--max-rate N] "
              "[--busy-rate N] [--quiet]",
     .options = {{"projection", "NAME", false, "read model to rebuild: accounts, ledger_entries, jobs (default: all)",
                  .repeat = true},
                 {"until", "TIME", false, "point in time (RFC 3339) or end offsets \"0:120,1:98\"; no swap"},
                 {"into", "SCHEMA", false, "leave the copy in this schema; no swap"},
                 {"restart", "", false, "drop an unfinished replay instead of resuming it", .flag = true},
                 {"batch", "N", false, "events per transaction (default 40000)"},
                 {"max-rate", "N", false,
                  "at most N events/s (default: no limit), in batches of 50 ms of events, to leave the live services their "
                  "share of the machine"},
                 {"busy-rate", "N", false,
                  "while other sessions are working in the database, at most N events/s in batches of 50 ms (default "
                  "25000); full speed while it is quiet; 0: never slow down; ignored with --max-rate"},
                 {"quiet", "", false, "no progress output", .flag = true}},
     .examples = {"tallyctl replay", "tallyctl replay --projection accounts --projection ledger_entries",
                  "tallyctl replay --until 2026-11-22T14:00:00Z --into balances_1400", "tallyctl replay --restart"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_replay_cmd},
    {.name = "verify",
     .summary = "rebuild into a throw-away shadow, compare with the live read models, check the ledger invariants",
     .usage = "verify [--projection NAME...] [--batch N] [--quiet]",
     .options = {{"projection", "NAME", false, "read model to compare (default: all)", .repeat = true},
                 {"batch", "N", false, "events per transaction of the rebuild (default 40000)"},
                 {"quiet", "", false, "no progress output", .flag = true}},
     .examples = {"tallyctl verify", "tallyctl verify --projection accounts --quiet"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_verify_cmd},
    {.name = "events tail",
     .summary = "print events of the log, one line each (time, partition@offset, type, aggregate, job, id)",
     .usage = "events tail [--follow] [--type TYPE] [--aggregate ID] [--from TIME] [--last N]",
     .options = {{"follow", "", false, "keep printing new events until interrupted", .flag = true},
                 {"type", "TYPE", false, "only events of this type, e.g. FundsDeposited"},
                 {"aggregate", "ID", false, "only events of this aggregate (account id)"},
                 {"from", "TIME", false, "start at this time (RFC 3339) instead of the end"},
                 {"last", "N", false, "print the last N (default 20; with --from: all)"}},
     .examples = {"tallyctl events tail", "tallyctl events tail --follow --type FundsDeposited",
                  "tallyctl events tail --aggregate 0b9c6f7e-1d2a-4c3b-9e8f-7a6b5c4d3e2f --from 2026-11-22T14:00:00Z"},
     .handler = tly_ctl_events_tail},
    {.name = "events show",
     .summary = "print one event (by id) with its partition, offset, key and headers",
     .usage = "events show EVENT_ID",
     .positional = "EVENT_ID",
     .examples = {"tallyctl events show 5d1e2c3b-4a59-4f68-8e7d-6c5b4a392817"},
     .handler = tly_ctl_events_show},
    {.name = "sagas list",
     .summary = "list transfer sagas still in flight (or the stuck ones, or all)",
     .usage = "sagas list [--stuck] [--all]",
     .options = {{"stuck", "", false, "only sagas still in flight past their limit (TALLY_SAGA_STUCK_MS)", true},
                 {"all", "", false, "finished sagas too (the 1,000 oldest)", true}},
     .examples = {"tallyctl sagas list", "tallyctl sagas list --stuck"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_sagas_list},
    {.name = "dlq list",
     .summary = "list the dead letters the worker parked",
     .usage = "dlq list [--consumer NAME]",
     .options = {{"consumer", "NAME", false, "only this consumer's: projector or decider"}},
     .examples = {"tallyctl dlq list", "tallyctl dlq list --consumer projector"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_dlq_list},
    {.name = "dlq show",
     .summary = "print one dead letter with its error and event",
     .usage = "dlq show ID",
     .positional = "ID",
     .examples = {"tallyctl dlq show 42"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_dlq_show},
    {.name = "dlq retry",
     .summary = "apply a projector dead letter through its projection and remove it (decider ones: refused, see --help)",
     .usage = "dlq retry ID",
     .positional = "ID",
     .examples = {"tallyctl dlq retry 42",
                  "# a decider dead letter already has its outcome (XxxRejected, dead_lettered): the client resends"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_dlq_retry},
    {.name = "dlq discard",
     .summary = "delete a dead letter without applying it",
     .usage = "dlq discard ID",
     .positional = "ID",
     .examples = {"tallyctl dlq discard 42"},
     .needs = TLY_CTL_NEEDS_PG,
     .handler = tly_ctl_dlq_discard},
};
const size_t tly_ctl_ncommands = sizeof(tly_ctl_commands) / sizeof(tly_ctl_commands[0]);

/* Settings: TALLY_PG_DSN is required only by commands that need PostgreSQL,
   so it sits in a table of its own. */
static const tly_config_def_t pg_settings[] = {
    {"pg-dsn", "TALLY_PG_DSN", TLY_CONFIG_STRING, NULL, 0, 0, offsetof(tly_ctl_settings_t, pg_dsn),
     "PostgreSQL connection string; required by database commands"},
};
static const tly_config_def_t base_settings[] = {
    {"kafka-brokers", "TALLY_KAFKA_BROKERS", TLY_CONFIG_STRING, "127.0.0.1:9092", 0, 0, offsetof(tly_ctl_settings_t, kafka_brokers),
     "Kafka bootstrap servers"},
    {"kafka-topic", "TALLY_KAFKA_TOPIC", TLY_CONFIG_STRING, "tally.events", 0, 0, offsetof(tly_ctl_settings_t, kafka_topic),
     "event topic"},
    {"kafka-partitions", "TALLY_KAFKA_PARTITIONS", TLY_CONFIG_INT, "12", 1, 10000, offsetof(tly_ctl_settings_t, kafka_partitions),
     "partitions of the event topic when tallyctl creates it"},
    {"migrations-dir", "TALLY_MIGRATIONS_DIR", TLY_CONFIG_STRING, TLY_CTL_DEFAULT_MIGRATIONS_DIR, 0, 0,
     offsetof(tly_ctl_settings_t, migrations_dir), "migration files"},
};
#define NELEMS(a) (sizeof(a) / sizeof((a)[0]))

void
tly_ctl_error(const char *fmt, ...)
{
    va_list ap;
    fputs("tallyctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* Number of words of `name` that match the start of argv; 0 when not all do. */
static int
match_words(const char *name, int argc, char **argv)
{
    int i = 0;
    for (const char *p = name; *p != '\0'; ++i) {
        size_t n = strcspn(p, " ");
        if (i >= argc || strlen(argv[i]) != n || memcmp(argv[i], p, n) != 0)
            return 0;
        p += n;
        p += strspn(p, " ");
    }
    return i;
}

const tly_ctl_cmd_t *
tly_ctl_find(int argc, char **argv, int *consumed)
{
    for (size_t i = 0; i < tly_ctl_ncommands; ++i) {
        int n = match_words(tly_ctl_commands[i].name, argc, argv);
        if (n > 0) {
            *consumed = n;
            return &tly_ctl_commands[i];
        }
    }
    return NULL;
}

static bool
in_group(const tly_ctl_cmd_t *cmd, const char *group)
{
    size_t n = strlen(group);
    return n > 0 && strncmp(cmd->name, group, n) == 0 && cmd->name[n] == ' ';
}

bool
tly_ctl_is_group(const char *group)
{
    for (size_t i = 0; i < tly_ctl_ncommands; ++i)
        if (in_group(&tly_ctl_commands[i], group))
            return true;
    return false;
}

static void
print_settings(FILE *out, const tly_config_def_t *defs, size_t ndefs)
{
    for (size_t i = 0; i < ndefs; ++i)
        if (defs[i].defval != NULL)
            fprintf(out, "  %-24s %s (default: %s)\n", defs[i].env, defs[i].help, defs[i].defval);
        else
            fprintf(out, "  %-24s %s\n", defs[i].env, defs[i].help);
}

void
tly_ctl_print_help(FILE *out)
{
    fprintf(out, "tallyctl: operator command line for Tally\n\nusage: tallyctl COMMAND [OPTIONS]\n\ncommands:\n");
    for (size_t i = 0; i < tly_ctl_ncommands; ++i)
        fprintf(out, "  %-18s %s\n", tly_ctl_commands[i].name, tly_ctl_commands[i].summary);
    fprintf(out, "\nsettings (environment):\n");
    print_settings(out, pg_settings, NELEMS(pg_settings));
    print_settings(out, base_settings, NELEMS(base_settings));
    fprintf(out, "\nexit status: 0 success, 1 failure, 2 usage or settings error\n"
                 "run \"tallyctl COMMAND --help\" for a command's options and examples\n");
}

void
tly_ctl_print_group_help(const char *group, FILE *out)
{
    fprintf(out, "usage: tallyctl %s COMMAND [OPTIONS]\n\ncommands:\n", group);
    for (size_t i = 0; i < tly_ctl_ncommands; ++i)
        if (in_group(&tly_ctl_commands[i], group))
            fprintf(out, "  %-18s %s\n", tly_ctl_commands[i].name, tly_ctl_commands[i].summary);
}

void
tly_ctl_print_cmd_help(const tly_ctl_cmd_t *cmd, FILE *out)
{
    fprintf(out, "usage: tallyctl %s\n\n%s\n", cmd->usage, cmd->summary);
    if (cmd->options[0].name != NULL)
        fprintf(out, "\noptions:\n");
    for (const tly_ctl_opt_t *o = cmd->options; o->name != NULL; ++o) {
        char flag[160];
        if (o->flag)
            snprintf(flag, sizeof(flag), "--%s", o->name);
        else
            snprintf(flag, sizeof(flag), "--%s %s%s", o->name, o->metavar, o->repeat ? "..." : "");
        fprintf(out, "  %-22s %s%s\n", flag, o->help, o->required ? " (required)" : "");
    }
    if (cmd->examples[0] != NULL)
        fprintf(out, "\nexamples:\n");
    for (size_t i = 0; i < TLY_CTL_MAX_EXAMPLES && cmd->examples[i] != NULL; ++i)
        fprintf(out, "  %s\n", cmd->examples[i]);
}

static int
find_opt(const tly_ctl_cmd_t *cmd, const char *name, size_t len)
{
    for (int i = 0; i < TLY_CTL_MAX_OPTS && cmd->options[i].name != NULL; ++i)
        if (strlen(cmd->options[i].name) == len && memcmp(cmd->options[i].name, name, len) == 0)
            return i;
    return -1;
}

const char *
tly_ctl_arg(const tly_ctl_cmd_t *cmd, const tly_ctl_args_t *args, const char *name)
{
    int i = find_opt(cmd, name, strlen(name));
    return i >= 0 ? args->values[i] : NULL;
}

/* Takes the option at argv[*i] (and its value); advances *i past them. */
static int
take_option(const tly_ctl_cmd_t *cmd, int argc, char **argv, int *i, tly_ctl_args_t *out, char *err, size_t errcap)
{
    const char *arg = argv[*i] + 2, *eq = strchr(arg, '=');
    size_t len = eq != NULL ? (size_t)(eq - arg) : strlen(arg);
    int o = find_opt(cmd, arg, len);
    if (o < 0) {
        snprintf(err, errcap, "unknown option \"--%.*s\" for \"%s\"", (int)len, arg, cmd->name);
        return -1;
    }
    if (out->values[o] != NULL && !cmd->options[o].repeat) {
        snprintf(err, errcap, "option \"--%s\" given more than once", cmd->options[o].name);
        return -1;
    }
    if (cmd->options[o].flag) {
        if (eq != NULL) {
            snprintf(err, errcap, "option \"--%s\" takes no value", cmd->options[o].name);
            return -1;
        }
        out->values[o] = "1";
        ++*i;
        return 0;
    }
    if (eq == NULL && *i + 1 >= argc) {
        snprintf(err, errcap, "option \"--%s\" needs a value (%s)", cmd->options[o].name, cmd->options[o].metavar);
        return -1;
    }
    const char *value = eq != NULL ? eq + 1 : argv[++*i];
    ++*i;
    if (out->values[o] == NULL) {
        out->values[o] = value;
        return 0;
    }
    /* a repeated option: join with "," */
    size_t have = strlen(out->values[o]);
    if (have + 1 + strlen(value) >= sizeof(out->joined[o])) {
        snprintf(err, errcap, "option \"--%s\": too many values", cmd->options[o].name);
        return -1;
    }
    if (out->values[o] != out->joined[o])
        memmove(out->joined[o], out->values[o], have + 1);
    out->joined[o][have] = ',';
    memcpy(out->joined[o] + have + 1, value, strlen(value) + 1);
    out->values[o] = out->joined[o];
    return 0;
}

static int
check_args(const tly_ctl_cmd_t *cmd, const tly_ctl_args_t *out, char *err, size_t errcap)
{
    for (int o = 0; o < TLY_CTL_MAX_OPTS && cmd->options[o].name != NULL; ++o) {
        if (cmd->options[o].required && out->values[o] == NULL) {
            snprintf(err, errcap, "missing option \"--%s %s\"", cmd->options[o].name, cmd->options[o].metavar);
            return -1;
        }
    }
    if (out->npos != (cmd->positional != NULL ? 1 : 0)) {
        if (cmd->positional != NULL)
            snprintf(err, errcap, "\"%s\" takes one argument, %s", cmd->name, cmd->positional);
        else
            snprintf(err, errcap, "\"%s\" takes no arguments", cmd->name);
        return -1;
    }
    return 0;
}

int
tly_ctl_parse_args(const tly_ctl_cmd_t *cmd, int argc, char **argv, tly_ctl_args_t *out, char *err, size_t errcap)
{
    bool options_done = false;
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < argc;) {
        const char *a = argv[i];
        if (!options_done && (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0))
            return 1;
        if (!options_done && strcmp(a, "--") == 0) {
            options_done = true;
            ++i;
        } else if (!options_done && strncmp(a, "--", 2) == 0) {
            if (take_option(cmd, argc, argv, &i, out, err, errcap) != 0)
                return -1;
        } else if (out->npos < TLY_CTL_MAX_POS) {
            out->pos[out->npos++] = argv[i++];
        } else {
            snprintf(err, errcap, "too many arguments for \"%s\"", cmd->name);
            return -1;
        }
    }
    return check_args(cmd, out, err, errcap);
}

int
tly_ctl_settings_load(int needs, tly_ctl_settings_t *s, char *err, size_t errcap)
{
    char *argv0[] = {"tallyctl", NULL};
    memset(s, 0, sizeof(*s));
    /* argc 1: settings come from the environment only; the command line
       belongs to the commands */
    if (tly_config_load(base_settings, NELEMS(base_settings), s, 1, argv0, "", stderr, err, errcap) != 0)
        return -1;
    if ((needs & TLY_CTL_NEEDS_PG) != 0 &&
        tly_config_load(pg_settings, NELEMS(pg_settings), s, 1, argv0, "", stderr, err, errcap) != 0)
        return -1;
    return 0;
}

void
tly_ctl_settings_free(tly_ctl_settings_t *s)
{
    tly_config_free(base_settings, NELEMS(base_settings), s);
    tly_config_free(pg_settings, NELEMS(pg_settings), s);
}

/* Runs `cmd` with the words after its name. */
static int
run_command(const tly_ctl_cmd_t *cmd, int argc, char **argv)
{
    char err[512];
    tly_ctl_args_t args;
    tly_ctl_settings_t settings;
    int ret, parsed = tly_ctl_parse_args(cmd, argc, argv, &args, err, sizeof(err));
    if (parsed == 1) {
        tly_ctl_print_cmd_help(cmd, stdout);
        return TLY_CTL_OK;
    }
    if (parsed != 0) {
        tly_ctl_error("%s\nusage: tallyctl %s", err, cmd->usage);
        return TLY_CTL_USAGE;
    }
    if (tly_ctl_settings_load(cmd->needs, &settings, err, sizeof(err)) != 0) {
        tly_ctl_error("%s", err);
        ret = TLY_CTL_USAGE;
        goto cleanup;
    }
    ret = cmd->handler(cmd, &settings, &args);
cleanup:
    tly_ctl_settings_free(&settings);
    return ret;
}

int
tly_ctl_main(int argc, char **argv)
{
    int consumed = 0;
    if (argc < 2) {
        tly_ctl_print_help(stderr);
        return TLY_CTL_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        tly_ctl_print_help(stdout);
        return TLY_CTL_OK;
    }
    const tly_ctl_cmd_t *cmd = tly_ctl_find(argc - 1, argv + 1, &consumed);
    if (cmd != NULL)
        return run_command(cmd, argc - 1 - consumed, argv + 1 + consumed);
    if (tly_ctl_is_group(argv[1])) {
        bool help = argc > 2 && (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0);
        if (!help && argc > 2)
            tly_ctl_error("unknown command \"%s %s\"", argv[1], argv[2]);
        else if (!help)
            tly_ctl_error("\"%s\" needs a command", argv[1]);
        tly_ctl_print_group_help(argv[1], help ? stdout : stderr);
        return help ? TLY_CTL_OK : TLY_CTL_USAGE;
    }
    tly_ctl_error("unknown command \"%s\"; run \"tallyctl --help\" for the list", argv[1]);
    return TLY_CTL_USAGE;
}

bool
tly_ctl_int_option(const char *opt, const char *s, long min, long max, char *err, size_t errcap)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno == 0 && end != s && *end == '\0' && v >= min && v <= max)
        return true;
    snprintf(err, errcap, "invalid value for --%s: \"%s\" is not an integer in [%ld, %ld]", opt, s, min, max);
    return false;
}
