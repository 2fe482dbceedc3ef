/*
 * tallyctl webhooks listen: a webhook receiver for a developer's machine.
 * It listens on a local port, registers a temporary endpoint for it through
 * the command API (TALLY_URL, TALLY_API_KEY with the write scope), prints
 * each delivery with the check of its signature against the endpoint's
 * secret, forwards it (same body and webhook-* headers) to --forward-to and
 * answers Tally with the status the forward got (502 when it got none). On
 * SIGINT or SIGTERM the endpoint is deleted again.
 *
 * The stack must admit endpoints on loopback and plain http: the command
 * API and the worker with TALLY_WEBHOOK_ALLOW_PRIVATE=true (deploy/local/up.sh
 * sets it; docs/webhooks.md).
 */
#ifndef TALLYCTL_WEBHOOKS_LISTEN_H
#define TALLYCTL_WEBHOOKS_LISTEN_H

#include "cli.h"

int tly_ctl_webhooks_listen(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);

#endif
