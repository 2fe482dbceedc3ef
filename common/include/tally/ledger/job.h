/*
 * The job state machine, defined once for every service: a job is queued
 * from the moment its request is in the log, running once a transfer's
 * source is debited, then succeeded or failed (terminal).
 *
 * A job's events come from several partitions, so the projector writes
 * them in any order: each status has a rank (queued 1, running 2, succeeded
 * and failed 3), the stored version is the rank, and only a higher rank
 * changes a job. Readers see version rank + 1; a job known only by its
 * command record (the command API wrote it before the append, the projector
 * has not seen the event yet) reads as queued with version 1, older than any
 * projected state. The one move down is the projector's own: a parked event
 * (dead_letters) fails its job as dead_lettered, and `tallyctl dlq retry`
 * reopens exactly such a job before the projector applies the event again.
 *
 * The names are macros so that SQL text is built from them at compile time.
 */
#ifndef TALLY_LEDGER_JOB_H
#define TALLY_LEDGER_JOB_H

#include <stdbool.h>

#define TLY_JOB_QUEUED_NAME "queued"
#define TLY_JOB_RUNNING_NAME "running"
#define TLY_JOB_SUCCEEDED_NAME "succeeded"
#define TLY_JOB_FAILED_NAME "failed"

#define TLY_JOB__STR(x) #x
#define TLY_JOB_STR(x) TLY_JOB__STR(x)
#define TLY_JOB_RANK_QUEUED 1
#define TLY_JOB_RANK_RUNNING 2
#define TLY_JOB_RANK_TERMINAL 3

/* SQL: the terminal statuses, for `status IN TLY_JOB_TERMINAL_SQL`. */
#define TLY_JOB_TERMINAL_SQL "('" TLY_JOB_SUCCEEDED_NAME "', '" TLY_JOB_FAILED_NAME "')"
/* SQL: the version a reader sees of a projected job whose rank is in column `col`. */
#define TLY_JOB_READ_VERSION_SQL(col) "(" col " + 1)"
/* SQL: the version a reader sees of a job known only by its command record (the queued fallback). */
#define TLY_JOB_FALLBACK_VERSION_SQL "1"
/* SQL: the state of a parked job that `tallyctl dlq retry` may reopen (parameter $1: the job id). */
#define TLY_JOB_REOPEN_SQL                                                                                                         \
    "UPDATE jobs SET status = '" TLY_JOB_QUEUED_NAME "', error_code = NULL, error_detail = NULL, "                                 \
    "version = " TLY_JOB_STR(TLY_JOB_RANK_QUEUED) ", updated_at = created_at "                                                     \
                                                  "WHERE id = $1 AND status = '" TLY_JOB_FAILED_NAME                               \
                                                  "' AND error_code = 'dead_lettered'"

typedef enum en_tly_job_status_t {
    TLY_JOB_QUEUED,
    TLY_JOB_RUNNING,
    TLY_JOB_SUCCEEDED,
    TLY_JOB_FAILED,
} tly_job_status_t;

/** "queued", "running", "succeeded", "failed". */
const char *tly_job_status_name(tly_job_status_t s);
/** The rank of `s`: only a higher rank changes a job. */
int tly_job_rank(tly_job_status_t s);
/** True for succeeded and failed. */
bool tly_job_is_terminal(tly_job_status_t s);
/** True when `name` is the name of a terminal status. */
bool tly_job_name_is_terminal(const char *name);

#endif
