/*
 * HTTP conventions shared by the command and query APIs: JSON and RFC 9457
 * problem responses, header access, and the validate-or-reply helpers that
 * keep handlers straight-line (each sends the error itself and returns false).
 */
#ifndef TALLY_HTTP_H
#define TALLY_HTTP_H

#define H2O_USE_LIBUV 0
#include <h2o.h>
#include <jansson.h>
#include <stdbool.h>

/** Adds a header; `value` is copied into the request's pool. */
void tly_http_add_header(h2o_req_t *req, const char *name, const char *value);

/** The value of request header `name` (lower case), or a zero iovec. */
h2o_iovec_t tly_http_header(h2o_req_t *req, const char *name);

/** Sends `body` (copied) with status and Content-Type: application/json. */
void tly_http_send_json_text(h2o_req_t *req, int status, const char *body, size_t len);
/** Serialises and sends `v` (borrowed). */
void tly_http_send_json(h2o_req_t *req, int status, const json_t *v);

/**
 * An RFC 9457 body: type "/problems/<code>", title (the reason phrase), status,
 * detail, code, and `errors` (borrowed; may be NULL) as errors[]. Caller frees.
 */
char *tly_http_problem_body(int status, const char *code, const char *detail, const json_t *errors);
/** Sends tly_http_problem_body as application/problem+json. */
void tly_http_send_problem(h2o_req_t *req, int status, const char *code, const char *detail, const json_t *errors);
/** The same with a Retry-After header (seconds), for 429 and 503. */
void tly_http_send_unavailable(h2o_req_t *req, int status, const char *code, const char *detail, int retry_after);

/** Appends {field, message} to an errors[] array. */
void tly_http_field_error(json_t *errors, const char *field, const char *message);

/** The reason phrase for a status code. */
const char *tly_http_reason(int status);

/**
 * Splits the path (without query string) into at most `max` segments after
 * "/v1/"; returns the count, or -1 when the path does not start with "/v1/".
 * Segments point into the request (not NUL-terminated).
 */
int tly_http_path_segments(h2o_req_t *req, h2o_iovec_t *segs, int max);

/** True when segment `seg` equals `s`. */
bool tly_http_seg_is(h2o_iovec_t seg, const char *s);

/**
 * The Allow header for a 405 on this URL, across the gateway: both APIs serve
 * /v1/accounts, /v1/transfers and /v1/webhook-endpoints (GET lists, POST
 * creates) and /v1/webhook-endpoints/{id} (GET reads; PATCH, DELETE), every
 * other URL belongs to one API, whose own methods are `own`.
 */
const char *tly_http_allow(h2o_req_t *req, const char *own);

/** The request's X-Request-Id if a sane one was given, else a new uuid; from the pool. */
const char *tly_http_request_id(h2o_req_t *req);

#endif
