/* The projector role: the fenced consumer's batches through the ledger's projections. See projector_role.h. */
#include "projector_role.h"
#include "tally/ledger/projection.h"

#include <stdio.h>
#include <string.h>

/* --- projector ----------------------------------------------------------- */

static tly_verdict_t
projector_classify(void *ctx, const tly_envelope_t *env)
{
    if (!tly_projection_knows(env->type))
        return TLY_VERDICT_IGNORE;
    return env->version > tly_projection_max_version(env->type) ? TLY_VERDICT_TOO_NEW : TLY_VERDICT_APPLY;
}

static int
projector_apply(void *ctx, PGconn *conn, const tly_consumer_msg_t *msg, char *err, size_t errcap)
{
    return tly_projection_apply(conn, &msg->env, TLY_MODEL_ALL, err, errcap);
}

/* The whole batch folded per key and written with one statement per read model (projection.h). */
static int
projector_apply_batch(void *ctx, PGconn *conn, const tly_consumer_msg_t *const *msgs, int n, char *err, size_t errcap)
{
    tly_projection_batch_t *b = tly_projection_batch_create(TLY_MODEL_ALL);
    int ret = -1;
    for (int i = 0; i < n; ++i) {
        int r = tly_projection_batch_add(b, &msgs[i]->env, err, errcap);
        if (r == 1) { /* cannot be folded after what the batch holds: write that first */
            if (tly_projection_batch_flush(b, conn, err, errcap) != 0)
                goto out;
            r = tly_projection_batch_add(b, &msgs[i]->env, err, errcap);
        }
        if (r != 0)
            goto out;
    }
    ret = tly_projection_batch_flush(b, conn, err, errcap);
out:
    tly_projection_batch_destroy(b);
    return ret;
}

static int
projector_park(void *ctx, PGconn *conn, const tly_consumer_msg_t *msg, const char *why, char *err, size_t errcap)
{
    return tly_projection_job_dead_lettered(conn, &msg->env, why, err, errcap);
}

void
tly_projector_role_init(tly_consumer_handler_t *h)
{
    *h = (tly_consumer_handler_t){
        .name = "projector",
        .classify = projector_classify,
        .apply = projector_apply,
        .park = projector_park,
        .apply_batch = projector_apply_batch,
    };
}
