/*
 * SIGTERM on a command API with requests in flight: it stops accepting,
 * answers every request it already took (each 202 still a promise: its job
 * reaches a terminal state, and its acceptance is recorded), flushes and exits
 * 0 within 10 s. Runs its own
 * command API instance on a free port beside the stack's.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tly_test_http.h"
#include "tly_test_util.h"

#include <curl/curl.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define INFLIGHT 40

static const char *key;

/* The state of a command record ("" when there is none); a static buffer. */
static const char *
record_state(const char *job_id)
{
    static char state[32];
    const char *params[1] = {job_id};
    PGconn *conn = PQconnectdb(tly_test_env("TALLY_PG_DSN"));
    assert_int_equal(PQstatus(conn), CONNECTION_OK);
    PGresult *res = PQexecParams(conn, "SELECT state FROM command_requests WHERE job_id = $1", 1, NULL, params, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    snprintf(state, sizeof(state), "%s", PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "");
    PQclear(res);
    PQfinish(conn);
    return state;
}

static pid_t
start_api(int port, int admin_port, char *log_path)
{
    char bin[512], portbuf[16], adminbuf[16];
    snprintf(adminbuf, sizeof(adminbuf), "%d", admin_port);
    snprintf(bin, sizeof(bin), "%s/tally-command-api", tly_test_env("TALLY_BIN"));
    snprintf(portbuf, sizeof(portbuf), "%d", port);
    tly_test_log_path("shutdown-test-command-api.log", log_path, 512);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        FILE *log = freopen(log_path, "a", stderr);
        (void)log;
        setenv("TALLY_PG_DSN", tly_test_env("TALLY_PG_DSN"), 1);
        setenv("TALLY_KAFKA_BROKERS", tly_test_env("TALLY_KAFKA_BROKERS"), 1);
        setenv("TALLY_HTTP_PORT", portbuf, 1);
        setenv("TALLY_ADMIN_PORT", adminbuf, 1); /* a free one: health is on the admin port only */
        execl(bin, bin, (char *)NULL);
        _exit(127);
    }
    return pid;
}

typedef struct {
    char body[2048];
    size_t len;
} sink_t;

static size_t
on_body(char *p, size_t size, size_t n, void *ud)
{
    sink_t *s = ud;
    size_t len = size * n;
    if (s->len + len < sizeof(s->body)) {
        memcpy(s->body + s->len, p, len);
        s->len += len;
        s->body[s->len] = '\0';
    }
    return len;
}

static bool
wait_ready(const char *base)
{
    char url[256];
    snprintf(url, sizeof(url), "%s/readyz", base);
    for (int i = 0; i < 100; ++i) {
        CURL *c = curl_easy_init();
        long status = 0;
        sink_t sink = {.len = 0};
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &sink);
        if (curl_easy_perform(c) == CURLE_OK)
            curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(c);
        if (status == 200)
            return true;
        usleep(100 * 1000);
    }
    return false;
}

static void
test_sigterm_answers_in_flight_and_exits(void **state)
{
    char base[64], admin[64], log_path[512], auth[256], account_url[256];
    int port = tly_test_free_port(), admin_port = tly_test_free_port();
    snprintf(base, sizeof(base), "http://127.0.0.1:%d", port);
    snprintf(admin, sizeof(admin), "http://127.0.0.1:%d", admin_port);
    pid_t pid = start_api(port, admin_port, log_path);
    if (!wait_ready(admin)) {
        kill(pid, SIGKILL); /* never left running past the test */
        waitpid(pid, NULL, 0);
        fail_msg("the command API never became ready on its admin port; see %s", log_path);
    }
    sleep(1); /* the keys this test uses are loaded by now */

    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", key);
    snprintf(account_url, sizeof(account_url), "%s/v1/accounts", base);
    CURLM *multi = curl_multi_init();
    CURL *easy[INFLIGHT];
    sink_t sinks[INFLIGHT];
    struct curl_slist *hdrs = curl_slist_append(NULL, auth);
    hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    for (int i = 0; i < INFLIGHT; ++i) {
        sinks[i].len = 0;
        easy[i] = curl_easy_init();
        curl_easy_setopt(easy[i], CURLOPT_URL, account_url);
        curl_easy_setopt(easy[i], CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(easy[i], CURLOPT_POSTFIELDS, "{\"currency\":\"EUR\",\"label\":\"shutdown\"}");
        curl_easy_setopt(easy[i], CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(easy[i], CURLOPT_WRITEDATA, &sinks[i]);
        curl_easy_setopt(easy[i], CURLOPT_TIMEOUT_MS, 15000L);
        curl_multi_add_handle(multi, easy[i]);
    }
    /* send every request, then SIGTERM while they are being answered */
    int running = 0;
    for (int i = 0; i < 20; ++i) {
        curl_multi_perform(multi, &running);
        curl_multi_poll(multi, NULL, 0, 2, NULL);
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(kill(pid, SIGTERM), 0);
    do {
        curl_multi_perform(multi, &running);
        curl_multi_poll(multi, NULL, 0, 50, NULL);
    } while (running > 0);

    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_true(secs < 10.0);

    /* every request that was answered got a 202 whose job finishes; none got a
       broken answer (a refused connection after the listener closed is fine) */
    int accepted = 0;
    for (int i = 0; i < INFLIGHT; ++i) {
        long code = 0;
        curl_easy_getinfo(easy[i], CURLINFO_RESPONSE_CODE, &code);
        if (code != 0) {
            assert_int_equal(code, 202);
            json_error_t jerr;
            json_t *b = json_loads(sinks[i].body, 0, &jerr);
            assert_non_null(b);
            /* its acceptance was recorded before the exit (SIGTERM waits for the gathered acceptances) */
            const char *job_id = json_string_value(json_object_get(json_object_get(b, "job"), "id"));
            assert_string_equal(record_state(job_id), "accepted");
            json_t *job = tly_test_wait_job(json_string_value(json_object_get(json_object_get(b, "job"), "url")), key, 30000);
            assert_string_equal(json_string_value(json_object_get(job, "status")), "succeeded");
            json_decref(job);
            json_decref(b);
            ++accepted;
        }
        curl_multi_remove_handle(multi, easy[i]);
        curl_easy_cleanup(easy[i]);
    }
    curl_slist_free_all(hdrs);
    curl_multi_cleanup(multi);
    fprintf(stderr, "sigterm: %d of %d requests answered 202, exit 0 after %.2f s\n", accepted, INFLIGHT, secs);
    assert_true(accepted > 0);
}

int
main(void)
{
    key = tly_test_env("TALLY_API_KEY");
    if (key == NULL || tly_test_env("TALLY_BIN") == NULL) {
        fprintf(stderr, "TALLY_API_KEY and TALLY_BIN are needed\n");
        return 1;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_sigterm_answers_in_flight_and_exits)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
