/*
 * `tallyctl limits show|set`: a key's or a tenant's rate limits, concurrency
 * limits and shadow limits (table rate_limits, migration 0010). Every API
 * instance loads a change within TALLY_LIMITS_REFRESH_MS: no restart.
 */
#ifndef TALLYCTL_LIMITS_H
#define TALLYCTL_LIMITS_H

#include "cli.h"

int tly_ctl_limits_show(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);
int tly_ctl_limits_set(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);

#endif
