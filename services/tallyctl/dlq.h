/* `tallyctl dlq list|show|retry|discard`: the worker's dead letters. */
#ifndef TALLYCTL_DLQ_H
#define TALLYCTL_DLQ_H

#include "cli.h"

int tly_ctl_dlq_list(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);
int tly_ctl_dlq_show(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);
int tly_ctl_dlq_retry(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);
int tly_ctl_dlq_discard(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);

#endif
