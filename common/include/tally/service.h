/* The whole of a service's main(): settings from the table, log level, run. */
#ifndef TALLY_SERVICE_H
#define TALLY_SERVICE_H

#include "tally/config.h"

/**
 * Loads `cfg` from `defs` (environment and flags), initialises logging as
 * `name` with the level found at `log_level_offset` (a `char *` field), calls
 * `run(cfg)` and frees the settings. Returns the process exit code: run's, 0
 * after --help, 2 on a bad setting.
 */
int tly_service_main(const char *name, const tly_config_def_t *defs, size_t ndefs, void *cfg, size_t log_level_offset, int argc,
                     char **argv, const char *usage, int (*run)(void *cfg));

#endif
