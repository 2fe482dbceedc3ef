/* Helpers of the security suite (see sec_support.h). */
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
#include <time.h>
#include <unistd.h>

/* What tallyctl and the shell commands of the tests read, from the stack's env file. */
static void
export_env(void)
{
    static const char *const names[] = {"TALLY_BIN",           "TALLY_VAR",         "TALLY_PG_DSN",
                                        "TALLY_KAFKA_BROKERS", "TALLY_KAFKA_TOPIC", "TALLY_SECRET_KEYS"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); ++i)
        setenv(names[i], tly_test_env(names[i]), 1);
}

void
sec_tenant(const char *prefix, char *tenant, size_t cap)
{
    static int n;
    char cmd[256];
    if (n == 0)
        export_env();
    snprintf(cmd, sizeof(cmd), "\"$TALLY_BIN/tallyctl\" tenants create --name %s-%d-%ld-%d", prefix, (int)getpid(),
             (long)time(NULL), ++n);
    tly_test_sh(cmd, tenant, cap);
}

void
sec_tenant_key(const char *prefix, const char *scopes, char *tenant, size_t tcap, char *key, size_t kcap)
{
    sec_tenant(prefix, tenant, tcap);
    sec_key(tenant, scopes, NULL, NULL, key, kcap);
}

void
sec_quota(const char *tenant, const char *options)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "\"$TALLY_BIN/tallyctl\" tenants quota %s %s >/dev/null", tenant, options);
    tly_test_sh(cmd, NULL, 0);
}

void
sec_wait_usable(const char *key)
{
    for (int i = 0; i < 100; ++i) {
        /* any answer but 401 from both APIs: the key is known there */
        tly_test_response_t r = tly_test_request("GET", "/v1/accounts?limit=1", key, NULL, NULL);
        tly_test_response_t w = tly_test_request("POST", "/v1/accounts", key, NULL, NULL);
        bool ready = r.status != 401 && w.status != 401;
        tly_test_response_free(&r);
        tly_test_response_free(&w);
        if (ready)
            return;
        tly_test_sleep_ms(50);
    }
    fail_msg("key never became usable");
}

void
sec_key(const char *tenant, const char *scopes, const char *tier, const char *extra, char *key, size_t cap)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "\"$TALLY_BIN/tallyctl\" keys create --tenant %s --scopes %s --tier %s %s 2>/dev/null", tenant,
             scopes, tier != NULL ? tier : "standard", extra != NULL ? extra : "");
    tly_test_sh(cmd, key, cap);
    sec_wait_usable(key);
}

/* A TCP connection to the host:port of `url`, or -1. */
static int
connect_to(const char *url)
{
    char host[64];
    int port = 0;
    if (sscanf(url, "http://%63[^:]:%d", host, &port) != 2)
        fail_msg("bad url %s", url);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int
sec_open(const char *url, const char *raw, size_t len)
{
    int fd = connect_to(url);
    assert_true(fd >= 0);
    assert_int_equal(send(fd, raw, len, MSG_NOSIGNAL), (ssize_t)len);
    return fd;
}

int
sec_read_status(int fd, int timeout_ms)
{
    char out[256];
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int status = 0;
    ssize_t n;
    if (poll(&p, 1, timeout_ms) > 0 && (n = recv(fd, out, sizeof(out) - 1, 0)) > 0) {
        out[n] = '\0';
        if (sscanf(out, "HTTP/1.%*d %d", &status) != 1)
            status = 0;
    }
    return status;
}

void
sec_close(int fd)
{
    close(fd);
}

static int raw_request(const char *url, const char *raw, size_t len, char *out, size_t cap, int timeout_ms, bool may_fail);

int
sec_raw(const char *url, const char *raw, size_t len, char *out, size_t cap, int timeout_ms)
{
    return raw_request(url, raw, len, out, cap, timeout_ms, false);
}

int
sec_raw_try(const char *url, const char *raw, size_t len, char *out, size_t cap, int timeout_ms)
{
    return raw_request(url, raw, len, out, cap, timeout_ms, true);
}

static int
raw_request(const char *url, const char *raw, size_t len, char *out, size_t cap, int timeout_ms, bool may_fail)
{
    int fd = connect_to(url);
    if (fd < 0) {
        if (may_fail)
            return -1;
        fail_msg("could not connect to %s", url);
    }
    assert_int_equal(send(fd, raw, len, MSG_NOSIGNAL), (ssize_t)len);
    size_t used = 0;
    int64_t deadline = tly_test_now_ms() + timeout_ms;
    while (used + 1 < cap) {
        int64_t left = deadline - tly_test_now_ms();
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            break;
        ssize_t n = recv(fd, out + used, cap - used - 1, 0);
        if (n <= 0)
            break;
        used += (size_t)n;
    }
    out[used] = '\0';
    close(fd);
    int status = 0;
    if (sscanf(out, "HTTP/1.%*d %d", &status) != 1)
        status = 0;
    return status;
}
