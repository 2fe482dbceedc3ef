/*
 * libFuzzer target: everything the command API does with an untrusted body
 * before any I/O. The first byte picks the command; the rest is the body:
 * strict JSON parsing, validation, the request event's data, its envelope and
 * the envelope parser that the worker runs on it.
 */
#include "commands.h"
#include "tally/envelope.h"
#include "tally/json.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *body = NULL, *errors = json_array();
    tly_command_t cmd;
    char err[256];
    if (size < 1)
        goto done;
    tly_command_kind_t kind = (tly_command_kind_t)(data[0] % TLY_CMD__COUNT);
    if (tly_json_parse_strict((const char *)data + 1, size - 1, &body, err, sizeof(err)) != TLY_JSON_OK)
        goto done;
    memset(&cmd, 0, sizeof(cmd));
    if (!tly_command_validate(kind, body, &cmd, errors)) {
        if (json_array_size(errors) == 0)
            abort(); /* invalid must always say why */
        goto done;
    }
    tly_envelope_t env, back;
    memset(&env, 0, sizeof(env));
    env.id = tly_uuid_v4();
    strcpy(env.type, tly_command_spec(kind)->request_event);
    env.version = 1;
    strcpy(env.aggregate_type, tly_command_spec(kind)->aggregate_type);
    env.aggregate_id = tly_uuid_v4();
    env.tenant_id = tly_uuid_v4();
    env.job_id = tly_uuid_v4();
    env.occurred_at_us = 1;
    env.data = tly_command_event_data(&cmd);
    char *wire = tly_envelope_to_json(&env);
    if (tly_envelope_parse(wire, strlen(wire), &back, err, sizeof(err)) != 0)
        abort(); /* what the API writes, the worker must read */
    if (!json_equal(back.data, env.data))
        abort();
    tly_envelope_clear(&back);
    tly_envelope_clear(&env);
    free(wire);
done:
    json_decref(body);
    json_decref(errors);
    return 0;
}
