/* The job state machine. See tally/ledger/job.h. */
#include "tally/ledger/job.h"

#include <string.h>

static const struct {
    const char *name;
    int rank;
} statuses[] = {
    [TLY_JOB_QUEUED] = {TLY_JOB_QUEUED_NAME, TLY_JOB_RANK_QUEUED},
    [TLY_JOB_RUNNING] = {TLY_JOB_RUNNING_NAME, TLY_JOB_RANK_RUNNING},
    [TLY_JOB_SUCCEEDED] = {TLY_JOB_SUCCEEDED_NAME, TLY_JOB_RANK_TERMINAL},
    [TLY_JOB_FAILED] = {TLY_JOB_FAILED_NAME, TLY_JOB_RANK_TERMINAL},
};

const char *
tly_job_status_name(tly_job_status_t s)
{
    return statuses[s].name;
}

int
tly_job_rank(tly_job_status_t s)
{
    return statuses[s].rank;
}

bool
tly_job_is_terminal(tly_job_status_t s)
{
    return statuses[s].rank == TLY_JOB_RANK_TERMINAL;
}

bool
tly_job_name_is_terminal(const char *name)
{
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); ++i)
        if (strcmp(statuses[i].name, name) == 0)
            return tly_job_is_terminal((tly_job_status_t)i);
    return false;
}
