/*
 * The webhook sender's transport options (tly_webhook_curl_options) against a
 * listener on loopback: without allow-private, a host name that resolves to
 * a loopback address (localhost, from /etc/hosts) is refused when curl is
 * about to connect, after DNS, so the listener never sees a connection; with
 * allow-private the same transfer connects. Plain http is refused unless
 * private addresses are allowed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "webhooks/webhook_sender.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

static int listener, port;

static int
setup(void **state)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof(a);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    assert_int_equal(bind(listener, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(listener, 8), 0);
    assert_int_equal(getsockname(listener, (struct sockaddr *)&a, &len), 0);
    port = ntohs(a.sin_port);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return 0;
}

static int
teardown(void **state)
{
    close(listener);
    curl_global_cleanup();
    return 0;
}

/* Connections the listener received since the last call. */
static int
accepted(void)
{
    int n = 0, fd;
    while ((fd = accept(listener, NULL, NULL)) >= 0) {
        close(fd);
        n++;
    }
    return n;
}

static CURLcode
attempt(const char *scheme, const char *host, bool allow_private, tly_webhook_guard_t *g)
{
    char url[256];
    snprintf(url, sizeof(url), "%s://%s:%d/hook", scheme, host, port);
    *g = (tly_webhook_guard_t){.allow_private = allow_private};
    CURL *e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, "{}");
    tly_webhook_curl_options(e, g, 300);
    CURLcode rc = curl_easy_perform(e);
    curl_easy_cleanup(e);
    return rc;
}

static void
test_resolved_loopback_refused(void **state)
{
    tly_webhook_guard_t g;
    CURLcode rc = attempt("https", "localhost", false, &g);
    assert_int_not_equal(rc, CURLE_OK);
    assert_true(g.refused);
    assert_int_equal(accepted(), 0);
    rc = attempt("https", "127.0.0.1", false, &g);
    assert_true(g.refused);
    assert_int_equal(accepted(), 0);
}

static void
test_allowed_when_private_allowed(void **state)
{
    tly_webhook_guard_t g;
    CURLcode rc = attempt("http", "localhost", true, &g);
    assert_int_equal(rc, CURLE_OPERATION_TIMEDOUT); /* connected; the listener never answers */
    assert_false(g.refused);
    assert_true(accepted() >= 1);
}

static void
test_plain_http_refused(void **state)
{
    tly_webhook_guard_t g;
    CURLcode rc = attempt("http", "localhost", false, &g);
    assert_int_equal(rc, CURLE_UNSUPPORTED_PROTOCOL);
    assert_int_equal(accepted(), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resolved_loopback_refused),
        cmocka_unit_test(test_allowed_when_private_allowed),
        cmocka_unit_test(test_plain_http_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
