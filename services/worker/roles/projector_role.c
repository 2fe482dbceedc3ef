/* The projector role: the fenced consumer's batches through the ledger's projections. See projector_role.h. */
#include "projector_role.h"
#include "tally/ledger/projection.h"
#include "tally/pgarray.h"
#include "tally/pgx.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* --- watermark ------------------------------------------------------------ */

/*
 * The projector's watermark (migrations/0011_reads_in_time.sql): per
 * partition, the time of the newest event applied from it, moved in the
 * batch's own transaction so that it never runs ahead of the read models.
 * The query API answers min(applied_through) as Tally-Watermark.
 */
static int
note_watermark(PGconn *conn, const tly_consumer_msg_t *const *msgs, int n, char *err, size_t errcap)
{
    tly_pg_array_t parts = {0}, times = {0};
    int ret = -1;
    for (int i = 0; i < n; ++i) {
        if (!msgs[i]->parsed)
            continue;
        tly_pg_array_add_i64(&parts, msgs[i]->rkm->partition);
        tly_pg_array_add_i64(&times, msgs[i]->env.occurred_at_us);
    }
    if (parts.n == 0) {
        ret = 0;
        goto out;
    }
    const char *vals[] = {tly_pg_array_text(&parts), tly_pg_array_text(&times)};
    ret = tly_pgx_exec(conn, "note the projector's watermark",
                       "INSERT INTO projector_watermarks AS w (partition, applied_through) "
                       "SELECT u.p, max(timestamptz 'epoch' + u.us * interval '1 microsecond') "
                       "FROM unnest($1::int[], $2::bigint[]) AS u(p, us) GROUP BY u.p "
                       "ON CONFLICT (partition) DO UPDATE SET applied_through = greatest(w.applied_through, "
                       "excluded.applied_through), updated_at = now()",
                       2, vals, NULL, err, errcap);
out:
    tly_pg_array_free(&parts);
    tly_pg_array_free(&times);
    return ret;
}

/* --- projector ----------------------------------------------------------- */

static tly_verdict_t
projector_classify(void *ctx, const tly_envelope_t *env)
{
    return tly_consumer_verdict(tly_projection_knows(env->type), env, tly_projection_max_version(env->type));
}

static int
projector_apply(void *ctx, PGconn *conn, const tly_consumer_msg_t *msg, char *err, size_t errcap)
{
    if (tly_projection_apply(conn, &msg->env, TLY_MODEL_ALL, err, errcap) != 0)
        return -1;
    return note_watermark(conn, &msg, 1, err, errcap);
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
    if (ret == 0)
        ret = note_watermark(conn, msgs, n, err, errcap);
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
        .name = TLY_PROJECTOR_CONSUMER,
        .classify = projector_classify,
        .apply = projector_apply,
        .park = projector_park,
        .apply_batch = projector_apply_batch,
    };
}
