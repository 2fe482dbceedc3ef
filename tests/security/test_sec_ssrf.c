/*
 * Attacker's tests of the SSRF guard through the API: webhook URLs naming
 * any IANA special-purpose IPv4 or IPv6 address (embedded-IPv4 forms
 * included) or a local name with any number of trailing dots are 422, on a
 * command API instance of this test's own started with
 * TALLY_WEBHOOK_ALLOW_PRIVATE=false (the shared stack allows private
 * addresses for the webhook tests' receivers). The same instance with the
 * development switch on accepts them, so that switch keeps working.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "sec_support.h"
#include "tly_test_http.h"
#include "tly_test_util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char key[128];

static const char *const refused[] = {
    "https://localhost../h",
    "https://localhost.../h",
    "https://api.localhost../h",
    "https://127.0.0.1/h",
    "https://169.254.169.254/h",
    "https://192.0.0.8/h",
    "https://192.31.196.1/h",
    "https://192.52.193.1/h",
    "https://192.175.48.1/h",
    "https://198.51.100.1/h",
    "https://[::ffff:0:a00:1]/h",
    "https://[::ffff:8.8.8.8]/h",
    "https://[64:ff9b::a9fe:a9fe]/h",
    "https://[64:ff9b:1::a00:1]/h",
    "https://[2001::a00:1]/h",
    "https://[2002:a9fe:a9fe::1]/h",
    "https://[2001:db8::1]/h",
    "https://[fd00::1]/h",
    "https://[fe80::1]/h",
    "https://[::1]/h",
    "https://[100::1]/h",
    "https://[3fff::1]/h",
    "https://0x7f.1/h",
    "https://metadata.google.internal../h",
};

/* Starts a command API on a free port with TALLY_WEBHOOK_ALLOW_PRIVATE=`allow`; its URL into `url`. */
static pid_t
start_api(bool allow, char *url, size_t cap)
{
    char port[16], admin[16], bin[512], log[512], dsn[600], brokers[300], envs[4][600];
    int p = tly_test_free_port(), a = tly_test_free_port();
    snprintf(port, sizeof(port), "%d", p);
    snprintf(admin, sizeof(admin), "%d", a);
    snprintf(bin, sizeof(bin), "%s/tally-command-api", tly_test_env("TALLY_BIN"));
    snprintf(log, sizeof(log), "%s/log/test-sec-ssrf-%d.log", tly_test_env("TALLY_VAR"), p);
    snprintf(dsn, sizeof(dsn), "TALLY_PG_DSN=%s", tly_test_env("TALLY_PG_DSN"));
    snprintf(brokers, sizeof(brokers), "TALLY_KAFKA_BROKERS=%s", tly_test_env("TALLY_KAFKA_BROKERS"));
    snprintf(envs[0], sizeof(envs[0]), "TALLY_HTTP_PORT=%s", port);
    snprintf(envs[1], sizeof(envs[1]), "TALLY_ADMIN_PORT=%s", admin);
    snprintf(envs[2], sizeof(envs[2]), "TALLY_WEBHOOK_ALLOW_PRIVATE=%s", allow ? "true" : "false");
    snprintf(envs[3], sizeof(envs[3]), "TALLY_KAFKA_TOPIC=%s", tly_test_env("TALLY_KAFKA_TOPIC"));
    char *argv[] = {bin, NULL};
    /* one thread: its /readyz then speaks for the only pool there is */
    char threads[] = "TALLY_HTTP_THREADS=1", keys[256];
    snprintf(keys, sizeof(keys), "TALLY_SECRET_KEYS=%s", tly_test_env("TALLY_SECRET_KEYS"));
    char *envp[] = {dsn, brokers, envs[0], envs[1], envs[2], envs[3], threads, keys, NULL};
    pid_t pid = tly_test_spawn(argv, envp, log, true);
    snprintf(url, cap, "http://127.0.0.1:%d", p);
    for (int i = 0; i < 100; ++i) {
        char admin_url[64], answer[512];
        snprintf(admin_url, sizeof(admin_url), "http://127.0.0.1:%d", a);
        const char *ready = "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        if (sec_raw_try(admin_url, ready, strlen(ready), answer, sizeof(answer), 500) == 200)
            return pid;
        tly_test_sleep_ms(100);
    }
    fail_msg("command api on port %d never became ready", p);
    return pid;
}

static long
post_url(const char *base, const char *url)
{
    char body[512], raw[1024], answer[4096];
    int blen = snprintf(body, sizeof(body), "{\"url\":\"%s\",\"event_types\":[\"*\"]}", url);
    int n = snprintf(raw, sizeof(raw),
                     "POST /v1/webhook-endpoints HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer %s\r\n"
                     "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                     key, blen, body);
    return sec_raw(base, raw, (size_t)n, answer, sizeof(answer), 5000);
}

static void
test_special_purpose_addresses_refused(void **state)
{
    char tenant[64], url[64];
    sec_tenant_key("sec-ssrf", "read,write,admin", tenant, sizeof(tenant), key, sizeof(key));
    sec_quota(tenant, "--webhook-endpoints 100");
    pid_t strict = start_api(false, url, sizeof(url));
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); ++i) {
        long st = post_url(url, refused[i]);
        if (st != 422)
            fail_msg("%s answered %ld", refused[i], st);
    }
    assert_int_equal(post_url(url, "https://hooks.example.com/ok"), 201);
    kill(strict, SIGTERM);
    waitpid(strict, NULL, 0);
    /* the development switch still lets private and loopback addresses through */
    pid_t dev = start_api(true, url, sizeof(url));
    assert_int_equal(post_url(url, "http://127.0.0.1:9/h"), 201);
    assert_int_equal(post_url(url, "https://[64:ff9b:1::a00:1]/h"), 201);
    kill(dev, SIGTERM);
    waitpid(dev, NULL, 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_special_purpose_addresses_refused)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
