/* Settings from one table: defaults, environment, flags, generated --help. */
#include "tally/config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int
set_value(const tly_config_def_t *d, void *cfg, const char *value, const char *source, char *err, size_t errcap)
{
    char *field = (char *)cfg + d->offset;
    switch (d->type) {
    case TLY_CONFIG_STRING: {
        char **slot = (char **)field;
        free(*slot);
        *slot = value != NULL ? strdup(value) : NULL;
        return 0;
    }
    case TLY_CONFIG_INT: {
        char *end;
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (errno != 0 || end == value || *end != '\0' || v < d->min || v > d->max) {
            snprintf(err, errcap, "invalid value for %s (%s): \"%s\" is not an integer in [%lld, %lld]", d->name, source, value,
                     (long long)d->min, (long long)d->max);
            return -1;
        }
        *(int64_t *)field = v;
        return 0;
    }
    case TLY_CONFIG_BOOL:
        if (strcmp(value, "true") == 0 || strcmp(value, "1") == 0 || strcmp(value, "yes") == 0) {
            *(bool *)field = true;
        } else if (strcmp(value, "false") == 0 || strcmp(value, "0") == 0 || strcmp(value, "no") == 0) {
            *(bool *)field = false;
        } else {
            snprintf(err, errcap, "invalid value for %s (%s): \"%s\" is not a boolean", d->name, source, value);
            return -1;
        }
        return 0;
    }
    return -1;
}

static bool
name_is(const char *candidate, const char *name, size_t len)
{
    return candidate != NULL && strlen(candidate) == len && memcmp(candidate, name, len) == 0;
}

/* The setting of flag `name`: its name, or its deprecated old name. */
static const tly_config_def_t *
find_flag(const tly_config_def_t *defs, size_t ndefs, const char *name, size_t len)
{
    for (size_t i = 0; i < ndefs; ++i)
        if (name_is(defs[i].name, name, len) || name_is(defs[i].old_name, name, len))
            return &defs[i];
    return NULL;
}

void
tly_config_print_help(const tly_config_def_t *defs, size_t ndefs, const char *usage, FILE *out)
{
    fprintf(out, "%s\n\nsettings (flag, environment variable, default):\n", usage);
    for (size_t i = 0; i < ndefs; ++i) {
        const tly_config_def_t *d = &defs[i];
        fprintf(out, "  --%s=%s\n      %s (env %s; default %s", d->name,
                d->type == TLY_CONFIG_INT    ? "N"
                : d->type == TLY_CONFIG_BOOL ? "BOOL"
                                             : "VALUE",
                d->help, d->env, d->defval != NULL ? d->defval : "required");
        if (d->type == TLY_CONFIG_INT)
            fprintf(out, "; %lld..%lld", (long long)d->min, (long long)d->max);
        fprintf(out, ")\n");
        if (d->old_name != NULL)
            fprintf(out, "      --%s: deprecated name of --%s, still accepted\n", d->old_name, d->name);
    }
}

int
tly_config_load(const tly_config_def_t *defs, size_t ndefs, void *cfg, int argc, char **argv, const char *usage, FILE *help_out,
                char *err, size_t errcap)
{
    for (size_t i = 0; i < ndefs; ++i) {
        const tly_config_def_t *d = &defs[i];
        const char *env = d->env != NULL ? getenv(d->env) : NULL;
        const char *value = env != NULL ? env : d->defval;
        if (value == NULL)
            continue;
        if (set_value(d, cfg, value, env != NULL ? d->env : "default", err, errcap) != 0)
            return -1;
    }
    for (int i = 1; i < argc; ++i) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            tly_config_print_help(defs, ndefs, usage, help_out);
            return 1;
        }
        const char *eq = strchr(arg, '=');
        if (strncmp(arg, "--", 2) != 0 || eq == NULL) {
            snprintf(err, errcap, "unexpected argument \"%s\" (settings are --name=value)", arg);
            return -1;
        }
        const tly_config_def_t *d = find_flag(defs, ndefs, arg + 2, (size_t)(eq - arg - 2));
        if (d == NULL) {
            snprintf(err, errcap, "unknown setting \"%.*s\"", (int)(eq - arg), arg);
            return -1;
        }
        if (set_value(d, cfg, eq + 1, "flag", err, errcap) != 0)
            return -1;
    }
    for (size_t i = 0; i < ndefs; ++i) {
        const tly_config_def_t *d = &defs[i];
        if (d->type == TLY_CONFIG_STRING && *(char **)((char *)cfg + d->offset) == NULL) {
            snprintf(err, errcap, "missing required setting %s (env %s)", d->name, d->env);
            return -1;
        }
    }
    return 0;
}

void
tly_config_free(const tly_config_def_t *defs, size_t ndefs, void *cfg)
{
    for (size_t i = 0; i < ndefs; ++i) {
        if (defs[i].type == TLY_CONFIG_STRING) {
            char **slot = (char **)((char *)cfg + defs[i].offset);
            free(*slot);
            *slot = NULL;
        }
    }
}
