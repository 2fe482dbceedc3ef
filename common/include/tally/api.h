/*
 * The request frame every API handler shares: request id, route, principal,
 * rate-limit state, logging of one JSON line per request, and a guard that
 * notices when h2o disposes the request (the client went away) while an
 * asynchronous step is still running, so a late answer is dropped instead of
 * touching freed memory.
 */
#ifndef TALLY_API_H
#define TALLY_API_H

#include "tally/config.h"
#include "tally/envelope.h"
#include "tally/http.h"
#include "tally/keycache.h"
#include "tally/uuid.h"

#include <libpq-fe.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Abuse limits every API shares (one struct inside each service's config). */
typedef struct st_tly_api_abuse_config_t {
    int64_t auth_fail_limit;
    int64_t auth_fail_window_s;
    char *trusted_proxies;
} tly_api_abuse_config_t;

/* The rows of the settings above for a service's config table; `off` is offsetof the struct in the service's config. */
#define TLY_API_ABUSE_SETTINGS(off)                                                                                                \
    {"auth-fail-limit",                                                                                                            \
     "TALLY_AUTH_FAIL_LIMIT",                                                                                                      \
     TLY_CONFIG_INT,                                                                                                               \
     "20",                                                                                                                         \
     0,                                                                                                                            \
     1000000,                                                                                                                      \
     (off) + offsetof(tly_api_abuse_config_t, auth_fail_limit),                                                                    \
     "failed authentications per source address and window before that address gets 429 (0: no throttling)"},                      \
        {"auth-fail-window-s",                                                                                                     \
         "TALLY_AUTH_FAIL_WINDOW_S",                                                                                               \
         TLY_CONFIG_INT,                                                                                                           \
         "60",                                                                                                                     \
         1,                                                                                                                        \
         86400,                                                                                                                    \
         (off) + offsetof(tly_api_abuse_config_t, auth_fail_window_s),                                                             \
         "the window of auth-fail-limit, in seconds"},                                                                             \
    {                                                                                                                              \
        "trusted-proxies", "TALLY_TRUSTED_PROXIES", TLY_CONFIG_STRING, "127.0.0.1/32,::1/128", 0, 0,                               \
            (off) + offsetof(tly_api_abuse_config_t, trusted_proxies),                                                             \
            "peers (addresses or CIDR ranges, comma-separated) whose X-Forwarded-For names the client: the gateway"                \
    }

/** Applies the abuse settings; false (with a message in `err`) when trusted-proxies is malformed. */
bool tly_api_abuse_setup(const tly_api_abuse_config_t *cfg, char *err, size_t errcap) __attribute__((warn_unused_result));

typedef struct st_tly_api_req_t {
    h2o_req_t *req; /* NULL once h2o disposed the request */
    struct st_tly_api_req_t **guard;
    size_t *inflight;
    char request_id[130];
    const char *route;
    tly_principal_t principal; /* principal.entry == NULL until authenticated */
    tly_rate_t rate;
    tly_uuid_t job_id; /* logged when set */
    int64_t started_us;
    /* the request's W3C traceparent when it sent a valid one, else a new
       trace; its trace id is logged, and commands carry it to Kafka */
    char traceparent[TLY_TRACEPARENT_LEN + 1];
    bool quiet; /* no access line (a throttled address: one line per window says so) */
} tly_api_req_t;

/** Starts a frame for `req`; counts it in `*inflight` until tly_api_req_finish. */
void tly_api_req_init(tly_api_req_t *ar, h2o_req_t *req, size_t *inflight);
/** Ends the frame; the request itself lives on in h2o until its response is sent. */
void tly_api_req_finish(tly_api_req_t *ar);

/** Sends a JSON body with the common headers, logs the line and counts it in the HTTP metrics. */
void tly_api_send(tly_api_req_t *ar, int status, const char *content_type, const char *body, size_t len);
void tly_api_problem(tly_api_req_t *ar, int status, const char *code, const char *detail, const json_t *errors);
/** 503 with Retry-After: 1. */
void tly_api_unavailable(tly_api_req_t *ar, const char *code, const char *detail);

/* Raised by the tenant quota triggers (migrations/0006_credentials.sql). */
#define TLY_SQLSTATE_QUOTA "TQ001"

/** True when the statement failed on its input (SQLSTATE class 22, data exception). */
bool tly_pg_invalid_input(const PGresult *res);
/**
 * Answers a failed statement (`res` and/or `err`; either may be NULL): 422
 * quota_exceeded for a tenant quota, 422 invalid_input for SQLSTATE class 22,
 * else logs it and sends 503 database_unavailable with `detail`.
 */
void tly_api_db_failed(tly_api_req_t *ar, const PGresult *res, const char *err, const char *detail);

/**
 * Authenticates, takes a rate-limit token and a concurrency slot (held until
 * tly_api_req_finish) and checks `scope`; sends the 401, 403, 429 or 503
 * itself and returns false when the request must stop.
 */
bool tly_api_authenticate_or_reply(tly_api_req_t *ar, tly_keycache_t *keys, int scope);

/** Binds this event-loop thread's limiter (tally/ratelimit.h); without one nothing is limited. */
void tly_api_bind_limiter(tly_limiter_thread_t *limiter);
/** One more token for the authenticated key of `ar` (a batch item); false: refused. */
bool tly_api_take_token(tly_api_req_t *ar);
/** Counts the request as a long-poll of its key from now on; sends 429 and returns false when the key has none left. */
bool tly_api_long_poll_or_reply(tly_api_req_t *ar);

#endif
