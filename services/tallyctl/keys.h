/*
 * `tallyctl keys ...`: API keys are created here (the command API only checks
 * them). The full key is printed once; the database keeps SHA-256 of its
 * secret.
 */
#ifndef TALLYCTL_KEYS_H
#define TALLYCTL_KEYS_H

#include "cli.h"

#define TLY_CTL_RATE_MAX 1000000

/** True when `s` is a whole number in [1, TLY_CTL_RATE_MAX]; else says so in `err`, naming option --`opt`. */
bool tly_ctl_parse_rate(const char *opt, const char *s, char *err, size_t errcap);

int tly_ctl_keys_create(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);
int tly_ctl_keys_list(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);
int tly_ctl_keys_revoke(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);
int tly_ctl_keys_verify(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);

#endif
