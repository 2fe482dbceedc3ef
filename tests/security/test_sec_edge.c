/*
 * Attacker's tests of the edge: bodies over 64 KiB (gateway and API, before
 * buffering), the gateway's own errors as problem+json, its per-client
 * connection limit, HTTP/0.9 and h2c refused, duplicate Authorization,
 * whitespace around it, health only on the admin ports, client timestamps
 * out of range as 422 (never 503), and failed-authentication throttling per
 * source address (from 127.0.0.x addresses of its own, through the gateway).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "sec_support.h"
#include "tly_test_http.h"
#include "tly_test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char key[128];

static int
setup(void **state)
{
    char tenant[64];
    sec_tenant_key("sec-edge", "read,write,admin", tenant, sizeof(tenant), key, sizeof(key));
    return 0;
}

static bool
is_problem(const char *answer, int status)
{
    char want[64];
    snprintf(want, sizeof(want), "\"status\":%d", status);
    return strcasestr(answer, "content-type: application/problem+json") != NULL && strstr(answer, want) != NULL;
}

static void
test_body_limit_before_buffering(void **state)
{
    size_t n = 1024 * 1024;
    char *raw = malloc(n + 512), answer[4096];
    int h = snprintf(raw, 512,
                     "POST /v1/accounts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                     key, n);
    memset(raw + h, ' ', n);
    /* through the gateway: problem+json 413, answered from the header alone */
    const char *urls[] = {tly_test_env("TALLY_URL"), tly_test_env("TALLY_COMMAND_URL")};
    for (int i = 0; i < 2; ++i) {
        int st = sec_raw(urls[i], raw, (size_t)h, answer, sizeof(answer), 3000); /* headers only: no body sent at all */
        assert_int_equal(st, 413);
        if (i == 0)
            assert_true(is_problem(answer, 413));
    }
    free(raw);
}

static void
test_gateway_errors_are_problems(void **state)
{
    char answer[8192];
    const char *gw = tly_test_env("TALLY_URL");
    /* 414: a request line over the gateway's buffers */
    size_t n = 40000;
    char *raw = malloc(n + 64);
    int h = snprintf(raw, 64, "GET /v1/accounts?x=");
    memset(raw + h, 'a', n);
    memcpy(raw + h + n, " HTTP/1.1\r\nHost: x\r\n\r\n", 23);
    assert_int_equal(sec_raw(gw, raw, (size_t)h + n + 22, answer, sizeof(answer), 3000), 414);
    assert_true(is_problem(answer, 414));
    free(raw);
    /* 400: two different Content-Lengths (the request-smuggling shape) */
    const char *two_cl = "POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 5\r\n"
                         "Content-Type: application/json\r\n\r\n{}abc";
    assert_int_equal(sec_raw(gw, two_cl, strlen(two_cl), answer, sizeof(answer), 3000), 400);
    assert_true(is_problem(answer, 400));
    /* 400: a malformed request line */
    const char *bad = "GET /v1/accounts HTTP/1.1 junk\r\nHost: x\r\n\r\n";
    assert_int_equal(sec_raw(gw, bad, strlen(bad), answer, sizeof(answer), 3000), 400);
    assert_true(is_problem(answer, 400));
}

static void
test_http09_and_h2c_refused(void **state)
{
    char answer[4096];
    const char *v09 = "GET /v1/accounts\r\n";
    /* the gateway closes without a word; the APIs answer 400 */
    assert_int_equal(sec_raw(tly_test_env("TALLY_URL"), v09, strlen(v09), answer, sizeof(answer), 3000), 0);
    assert_int_equal(strlen(answer), 0);
    assert_int_equal(sec_raw(tly_test_env("TALLY_QUERY_URL"), v09, strlen(v09), answer, sizeof(answer), 3000), 400);
    /* h2c by prior knowledge and by Upgrade */
    const char *preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    assert_int_equal(sec_raw(tly_test_env("TALLY_QUERY_URL"), preface, strlen(preface), answer, sizeof(answer), 3000), 400);
    char upgrade[512];
    int n = snprintf(upgrade, sizeof(upgrade),
                     "GET /v1/accounts HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                     "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nAuthorization: Bearer %s\r\n\r\n",
                     key);
    assert_int_equal(sec_raw(tly_test_env("TALLY_QUERY_URL"), upgrade, (size_t)n, answer, sizeof(answer), 3000), 200);
    assert_null(strstr(answer, "101 Switching"));
}

