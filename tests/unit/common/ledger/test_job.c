/* The job state machine (common/ledger/job.c): names, ranks, terminal statuses, the SQL built from them. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/ledger/job.h"

#include <string.h>

static void
test_ranks(void **state)
{
    /* a job only moves up: queued < running < succeeded = failed */
    assert_true(tly_job_rank(TLY_JOB_QUEUED) < tly_job_rank(TLY_JOB_RUNNING));
    assert_true(tly_job_rank(TLY_JOB_RUNNING) < tly_job_rank(TLY_JOB_SUCCEEDED));
    assert_int_equal(tly_job_rank(TLY_JOB_SUCCEEDED), tly_job_rank(TLY_JOB_FAILED));
    assert_int_equal(tly_job_rank(TLY_JOB_QUEUED), TLY_JOB_RANK_QUEUED);
}

static void
test_terminal(void **state)
{
    assert_false(tly_job_is_terminal(TLY_JOB_QUEUED));
    assert_false(tly_job_is_terminal(TLY_JOB_RUNNING));
    assert_true(tly_job_is_terminal(TLY_JOB_SUCCEEDED));
    assert_true(tly_job_is_terminal(TLY_JOB_FAILED));
    assert_true(tly_job_name_is_terminal("failed"));
    assert_true(tly_job_name_is_terminal("succeeded"));
    assert_false(tly_job_name_is_terminal("running"));
    assert_false(tly_job_name_is_terminal("completed")); /* a transfer's status, not a job's */
}

static void
test_names_and_sql(void **state)
{
    assert_string_equal(tly_job_status_name(TLY_JOB_QUEUED), "queued");
    assert_string_equal(tly_job_status_name(TLY_JOB_RUNNING), "running");
    assert_string_equal(tly_job_status_name(TLY_JOB_SUCCEEDED), "succeeded");
    assert_string_equal(tly_job_status_name(TLY_JOB_FAILED), "failed");
    assert_string_equal(TLY_JOB_TERMINAL_SQL, "('succeeded', 'failed')");
    assert_string_equal(TLY_JOB_READ_VERSION_SQL("version"), "(version + 1)");
    /* the fallback reads older than any projected job (whose read version is at least rank 1 + 1) */
    assert_string_equal(TLY_JOB_FALLBACK_VERSION_SQL, "1");
    assert_non_null(strstr(TLY_JOB_REOPEN_SQL, "status = 'queued'"));
    assert_non_null(strstr(TLY_JOB_REOPEN_SQL, "version = 1,"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ranks),
        cmocka_unit_test(test_terminal),
        cmocka_unit_test(test_names_and_sql),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
