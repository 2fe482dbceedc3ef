/*
 * The retention thread of tally-worker (role "retention"): deletes
 * consumer_dedup and command_requests rows that are past their use, in small
 * chunks, one worker at a time. See retention.c for what is kept and why.
 */
#ifndef TALLY_WORKER_RETENTION_H
#define TALLY_WORKER_RETENTION_H

#include <stdatomic.h>
#include <stdint.h>

typedef struct st_tly_retention_config_t {
    const char *pg_dsn;
    int64_t interval_ms;         /* between passes */
    int64_t dedup_retention_s;   /* consumer_dedup rows applied longer ago than this go */
    int64_t command_retention_s; /* command_requests rows expired longer ago than this go (once their job is projected) */
    atomic_bool *stop;
} tly_retention_config_t;

/** Prunes every `interval_ms` until `*cfg->stop`; retries every failure. Returns 0. */
int tly_retention_run(const tly_retention_config_t *cfg);

#endif
