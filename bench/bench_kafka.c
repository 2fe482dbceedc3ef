/* Kafka set-up the bench's programs share. See bench_kafka.h. */
#include "bench_kafka.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

void
bench_kafka_set(const char *prog, rd_kafka_conf_t *c, const char *k, const char *v)
{
    char err[256];
    if (rd_kafka_conf_set(c, k, v, err, sizeof(err)) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "%s: %s=%s: %s\n", prog, k, v, err);
        exit(2);
    }
}

void
bench_kafka_create_topic(const char *prog, const char *brokers, const char *topic, int partitions)
{
    char err[256];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    bench_kafka_set(prog, c, "bootstrap.servers", brokers);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof(err));
    if (rk == NULL) {
        fprintf(stderr, "%s: %s\n", prog, err);
        exit(2);
    }
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(topic, partitions, 1, err, sizeof(err));
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_CreateTopics(rk, &nt, 1, NULL, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 30000);
    if (ev != NULL) {
        const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
        size_t n;
        const rd_kafka_topic_result_t **tr = rd_kafka_CreateTopics_result_topics(res, &n);
        if (n == 1 && rd_kafka_topic_result_error(tr[0]) &&
            rd_kafka_topic_result_error(tr[0]) != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
            fprintf(stderr, "%s: create topic: %s\n", prog, rd_kafka_topic_result_error_string(tr[0]));
        rd_kafka_event_destroy(ev);
    }
    rd_kafka_queue_destroy(q);
    rd_kafka_NewTopic_destroy(nt);
    rd_kafka_destroy(rk);
    sleep(1); /* leader election */
}
