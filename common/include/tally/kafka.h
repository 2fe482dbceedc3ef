/*
 * Kafka clients configured the way Tally's guarantees need them: producers
 * with acks=all and idempotence, consumers that never auto-commit (positions
 * live in PostgreSQL, committed with the effects).
 */
#ifndef TALLY_KAFKA_H
#define TALLY_KAFKA_H

#include "tally/envelope.h"

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>

/**
 * Sets the librdkafka properties of `list`, "name=value" items separated by
 * ';' (e.g. "security.protocol=ssl;ssl.ca.location=/etc/ca.pem"). `source`
 * names the list in the error. Every client Tally creates applies
 * TALLY_KAFKA_CONFIG, then TALLY_KAFKA_PRODUCER_CONFIG or
 * TALLY_KAFKA_CONSUMER_CONFIG, after its own defaults, so an operator can add
 * TLS/SASL settings or retune a default without a rebuild. 0, or -1 with `err`.
 */
int tly_kafka_conf_apply(rd_kafka_conf_t *conf, const char *list, const char *source, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/**
 * Creates an idempotent producer (acks=all). `message_timeout_ms` bounds how
 * long a message may wait for its acknowledgement before its delivery report
 * says it failed. `opaque` is passed to `dr_cb`. Returns NULL with `err` set.
 */
rd_kafka_t *tly_kafka_producer_create(const char *brokers, int message_timeout_ms,
                                      void (*dr_cb)(rd_kafka_t *, const rd_kafka_message_t *, void *), void *opaque, char *err,
                                      size_t errcap) __attribute__((warn_unused_result));

/* A consumer's prefetch queue unless it asks for another (tly_kafka_consumer_create). */
#define TLY_KAFKA_PREFETCH_KB 4096

/*
 * The consumers' session timeout. With static membership (a worker with
 * TALLY_WORKER_INSTANCE) a restarted worker takes its partitions back at
 * once and does not wait for it: it only bounds how long the partitions of
 * a worker that died for good, or is frozen or cut off, wait before they
 * move. 6 s is the shortest a broker accepts by default
 * (group.min.session.timeout.ms); heartbeats go from librdkafka's own thread
 * every second, so a busy batch never misses one, and a CPU-starved machine
 * (load 40 on 2 cores) lost none in the chaos runs (docs/failover.md).
 */
#define TLY_KAFKA_SESSION_TIMEOUT_MS 6000
#define TLY_KAFKA_HEARTBEAT_MS 1000

/**
 * Creates a consumer in `group` with auto-commit off and auto offset reset to
 * earliest, using `rebalance_cb` to take and give up partitions, prefetching
 * at most `prefetch_kbytes` (0: TLY_KAFKA_PREFETCH_KB). `gather_ms` 0: the
 * broker answers a fetch as soon as an event arrives; > 0: it gathers events
 * for up to that long (or 1 MB) first, for consumers whose latency matters
 * less than the broker's work per fetch. `instance_id` (group.instance.id,
 * unique within the group and stable across restarts) makes the member
 * static; NULL: dynamic membership. Returns NULL with `err` set.
 */
rd_kafka_t *
tly_kafka_consumer_create(const char *brokers, const char *group, const char *instance_id, int prefetch_kbytes, int gather_ms,
                          void (*rebalance_cb)(rd_kafka_t *, rd_kafka_resp_err_t, rd_kafka_topic_partition_list_t *, void *),
                          void *opaque, char *err, size_t errcap) __attribute__((warn_unused_result));

/**
 * Produces one envelope to `topic`, key = aggregate id, with headers `type`,
 * `version` and (when given) `traceparent`. `msg_opaque` reaches the delivery
 * report. Returns the librdkafka error (RD_KAFKA_RESP_ERR_NO_ERROR on enqueue).
 */
rd_kafka_resp_err_t tly_kafka_produce_envelope(rd_kafka_t *rk, const char *topic, const tly_envelope_t *env,
                                               const char *traceparent, void *msg_opaque);

/**
 * Produces a pre-serialised payload with the given key and headers (used by
 * the outbox relay, which stores the wire form).
 */
rd_kafka_resp_err_t tly_kafka_produce_raw(rd_kafka_t *rk, const char *topic, const char *key, const char *payload, size_t len,
                                          const char *type, int version, const char *traceparent, void *msg_opaque);

/** Copies header `name` of `msg` into `out` (NUL-terminated); false when absent. */
bool tly_kafka_header(const rd_kafka_message_t *msg, const char *name, char *out, size_t cap);

/** Creates `topic` with `partitions`, the broker's default replication and unlimited retention; 0 also when it exists. */
int tly_kafka_create_topic(const char *brokers, const char *topic, int partitions, int timeout_ms, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/**
 * A background probe of broker reachability for /readyz: a thread that asks
 * `rk` for cluster metadata every `interval_ms` (timeout 1 s) and records the
 * answer. `rk` is borrowed and must outlive the probe.
 */
typedef struct st_tly_kafka_probe_t tly_kafka_probe_t;
tly_kafka_probe_t *tly_kafka_probe_start(rd_kafka_t *rk, int interval_ms);
bool tly_kafka_probe_ok(tly_kafka_probe_t *probe);
void tly_kafka_probe_stop(tly_kafka_probe_t *probe);

#endif
