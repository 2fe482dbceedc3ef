/*
 * PostgreSQL LISTEN in an h2o event loop: one connection that listens on one
 * channel and hands every notification to a callback in the loop thread.
 *
 * It is the companion of pgasync (same socket watching: a dup of libpq's fd
 * registered with H2O_SOCKET_FLAG_DONT_READ, so libpq reads it itself), but it
 * never runs queries, so a slow query can never delay a notification and a
 * burst of notifications never takes a query connection. A lost connection is
 * re-opened in the background; because notifications sent while it was down
 * are gone, `on_listening` is called every time listening (re)starts, so the
 * owner can re-check whatever it waits for.
 */
#ifndef TALLY_PGLISTEN_H
#define TALLY_PGLISTEN_H

#define H2O_USE_LIBUV 0
#include <h2o.h>
#include <stdbool.h>

typedef struct st_tly_pglisten_t tly_pglisten_t;

/** A notification on the channel; `payload` is borrowed (may be ""). */
typedef void (*tly_pglisten_notify_cb)(void *data, const char *payload);
/** Listening (re)started: notifications sent before now may have been missed. */
typedef void (*tly_pglisten_ready_cb)(void *data);

/**
 * Starts listening on `channel` (any name: it is quoted) over a connection to
 * `dsn`. Both strings are copied. The connection opens in the background.
 */
tly_pglisten_t *tly_pglisten_create(h2o_loop_t *loop, const char *dsn, const char *channel, tly_pglisten_notify_cb on_notify,
                                    tly_pglisten_ready_cb on_listening, void *data);
/** Closes the connection; no callback is called afterwards. */
void tly_pglisten_destroy(tly_pglisten_t *l);
/** True while the LISTEN is in effect. */
bool tly_pglisten_ready(tly_pglisten_t *l);

#endif
