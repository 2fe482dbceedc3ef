/*
 * Runs the worker's roles, each in its own thread: the decider consumer (role
 * "decider"), the transfer saga consumer and its deadline timer (role
 * "saga"), the outbox relay (with either of those), the projector
 * consumer (role "projector") and the webhook recorder and sender (role
 * "webhooks"). The thread that calls tly_worker_start keeps signals.
 */
#ifndef TALLY_WORKER_WORKER_H
#define TALLY_WORKER_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TLY_ROLE_DECIDER (1u << 0)
#define TLY_ROLE_PROJECTOR (1u << 1)
#define TLY_ROLE_SAGA (1u << 2)
#define TLY_ROLE_WEBHOOKS (1u << 3)
#define TLY_ROLE_RETENTION (1u << 4)

#define TLY_PROJECTOR_CONSUMERS_MAX 8

typedef struct st_tly_worker_config_t {
    char *pg_dsn;
    char *brokers;
    char *topic;
    char *roles;
    char *log_level;
    int64_t batch_size;
    int64_t batch_wait_ms;
    int64_t projector_consumers; /* projector consumers (threads, connections) in this process */
    int64_t max_event_tries;
    int64_t consumer_stall_s;     /* a partition with lag and a position unmoved this long: not ready */
    int64_t saga_step_timeout_ms; /* a saga step without an outcome this long is sent again */
    int64_t saga_stuck_ms;        /* a saga unfinished this long is reported stuck */
    char *admin_host;
    int64_t admin_port;
    bool webhook_allow_private;   /* loopback, private addresses and plain http (tests, local stacks) */
    int64_t webhook_timeout_ms;   /* one attempt */
    int64_t webhook_time_scale;   /* divides the retry schedule, lease margin and disable window (tests) */
    int64_t webhook_per_endpoint; /* attempts in flight per endpoint, per worker */
    int64_t webhook_max_in_flight;
    int64_t retention_interval_ms; /* between two retention passes */
    int64_t dedup_retention_s;
    int64_t command_retention_s;
} tly_worker_config_t;

typedef struct st_tly_worker_t tly_worker_t;

/** Parses "decider,saga,projector,webhooks,retention" (any order, no repeats needed) into a mask. Returns 0, or -1 with `err`. */
int tly_worker_parse_roles(const char *s, unsigned *mask, char *err, size_t errcap) __attribute__((warn_unused_result));

/** Starts the threads of `roles`; `cfg` and `stop` must outlive tly_worker_join. NULL with `err` on failure. */
tly_worker_t *tly_worker_start(const tly_worker_config_t *cfg, unsigned roles, atomic_bool *stop, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/** Waits for every thread (they return once `*stop` is set) and frees. Returns 0 when all stopped cleanly. */
int tly_worker_join(tly_worker_t *w);

#endif
