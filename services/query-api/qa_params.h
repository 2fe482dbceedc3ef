/*
 * The query API's pure request parsing: query strings, list filters, and the
 * request headers it acts on (If-None-Match, Prefer, Accept-Encoding). No I/O,
 * no h2o: unit tests call these directly.
 */
#ifndef TALLY_QA_PARAMS_H
#define TALLY_QA_PARAMS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QA_MAX_PARAMS 16
#define QA_LIMIT_DEFAULT 20
#define QA_LIMIT_MAX 100
#define QA_WAIT_MAX 30

typedef struct st_qa_pair_t {
    const char *name; /* decoded, NUL-terminated, inside the caller's buffer */
    const char *value;
} qa_pair_t;

/**
 * Splits a query string (without the '?') into at most `max` name=value pairs,
 * percent-decoding both into `buf`. '+' is kept literally (RFC 3986 query, not
 * form encoding), so "+01:00" offsets work unencoded. Returns the number of
 * pairs, or -1 on bad percent-encoding, a NUL byte, too many pairs or too
 * small a buffer.
 */
int qa_query_split(const char *q, size_t len, qa_pair_t *pairs, size_t max, char *buf, size_t bufcap)
    __attribute__((warn_unused_result));

typedef enum en_qa_list_t { QA_LIST_ACCOUNTS, QA_LIST_ENTRIES } qa_list_t;

/** A list request's parameters, validated. Strings are "" when not given. */
typedef struct st_qa_list_query_t {
    qa_list_t list;
    int limit;
    char cursor[256];
    char status[8];   /* accounts: open, frozen, closed */
    char currency[4]; /* accounts */
    char kind[33];    /* entries: deposit, withdrawal, transfer_... */
    bool has_after, has_before, has_as_of;
    int64_t after_us, before_us; /* exclusive bounds on created_at */
    int64_t as_of_us;            /* entries: the account as of this instant (inclusive; 404 before it existed) */
} qa_list_query_t;

/**
 * Validates `pairs` against the list's parameters. Every problem (unknown or
 * repeated parameter, bad limit, time, status, currency or kind) is appended
 * to `errors` as {field, message}; returns true when there is none.
 */
bool qa_list_query_parse(qa_list_t list, const qa_pair_t *pairs, size_t n, qa_list_query_t *out, json_t *errors);

/**
 * The canonical form of the filters (not limit, not cursor), prefixed by the
 * list and `scope` (tenant, account): what a cursor is bound to. Equal filters
 * written differently (time zones, fractions) give the same text.
 */
void qa_list_query_canonical(const qa_list_query_t *q, const char *scope, char *out, size_t cap);

/** The query string of the next page: the same filters, limit and `cursor`. */
void qa_list_query_next(const qa_list_query_t *q, const char *cursor, char *out, size_t cap);

/**
 * True when an If-None-Match value (a list of entity tags, or "*") matches
 * `etag` by weak comparison (RFC 9110 13.1.2: W/ prefixes are ignored).
 */
bool qa_etag_matches(const char *inm, size_t len, const char *etag);

/**
 * The `wait` preference of a Prefer header (RFC 7240) in seconds, or -1 when
 * there is none or it is not a non-negative integer (invalid preferences are
 * ignored, as RFC 7240 asks). Not clamped.
 */
int qa_prefer_wait(const char *v, size_t len);

/** True when an Accept-Encoding value accepts gzip (gzip or * with q > 0). */
bool qa_accepts_gzip(const char *v, size_t len);

#endif
