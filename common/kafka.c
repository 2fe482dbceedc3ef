/* librdkafka set-up shared by every service, and envelope production. */
#include "tally/kafka.h"
#include "tally/log.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
 * librdkafka's own messages ("%4|...|FAIL|..." on stderr by default) as JSON
 * lines through tly_log. Called from librdkafka's threads; tly_log writes
 * each line with one write(2).
 */
static void
on_kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    /* syslog levels: 0-3 emerg..err, 4 warning, 5 notice, 6 info, 7 debug */
    tly_log_level_t l = level <= 3 ? TLY_LOG_ERROR : level == 4 ? TLY_LOG_WARN : level <= 6 ? TLY_LOG_INFO : TLY_LOG_DEBUG;
    char lv[16];
    snprintf(lv, sizeof(lv), "%d", level);
    tly_log(l, buf, "component", "librdkafka", "facility", fac, "client", rk != NULL ? rd_kafka_name(rk) : NULL, "syslog_level", lv,
            NULL);
}

/* A configuration with Tally's logging; every client is made from one. */
static rd_kafka_conf_t *
conf_new(void)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, on_kafka_log);
    return conf;
}

static int
conf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *err, size_t errcap)
{
    char rderr[256];
    if (rd_kafka_conf_set(conf, name, value, rderr, sizeof(rderr)) != RD_KAFKA_CONF_OK) {
        snprintf(err, errcap, "could not set kafka %s=%s: %s", name, value, rderr);
        return -1;
    }
    return 0;
}

int
tly_kafka_conf_apply(rd_kafka_conf_t *conf, const char *list, const char *source, char *err, size_t errcap)
{
    if (list == NULL)
        return 0;
    char *copy = strdup(list), *save = NULL;
    if (copy == NULL) {
        snprintf(err, errcap, "out of memory");
        return -1;
    }
    int ret = 0;
    for (char *item = strtok_r(copy, ";", &save); item != NULL && ret == 0; item = strtok_r(NULL, ";", &save)) {
        item += strspn(item, " \t\n");
        if (*item == '\0')
            continue;
        char *eq = strchr(item, '=');
        if (eq == NULL || eq == item) {
            snprintf(err, errcap, "%s: \"%s\" is not name=value", source, item);
            ret = -1;
            break;
        }
        *eq = '\0';
        char *end = eq;
        while (end > item && (end[-1] == ' ' || end[-1] == '\t'))
            *--end = '\0';
        if (conf_set(conf, item, eq + 1, err, errcap) != 0) {
            size_t n = strlen(err);
            snprintf(err + n, errcap - n, " (from %s)", source);
            ret = -1;
        }
    }
    free(copy);
    return ret;
}

/* The operator's overrides: TALLY_KAFKA_CONFIG for every client, then `role_var` for this kind of client. */
static int
conf_overrides(rd_kafka_conf_t *conf, const char *role_var, char *err, size_t errcap)
{
    if (tly_kafka_conf_apply(conf, getenv("TALLY_KAFKA_CONFIG"), "TALLY_KAFKA_CONFIG", err, errcap) != 0)
        return -1;
    return tly_kafka_conf_apply(conf, getenv(role_var), role_var, err, errcap);
}

