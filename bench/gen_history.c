/*
 * A synthetic event history for the replay scenario, produced straight to a
 * scratch topic (never tally.events: the live decider would act on it):
 * `--accounts` accounts, each AccountOpenRequested + AccountOpened, then
 * deposits round-robin over them, each DepositRequested + FundsDeposited (v2)
 * with consistent balances, one job per request, keyed by account id (so an
 * account's events are in one partition, in order), with the type, version
 * and traceparent headers. About 500 bytes an event, like the real ones.
 *
 *   gen_history --brokers=HOST:PORT --topic=T [--events=1000000] [--accounts=1000] [--partitions=12]
 * Creates the topic if missing (delete it afterwards yourself). Prints JSON.
 */
#include "bench_args.h"
#include "bench_kafka.h"
#include <librdkafka/rdkafka.h>

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long delivered, failed;

static int64_t
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
on_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    if (m->err)
        ++failed;
    else
        ++delivered;
}

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint64_t
next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* A random (v4) uuid: the ids' random bits matter for the hash sets of the consumers. */
static void
uuid(char *out)
{
    static const char hex[] = "0123456789abcdef";
    uint64_t a = next_rand(), b = next_rand();
    for (int i = 0, k = 0; i < 36; ++i) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            out[i] = '-';
            continue;
        }
        uint64_t *src = k < 16 ? &a : &b;
        out[i] = hex[*src & 15];
        *src >>= 4;
        ++k;
    }
    out[14] = '4';
    out[19] = "89ab"[b & 3];
    out[36] = '\0';
}

#define set(c, k, v) bench_kafka_set("gen_history", (c), (k), (v))

static void
rfc3339(int64_t us, char *out, size_t cap)
{
    time_t s = (time_t)(us / 1000000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, cap - n, ".%06dZ", (int)(us % 1000000));
}

typedef struct st_account_t {
    char id[37];
    int64_t balance;
} account_t;

static rd_kafka_t *producer;
static const char *topic_name;
static size_t bytes;

static void
emit(const char *key, const char *type, int version, const char *payload, int len)
{
    char tp[64], ver[4];
    snprintf(tp, sizeof(tp), "00-%016" PRIx64 "%016" PRIx64 "-%016" PRIx64 "-01", next_rand(), next_rand(), next_rand() | 1);
    snprintf(ver, sizeof(ver), "%d", version);
    for (;;) {
        rd_kafka_resp_err_t e = rd_kafka_producev(
            producer, RD_KAFKA_V_TOPIC(topic_name), RD_KAFKA_V_KEY(key, 36), RD_KAFKA_V_VALUE((void *)payload, (size_t)len),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADER("type", type, -1), RD_KAFKA_V_HEADER("version", ver, -1),
            RD_KAFKA_V_HEADER("traceparent", tp, -1), RD_KAFKA_V_END);
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            break;
        rd_kafka_poll(producer, 10);
    }
    bytes += (size_t)len;
    rd_kafka_poll(producer, 0);
}

/* A request and its outcome: the outcome is caused by the request, both carry the job. */
static void
pair(const account_t *a, const char *tenant, int64_t *clock_us, const char *req_type, const char *req_data, const char *out_type,
     int out_version, const char *out_data)
{
    char req_id[37], out_id[37], job[37], at[40], payload[1024];
    uuid(req_id);
    uuid(out_id);
    uuid(job);
    rfc3339((*clock_us)++, at, sizeof(at));
    int n = snprintf(payload, sizeof(payload),
                     "{\"id\":\"%s\",\"type\":\"%s\",\"version\":1,\"aggregate_type\":\"account\",\"aggregate_id\":\"%s\","
                     "\"tenant_id\":\"%s\",\"job_id\":\"%s\",\"causation_id\":null,\"correlation_id\":\"%s\","
                     "\"occurred_at\":\"%s\",\"data\":%s}",
                     req_id, req_type, a->id, tenant, job, req_id, at, req_data);
    emit(a->id, req_type, 1, payload, n);
    rfc3339((*clock_us)++, at, sizeof(at));
    n = snprintf(payload, sizeof(payload),
                 "{\"id\":\"%s\",\"type\":\"%s\",\"version\":%d,\"aggregate_type\":\"account\",\"aggregate_id\":\"%s\","
                 "\"tenant_id\":\"%s\",\"job_id\":\"%s\",\"causation_id\":\"%s\",\"correlation_id\":\"%s\","
                 "\"occurred_at\":\"%s\",\"data\":%s}",
                 out_id, out_type, out_version, a->id, tenant, job, req_id, req_id, at, out_data);
    emit(a->id, out_type, out_version, payload, n);
}

