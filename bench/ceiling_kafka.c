/*
 * Kafka ceiling: raw librdkafka with the command API's producer settings
 * (acks=all, enable.idempotence=true, linger.ms=1, lz4, nagle off) producing
 * N DepositRequested-shaped envelopes (same size and shape, random ids, the
 * same three headers) to a scratch topic, as fast as delivery reports come
 * back; then a fresh consumer group reads them all back (read_committed,
 * like the worker).
 *
 *   ceiling_kafka --brokers=HOST:PORT --topic=T [--count=200000] [--partitions=12]
 * Creates the topic if missing (delete it afterwards yourself). Prints JSON.
 */
#include "bench_args.h"
#include "bench_kafka.h"
#include <librdkafka/rdkafka.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int64_t
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static long delivered, failed;

static void
on_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    if (m->err)
        ++failed;
    else
        ++delivered;
}

static void
uuid(char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0, j = 0; i < 36; ++i) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            out[i] = '-';
        else
            out[i] = hex[(rand() + j++) & 15];
    }
    out[14] = '4';
    out[36] = '\0';
}

#define set(c, k, v) bench_kafka_set("ceiling_kafka", (c), (k), (v))

int
main(int argc, char **argv)
{
    const char *brokers = NULL, *topic = "bench.ceiling";
    long count = 200000;
    int partitions = 12;
    const bench_arg_t args[] = {{"brokers", BENCH_ARG_STR, &brokers},
                                {"topic", BENCH_ARG_STR, &topic},
                                {"count", BENCH_ARG_LONG, &count},
                                {"partitions", BENCH_ARG_INT, &partitions}};
    if (bench_args_parse(argc, argv, args, sizeof(args) / sizeof(args[0]),
                         "ceiling_kafka --brokers=B [--topic=T] [--count=N] [--partitions=P]") != 0)
        return 2;
    if (brokers == NULL) {
        fprintf(stderr, "ceiling_kafka: --brokers is required\n");
        return 2;
    }
    srand((unsigned)now_us());
    bench_kafka_create_topic("ceiling_kafka", brokers, topic, partitions);

    char err[256];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    set(c, "bootstrap.servers", brokers);
    set(c, "acks", "all");
    set(c, "enable.idempotence", "true");
    set(c, "message.timeout.ms", "30000");
    set(c, "linger.ms", "1");
    set(c, "compression.type", "lz4");
    set(c, "socket.nagle.disable", "true");
    rd_kafka_conf_set_dr_msg_cb(c, on_dr);
    rd_kafka_t *p = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof(err));
    if (p == NULL) {
        fprintf(stderr, "ceiling_kafka: %s\n", err);
        return 1;
    }
    char id[37], agg[37], tenant[37], job[37], payload[1024], traceparent[64];
    size_t total_bytes = 0, size = 0;
    uuid(tenant);
    /* warm up: metadata, producer id */
    rd_kafka_producev(p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_VALUE("warmup", 6), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                      RD_KAFKA_V_END);
    rd_kafka_flush(p, 10000);
    delivered = 0;
    int64_t t0 = now_us();
    for (long i = 0; i < count; ++i) {
        uuid(id);
        uuid(agg);
        uuid(job);
        int n = snprintf(payload, sizeof(payload),
                         "{\"id\":\"%s\",\"type\":\"DepositRequested\",\"version\":1,\"aggregate_type\":\"account\","
                         "\"aggregate_id\":\"%s\",\"tenant_id\":\"%s\",\"job_id\":\"%s\",\"causation_id\":null,"
                         "\"correlation_id\":\"%s\",\"occurred_at\":\"2025-11-22T11:40:00.123456Z\",\"data\":{\"from_account\":"
                         "\"%s\",\"amount\":1,\"currency\":\"EUR\",\"reference\":\"bench ol %ld\"}}",
                         id, agg, tenant, job, id, agg, i);
        snprintf(traceparent, sizeof(traceparent), "00-%.8s%.8s%.8s%.8s-%.16s-01", id, id + 9, agg, agg + 9, job);
        rd_kafka_headers_t *h = rd_kafka_headers_new(3);
        rd_kafka_header_add(h, "type", -1, "DepositRequested", -1);
        rd_kafka_header_add(h, "version", -1, "1", 1);
        rd_kafka_header_add(h, "traceparent", -1, traceparent, -1);
        for (;;) {
            rd_kafka_resp_err_t e =
                rd_kafka_producev(p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(agg, 36), RD_KAFKA_V_VALUE(payload, (size_t)n),
                                  RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
            if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
                break;
            if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                fprintf(stderr, "ceiling_kafka: produce: %s\n", rd_kafka_err2str(e));
                return 1;
            }
            rd_kafka_poll(p, 10);
        }
        total_bytes += (size_t)n;
        size = (size_t)n;
        rd_kafka_poll(p, 0);
    }
    rd_kafka_flush(p, 60000);
    int64_t t1 = now_us();
    rd_kafka_destroy(p);
    double prod_s = (double)(t1 - t0) / 1e6;

    /* consume them back with a fresh group */
    char group[64];
    snprintf(group, sizeof(group), "bench-ceiling-%lld", (long long)now_us());
    c = rd_kafka_conf_new();
    set(c, "bootstrap.servers", brokers);
    set(c, "group.id", group);
    set(c, "enable.auto.commit", "false");
    set(c, "auto.offset.reset", "earliest");
    set(c, "isolation.level", "read_committed");
    set(c, "fetch.wait.max.ms", "10");
    rd_kafka_t *k = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof(err));
    rd_kafka_poll_set_consumer(k);
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(k, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    long got = 0;
    int64_t c0 = 0, deadline = now_us() + 120 * 1000000LL;
    while (got < count + 1 && now_us() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(k, 100);
        if (m == NULL)
            continue;
        if (!m->err) {
            if (got == 0)
                c0 = now_us(); /* from the first message: excludes the group join */
            ++got;
        }
        rd_kafka_message_destroy(m);
    }
    int64_t c1 = now_us();
    rd_kafka_consumer_close(k);
    rd_kafka_destroy(k);
    double cons_s = (double)(c1 - c0) / 1e6;
    printf("{\"count\":%ld,\"event_bytes\":%zu,\"produce_s\":%.3f,\"produce_msgs_per_s\":%.0f,\"produce_failed\":%ld,"
           "\"consumed\":%ld,\"consume_s\":%.3f,\"consume_msgs_per_s\":%.0f,\"payload_mb\":%.1f}\n",
           count, size, prod_s, (double)delivered / prod_s, failed, got, cons_s, got > 1 ? (double)(got - 1) / cons_s : 0,
           (double)total_bytes / 1e6);
    return 0;
}
