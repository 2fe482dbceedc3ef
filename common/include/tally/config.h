/*
 * Table-driven configuration. Each service declares one table of settings
 * (name, environment variable, type, default, bounds, help); values come from
 * the environment, then from `--name=value` flags; `--help` is generated from
 * the table. A bad value is reported with the key that holds it. One setting
 * has one flag name in every service; a renamed flag keeps working under its
 * old name (`old_name`), with a deprecation line in `--help`.
 */
#ifndef TALLY_CONFIG_H
#define TALLY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum en_tly_config_type_t {
    TLY_CONFIG_STRING,
    TLY_CONFIG_INT,
    TLY_CONFIG_BOOL,
} tly_config_type_t;

typedef struct st_tly_config_def_t {
    const char *name; /* flag name: --name=value */
    const char *env;  /* environment variable */
    tly_config_type_t type;
    const char *defval; /* default, as text; NULL for required strings */
    int64_t min, max;   /* bounds for TLY_CONFIG_INT */
    size_t offset;      /* offsetof the field in the service's config struct */
    const char *help;
    const char *old_name; /* NULL, or a former flag name that still works (--help says it is deprecated) */
} tly_config_def_t;

/**
 * Fills `cfg` (a struct whose fields the table's offsets point to: `char *`
 * for strings, `int64_t` for ints, `bool` for bools) from defaults, the
 * environment and argv. Unknown flags, bad values and missing required values
 * are written to `err` (caller's buffer). Returns 0, 1 when --help was printed
 * to `help_out`, or -1 on error. Strings are heap copies owned by `cfg`; free
 * them with tly_config_free.
 */
int tly_config_load(const tly_config_def_t *defs, size_t ndefs, void *cfg, int argc, char **argv, const char *usage, FILE *help_out,
                    char *err, size_t errcap) __attribute__((warn_unused_result));
void tly_config_free(const tly_config_def_t *defs, size_t ndefs, void *cfg);
/** Prints the generated help text for the table. */
void tly_config_print_help(const tly_config_def_t *defs, size_t ndefs, const char *usage, FILE *out);

#endif
