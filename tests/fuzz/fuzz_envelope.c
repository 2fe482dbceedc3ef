/* libFuzzer target: the worker's envelope parser on arbitrary log records. */
#include "tally/envelope.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tly_envelope_t env;
    char err[256];
    if (tly_envelope_parse((const char *)data, size, &env, err, sizeof(err)) == 0) {
        char *wire = tly_envelope_to_json(&env);
        tly_envelope_t again;
        if (tly_envelope_parse(wire, strlen(wire), &again, err, sizeof(err)) != 0)
            abort(); /* a parsed envelope must survive a round trip */
        tly_envelope_clear(&again);
        free(wire);
        tly_envelope_clear(&env);
    }
    return 0;
}
