/*
 * The command API: every state-changing request. Handlers validate what needs
 * no state, record the command (idempotency, job id) in PostgreSQL, append the
 * request event to Kafka and answer 202 only after the broker acknowledged it.
 */
#ifndef TALLY_COMMAND_API_H
#define TALLY_COMMAND_API_H

#include "tally/config.h"
#include "tally/api.h"
#include "tally/guard.h"
#include "tally/keycache.h"
#include "tally/server.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct st_tly_command_api_config_t {
    char *pg_dsn;
    char *kafka_brokers;
    char *topic;
    char *host;
    int64_t port;
    int64_t admin_port;
    int64_t threads;
    int64_t pg_pool;
    int64_t kafka_timeout_ms;
    int64_t accept_gather_ms;
    int64_t key_refresh_ms;
    tly_api_abuse_config_t abuse;
    bool webhook_allow_private;
    char *consistency_secret;
    char *log_level;
    tly_guard_config_t guard; /* rate limits and load shedding */
} tly_command_api_config_t;

extern const tly_config_def_t tly_command_api_settings[];
extern const size_t tly_command_api_nsettings;

/** Runs the API until SIGTERM; returns the process exit code. */
int tly_command_api_run(tly_command_api_config_t *cfg);

#endif
