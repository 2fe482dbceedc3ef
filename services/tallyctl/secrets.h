/*
 * `tallyctl webhooks reencrypt`: seals every webhook endpoint's signing
 * secrets (current and previous) with the first key of TALLY_SECRET_KEYS,
 * the step of a key rotation that lets the old key go (docs/security.md).
 */
#ifndef TALLYCTL_SECRETS_H
#define TALLYCTL_SECRETS_H

#include "cli.h"

int tly_ctl_webhooks_reencrypt(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);

#endif
