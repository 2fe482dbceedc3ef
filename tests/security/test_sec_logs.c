/*
 * No credential in any log: after the rest of the suite ran (this test is
 * ordered last), every log file the stack wrote ($TALLY_VAR/log, the
 * gateway's access log included) is searched for API key secrets
 * (tly_live_<id>_<secret>), webhook signing secrets (whsec_) and
 * password-like values. Before that, a key sent the wrong way (in the query
 * string, refused) and a failed login are provoked, so there is something to
 * find if the logging were wrong.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "sec_support.h"
#include "tly_test_http.h"
#include "tly_test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void
test_no_secret_in_any_log(void **state)
{
    char tenant[64], key[128], path[256], out[256];
    sec_tenant_key("sec-logs", "read,write", tenant, sizeof(tenant), key, sizeof(key));
    /* the key in the URL: refused by the API, and the gateway logs the path only */
    snprintf(path, sizeof(path), "/v1/accounts?api_key=%s", key);
    tly_test_response_t r = tly_test_request("GET", path, NULL, NULL, NULL);
    assert_int_equal(r.status, 401);
    tly_test_response_free(&r);
    /* a wrong secret of a real key id */
    char wrong[128];
    snprintf(wrong, sizeof(wrong), "%s", key);
    wrong[strlen(wrong) - 1] = wrong[strlen(wrong) - 1] == 'A' ? 'B' : 'A';
    r = tly_test_request("GET", "/v1/accounts", wrong, NULL, NULL);
    assert_int_equal(r.status, 401);
    tly_test_response_free(&r);
    tly_test_sleep_ms(300); /* nginx writes its access log line after the answer */
    /* the access log did record the request (so the search below looks where it should) */
    tly_test_sh("grep -c 'GET /v1/accounts HTTP' \"$TALLY_VAR\"/log/nginx-access.log", out, sizeof(out));
    assert_true(atoi(out) > 0);
    /* key secrets: the 43-character secret after tly_live_<16>_; whsec_ secrets; passwords */
    tly_test_sh("cd \"$TALLY_VAR\"/log && ! grep -rIlE 'tly_live_[a-z2-7]{16}_[A-Za-z0-9_-]{20,}' . && "
                "! grep -rIl 'whsec_' . && ! grep -rIiE '(password|passwd|pwd)[\"=:][^,} ]+' . && echo clean",
                out, sizeof(out));
    assert_string_equal(out, "clean");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_no_secret_in_any_log)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
