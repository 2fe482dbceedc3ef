/*
 * What the query API's handler files share: the per-thread context, the
 * per-request operation, and the prepared statements. Not a public header.
 */
#ifndef TALLY_QUERY_INTERNAL_H
#define TALLY_QUERY_INTERNAL_H

#include "qa_params.h"
#include "qa_versions.h"
#include "tally/api.h"
#include "tally/guard.h"
#include "tally/consistency.h"
#include "tally/keycache.h"
#include "tally/pgasync.h"
#include "tally/pglisten.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QA_WAITER_BUCKETS 1024
/* Bodies over this many bytes are gzip-compressed for clients that accept it (and vary on Accept-Encoding). */
#define QA_GZIP_MIN 1024
/* The channel the projector NOTIFYs with a job id when a job becomes terminal. */
#define QA_JOBS_CHANNEL "tally_jobs"

enum {
    STMT_ACCOUNT,
    STMT_ACCOUNT_AS_OF,
    STMT_JOB,
    STMT_JOB_EXPANDED,
    STMT_LIST_ACCOUNTS,
    STMT_LIST_ENTRIES,
    STMT_TRANSFER,
    STMT_TRANSFER_EXPANDED,
    STMT_TOKEN_REACHED,
    STMT_WATERMARK,
    STMT_LIST_TRANSFERS,
    STMT_VERSION_TRIGGERS,
    STMT_WEBHOOK_ENDPOINT,
    STMT_LIST_WEBHOOK_ENDPOINTS,
    STMT_LIST_WEBHOOK_DELIVERIES,
    STMT_LIST_AUDIT_EVENTS,
    STMT__COUNT,
};
extern const tly_pg_statement_t qa_statements[STMT__COUNT];

typedef struct st_query_op_t query_op_t;

typedef struct st_query_thread_t {
    h2o_loop_t *loop;
    tly_keycache_t *keys;
    tly_guard_thread_t *guard;
    tly_pgpool_t *pg;
    tly_pglisten_t *listen;
    qa_versions_t *versions;   /* If-None-Match answered from memory (qa_versions.c) */
    const uint8_t *cursor_key; /* shared by every thread, read-only */
    size_t cursor_keylen;
    size_t inflight;
    /* long-polls: one timeout list per whole second (h2o timeouts are fixed) */
    h2o_timeout_t wait_timeouts[QA_WAIT_MAX + 1];
    h2o_timeout_t tick_timeout;
    h2o_timeout_entry_t tick;
    query_op_t *waiters[QA_WAITER_BUCKETS]; /* job id → waiting requests */
    size_t nwaiters;
    /* reads in time and of one's own writes (qa_reads.c) */
    const uint8_t *consistency_key; /* TLY_CONSISTENCY_KEY_LEN bytes shared with the command API, or NULL */
    h2o_timeout_t reads_timeout;    /* QA_READS_TICK_MS: token waiters and the watermark's refresh */
    h2o_timeout_entry_t reads_tick;
    int reads_ticks;
    bool watermark_querying;
    bool reads_closing;   /* thread_dispose: token reads in flight end there */
    char watermark[40];   /* Tally-Watermark, "" until known */
    int64_t watermark_us; /* INT64_MIN until known */
    query_op_t *token_waiters;
} query_thread_t;

struct st_query_op_t {
    tly_api_req_t api;
    query_thread_t *thr;
    const char *what; /* "account", "job": the 404 detail and the ETag prefix */
    char id_text[TLY_UUID_STR_LEN + 1];
    char tenant[TLY_UUID_STR_LEN + 1];
    tly_uuid_t id;
    qa_versions_ticket_t ticket; /* taken when a single account or transfer is read */
    /* lists */
    qa_list_query_t list;
    uint8_t filters[16];
    const char *base_path;    /* "/v1/accounts" or "/v1/accounts/{id}/entries", from the pool */
    char transfer_status[16]; /* GET /v1/transfers?status= ("" when not given); the account goes in id_text */
    char delivery_status[16]; /* GET /v1/webhook-endpoints/{id}/deliveries?status= ("" when not given) */
    /* long-poll (jobs with Prefer: wait) */
    int wait_s;              /* -1: no wait preference */
    bool waiting;            /* linked in the waiter map and a wait timeout */
    bool querying;           /* a read of the job is in flight */
    bool dirty;              /* notified while the read was in flight: read again */
    bool expired;            /* the wait is over: answer with the next read */
    query_op_t *next_waiter; /* bucket chain */
    h2o_timeout_entry_t timer;
    query_op_t **dispose_guard; /* in the request's pool: set to NULL when the op goes */
    /* ?as_of= and ?expand= (qa_reads.c) */
    bool has_as_of;
    int64_t as_of_us;
    bool expand_resource, expand_from, expand_to;
    /* Tally-Consistency-Token: the read waits until the read models include it */
    tly_consistency_t token;
    int64_t token_deadline_us; /* monotonic */
    bool token_querying;
    query_op_t *next_token_waiter;
    h2o_timeout_entry_t token_timer;
};