int
main(int argc, char **argv)
{
    const char *brokers = NULL;
    long events = 1000000, naccounts = 1000;
    int partitions = 12;
    topic_name = "bench.replay";
    const bench_arg_t args[] = {{"brokers", BENCH_ARG_STR, &brokers},
                                {"topic", BENCH_ARG_STR, &topic_name},
                                {"events", BENCH_ARG_LONG, &events},
                                {"accounts", BENCH_ARG_LONG, &naccounts},
                                {"partitions", BENCH_ARG_INT, &partitions}};
    if (bench_args_parse(argc, argv, args, sizeof(args) / sizeof(args[0]),
                         "gen_history --brokers=B [--topic=T] [--events=N] [--accounts=A] [--partitions=P]") != 0)
        return 2;
    if (brokers == NULL || naccounts < 1 || events < 2 * naccounts) {
        fprintf(stderr, "gen_history: --brokers is required and --events must be at least 2 * --accounts\n");
        return 2;
    }
    rng ^= (uint64_t)now_us();
    bench_kafka_create_topic("gen_history", brokers, topic_name, partitions);
    char err[256];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    set(c, "bootstrap.servers", brokers);
    set(c, "acks", "all");
    set(c, "enable.idempotence", "true");
    set(c, "linger.ms", "20");
    set(c, "batch.size", "1000000");
    set(c, "compression.type", "lz4");
    set(c, "queue.buffering.max.messages", "500000");
    rd_kafka_conf_set_dr_msg_cb(c, on_dr);
    producer = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof(err));
    if (producer == NULL) {
        fprintf(stderr, "gen_history: %s\n", err);
        return 1;
    }
    account_t *accounts = calloc((size_t)naccounts, sizeof(*accounts));
    char tenant[37], data[512];
    uuid(tenant);
    int64_t clock_us = (int64_t)time(NULL) * 1000000 - events * 2; /* in the past, one microsecond apart */
    int64_t t0 = now_us();
    long n = 0;
    for (long i = 0; i < naccounts; ++i, n += 2) {
        uuid(accounts[i].id);
        pair(&accounts[i], tenant, &clock_us, "AccountOpenRequested", "{\"currency\":\"EUR\",\"label\":\"bench replay\"}",
             "AccountOpened", 1, "{\"currency\":\"EUR\",\"label\":\"bench replay\"}");
    }
    for (long i = 0; n + 2 <= events; ++i, n += 2) {
        account_t *a = &accounts[i % naccounts];
        int64_t amount = 1 + (int64_t)(next_rand() % 10000);
        char req[128];
        snprintf(req, sizeof(req), "{\"amount\":%" PRId64 ",\"currency\":\"EUR\",\"reference\":\"replay %ld\"}", amount, i);
        a->balance += amount;
        snprintf(data, sizeof(data),
                 "{\"amount\":%" PRId64 ",\"currency\":\"EUR\",\"balance_after\":%" PRId64
                 ",\"reference\":\"replay %ld\",\"channel\":\"api\"}",
                 amount, a->balance, i);
        pair(a, tenant, &clock_us, "DepositRequested", req, "FundsDeposited", 2, data);
    }
    rd_kafka_flush(producer, 120000);
    double secs = (double)(now_us() - t0) / 1e6;
    printf("{\"events\":%ld,\"delivered\":%ld,\"failed\":%ld,\"accounts\":%ld,\"seconds\":%.2f,\"avg_bytes\":%.0f}\n", n, delivered,
           failed, naccounts, secs, n > 0 ? (double)bytes / (double)n : 0.0);
    rd_kafka_destroy(producer);
    free(accounts);
    return failed == 0 && delivered == n ? 0 : 1;
}
