/* Creates the event topic; an existing topic counts as success. */
#include "topics.h"

#include "tally/kafka.h"

int
tly_ctl_topics_create(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[1024];
    if (tly_kafka_create_topic(settings->kafka_brokers, settings->kafka_topic, (int)settings->kafka_partitions,
                               TLY_CTL_TOPIC_TIMEOUT_MS, err, sizeof(err)) != 0) {
        tly_ctl_error("%s", err);
        return TLY_CTL_FAIL;
    }
    fprintf(stderr, "tallyctl: topic %s is ready on %s\n", settings->kafka_topic, settings->kafka_brokers);
    return TLY_CTL_OK;
}
