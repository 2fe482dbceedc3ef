/*
 * A webhook receiver for the tests and the bench: an HTTP/1.1 server on
 * 127.0.0.1 (plain sockets, one thread per connection, keep-alive), scripted
 * per URL path, that records every request and checks its webhook-signature
 * against the path's secrets with its own implementation of the documented
 * algorithm (docs/webhooks.md): base64-decode the secret after "whsec_",
 * HMAC-SHA256 over "<webhook-id>.<webhook-timestamp>.<body>", base64, "v1,"
 * prefix, any of the space-separated signatures may match.
 *
 * Scripts: the first `fail_first` requests to a path get `fail_status` (with
 * `retry_after` when set), or, when `fail_status` is 0, no answer for
 * `hang_ms` (then the connection is closed); later requests get `status`
 * (200 when 0), each after `delay_ms`. The whole receiver can be taken down (listener and every
 * connection closed: connection refused) and brought back on the same port.
 */
#ifndef TLY_TEST_RECEIVER_H
#define TLY_TEST_RECEIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TLY_TEST_RECEIVER_MAX_SECRETS 2

typedef struct st_tly_test_receiver_t tly_test_receiver_t;

typedef struct st_tly_test_script_t {
    int fail_first;
    int fail_status; /* 0: hang instead of answering */
    const char *retry_after;
    int hang_ms;
    int status;                                         /* after the failures; 0 = 200 */
    int delay_ms;                                       /* before each answer after the failures (a slow receiver) */
    const char *secrets[TLY_TEST_RECEIVER_MAX_SECRETS]; /* whsec_... to check; NULL entries unused */
} tly_test_script_t;

typedef struct st_tly_test_hit_t {
    char path[128];
    char id[80];       /* webhook-id */
    int64_t timestamp; /* webhook-timestamp */
    bool timestamp_ok; /* within 5 minutes of now */
    unsigned sig_ok;   /* bit i: secrets[i] of the path's script verified one of the signatures */
    int nsigs;         /* signatures in the header */
    char *body;
    int64_t at_us; /* arrival, CLOCK_REALTIME microseconds */
    int answered;  /* status sent; 0 when none */
} tly_test_hit_t;

/** Starts on 127.0.0.1 and a free port. Aborts on failure. */
tly_test_receiver_t *tly_test_receiver_start(void);
void tly_test_receiver_stop(tly_test_receiver_t *r);
int tly_test_receiver_port(const tly_test_receiver_t *r);

/** Sets the script of `path` (copied; replaces the old one and resets its request count). */
void tly_test_receiver_script(tly_test_receiver_t *r, const char *path, const tly_test_script_t *s);

/** Down: no listener, every open connection closed. Up: listening again on the same port. */
void tly_test_receiver_set_down(tly_test_receiver_t *r, bool down);

/** Requests recorded for `path` so far (NULL: all paths). */
int tly_test_receiver_count(tly_test_receiver_t *r, const char *path);
/**
 * Copies the hits of `path` (NULL: all) into a new array (caller frees with
 * tly_test_hits_free); `*n` gets their number.
 */
tly_test_hit_t *tly_test_receiver_hits(tly_test_receiver_t *r, const char *path, int *n);
void tly_test_hits_free(tly_test_hit_t *hits, int n);

/** The test's own Standard Webhooks signature ("v1,<base64>"), independent of the worker's code. */
bool tly_test_webhook_sign(const char *secret, const char *id, int64_t timestamp, const char *body, size_t len, char *out,
                           size_t cap);

#endif
