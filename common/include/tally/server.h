/*
 * The h2o server shell shared by the APIs: N threads, one evloop each, each
 * with its own SO_REUSEPORT listener (the kernel spreads connections), a
 * per-thread application context, and a graceful SIGTERM: stop accepting,
 * finish what is in flight, then let the application flush and exit.
 */
#ifndef TALLY_SERVER_H
#define TALLY_SERVER_H

#define H2O_USE_LIBUV 0
#include <h2o.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

/* How long a starting thread waits for thread_serving before it serves anyway. */
#define TLY_SERVER_READY_WAIT_MS 10000

typedef struct st_tly_server_thread_t {
    struct st_tly_server_config_t *config;
    size_t index;
    h2o_evloop_t *loop;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_socket_t *listener;
    void *app; /* what config->thread_init returned, on this thread */
    pthread_t tid;
    int listen_fd;
    bool failed;    /* thread_init returned NULL */
    bool accepting; /* the listener is read: thread_serving said yes, or the wait ran out */
    /* the admin endpoint (thread 0 only, when config->admin_port != 0) */
    h2o_context_t admin_ctx;
    h2o_accept_ctx_t admin_accept_ctx;
    h2o_socket_t *admin_listener;
    int admin_fd;
} tly_server_thread_t;

typedef struct st_tly_server_config_t {
    const char *name;
    const char *host; /* address to bind, e.g. "0.0.0.0" */
    uint16_t port;
    size_t threads;
    size_t max_body; /* h2o's own body limit; handlers enforce the API's */
    int (*on_req)(h2o_handler_t *self, h2o_req_t *req);
    /** Creates the per-thread application context (pools, producer...); runs on the thread itself. */
    void *(*thread_init)(tly_server_thread_t *thread, void *arg);
    /** Number of requests still being answered; the loop runs until 0 at shutdown. */
    size_t (*thread_inflight)(void *app);
    /** Flushes and frees the per-thread context after the loop stopped. */
    void (*thread_dispose)(void *app);
    void *arg;
    int shutdown_grace_ms; /* how long in-flight work may take after SIGTERM */
    /**
     * Admin endpoint (tally/admin.h: /metrics, /healthz, /readyz) on
     * host:admin_port, served by the first thread's loop; 0: none. A port
     * that cannot be bound is logged as an error and the API runs without it.
     */
    uint16_t admin_port;
    /** Readiness for the admin /readyz, run on the first thread with its app: one boolean per check. NULL: ready. */
    bool (*thread_ready)(void *app, json_t *reasons);
    /**
     * True once the thread can serve its first request (its PostgreSQL pool
     * connected, the API keys loaded), run on the thread itself. Until then
     * the thread does not accept: a client that connects while the instance
     * starts waits in the listen backlog instead of getting a 503 for a
     * database that is up. After TLY_SERVER_READY_WAIT_MS the thread serves
     * anyway (the dependency is really down, and the 503 is then true), with
     * a warning. NULL: serve at once. The admin endpoint answers from the
     * start either way.
     */
    bool (*thread_serving)(void *app);
} tly_server_config_t;

/** Runs until SIGTERM or SIGINT; returns 0 after a clean stop, -1 if it could not start. */
int tly_server_run(tly_server_config_t *config) __attribute__((warn_unused_result));

/** The thread a request is being served on. */
tly_server_thread_t *tly_server_thread_of(h2o_req_t *req);

/** True once SIGTERM/SIGINT was received. */
bool tly_server_stopping(void);

#endif
