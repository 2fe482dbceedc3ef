/*
 * The scaffold both HTTP APIs (command and query) share around their
 * handlers: the abuse limits, the process's API keys (one cache for every
 * thread), the server with its threads and admin port, and the readiness
 * every API thread reports (PostgreSQL pool and API keys).
 */
#ifndef TALLY_API_SERVICE_H
#define TALLY_API_SERVICE_H

#include "tally/api.h"
#include "tally/keycache.h"
#include "tally/pgasync.h"
#include "tally/server.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct st_tly_api_service_t {
    tly_server_config_t server; /* name, listener, threads, callbacks: the API's own */
    const tly_api_abuse_config_t *abuse;
    const char *pg_dsn;     /* where the API keys are read */
    int64_t key_refresh_ms; /* how often */
} tly_api_service_t;

/**
 * Sets up the abuse limits, creates the API keys' cache into `*keys` (read by
 * the threads from their thread_init on), runs the server until it stops and
 * destroys the cache. Logs what failed. Returns the process exit code: 0, or
 * 1 when the service could not start or stopped on an error.
 */
int tly_api_service_run(tly_api_service_t *svc, tly_keycache_t **keys);

/** An API thread's readiness: `pg` has a connection and `keys` are loaded; each one is a member of `reasons`. */
bool tly_api_service_ready(tly_pgpool_t *pg, tly_keycache_t *keys, json_t *reasons);

/** The first request may come in (tly_server_config_t.thread_serving): the same two, without reasons. */
bool tly_api_service_serving(tly_pgpool_t *pg, tly_keycache_t *keys);

#endif
