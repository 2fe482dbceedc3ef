/*
 * The query API: every read (GET, HEAD), served from the PostgreSQL read
 * models through the non-blocking pool, with strong ETags and tenant walls.
 */
#ifndef TALLY_QUERY_API_H
#define TALLY_QUERY_API_H

#include "tally/api.h"
#include "tally/config.h"
#include "tally/guard.h"

#include <stddef.h>
#include <stdint.h>

typedef struct st_tly_query_api_config_t {
    char *pg_dsn;
    char *host;
    int64_t port;
    int64_t admin_port;
    int64_t threads;
    int64_t pg_pool;
    int64_t key_refresh_ms;
    tly_api_abuse_config_t abuse;
    char *cursor_secret;
    char *consistency_secret;
    int64_t version_cache;
    char *log_level;
    tly_guard_config_t guard; /* rate limits and load shedding */
} tly_query_api_config_t;

extern const tly_config_def_t tly_query_api_settings[];
extern const size_t tly_query_api_nsettings;

int tly_query_api_run(tly_query_api_config_t *cfg);

#endif
