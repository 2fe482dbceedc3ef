/*
 * The worker's admin endpoint (TALLY_ADMIN_PORT, default 9183): /metrics,
 * /healthz, and /readyz = PostgreSQL reachable, the Kafka broker answering,
 * every role's consumer holding an assignment from its group, and no
 * partition of theirs stalled: with lag, and a position that has not moved
 * for TALLY_CONSUMER_STALL_S (reasons: consumer_<name>_progressing and, per
 * stalled partition, consumer_<name>_partition_<p>_progressing = false).
 *
 * The consumer loops report what the endpoint shows through the functions
 * below; each is cheap, never blocks and may be called from any thread.
 */
#ifndef TALLY_WORKER_ADMIN_H
#define TALLY_WORKER_ADMIN_H

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct st_tly_worker_admin_t tly_worker_admin_t;

/**
 * Starts the endpoint on host:port (port 0: no endpoint, returns a handle that
 * does nothing). `consumers` is the comma-separated list of consumer names
 * that must hold an assignment to be ready: the roles ("decider,projector",
 * the worker's roles setting). Probes PostgreSQL (`pg_dsn`) and Kafka
 * (`brokers`) once a second on threads of their own. NULL with `err` when the
 * port cannot be bound.
 */
tly_worker_admin_t *tly_worker_admin_start(const char *host, int port, const char *pg_dsn, const char *brokers,
                                           const char *consumers, int stall_s, char *err, size_t errcap)
    __attribute__((warn_unused_result));
void tly_worker_admin_stop(tly_worker_admin_t *admin);

/** The rebalance callback of `consumer` took (`assigned`) or gave up (false) its partitions. */
void tly_worker_admin_assigned(const char *consumer, bool assigned);

/*
 * `owner` is the consumer instance (its rd_kafka_t: several consumers of
 * one name run in a process); a partition's reports count only from the
 * instance that claimed it last.
 */
/**
 * `owner` claimed `partition` at `next_offset` (its stored position). A claim
 * is no progress: a stuck partition passed from consumer to consumer stays
 * stalled. Its lag is unknown until the first fetch answers (then: the last
 * one known).
 */
void tly_worker_admin_claimed(const void *owner, const char *consumer, int32_t partition, int64_t next_offset);
/** `owner` gave `partition` up: unless another instance claimed it since, its lag and progress series go, and a stall of it. */
void tly_worker_admin_released(const void *owner, const char *consumer, int32_t partition);

/**
 * Records tally_consumer_lag{consumer,partition} = the partition's last known
 * high watermark (librdkafka's cache; no broker round trip) - `next_offset`,
 * and the position for the progress watch. Until a fetch has told librdkafka
 * the watermark, the lag stays unknown (no series), which the watch counts as
 * lag: a claimed partition that is never fetched is stalled too.
 */
void tly_worker_admin_lag(rd_kafka_t *rk, const char *consumer, const char *topic, int32_t partition, int64_t next_offset);
/** tly_worker_admin_lag with the watermark given (`high` < 0: unknown) and `owner` for rk. */
void tly_worker_admin_position(const void *owner, const char *consumer, int32_t partition, int64_t next_offset, int64_t high);

/**
 * One pass of the progress watch (the admin's watcher thread runs it once a
 * second; tests call it with their own clock): a partition owned by a
 * consumer makes progress when its position moves or it is caught up (lag
 * 0); one with lag (or a lag still unknown `stall_us` after its claim) and
 * no progress for `stall_us` is stalled,
 * and so is one whose consumer has not reported at all for `stall_us` (its
 * loop is blocked or its thread stopped: what it last said is stale),
 * logged once ("partition makes no progress; not ready", error) and once more
 * when it moves again. Sets tally_consumer_progress_age_seconds. A pass more
 * than 5 s after the previous one (the process was stopped) restarts every
 * partition's clock: a stopped process is no consumer's stall.
 */
void tly_worker_admin_watch(int64_t now_us, int64_t stall_us);
/** Adds consumer_<consumer>_partition_<p>_progressing = false to `reasons` (may be NULL) per stalled partition; returns the count.
 */
int tly_worker_admin_stalled(const char *consumer, json_t *reasons);

#endif