/** Ends the frame and frees the op. */
void qa_op_destroy(query_op_t *op);

/**
 * Answers 200 (or 304 when If-None-Match matches) with a JSON body and its
 * ETag (`etag` quoted, strong), gzip-compressed when it is over 1 KiB and the
 * client accepts gzip (the ETag is then sent weak: another representation).
 */
void qa_send_json(query_op_t *op, const char *body, size_t len, const char *etag);

/** Writes the query string of the next page (filters, limit, `cursor`) into `out`. */
typedef void (*qa_next_query_fn)(const query_op_t *op, const char *cursor, char *out, size_t cap);

/**
 * Sends one page of a list query's result: `rows` rows of `res` whose columns
 * are the item's JSON, created_at in microseconds and id, one more than
 * op->list.limit when a next page exists. Adds has_more, a signed
 * next_cursor, the Link to `path` + next_query's query string, and the ETag
 * of the page (qa_page.c). The caller destroys the op afterwards.
 */
void qa_send_page(query_op_t *op, PGresult *res, int rows, const char *path, qa_next_query_fn next_query);

/** Splits the request's query string into `pairs` (QA_MAX_PARAMS); replies 400 and returns -1 when malformed. */
int qa_query_pairs_or_reply(query_op_t *op, qa_pair_t *pairs);

/** Replies 422 with `errors` (field problems) unless it is empty; takes `errors`. True when empty. */
bool qa_params_ok_or_reply(query_op_t *op, json_t *errors);

/**
 * The keyset lower bound of this page into `t_out` (40 bytes) and `id_out`
 * (37 bytes): from op->list.cursor, verified against op->filters, or the
 * start (after op->list.after_us when given). Replies 400 invalid_cursor and
 * returns false on a bad or foreign cursor.
 */
bool qa_page_lower_bound_or_reply(query_op_t *op, char *t_out, char *id_out);

/** gzip `in`; caller frees `*out`. False if zlib failed. */
bool qa_gzip(const char *in, size_t len, char **out, size_t *outlen) __attribute__((warn_unused_result));

/** A 503 for a failed read, logged once. */
void qa_read_failed(query_op_t *op, PGresult *res, const char *err);

/** GET /v1/accounts and /v1/accounts/{id}/entries: parses, validates and queries, or replies. */
void qa_list_start(query_op_t *op, qa_list_t list, h2o_iovec_t account_seg);

/** GET /v1/transfers?account=&status=: parses, validates and queries, or replies (qa_transfers.c). */
void qa_transfers_list_start(query_op_t *op);

/** GET /v1/webhook-endpoints: parses, validates and queries, or replies (qa_webhooks.c). */
void qa_webhooks_list_start(query_op_t *op);
/** GET /v1/webhook-endpoints/{id}/deliveries?status=: parses, validates and queries, or replies (qa_webhooks.c). */
void qa_webhooks_deliveries_start(query_op_t *op, h2o_iovec_t endpoint_seg);

/** Parses ?limit=&cursor= (nothing else) into op->list; replies 400 or 422 itself (qa_webhooks.c). */
bool qa_page_params_or_reply(query_op_t *op);
/** The next page's query string of a list that takes only limit and cursor. */
void qa_page_next_query(const query_op_t *op, const char *cursor, char *out, size_t cap);

/** GET /v1/audit-events (scope admin): parses, validates and queries, or replies (qa_audit.c). */
void qa_audit_list_start(query_op_t *op);
/** True for a request that needs the admin scope rather than read (the audit trail). */
bool qa_audit_route(h2o_req_t *req);

/** GET /v1/jobs/{id}: reads the job, holding the request for Prefer: wait=N. */
void qa_job_start(query_op_t *op);

/**
 * Takes the request over when it carries Tally-Consistency-Token: replies 400
 * to a tampered or foreign token, else waits (bounded by Prefer: wait, 5 s
 * without) until the read models include the token's command, then routes it
 * (qa_route). False when there is no token: the caller routes at once.
 * Adds Tally-Watermark to every read.
 */
bool qa_reads_start(query_op_t *op);
/** Routes an authenticated GET or HEAD (query_api.c); every branch answers or starts a read that will. */
void qa_route(query_op_t *op);

/**
 * The query parameters of a single resource: `as_of` (accounts), `expand`
 * (jobs: resource; transfers: from_account, to_account) into `op`; anything
 * else is 422. Replies itself and returns false when they are bad.
 */
bool qa_resource_params_or_reply(query_op_t *op);
/** GET /v1/accounts/{id}?as_of=: the account as it was then (op->as_of_us). */
void qa_account_as_of_start(query_op_t *op);

/** Per-thread reads machinery (qa_reads.c): the key, the watermark, token waiters. */
void qa_reads_thread_init(query_thread_t *thr, const uint8_t *consistency_key);
void qa_reads_thread_dispose(query_thread_t *thr);

/** Per-thread long-poll machinery: listener, timeouts, shutdown. */
void qa_jobs_thread_init(query_thread_t *thr, const char *dsn);
void qa_jobs_thread_dispose(query_thread_t *thr);

#endif
