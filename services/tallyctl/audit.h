/*
 * `tallyctl audit`: the audit trail (audit_events, migrations/0006), newest
 * last; and the operator identity tallyctl's own changes are recorded under.
 */
#ifndef TALLYCTL_AUDIT_H
#define TALLYCTL_AUDIT_H

#include "cli.h"

/** The account tallyctl runs as ("root", or "uid 1000" without a passwd entry); a static buffer. */
const char *tly_ctl_operator(void);

int tly_ctl_audit_list(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);

#endif
