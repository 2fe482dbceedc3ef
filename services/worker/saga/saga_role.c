/* The saga role. See saga_role.h. */
#include "saga_role.h"
#include "outbox/outbox.h"
#include "saga_store.h"
#include "tally/clock.h"
#include "tally/ledger/catalogue.h"
#include "tally/ledger/upcast.h"

#include <stdio.h>
#include <string.h>

static tly_verdict_t
saga_classify(void *ctx, const tly_envelope_t *env)
{
    return tly_consumer_verdict(tly_saga_handles(env->type), env, tly_catalogue_latest_version(env->type));
}

/* Advances the event's saga once (the consumer dedups by event id; saga.c ignores what does not fit the state). */
static int
saga_apply(void *ctx, PGconn *conn, const tly_consumer_msg_t *msg, char *err, size_t errcap)
{
    tly_saga_role_t *r = ctx;
    tly_uuid_t transfer;
    tly_saga_state_t state;
    tly_saga_step_t step;
    int ret = -1;
    if (!tly_saga_transfer_of(&msg->env, &transfer))
        return 0; /* an account event of no transfer (cannot happen for these types): nothing to advance */
    if (tly_saga_load(conn, &transfer, &state, err, errcap) != 0)
        return -1;
    if (tly_saga_on_event(&state, &msg->env, &r->cfg, tly_clock_now_us(), &step) != 0) {
        snprintf(err, errcap, "could not advance the saga with %s", msg->env.type);
        return -1;
    }
    if (step.changed && tly_saga_store(conn, &step.next, err, errcap) != 0)
        goto cleanup;
    for (int i = 0; i < step.nevents; ++i) {
        if (tly_outbox_insert(conn, r->topic, msg->traceparent, &step.events[i], err, errcap) != 0)
            goto cleanup;
    }
    ret = 0;
cleanup:
    tly_saga_step_clear(&step);
    return ret;
}

/*
 * A parked saga event: a TransferRequested that could not start its saga still
 * ends its job (the projector fails it on TransferRejected). A parked outcome
 * leaves its saga where it is; the deadline re-sends the step, whose outcome
 * (deduplicated by the decider) then comes again only if it was never
 * decided: the saga is reported stuck and needs an operator.
 */
static int
saga_park(void *ctx, PGconn *conn, const tly_consumer_msg_t *msg, const char *why, char *err, size_t errcap)
{
    tly_saga_role_t *r = ctx;
    if (strcmp(msg->env.type, "TransferRequested") != 0)
        return 0;
    tly_envelope_t ev;
    tly_envelope_derive(&ev, &msg->env, "TransferRejected", tly_event_latest_version("TransferRejected"),
                        json_pack("{s:s, s:s}", "code", TLY_CODE_DEAD_LETTERED, "detail", why), NULL);
    int ret = tly_outbox_insert(conn, r->topic, msg->traceparent, &ev, err, errcap);
    tly_envelope_clear(&ev);
    return ret;
}

void
tly_saga_role_init(tly_consumer_handler_t *h, tly_saga_role_t *role, const char *topic, const tly_saga_config_t *cfg)
{
    memset(role, 0, sizeof(*role));
    role->topic = topic;
    role->cfg = *cfg;
    *h = (tly_consumer_handler_t){
        .name = "saga",
        .ctx = role,
        .classify = saga_classify,
        .apply = saga_apply,
        .park = saga_park,
    };
}
