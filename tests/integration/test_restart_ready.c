/*
 * Ready before traffic: a command API or query API that (re)starts takes
 * its first request only once its PostgreSQL pool is connected and its API
 * keys are loaded, so a client that connects at once (it waits in the listen
 * backlog) gets its 202 or 200, never `503 database_unavailable` while the
 * database is up. Instances of the test's own on free ports, SIGKILLed and
 * started again five times each, with requests sent from the moment the port
 * accepts connections. And the local runner's gateway: its nginx master
 * SIGKILLed (the workers live on and hold the port), tests/stack.sh heal
 * starts a new gateway that serves.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tly_test_http.h"
#include "tly_test_util.h"

#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define ROUNDS 5
#define REQUESTS 20

static const char *key;

typedef struct {
    char body[4096];
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

/* One request; the HTTP status, or 0 when no connection could be made. The body goes to `sink`. */
static long
request(const char *url, const char *body, sink_t *sink)
{
    char auth[256];
    long status = 0;
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", key);
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, auth);
    h = curl_slist_append(h, "Content-Type: application/json");
    sink->len = 0;
    sink->body[0] = '\0';
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 15000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, sink);
    if (body != NULL)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return status;
}

static pid_t
start(const char *service, int port)
{
    char bin[512], log[512], portenv[32], dsn[512], brokers[256], secret[128];
    snprintf(bin, sizeof(bin), "%s/%s", tly_test_env("TALLY_BIN"), service);
    snprintf(log, sizeof(log), "%s/log/restart-test-%s.log", tly_test_env("TALLY_VAR"), service);
    snprintf(portenv, sizeof(portenv), "TALLY_HTTP_PORT=%d", port);
    snprintf(dsn, sizeof(dsn), "TALLY_PG_DSN=%s", tly_test_env("TALLY_PG_DSN"));
    snprintf(brokers, sizeof(brokers), "TALLY_KAFKA_BROKERS=%s", tly_test_env("TALLY_KAFKA_BROKERS"));
    snprintf(secret, sizeof(secret), "TALLY_CURSOR_SECRET=restart-test");
    char *argv[] = {bin, NULL};
    /* no admin listener: the stack's instance holds the port */
    char *envp[] = {portenv, dsn, brokers, secret, "TALLY_ADMIN_PORT=0", NULL};
    return tly_test_spawn(argv, envp, log, true);
}

/*
 * Starts `service` ROUNDS times on one port; each time, requests go out as
 * soon as a connection is accepted, and every one must get `want`.
 * `path` and `body` (NULL: GET) make the request.
 */
static void
restart_rounds(const char *service, const char *path, const char *body, long want)
{
    char url[512];
    int port = tly_test_free_port();
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    for (int round = 0; round < ROUNDS; ++round) {
        pid_t pid = start(service, port);
        sink_t sink;
        long status = 0;
        int64_t t0 = tly_test_now_ms();
        /* connection refused until the instance binds its port */
        while ((status = request(url, body, &sink)) == 0 && tly_test_now_ms() - t0 < 20000)
            usleep(2 * 1000);
        int64_t first = tly_test_now_ms() - t0;
        for (int i = 0; i < REQUESTS && status == want; ++i)
            status = request(url, body, &sink);
        if (status != want)
            fprintf(stderr, "%s round %d: %ld %s\n", service, round, status, sink.body);
        else
            fprintf(stderr, "%s round %d: first answer %lld ms after the start\n", service, round, (long long)first);
        assert_int_equal(status, want);
        assert_int_equal(kill(pid, SIGKILL), 0);
        assert_int_equal(waitpid(pid, NULL, 0), pid);
    }
}

static void
test_command_api_ready_before_traffic(void **state)
{
    restart_rounds("tally-command-api", "/v1/accounts", "{\"currency\":\"EUR\",\"label\":\"restart\"}", 202);
}

static void
test_query_api_ready_before_traffic(void **state)
{
    restart_rounds("tally-query-api", "/v1/accounts?limit=1", NULL, 200);
}

/* The gateway answers /healthz. */
static bool
gateway_serves(void)
{
    char url[256];
    sink_t sink;
    snprintf(url, sizeof(url), "%s/healthz", tly_test_env("TALLY_URL"));
    return request(url, NULL, &sink) == 200;
}

static void
test_gateway_restarts_after_its_master_was_killed(void **state)
{
    char cmd[1024], workers[64];
    pid_t master = tly_test_read_pid("nginx");
    assert_true(master > 0);
    assert_true(gateway_serves());
    /* live processes of the master's session but the master (the dead stay zombies where nothing reaps them) */
    snprintf(cmd, sizeof(cmd), "ps -eo pid=,sid=,stat= | awk '$2 == %d && $1 != %d && $3 !~ /^Z/' | wc -l", (int)master,
             (int)master);
    assert_int_equal(kill(master, SIGKILL), 0);
    usleep(200 * 1000);
    tly_test_sh(cmd, workers, sizeof(workers));
    fprintf(stderr, "nginx workers left by the killed master: %s\n", workers);
    assert_true(atoi(workers) > 0); /* what the runner must cope with */
    snprintf(cmd, sizeof(cmd), "%s/tests/stack.sh heal '%s' >>'%s/log/heal.log' 2>&1", TALLY_SOURCE_DIR, tly_test_env("TALLY_VAR"),
             tly_test_env("TALLY_VAR"));
    tly_test_sh(cmd, NULL, 0);
    pid_t again = tly_test_read_pid("nginx");
    assert_true(again > 0 && again != master);
    snprintf(cmd, sizeof(cmd), "ps -eo pid=,sid=,stat= | awk '$2 == %d && $1 != %d && $3 !~ /^Z/' | wc -l", (int)master,
             (int)master);
    tly_test_sh(cmd, workers, sizeof(workers));
    assert_int_equal(atoi(workers), 0);
    assert_true(gateway_serves());
}

int
main(void)
{
    key = tly_test_env("TALLY_API_KEY");
    if (key == NULL || tly_test_env("TALLY_VAR") == NULL || tly_test_env("TALLY_BIN") == NULL) {
        fprintf(stderr, "TALLY_API_KEY, TALLY_VAR and TALLY_BIN are needed\n");
        return 1;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_command_api_ready_before_traffic),
        cmocka_unit_test(test_query_api_ready_before_traffic),
        cmocka_unit_test(test_gateway_restarts_after_its_master_was_killed),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
