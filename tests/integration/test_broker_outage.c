/*
 * A 202 is a promise, and a broker that cannot acknowledge gets a 503, never a
 * 202. The broker is frozen (SIGSTOP), so that requests already on the wire
 * may still be appended when it wakes: the retry with the same
 * Idempotency-Key must then be applied exactly once. While the first attempt
 * waits for the broker, the same key is in flight (409). Runs last: it stalls the
 * shared stack for a few seconds.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tly_test_http.h"
#include "tly_test_util.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static const char *key;
static pid_t kafka_pid;

/* GET /readyz on the command API's admin port until it answers `want` (bounded). */
static bool
ready_becomes(long want, int timeout_ms)
{
    char *saved = strdup(tly_test_env("TALLY_URL"));
    setenv("TALLY_URL", tly_test_env("TALLY_COMMAND_ADMIN_URL"), 1);
    bool seen = false;
    for (int waited = 0; waited <= timeout_ms && !seen; waited += 200) {
        tly_test_response_t r = tly_test_request("GET", "/readyz", NULL, NULL, NULL);
        seen = r.status == want;
        tly_test_response_free(&r);
        if (!seen)
            usleep(200 * 1000);
    }
    setenv("TALLY_URL", saved, 1);
    free(saved);
    return seen;
}

static long
balance_of(const char *account)
{
    char path[128];
    snprintf(path, sizeof(path), "/v1/accounts/%s", account);
    tly_test_response_t r = tly_test_request("GET", path, key, NULL, NULL);
    assert_int_equal(r.status, 200);
    long b = (long)json_integer_value(json_object_get(r.json, "balance"));
    tly_test_response_free(&r);
    return b;
}

typedef struct st_in_flight_t {
    const char *path;
    const char *const *headers;
    tly_test_response_t r;
} in_flight_t;

static void *
post_deposit(void *arg)
{
    in_flight_t *f = arg;
    f->r = tly_test_request("POST", f->path, key, "{\"amount\":700,\"currency\":\"EUR\"}", f->headers);
    return NULL;
}

static void
test_frozen_broker_gives_503_and_retry_applies_once(void **state)
{
    char account[64], path[200], idem[128], retry_after[16];
    tly_test_response_t r = tly_test_request("POST", "/v1/accounts", key, "{\"currency\":\"EUR\",\"label\":\"outage\"}", NULL);
    assert_int_equal(r.status, 202);
    snprintf(account, sizeof(account), "%s",
             json_string_value(json_object_get(json_object_get(json_object_get(r.json, "job"), "resource"), "id")));
    json_t *job = tly_test_wait_job(json_string_value(json_object_get(json_object_get(r.json, "job"), "url")), key, 20000);
    assert_string_equal(json_string_value(json_object_get(job, "status")), "succeeded");
    json_decref(job);
    tly_test_response_free(&r);
    assert_true(ready_becomes(200, 5000));

    kafka_pid = tly_test_read_pid("kafka");
    assert_true(kafka_pid > 0);
    assert_int_equal(kill(kafka_pid, SIGSTOP), 0);
    assert_true(ready_becomes(503, 10000));

    snprintf(path, sizeof(path), "/v1/accounts/%s/deposits", account);
    tly_test_idem_header(idem, sizeof(idem));
    const char *hdrs[] = {idem, NULL};
    /* the first attempt waits for the frozen broker (up to the 5 s deadline); the same key meanwhile is in flight: 409 */
    in_flight_t first = {path, hdrs, {0}};
    pthread_t tid;
    assert_int_equal(pthread_create(&tid, NULL, post_deposit, &first), 0);
    usleep(1500 * 1000);
    tly_test_response_t busy = tly_test_request("POST", path, key, "{\"amount\":700,\"currency\":\"EUR\"}", hdrs);
    assert_int_equal(busy.status, 409);
    assert_string_equal(json_string_value(json_object_get(busy.json, "code")), "idempotency_key_in_use");
    tly_test_response_free(&busy);
    assert_int_equal(pthread_join(tid, NULL), 0);
    r = first.r;
    assert_int_equal(r.status, 503);
    assert_true(tly_test_header(&r, "retry-after", retry_after, sizeof(retry_after)));
    assert_string_equal(json_string_value(json_object_get(r.json, "code")), "event_log_unavailable");
    tly_test_response_free(&r);

    assert_int_equal(kill(kafka_pid, SIGCONT), 0);
    kafka_pid = 0;
    assert_true(ready_becomes(200, 30000));

    r = tly_test_request("POST", path, key, "{\"amount\":700,\"currency\":\"EUR\"}", hdrs);
    for (int tries = 0; r.status == 503 && tries < 20; ++tries) { /* the producer may still be reconnecting */
        tly_test_response_free(&r);
        sleep(1);
        r = tly_test_request("POST", path, key, "{\"amount\":700,\"currency\":\"EUR\"}", hdrs);
    }
    assert_int_equal(r.status, 202);
    job = tly_test_wait_job(json_string_value(json_object_get(json_object_get(r.json, "job"), "url")), key, 30000);
    assert_string_equal(json_string_value(json_object_get(job, "status")), "succeeded");
    json_decref(job);
    tly_test_response_free(&r);
    sleep(2); /* a first copy appended late would land by now */
    assert_int_equal(balance_of(account), 700);
}

static int
thaw(void **state)
{
    if (kafka_pid > 0)
        kill(kafka_pid, SIGCONT); /* never leave the shared broker frozen */
    return 0;
}

int
main(void)
{
    key = tly_test_env("TALLY_API_KEY");
    if (key == NULL || tly_test_env("TALLY_VAR") == NULL || tly_test_env("TALLY_COMMAND_URL") == NULL) {
        fprintf(stderr, "TALLY_API_KEY, TALLY_VAR and TALLY_COMMAND_URL are needed\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_frozen_broker_gives_503_and_retry_applies_once, thaw),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
