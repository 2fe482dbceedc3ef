/*
 * libFuzzer target: a body the command API accepts is never refused as
 * invalid_request by the decider or the saga (tests/support/tly_test_accept.c).
 * The first byte picks the command; the rest is the body, parsed strictly as
 * the API parses it. A body for which the property fails aborts.
 */
#include "tally/json.h"
#include "tly_test_accept.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *body = NULL;
    char err[256], why[512];
    bool accepted;
    if (size < 1)
        return 0;
    tly_command_kind_t kind = (tly_command_kind_t)(data[0] % TLY_CMD__COUNT);
    if (tly_json_parse_strict((const char *)data + 1, size - 1, &body, err, sizeof(err)) != TLY_JSON_OK)
        return 0;
    if (!tly_test_accept_check(kind, body, &accepted, why, sizeof(why))) {
        fprintf(stderr, "accepted by the API, then %s\n", why);
        abort();
    }
    json_decref(body);
    return 0;
}
