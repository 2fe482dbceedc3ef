/* `tallyctl topics create`: the event topic, created before anything produces. */
#ifndef TALLYCTL_TOPICS_H
#define TALLYCTL_TOPICS_H

#include "cli.h"

/* Short enough that the local runner, which retries this command as its
   broker readiness probe, sees a dead broker within ~10 s per attempt. */
#define TLY_CTL_TOPIC_TIMEOUT_MS 10000

int tly_ctl_topics_create(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);

#endif
