/*
 * A 202 is a promise, and a broker that cannot acknowledge gets a 503 with
 * Retry-After within TALLY_KAFKA_TIMEOUT_MS (plus a small margin), never a
 * 202 and never a client-side timeout, in each state a broker can be in:
 *
 *   frozen       SIGSTOP: connections open, nothing answers; requests already
 *                on the wire may still be appended when it wakes
 *   unreachable  packets to and from its port dropped (an nftables table of
 *                the test's own): the broker runs, the API cannot reach it
 *   killed       SIGKILL, then restarted on its port (tests/stack.sh heal)
 *
 * After each, the retry with the same Idempotency-Key is applied exactly
 * once (a first copy that reached the log late is deduplicated, or the
 * record already tells the retry the 202). While the first attempt waits
 * for the frozen broker, the same key is in flight (409). Runs last: it
 * stalls the shared stack for about a minute.
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

/* What the deadline may overrun by: the loop's timer, the record written before the append, a loaded machine. */
#define DEADLINE_MARGIN_MS 1000

static const char *key;
static pid_t frozen_pid;
static char nft_table[64];
static int deadline_ms;

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

static int
kafka_port(void)
{
    const char *brokers = tly_test_env("TALLY_KAFKA_BROKERS"), *colon = strrchr(brokers, ':');
    assert_non_null(colon);
    return atoi(colon + 1);
}

typedef struct st_in_flight_t {
    const char *path;
    const char *const *headers;
    tly_test_response_t r;
    int64_t took_ms;
} in_flight_t;

static void *
post_deposit(void *arg)
{
    in_flight_t *f = arg;
    int64_t t0 = tly_test_now_ms();
    f->r = tly_test_request("POST", f->path, key, "{\"amount\":700,\"currency\":\"EUR\"}", f->headers);
    f->took_ms = tly_test_now_ms() - t0;
    return NULL;
}

/* A new account, its job succeeded; the command API ready. */
static void
open_account(char *account, size_t cap)
{
    tly_test_response_t r = tly_test_request("POST", "/v1/accounts", key, "{\"currency\":\"EUR\",\"label\":\"outage\"}", NULL);
    assert_int_equal(r.status, 202);
    snprintf(account, cap, "%s",
             json_string_value(json_object_get(json_object_get(json_object_get(r.json, "job"), "resource"), "id")));
    json_t *job = tly_test_wait_job(json_string_value(json_object_get(json_object_get(r.json, "job"), "url")), key, 20000);
    assert_string_equal(json_string_value(json_object_get(job, "status")), "succeeded");
    json_decref(job);
    tly_test_response_free(&r);
    assert_true(ready_becomes(200, 5000));
}

/* The 503 of an attempt made while the broker is out: in time, with Retry-After and the stable code. */
static void
assert_deadline_503(in_flight_t *f, const char *state)
{
    char retry_after[16];
    fprintf(stderr, "broker %s: 503 after %lld ms (deadline %d ms)\n", state, (long long)f->took_ms, deadline_ms);
    assert_int_equal(f->r.status, 503);
    assert_true(tly_test_header(&f->r, "retry-after", retry_after, sizeof(retry_after)));
    assert_string_equal(json_string_value(json_object_get(f->r.json, "code")), "event_log_unavailable");
    assert_true(f->took_ms <= deadline_ms + DEADLINE_MARGIN_MS);
    tly_test_response_free(&f->r);
}

/* The retry with the same key once the broker is back: 202 (after 503s or 409s while it recovers), applied once. */
static void
assert_retry_applies_once(const char *account, const char *path, const char *const *hdrs)
{
    assert_true(ready_becomes(200, 60000));
    tly_test_response_t r = tly_test_request("POST", path, key, "{\"amount\":700,\"currency\":\"EUR\"}", hdrs);
    /* 503 while the producer reconnects, 409 while the first attempt's report is still due (its lease is 15 s) */
    for (int tries = 0; (r.status == 503 || r.status == 409) && tries < 40; ++tries) {
        tly_test_response_free(&r);
        sleep(1);
        r = tly_test_request("POST", path, key, "{\"amount\":700,\"currency\":\"EUR\"}", hdrs);
    }
    assert_int_equal(r.status, 202);
    json_t *job = tly_test_wait_job(json_string_value(json_object_get(json_object_get(r.json, "job"), "url")), key, 30000);
    assert_string_equal(json_string_value(json_object_get(job, "status")), "succeeded");
    json_decref(job);
    tly_test_response_free(&r);
    sleep(2); /* a first copy appended late would land by now */
    assert_int_equal(balance_of(account), 700);
}

static void
deposit_path(const char *account, char *path, size_t cap)
{
    snprintf(path, cap, "/v1/accounts/%s/deposits", account);
}