rd_kafka_t *
tly_kafka_producer_create(const char *brokers, int message_timeout_ms,
                          void (*dr_cb)(rd_kafka_t *, const rd_kafka_message_t *, void *), void *opaque, char *err, size_t errcap)
{
    char timeout[32], request_timeout[32], rderr[256];
    rd_kafka_conf_t *conf = conf_new();
    snprintf(timeout, sizeof(timeout), "%d", message_timeout_ms);
    /* A request to a broker that stopped answering (frozen, cut off) is given
       up after half the message's time, not librdkafka's 30 s, so the
       message is retried on the partition's new leader within its deadline
       (the idempotent producer keeps the retry from writing it twice). */
    snprintf(request_timeout, sizeof(request_timeout), "%d", message_timeout_ms / 2 < 30000 ? message_timeout_ms / 2 : 30000);
    if (conf_set(conf, "bootstrap.servers", brokers, err, errcap) != 0 || conf_set(conf, "acks", "all", err, errcap) != 0 ||
        conf_set(conf, "enable.idempotence", "true", err, errcap) != 0 ||
        conf_set(conf, "message.timeout.ms", timeout, err, errcap) != 0 ||
        conf_set(conf, "request.timeout.ms", request_timeout, err, errcap) != 0 ||
        conf_set(conf, "linger.ms", "1", err, errcap) != 0 || conf_set(conf, "compression.type", "lz4", err, errcap) != 0 ||
        conf_set(conf, "socket.nagle.disable", "true", err, errcap) != 0 ||
        conf_overrides(conf, "TALLY_KAFKA_PRODUCER_CONFIG", err, errcap) != 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    if (dr_cb != NULL)
        rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    rd_kafka_conf_set_opaque(conf, opaque);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, rderr, sizeof(rderr));
    if (rk == NULL) {
        snprintf(err, errcap, "could not create kafka producer: %s", rderr);
        rd_kafka_conf_destroy(conf);
    }
    return rk;
}

