/*
 * Internals shared by the command API's files: the per-thread context, the
 * command operation (one command on its way from validation to 202) and the
 * prepared statements. Not included by anything outside this directory.
 */
#ifndef TALLY_COMMAND_API_INTERNAL_H
#define TALLY_COMMAND_API_INTERNAL_H

#include "command_api.h"
#include "commands.h"
#include "tally/api.h"
#include "tally/envelope.h"
#include "tally/kafka.h"
#include "tally/pgasync.h"

#define CMD_MAX_BODY (64 * 1024)
#define CMD_IDEMPOTENCY_KEY_MAX 255
/* A key found in flight is looked at again this long after the acceptance gathering, CMD_RECLAIMS times, before 409. */
#define CMD_RECLAIM_SLACK_MS 15
#define CMD_RECLAIMS 3

enum {
    STMT_INSERT,
    STMT_CLAIM,
    STMT_ACCEPT,
    STMT_FAIL,
    STMT_KEY_CREATE,
    STMT_KEY_REVOKE,
    STMT_WH_CREATE,
    STMT_WH_UPDATE,
    STMT_WH_DELETE,
    STMT_WH_ROTATE,
    STMT_WH_REPLAY,
    STMT__COUNT
};
extern const tly_pg_statement_t cmd_statements[STMT__COUNT];

typedef struct st_cmd_op_t cmd_op_t;
/* The process's one producer and a loop thread's mailbox for its delivery reports (producer.c). */
typedef struct st_cmd_producer_t cmd_producer_t;
typedef struct st_cmd_mailbox_t cmd_mailbox_t;

/* A 202 already sent whose acceptance is still to be recorded (record.c). */
typedef struct st_cmd_accept_t {
    struct st_cmd_accept_t *next;
    tly_uuid_t job_id;
    char *body; /* the 202 body, kept for idempotent replays */
    int attempts;
} cmd_accept_t;

typedef struct st_cmd_thread_t {
    tly_command_api_config_t *cfg;
    h2o_evloop_t *loop;
    tly_keycache_t *keys;
    tly_guard_thread_t *guard;
    tly_pgpool_t *pg;
    cmd_producer_t *producer; /* shared by every thread */
    cmd_mailbox_t *mailbox;   /* where the producer hands this thread its delivery reports */
    size_t inflight;
    /* batched statements (record.c): what this loop iteration queued */
    cmd_op_t *records, **records_tail; /* ops waiting for their command record */
    size_t nrecords;
    cmd_accept_t *accepts; /* acceptances to record */
    size_t naccepts;
    h2o_timeout_t flush_now, accept_gather, flush_retry, reclaim;
    h2o_timeout_t deadline; /* TALLY_KAFKA_TIMEOUT_MS after an append: the 503 if no report came */
    h2o_timeout_entry_t flush_entry, gather_entry, retry_entry;
    const uint8_t *consistency_key; /* TLY_CONSISTENCY_KEY_LEN bytes, or NULL: no consistency tokens */
    bool closing;
} cmd_thread_t;

typedef struct st_cmd_batch_t cmd_batch_t;

struct st_cmd_op_t {
    tly_api_req_t api; /* request frame; api.req is NULL for batch items */
    cmd_thread_t *thr;
    cmd_batch_t *batch; /* the batch this op is an item of, or NULL */
    size_t batch_index;
    json_t *body; /* owns the strings that cmd borrows */
    tly_command_t cmd;
    tly_uuid_t job_id, event_id, resource_id;
    char idem_key[CMD_IDEMPOTENCY_KEY_MAX + 1];
    bool has_idem;
    char hash_hex[65];
    char traceparent[TLY_TRACEPARENT_LEN + 1];
    char *response;              /* the 202 body */
    struct st_cmd_op_t *next;    /* in thr->records */
    h2o_timeout_entry_t reclaim; /* another look at a key found in flight */
    int reclaims;
    int attempt;                  /* the record's attempt (0009): fences marking it failed */
    h2o_timeout_entry_t deadline; /* in thr->deadline while the append waits for its report */
    bool answered;                /* the client has its answer; the op may live on until its report */
    /* the delivery report, written on the producer's polling thread before `report` is handed to the op's loop */
    cmd_mailbox_t *mailbox;
    h2o_multithread_message_t report;
    rd_kafka_resp_err_t report_err;
    int64_t report_latency_us;
    int32_t log_partition; /* where the request event is in the log (-1: not known, a replayed 202) */
    int64_t log_offset;
};