static void
test_frozen_broker(void **state)
{
    char account[64], path[200], idem[128];
    open_account(account, sizeof(account));
    frozen_pid = tly_test_read_pid("kafka");
    assert_true(frozen_pid > 0);
    assert_int_equal(kill(frozen_pid, SIGSTOP), 0);
    assert_true(ready_becomes(503, 10000));

    deposit_path(account, path, sizeof(path));
    tly_test_idem_header(idem, sizeof(idem));
    const char *hdrs[] = {idem, NULL};
    /* the first attempt waits for the frozen broker (up to the deadline); the same key meanwhile is in flight: 409 */
    in_flight_t first = {path, hdrs, {0}, 0};
    pthread_t tid;
    assert_int_equal(pthread_create(&tid, NULL, post_deposit, &first), 0);
    usleep(1500 * 1000);
    tly_test_response_t busy = tly_test_request("POST", path, key, "{\"amount\":700,\"currency\":\"EUR\"}", hdrs);
    assert_int_equal(busy.status, 409);
    assert_string_equal(json_string_value(json_object_get(busy.json, "code")), "idempotency_key_in_use");
    tly_test_response_free(&busy);
    assert_int_equal(pthread_join(tid, NULL), 0);
    assert_deadline_503(&first, "frozen");

    assert_int_equal(kill(frozen_pid, SIGCONT), 0);
    frozen_pid = 0;
    assert_retry_applies_once(account, path, hdrs);
}

static int
thaw(void **state)
{
    if (frozen_pid > 0)
        kill(frozen_pid, SIGCONT); /* never leave the shared broker frozen */
    frozen_pid = 0;
    return 0;
}

static void
nft(const char *fmt, ...)
{
    char cmd[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    tly_test_sh(cmd, NULL, 0);
}

static void
test_unreachable_broker(void **state)
{
    char account[64], path[200], idem[128];
    if (system("nft list tables >/dev/null 2>&1") != 0) {
        fprintf(stderr, "nft cannot change the rules here (needs nftables and CAP_NET_ADMIN): skipped\n");
        skip();
    }
    open_account(account, sizeof(account));
    /* every packet to or from the broker's port is dropped: loopback traffic passes the output hook both ways */
    snprintf(nft_table, sizeof(nft_table), "tally_outage_%d", (int)getpid());
    nft("nft add table inet %s", nft_table);
    nft("nft 'add chain inet %s out { type filter hook output priority 0; }'", nft_table);
    nft("nft add rule inet %s out tcp dport %d drop", nft_table, kafka_port());
    nft("nft add rule inet %s out tcp sport %d drop", nft_table, kafka_port());
    assert_true(ready_becomes(503, 10000));

    deposit_path(account, path, sizeof(path));
    tly_test_idem_header(idem, sizeof(idem));
    const char *hdrs[] = {idem, NULL};
    in_flight_t first = {path, hdrs, {0}, 0};
    post_deposit(&first);
    assert_deadline_503(&first, "unreachable");

    nft("nft delete table inet %s", nft_table);
    nft_table[0] = '\0';
    assert_retry_applies_once(account, path, hdrs);
}

static int
reconnect(void **state)
{
    char cmd[128];
    if (nft_table[0] != '\0') {
        snprintf(cmd, sizeof(cmd), "nft delete table inet %s 2>/dev/null", nft_table);
        if (system(cmd) != 0)
            fprintf(stderr, "could not delete nftables table %s\n", nft_table);
    }
    nft_table[0] = '\0';
    return 0;
}

static void
heal_stack(void)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "%s/tests/stack.sh heal '%s' >>'%s/log/heal.log' 2>&1", TALLY_SOURCE_DIR, tly_test_env("TALLY_VAR"),
             tly_test_env("TALLY_VAR"));
    tly_test_sh(cmd, NULL, 0);
}

static void
test_killed_broker(void **state)
{
    char account[64], path[200], idem[128];
    open_account(account, sizeof(account));
    pid_t pid = tly_test_read_pid("kafka");
    assert_true(pid > 0);
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_true(ready_becomes(503, 10000));

    deposit_path(account, path, sizeof(path));
    tly_test_idem_header(idem, sizeof(idem));
    const char *hdrs[] = {idem, NULL};
    in_flight_t first = {path, hdrs, {0}, 0};
    post_deposit(&first);
    assert_deadline_503(&first, "killed");

    heal_stack();
    assert_retry_applies_once(account, path, hdrs);
}

int
main(void)
{
    key = tly_test_env("TALLY_API_KEY");
    if (key == NULL || tly_test_env("TALLY_VAR") == NULL || tly_test_env("TALLY_COMMAND_URL") == NULL) {
        fprintf(stderr, "TALLY_API_KEY, TALLY_VAR and TALLY_COMMAND_URL are needed\n");
        return 1;
    }
    /* the stack's command API runs with the default unless the environment sets one */
    const char *t = getenv("TALLY_KAFKA_TIMEOUT_MS");
    deadline_ms = t != NULL ? atoi(t) : 5000;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_frozen_broker, thaw),
        cmocka_unit_test_teardown(test_unreachable_broker, reconnect),
        cmocka_unit_test(test_killed_broker),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