static void
test_authorization_header(void **state)
{
    char bearer[192], junk[] = "Authorization: Bearer tly_live_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    snprintf(bearer, sizeof(bearer), "Authorization: Bearer %s", key);
    /* two: 400, whichever comes first */
    const char *both[] = {bearer, junk, NULL}, *swapped[] = {junk, bearer, NULL};
    const char *bases[] = {"TALLY_QUERY_URL", "TALLY_COMMAND_URL"};
    for (int i = 0; i < 2; ++i) {
        char raw[1024], answer[4096];
        const char *const *order = i == 0 ? both : swapped;
        int n = snprintf(raw, sizeof(raw), "GET /v1/accounts HTTP/1.1\r\nHost: x\r\n%s\r\n%s\r\n\r\n", order[0], order[1]);
        for (int b = 0; b < 2; ++b) {
            int st = sec_raw(tly_test_env(bases[b]), raw, (size_t)n, answer, sizeof(answer), 3000);
            if (b == 0 || st != 405)
                assert_int_equal(st, 400);
        }
    }
    /* optional whitespace around the value is trimmed */
    char raw[1024], answer[4096];
    int n = snprintf(raw, sizeof(raw), "GET /v1/accounts HTTP/1.1\r\nHost: x\r\nAuthorization: \t Bearer  %s \t\r\n\r\n", key);
    assert_int_equal(sec_raw(tly_test_env("TALLY_QUERY_URL"), raw, (size_t)n, answer, sizeof(answer), 3000), 200);
}

static void
test_health_only_on_admin_ports(void **state)
{
    const char *paths[] = {"/healthz", "/readyz"};
    for (int i = 0; i < 2; ++i) {
        char raw[256], answer[4096];
        int n = snprintf(raw, sizeof(raw), "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", paths[i]);
        /* the APIs' ports: no health answer with reasons */
        assert_int_equal(sec_raw(tly_test_env("TALLY_QUERY_URL"), raw, (size_t)n, answer, sizeof(answer), 3000), 401);
        assert_null(strstr(answer, "postgresql"));
        /* through the gateway: its own liveness only, /readyz not at all */
        int st = sec_raw(tly_test_env("TALLY_URL"), raw, (size_t)n, answer, sizeof(answer), 3000);
        assert_int_equal(st, i == 0 ? 200 : 401);
        assert_null(strstr(answer, "postgresql"));
        /* the admin ports have both */
        assert_int_equal(sec_raw(tly_test_env("TALLY_QUERY_ADMIN_URL"), raw, (size_t)n, answer, sizeof(answer), 3000), 200);
    }
}

static void
test_timestamps_out_of_range_are_422(void **state)
{
    const char *paths[] = {"/v1/accounts?created_after=0000-01-01T00:00:00Z", "/v1/accounts?created_before=10000-01-01T00:00:00Z",
                           "/v1/accounts?created_after=0001-01-01T00:30:00%2B01:00"};
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); ++i) {
        tly_test_response_t r = tly_test_request("GET", paths[i], key, NULL, NULL);
        if (r.status != 422)
            fail_msg("%s answered %ld", paths[i], r.status);
        tly_test_response_free(&r);
    }
    /* the webhook replay window too */
    const char *const ct[] = {"Content-Type: application/json", NULL};
    tly_test_response_t r = tly_test_request("POST", "/v1/webhook-endpoints", key,
                                             "{\"url\":\"https://hooks.example.com/e\",\"event_types\":[\"*\"]}", ct);
    assert_int_equal(r.status, 201);
    char path[128];
    snprintf(path, sizeof(path), "/v1/webhook-endpoints/%s/replay", json_string_value(json_object_get(r.json, "id")));
    tly_test_response_free(&r);
    r = tly_test_request("POST", path, key, "{\"since\":\"0000-12-31T00:00:00Z\",\"until\":\"0001-01-02T00:00:00Z\"}", ct);
    assert_int_equal(r.status, 422);
    tly_test_response_free(&r);
}