/** An op for an HTTP request (`req`), or for a batch item (`req` NULL, `batch` set). */
cmd_op_t *cmd_op_create(cmd_thread_t *thr, h2o_req_t *req, cmd_batch_t *batch, size_t index);
void cmd_op_destroy(cmd_op_t *op);

/** Ends the op with a problem: sent to the client, or recorded as the batch item's result. */
void cmd_op_problem(cmd_op_t *op, int status, const char *code, const char *detail, const json_t *errors);

/**
 * Resolves "/v1/accounts[/{id}/<action>]" into op->cmd.kind and
 * op->resource_id (a new id for a new account); ends the op with 404 or 422
 * and returns false when it cannot.
 */
bool cmd_op_route(cmd_op_t *op, const char *path, size_t len);
/** Validates op->body for op->cmd.kind; ends the op with 422 and returns false when invalid. */
bool cmd_op_validate(cmd_op_t *op);
/** Takes the Idempotency-Key (`key` NULL when none was given); ends the op with 400 when required or malformed. */
bool cmd_op_idempotency_key(cmd_op_t *op, const char *key, size_t len);

/**
 * Records, appends and accepts the validated command asynchronously; the op
 * ends itself (202, 409, 422 or 503). `path` and `body` are hashed to
 * recognise a repeated Idempotency-Key with a different request.
 */
void cmd_op_start(cmd_op_t *op, const char *path, size_t path_len, const char *body, size_t body_len);

/** Called by record.c for each op of a record batch: `inserted` false means the key was seen before. */
void cmd_op_recorded(cmd_op_t *op, bool inserted);
/** Called by record.c when an op's record could not be written: 503. */
void cmd_op_record_failed(cmd_op_t *op, const char *err);

/** Sets up (and tears down) a thread's batched statements. */
void cmd_records_init(cmd_thread_t *thr);
void cmd_records_dispose(cmd_thread_t *thr);
/** Queues the op's command record for this loop iteration's insert; calls back cmd_op_recorded or cmd_op_record_failed. */
void cmd_record_enqueue(cmd_op_t *op);
/** Queues the acceptance of a sent 202 (takes `body`). */
void cmd_accept_enqueue(cmd_thread_t *thr, const tly_uuid_t *job_id, char *body);

/** The op's delivery report (op->report_err, op->report_latency_us) reached its loop thread. */
void cmd_op_delivered(cmd_op_t *op);

/**
 * The process's idempotent producer (tly_kafka_producer_create) and the
 * thread that serves its delivery reports; each report goes to the mailbox of
 * the op it belongs to. NULL with `err` set.
 */
cmd_producer_t *cmd_producer_create(const tly_command_api_config_t *cfg, char *err, size_t errcap);
/** Flushes what is queued (at most 2 s), stops the polling thread, frees the producer and every mailbox. */
void cmd_producer_destroy(cmd_producer_t *p);
/** The librdkafka handle, to produce on (borrowed). */
rd_kafka_t *cmd_producer_kafka(cmd_producer_t *p);
/** A mailbox on `loop` (call on the loop's thread); freed by cmd_producer_destroy. */
cmd_mailbox_t *cmd_mailbox_open(cmd_producer_t *p, h2o_evloop_t *loop);
/** On the loop's thread, before it goes: serves the reports handed over; later ones are dropped. */
void cmd_mailbox_close(cmd_mailbox_t *mb, h2o_evloop_t *loop);

/** Called by an item op when it ends; takes `result`. */
void cmd_batch_item_done(cmd_batch_t *batch, size_t index, json_t *result);

/** POST /v1/batch. */
void cmd_batch_handle(cmd_thread_t *thr, h2o_req_t *req);
/** POST /v1/api-keys and DELETE /v1/api-keys/{id}. */
void cmd_keys_handle(cmd_thread_t *thr, h2o_req_t *req, const h2o_iovec_t *segs, int nsegs);
/** /v1/webhook-endpoints[/{id}[/rotate-secret|/replay]] (webhooks.c). */
void cmd_webhooks_handle(cmd_thread_t *thr, h2o_req_t *req, const h2o_iovec_t *segs, int nsegs);

/** Parses the request body as strict JSON after the content-type and size checks; replies and returns NULL on failure. */
json_t *cmd_body_or_reply(tly_api_req_t *api);

#endif
