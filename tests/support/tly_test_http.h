/*
 * A small HTTP client for integration and end-to-end tests (libcurl), and the
 * stack's environment file (KEY=VALUE lines written by tests/stack.sh up, or
 * the process environment when the suite runs against another stack).
 */
#ifndef TLY_TEST_HTTP_H
#define TLY_TEST_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct st_tly_test_response_t {
    long status;
    char *body;
    size_t body_len;
    char *headers; /* raw header block, lower-cased names */
    json_t *json;  /* parsed body or NULL */
} tly_test_response_t;

/** Value of setting `name`: the environment first, then the stack's env file. Never freed. */
const char *tly_test_env(const char *name);
/**
 * tly_test_env for a setting the test cannot do without: when it is unset,
 * says which and exits 1 (a clear error instead of a NULL used later).
 */
const char *tly_test_env_required(const char *name);

/**
 * Sends a request to TALLY_URL + path. `headers` is a NULL-terminated list of
 * "Name: value" strings (may be NULL); the API key is added unless `key` is
 * NULL. Aborts the test on transport errors.
 */
tly_test_response_t tly_test_request(const char *method, const char *path, const char *key, const char *body,
                                     const char *const *headers);
/** tly_test_request to a whole URL (another service's port, e.g. a worker's admin endpoint). */
tly_test_response_t tly_test_request_url(const char *method, const char *url, const char *key, const char *body,
                                         const char *const *headers);
void tly_test_response_free(tly_test_response_t *r);

/** The value of response header `name` (lower case), copied into `out`; false when absent. */
bool tly_test_header(const tly_test_response_t *r, const char *name, char *out, size_t cap);

/** Polls GET /v1/jobs/{id} until terminal or `timeout_ms`; returns the final job json (caller decrefs). */
json_t *tly_test_wait_job(const char *job_url, const char *key, int timeout_ms);

/**
 * A response body collected into a fixed buffer (cut at its size, always
 * NUL-terminated), for tests that drive libcurl themselves:
 * CURLOPT_WRITEFUNCTION tly_test_sink_write, CURLOPT_WRITEDATA the sink.
 * Reset `len` and `data[0]` before reusing it.
 */
typedef struct st_tly_test_sink_t {
    char data[8192];
    size_t len;
} tly_test_sink_t;
size_t tly_test_sink_write(char *ptr, size_t size, size_t nmemb, void *sink);

/** A fresh random Idempotency-Key header line, in a static buffer per call site. */
void tly_test_idem_header(char *out, size_t cap);

#endif
