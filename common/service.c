/* Shared main() for the services. See tally/service.h. */
#include "tally/service.h"
#include "tally/log.h"

#include <stdio.h>
#include <stdlib.h>

int
tly_service_main(const char *name, const tly_config_def_t *defs, size_t ndefs, void *cfg, size_t log_level_offset, int argc,
                 char **argv, const char *usage, int (*run)(void *cfg))
{
    char err[256];
    tly_log_level_t level;
    int rc = tly_config_load(defs, ndefs, cfg, argc, argv, usage, stdout, err, sizeof(err));
    if (rc != 0) {
        if (rc < 0)
            fprintf(stderr, "%s: %s\n", name, err);
        tly_config_free(defs, ndefs, cfg);
        return rc < 0 ? 2 : 0;
    }
    const char *level_text = *(char **)((char *)cfg + log_level_offset);
    if (!tly_log_level_parse(level_text, &level)) {
        fprintf(stderr, "%s: invalid value for log-level: \"%s\"\n", name, level_text);
        tly_config_free(defs, ndefs, cfg);
        return 2;
    }
    tly_log_init(name, level);
    /* PostgreSQL's pg_stat_activity shows which service a connection is (unless the operator named it) */
    char app[64];
    snprintf(app, sizeof(app), "tally-%s", name);
    setenv("PGAPPNAME", app, 0);
    rc = run(cfg);
    tly_config_free(defs, ndefs, cfg);
    return rc;
}
