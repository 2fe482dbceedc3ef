/*
 * Non-blocking Redis for h2o event loops (hiredis's asynchronous API).
 *
 * A client belongs to one loop (one thread) and holds one connection. Its
 * socket is watched by the loop (a dup of hiredis's fd, registered with
 * H2O_SOCKET_FLAG_DONT_READ so that hiredis itself reads it), the way
 * tally/pgasync.h drives libpq: replies come back into the loop and no thread
 * ever waits on Redis. Every command has a deadline: past it the caller is
 * answered with an error at once and the late reply is dropped. A command
 * sent while the connection is down fails at once (nothing queues), and the
 * connection is re-opened in the background; a connection whose commands
 * keep timing out (a stopped or overloaded server) is dropped and re-opened.
 */
#ifndef TALLY_REDISASYNC_H
#define TALLY_REDISASYNC_H

#define H2O_USE_LIBUV 0
#include <h2o.h>
#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct st_tly_redis_t tly_redis_t;

/**
 * Called once per command in the loop thread: `reply` (borrowed, freed after
 * the callback returns; may be a REDIS_REPLY_ERROR) or NULL when the command
 * could not run (not connected, timed out, connection lost), `err` then says why.
 */
typedef void (*tly_redis_cb)(void *data, redisReply *reply, const char *err);

/** Splits "redis://host[:port][/]" (port 6379 by default); false when malformed. */
bool tly_redis_url_parse(const char *url, char *host, size_t hostcap, int *port) __attribute__((warn_unused_result));

/**
 * A client of the server at `url` on `loop`, connecting in the background;
 * commands time out after `timeout_ms`. NULL when the URL is malformed.
 */
tly_redis_t *tly_redis_create(h2o_loop_t *loop, const char *url, int timeout_ms);
/** Closes the connection; pending callbacks are called with an error first. */
void tly_redis_destroy(tly_redis_t *r);

/**
 * Sends one command (`argc` arguments of the given lengths, copied). `cb` is
 * called exactly once, possibly before this returns (not connected).
 */
void tly_redis_command(tly_redis_t *r, int argc, const char **argv, const size_t *lens, tly_redis_cb cb, void *data);

/** Connected, and no command timed out since the last reply. */
bool tly_redis_healthy(const tly_redis_t *r);

/** Commands sent (counted by the caller's metrics, and by tests). */
uint64_t tly_redis_commands_sent(const tly_redis_t *r);

#endif
