/* `tallyctl events tail|show`: the event log, readable. */
#ifndef TALLYCTL_EVENTS_H
#define TALLYCTL_EVENTS_H

#include "cli.h"

int tly_ctl_events_tail(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);
int tly_ctl_events_show(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);

#endif