/* One request from source address `src` (127.0.0.x) to `url`; the status, Retry-After into `retry`. */
static int
from_source(const char *src, const char *url, const char *auth, char *retry, size_t cap)
{
    char host[64], raw[512], answer[4096];
    int port = 0;
    sscanf(url, "http://%63[^:]:%d", host, &port);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in me = {.sin_family = AF_INET}, sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, src, &me.sin_addr);
    inet_pton(AF_INET, host, &sa.sin_addr);
    assert_int_equal(bind(fd, (struct sockaddr *)&me, sizeof(me)), 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    int n = snprintf(raw, sizeof(raw),
                     "GET /v1/accounts HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer %s\r\n\r\n", auth);
    assert_int_equal(send(fd, raw, (size_t)n, MSG_NOSIGNAL), n);
    size_t used = 0;
    ssize_t got;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (used + 1 < sizeof(answer) && poll(&p, 1, 3000) > 0 && (got = recv(fd, answer + used, sizeof(answer) - used - 1, 0)) > 0)
        used += (size_t)got;
    answer[used] = '\0';
    close(fd);
    int status = 0;
    sscanf(answer, "HTTP/1.%*d %d", &status);
    retry[0] = '\0';
    const char *ra = strcasestr(answer, "\r\nretry-after:");
    if (ra != NULL)
        sscanf(ra + 14, " %15s", retry);
    (void)cap;
    return status;
}

static void
test_failed_auth_throttled_per_source(void **state)
{
    char src[32], other[32], retry[16];
    const char *bad = "tly_live_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    /* addresses of this run's own (the default limit: 20 failures per 60 s) */
    snprintf(src, sizeof(src), "127.0.%d.%d", 100 + getpid() % 100, 2 + getpid() % 200);
    snprintf(other, sizeof(other), "127.0.%d.%d", 100 + getpid() % 100, 3 + getpid() % 200);
    const char *gw = tly_test_env("TALLY_URL");
    int i, st = 0;
    for (i = 0; i < 40 && (st = from_source(src, gw, bad, retry, sizeof(retry))) == 401; ++i)
        ;
    assert_int_equal(st, 429);
    assert_int_equal(i, 20);
    assert_true(atoi(retry) >= 1 && atoi(retry) <= 60);
    /* a valid key from the throttled address is refused too (else the 429 would tell a guesser nothing) */
    assert_int_equal(from_source(src, gw, key, retry, sizeof(retry)), 429);
    /* another address is unaffected */
    assert_int_equal(from_source(other, gw, key, retry, sizeof(retry)), 200);
    /* logged once for the window, not per request: more failures add no line */
    for (int k = 0; k < 10; ++k)
        assert_int_equal(from_source(src, gw, bad, retry, sizeof(retry)), 429);
    char cmd[512], count[32];
    snprintf(cmd, sizeof(cmd),
             "grep -h 'throttling failed authentications' \"$TALLY_VAR\"/log/tally-query-api.log | grep -c '\"%s\"'", src);
    tly_test_sh(cmd, count, sizeof(count));
    assert_string_equal(count, "1");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_body_limit_before_buffering),      cmocka_unit_test(test_gateway_errors_are_problems),
        cmocka_unit_test(test_http09_and_h2c_refused),           cmocka_unit_test(test_authorization_header),
        cmocka_unit_test(test_health_only_on_admin_ports),       cmocka_unit_test(test_timestamps_out_of_range_are_422),
        cmocka_unit_test(test_failed_auth_throttled_per_source),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
