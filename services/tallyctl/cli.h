/*
 * The command table of tallyctl and everything generated from it: lookup,
 * `--help` texts, option parsing and the settings each command needs. A
 * command is one row of tly_ctl_commands[]; adding a command means adding a
 * row and a handler, nothing else.
 */
#ifndef TALLYCTL_CLI_H
#define TALLYCTL_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Exit codes of every command. */
enum {
    TLY_CTL_OK = 0,
    TLY_CTL_FAIL = 1,
    TLY_CTL_USAGE = 2,
};

#define TLY_CTL_MAX_OPTS 10
#define TLY_CTL_MAX_POS 2
#define TLY_CTL_MAX_EXAMPLES 4

/* What a command needs from the environment before its handler runs. */
enum {
    TLY_CTL_NEEDS_PG = 1 << 0,
};

typedef struct st_tly_ctl_opt_t {
    const char *name;    /* "tenant" for --tenant; NULL ends the list */
    const char *metavar; /* "NAME"; "" for a flag */
    bool required;
    const char *help;
    bool flag;   /* takes no value: its value is "1" when given */
    bool repeat; /* may be given several times: the values are joined with "," */
} tly_ctl_opt_t;

/**
 * Checks that option --`opt`'s value `s` is an integer in [min, max]; false
 * with "invalid value for --opt: ..." in `err` otherwise.
 */
bool tly_ctl_int_option(const char *opt, const char *s, long min, long max, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/** Settings from the environment (same variable names as every service). */
typedef struct st_tly_ctl_settings_t {
    char *pg_dsn;
    char *kafka_brokers;
    char *kafka_topic;
    int64_t kafka_partitions;
    char *migrations_dir;
} tly_ctl_settings_t;

/** Parsed arguments: option values indexed like the command's options[]. */
typedef struct st_tly_ctl_args_t {
    const char *values[TLY_CTL_MAX_OPTS]; /* borrowed from argv; NULL when absent */
    const char *pos[TLY_CTL_MAX_POS];     /* positional arguments, borrowed */
    int npos;
    char joined[TLY_CTL_MAX_OPTS][512]; /* values of repeated options, joined with "," */
} tly_ctl_args_t;

typedef struct st_tly_ctl_cmd_t tly_ctl_cmd_t;

/** A command handler; returns TLY_CTL_OK, TLY_CTL_FAIL or TLY_CTL_USAGE. */
typedef int (*tly_ctl_handler_t)(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);

struct st_tly_ctl_cmd_t {
    const char *name; /* one or two words: "migrate", "keys create" */
    const char *summary;
    const char *usage; /* after "tallyctl " */
    tly_ctl_opt_t options[TLY_CTL_MAX_OPTS];
    const char *positional; /* metavar of the positional argument, NULL when none */
    const char *examples[TLY_CTL_MAX_EXAMPLES];
    int needs;
    tly_ctl_handler_t handler;
};

extern const tly_ctl_cmd_t tly_ctl_commands[];
extern const size_t tly_ctl_ncommands;

/**
 * Finds the command whose words begin `argv` (argv[0] is the first word after
 * the program name). Returns it and sets `*consumed` to the number of words
 * it spans, or NULL.
 */
const tly_ctl_cmd_t *tly_ctl_find(int argc, char **argv, int *consumed);

/** True when some command's name begins with the word `group` ("keys"). */
bool tly_ctl_is_group(const char *group);

/** Prints the overview: commands, settings, exit codes. */
void tly_ctl_print_help(FILE *out);
/** Prints the commands of one group ("keys"). */
void tly_ctl_print_group_help(const char *group, FILE *out);
/** Prints one command's usage, options and examples. */
void tly_ctl_print_cmd_help(const tly_ctl_cmd_t *cmd, FILE *out);

/**
 * Parses the words after the command name against its options: `--name VALUE`
 * or `--name=VALUE`, `--` ends options. Fails (writing why to `err`) on an
 * unknown or repeated option, a missing value or required option, and a wrong
 * number of positional arguments. Returns 1 when --help was asked for.
 */
int tly_ctl_parse_args(const tly_ctl_cmd_t *cmd, int argc, char **argv, tly_ctl_args_t *out, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/** The value of option `name` (which must be in the command's table), or NULL. */
const char *tly_ctl_arg(const tly_ctl_cmd_t *cmd, const tly_ctl_args_t *args, const char *name);

/** Loads the settings `needs` calls for from the environment; -1 with `err`. */
int tly_ctl_settings_load(int needs, tly_ctl_settings_t *s, char *err, size_t errcap) __attribute__((warn_unused_result));
void tly_ctl_settings_free(tly_ctl_settings_t *s);

/** Writes "tallyctl: <message>" and a newline to stderr. */
void tly_ctl_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/** The whole program: dispatches argv to a command. Returns the exit code. */
int tly_ctl_main(int argc, char **argv);

#endif