rd_kafka_t *
tly_kafka_consumer_create(const char *brokers, const char *group, const char *instance_id, int prefetch_kbytes, int gather_ms,
                          void (*rebalance_cb)(rd_kafka_t *, rd_kafka_resp_err_t, rd_kafka_topic_partition_list_t *, void *),
                          void *opaque, char *err, size_t errcap)
{
    char rderr[256], kbytes[16], min_msgs[16], wait_ms[16], session_ms[16], heartbeat_ms[16];
    if (prefetch_kbytes <= 0)
        prefetch_kbytes = TLY_KAFKA_PREFETCH_KB;
    snprintf(kbytes, sizeof(kbytes), "%d", prefetch_kbytes);
    /* the queue's message count, 1.25 per KB: about 10 MB of Tally's ~500-byte events for 16 MB (the depth measured) */
    snprintf(min_msgs, sizeof(min_msgs), "%d", prefetch_kbytes / 4 * 5);
    snprintf(wait_ms, sizeof(wait_ms), "%d", gather_ms > 0 ? gather_ms : 100);
    snprintf(session_ms, sizeof(session_ms), "%d", TLY_KAFKA_SESSION_TIMEOUT_MS);
    snprintf(heartbeat_ms, sizeof(heartbeat_ms), "%d", TLY_KAFKA_HEARTBEAT_MS);
    rd_kafka_conf_t *conf = conf_new();
    if (conf_set(conf, "bootstrap.servers", brokers, err, errcap) != 0 || conf_set(conf, "group.id", group, err, errcap) != 0 ||
        conf_set(conf, "enable.auto.commit", "false", err, errcap) != 0 ||
        conf_set(conf, "enable.auto.offset.store", "false", err, errcap) != 0 ||
        conf_set(conf, "auto.offset.reset", "earliest", err, errcap) != 0 ||
        conf_set(conf, "isolation.level", "read_committed", err, errcap) != 0 ||
        conf_set(conf, "session.timeout.ms", session_ms, err, errcap) != 0 ||
        conf_set(conf, "heartbeat.interval.ms", heartbeat_ms, err, errcap) != 0 ||
        (instance_id != NULL && conf_set(conf, "group.instance.id", instance_id, err, errcap) != 0) ||
        /* how long the broker holds a fetch that finds nothing new: it answers
           as soon as one byte arrives (fetch.min.bytes 1), so this bounds only
           idle polling. At 10 ms the broker spent 15-19 % of a CPU answering
           an idle worker's six consumers (100 empty fetches/s each); at 100 ms
           about 3 %, with the same latency under load. A consumer that
           gathers asks for 1 MB instead and waits its gather_ms: at 1,000
           commands/s the webhooks consumer then fetched 17 times a second
           instead of about 300 */
        conf_set(conf, "fetch.wait.max.ms", wait_ms, err, errcap) != 0 ||
        conf_set(conf, "fetch.min.bytes", gather_ms > 0 ? "1048576" : "1", err, errcap) != 0 ||
        /* bounded prefetch: librdkafka's defaults (100,000 messages or 64 MB
           per consumer) made a worker with three consumers reach 312 MB on a
           backlog; a batch (at most 2,000 events, about 1 MB) needs far less.
           With five consumers per worker, 8 MB each still let the worker reach
           125 MB during ingest (every consumer's queue full while it lags).
           But librdkafka 2.0.2 (Debian 12's) stops fetching for a partition
           whose queue is full and looks again only about once a second (2.1
           made that fetch.queue.backoff.ms), so a consumer catching up on a
           backlog gets about one queue per second: the consumers that catch
           up (the worker's projector and decider) ask for a deeper one */
        conf_set(conf, "queued.min.messages", min_msgs, err, errcap) != 0 ||
        conf_set(conf, "queued.max.messages.kbytes", kbytes, err, errcap) != 0 ||
        /* and one fetch response at most 2 MB (default 52 MB, held whole while a backlog is read) */
        conf_set(conf, "fetch.max.bytes", "2097152", err, errcap) != 0 ||
        conf_overrides(conf, "TALLY_KAFKA_CONSUMER_CONFIG", err, errcap) != 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    if (rebalance_cb != NULL)
        rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
    rd_kafka_conf_set_opaque(conf, opaque);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, rderr, sizeof(rderr));
    if (rk == NULL) {
        snprintf(err, errcap, "could not create kafka consumer: %s", rderr);
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_poll_set_consumer(rk);
    return rk;
}

rd_kafka_resp_err_t
tly_kafka_produce_raw(rd_kafka_t *rk, const char *topic, const char *key, const char *payload, size_t len, const char *type,
                      int version, const char *traceparent, void *msg_opaque)
{
    char vbuf[16];
    int vlen = snprintf(vbuf, sizeof(vbuf), "%d", version);
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(3);
    rd_kafka_header_add(hdrs, "type", -1, type, -1);
    rd_kafka_header_add(hdrs, "version", -1, vbuf, vlen);
    if (traceparent != NULL && traceparent[0] != '\0')
        rd_kafka_header_add(hdrs, "traceparent", -1, traceparent, -1);
    rd_kafka_resp_err_t err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
                                                RD_KAFKA_V_VALUE((void *)payload, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                                RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(msg_opaque), RD_KAFKA_V_END);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
        rd_kafka_headers_destroy(hdrs); /* ownership passes only on success */
    return err;
}

rd_kafka_resp_err_t
tly_kafka_produce_envelope(rd_kafka_t *rk, const char *topic, const tly_envelope_t *env, const char *traceparent, void *msg_opaque)
{
    char key[TLY_UUID_STR_LEN + 1];
    tly_uuid_format(&env->aggregate_id, key);
    char *payload = tly_envelope_to_json(env);
    rd_kafka_resp_err_t err =
        tly_kafka_produce_raw(rk, topic, key, payload, strlen(payload), env->type, env->version, traceparent, msg_opaque);
    free(payload);
    return err;
}

bool
tly_kafka_header(const rd_kafka_message_t *msg, const char *name, char *out, size_t cap)
{
    rd_kafka_headers_t *hdrs;
    const void *val;
    size_t size;
    if (rd_kafka_message_headers(msg, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return false;
    if (rd_kafka_header_get_last(hdrs, name, &val, &size) != RD_KAFKA_RESP_ERR_NO_ERROR || val == NULL || size >= cap)
        return false;
    memcpy(out, val, size);
    out[size] = '\0';
    return true;
}

int
tly_kafka_create_topic(const char *brokers, const char *topic, int partitions, int timeout_ms, char *err, size_t errcap)
{
    char rderr[256];
    int ret = -1;
    rd_kafka_t *rk = NULL;
    rd_kafka_NewTopic_t *nt = NULL;
    rd_kafka_queue_t *q = NULL;
    rd_kafka_event_t *ev = NULL;
    rd_kafka_conf_t *conf = conf_new();
    if (conf_set(conf, "bootstrap.servers", brokers, err, errcap) != 0 ||
        tly_kafka_conf_apply(conf, getenv("TALLY_KAFKA_CONFIG"), "TALLY_KAFKA_CONFIG", err, errcap) != 0) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    if ((rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, rderr, sizeof(rderr))) == NULL) {
        snprintf(err, errcap, "could not create kafka admin client: %s", rderr);
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    /* the broker's default.replication.factor (and min.insync.replicas): 1 on a single node, 3 (2 in sync) in the
       replicated mode (deploy/local/lib.sh), whatever an operator's cluster says */
    nt = rd_kafka_NewTopic_new(topic, partitions, -1, rderr, sizeof(rderr));
    if (nt == NULL || rd_kafka_NewTopic_set_config(nt, "retention.ms", "-1") != RD_KAFKA_RESP_ERR_NO_ERROR ||
        rd_kafka_NewTopic_set_config(nt, "retention.bytes", "-1") != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errcap, "could not describe topic %s: %s", topic, rderr);
        goto cleanup;
    }
    q = rd_kafka_queue_new(rk);
    rd_kafka_AdminOptions_t *opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_operation_timeout(opts, timeout_ms, rderr, sizeof(rderr));
    rd_kafka_AdminOptions_set_request_timeout(opts, timeout_ms, rderr, sizeof(rderr));
    rd_kafka_CreateTopics(rk, &nt, 1, opts, q);
    rd_kafka_AdminOptions_destroy(opts);
    ev = rd_kafka_queue_poll(q, timeout_ms + 2000);
    if (ev == NULL) {
        snprintf(err, errcap, "could not create topic %s: no answer from the broker", topic);
        goto cleanup;
    }
    if (rd_kafka_event_error(ev) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errcap, "could not create topic %s: %s", topic, rd_kafka_event_error_string(ev));
        goto cleanup;
    }
    const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
    size_t n;
    const rd_kafka_topic_result_t **results = rd_kafka_CreateTopics_result_topics(res, &n);
    rd_kafka_resp_err_t terr = n > 0 ? rd_kafka_topic_result_error(results[0]) : RD_KAFKA_RESP_ERR_UNKNOWN;
    if (terr != RD_KAFKA_RESP_ERR_NO_ERROR && terr != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
        snprintf(err, errcap, "could not create topic %s: %s", topic,
                 n > 0 && rd_kafka_topic_result_error_string(results[0]) ? rd_kafka_topic_result_error_string(results[0])
                                                                         : rd_kafka_err2str(terr));
        goto cleanup;
    }
    ret = 0;
cleanup:
    if (ev != NULL)
        rd_kafka_event_destroy(ev);
    if (q != NULL)
        rd_kafka_queue_destroy(q);
    if (nt != NULL)
        rd_kafka_NewTopic_destroy(nt);
    rd_kafka_destroy(rk);
    return ret;
}

struct st_tly_kafka_probe_t {
    rd_kafka_t *rk;
    int interval_ms;
    atomic_bool ok, stop;
    pthread_t thread;
};

static void *
probe_main(void *arg)
{
    tly_kafka_probe_t *p = arg;
    while (!atomic_load(&p->stop)) {
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err = rd_kafka_metadata(p->rk, 0, NULL, &md, 1000);
        atomic_store(&p->ok, err == RD_KAFKA_RESP_ERR_NO_ERROR && md->broker_cnt > 0);
        if (md != NULL)
            rd_kafka_metadata_destroy(md);
        for (int slept = 0; slept < p->interval_ms && !atomic_load(&p->stop); slept += 50)
            usleep(50 * 1000);
    }
    return NULL;
}

tly_kafka_probe_t *
tly_kafka_probe_start(rd_kafka_t *rk, int interval_ms)
{
    tly_kafka_probe_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        abort();
    p->rk = rk;
    p->interval_ms = interval_ms;
    if (pthread_create(&p->thread, NULL, probe_main, p) != 0)
        abort();
    return p;
}

bool
tly_kafka_probe_ok(tly_kafka_probe_t *p)
{
    return atomic_load(&p->ok);
}

void
tly_kafka_probe_stop(tly_kafka_probe_t *p)
{
    atomic_store(&p->stop, true);
    pthread_join(p->thread, NULL);
    free(p);
}
