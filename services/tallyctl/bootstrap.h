/*
 * tallyctl bootstrap: a tenant and an API key given from outside (the
 * environment variable TALLY_BOOTSTRAP_API_KEY, in the key format), so a
 * container stack comes up with a key its test suite already knows. Only
 * the secret's hash is stored; a second run with the same key succeeds.
 */
#ifndef TALLYCTL_BOOTSTRAP_H
#define TALLYCTL_BOOTSTRAP_H

#include "cli.h"

/** The environment variable that holds the key (never a command-line argument: ps shows those). */
#define TLY_CTL_BOOTSTRAP_KEY_ENV "TALLY_BOOTSTRAP_API_KEY"

int tly_ctl_bootstrap(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);

#endif
