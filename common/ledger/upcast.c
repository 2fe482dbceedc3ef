/* Upcasters: one row per (type, version) step. See tally/ledger/upcast.h. */
#include "tally/ledger/upcast.h"
#include "tally/ledger/catalogue.h"

#include <stdio.h>
#include <string.h>

/* Rewrites `data` (a private deep copy) from version `from` into `from + 1`. 0 or -1 with err. */
typedef int (*step_fn)(json_t *data, char *err, size_t errcap);

typedef struct st_upcast_step_t {
    const char *type;
    int from;
    step_fn step;
} upcast_step_t;

/* FundsDeposited v2 records the channel the deposit came through; every v1
   deposit came through the HTTP API. */
static int
deposited_v1_v2(json_t *data, char *err, size_t errcap)
{
    json_t *channel = json_object_get(data, "channel");
    if (channel != NULL && !json_is_string(channel)) {
        snprintf(err, errcap, "could not upcast FundsDeposited v1: data.channel is not a string");
        return -1;
    }
    if (channel == NULL)
        json_object_set_new(data, "channel", json_string("api"));
    return 0;
}

static const upcast_step_t steps[] = {
    {"FundsDeposited", 1, deposited_v1_v2},
};
#define NSTEPS (sizeof(steps) / sizeof(steps[0]))

static const upcast_step_t *
find_step(const char *type, int from)
{
    for (size_t i = 0; i < NSTEPS; ++i)
        if (steps[i].from == from && strcmp(steps[i].type, type) == 0)
            return &steps[i];
    return NULL;
}

bool
tly_upcast_has_step(const char *type, int from)
{
    return find_step(type, from) != NULL;
}

int
tly_event_latest_version(const char *type)
{
    int v = tly_catalogue_latest_version(type);
    return v > 0 ? v : 1;
}

int
tly_upcast(const tly_envelope_t *in, int to_version, tly_envelope_t *out, char *err, size_t errcap)
{
    if (to_version <= 0)
        to_version = tly_event_latest_version(in->type);
    *out = *in;
    out->data = json_incref(in->data);
    if (out->version >= to_version)
        return 0;
    json_t *data = json_deep_copy(in->data);
    if (data == NULL) {
        snprintf(err, errcap, "could not upcast %s v%d: out of memory", in->type, in->version);
        goto fail;
    }
    json_decref(out->data);
    out->data = data;
    while (out->version < to_version) {
        const upcast_step_t *s = find_step(out->type, out->version);
        if (s == NULL) {
            snprintf(err, errcap, "could not upcast %s v%d to v%d: no upcaster from v%d", in->type, in->version, to_version,
                     out->version);
            goto fail;
        }
        if (s->step(out->data, err, errcap) != 0)
            goto fail;
        out->version++;
    }
    return 0;
fail:
    tly_envelope_clear(out);
    memset(out, 0, sizeof(*out));
    return -1;
}
