/* tallyctl sagas: the transfer sagas the worker runs. */
#ifndef TALLY_CTL_SAGAS_H
#define TALLY_CTL_SAGAS_H

#include "cli.h"

/** sagas list [--stuck] [--all]: unfinished sagas (or all, or only the stuck ones). */
int tly_ctl_sagas_list(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);

#endif
