/*
 * The admin endpoint every service serves on its own port (TALLY_ADMIN_PORT):
 *   GET /metrics   Prometheus text (tly_metrics_default())
 *   GET /healthz   200 {"status":"ok"} while the process runs
 *   GET /readyz    200 {"status":"ok","reasons":{...}} or
 *                  503 {"status":"unavailable","reasons":{...}}; reasons map
 *                  each check ("postgresql", "kafka", ...) to true or false
 *
 * The APIs serve it from their first event loop (tly_server_config_t's
 * admin_port); a process without h2o (the worker) starts tly_admin_start, a
 * small thread of its own whose loop, context and sockets are all created on
 * that thread.
 */
#ifndef TALLY_ADMIN_H
#define TALLY_ADMIN_H

#define H2O_USE_LIBUV 0
#include <h2o.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** Adds one boolean per check to `reasons` and returns whether the process is ready. */
typedef bool (*tly_admin_ready_cb)(void *arg, json_t *reasons);

/** Answers an admin request (any path: 404 for unknown ones, 405 for non-GET). `ready` may be NULL (always ready). */
void tly_admin_handle(h2o_req_t *req, tly_admin_ready_cb ready, void *arg);

typedef struct st_tly_admin_t tly_admin_t;

/**
 * Binds host:port at once (so a port in use is reported here), then serves
 * on a thread of its own. `ready` runs on that thread and must not block.
 * NULL with `err` set on failure.
 */
tly_admin_t *tly_admin_start(const char *host, uint16_t port, tly_admin_ready_cb ready, void *arg, char *err, size_t errcap)
    __attribute__((warn_unused_result));
/** Stops the thread and closes the port. */
void tly_admin_stop(tly_admin_t *admin);

/** Opens a listening TCP socket on an IPv4 address (SO_REUSEPORT when `reuseport`); -1 with `err`. */
int tly_admin_listen(const char *host, uint16_t port, bool reuseport, char *err, size_t errcap);

#endif
