/* `tallyctl verify`: rebuild into a shadow, compare with live, check the ledger invariants. */
#ifndef TALLYCTL_VERIFY_H
#define TALLYCTL_VERIFY_H

#include "cli.h"

#include <libpq-fe.h>
#include <stdio.h>

/** Checks the ledger invariants on the live tables, printing a report. Returns the number of violations, -1 on error. */
int tly_ctl_verify_invariants(PGconn *conn, FILE *out, char *err, size_t errcap);

int tly_ctl_verify_cmd(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);

#endif
