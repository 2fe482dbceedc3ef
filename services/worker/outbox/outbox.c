/* Outbox rows, written in the caller's transaction. See outbox.h. */
#include "outbox.h"
#include "tally/clock.h"
#include "tally/json.h"
#include "tally/pgx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void
tly_outbox_rows_add(tly_outbox_rows_t *rows, const char *topic, const char *parent_tp, const tly_envelope_t *ev)
{
    char id[TLY_UUID_STR_LEN + 1], key[TLY_UUID_STR_LEN + 1], tp[TLY_TRACEPARENT_LEN + 1];
    tly_uuid_format(&ev->id, id);
    tly_uuid_format(&ev->aggregate_id, key);
    if (parent_tp != NULL && parent_tp[0] != '\0')
        tly_traceparent_child(parent_tp, tp);
    else
        tly_traceparent_new(tp);
    json_t *h = json_pack("{s:s, s:i, s:s}", "type", ev->type, "version", ev->version, "traceparent", tp);
    char *headers = tly_json_dump(h);
    char *payload = tly_envelope_to_json(ev);
    const char *cols[TLY_OUTBOX_NCOLS] = {id, topic, key, payload, headers};
    for (int c = 0; c < TLY_OUTBOX_NCOLS; ++c)
        tly_pg_array_add(&rows->col[c], cols[c]);
    free(payload);
    free(headers);
    json_decref(h);
}

int
tly_outbox_rows_flush(tly_outbox_rows_t *rows, PGconn *conn, char *err, size_t errcap)
{
    int ret = 0;
    if (rows->col[TLY_OUTBOX_ID].n > 0) {
        const char *vals[TLY_OUTBOX_NCOLS];
        for (int c = 0; c < TLY_OUTBOX_NCOLS; ++c)
            vals[c] = tly_pg_array_text(&rows->col[c]);
        /* seq follows the array order (WITH ORDINALITY): the relay publishes each key's events in the order decided.
           The same statement wakes the relay (NOTIFY tally_outbox, delivered at commit; PostgreSQL folds repeats
           within a transaction into one) when it inserted a row: no round trip of its own */
        ret = tly_pgx_send(conn, "insert outbox rows",
                           "WITH ins AS (INSERT INTO outbox (event_id, topic, msg_key, payload, headers) "
                           "SELECT id, topic, msg_key, payload, headers::jsonb FROM unnest($1::uuid[], $2::text[], $3::text[], "
                           "$4::text[], $5::text[]) WITH ORDINALITY AS r(id, topic, msg_key, payload, headers, ord) "
                           "ORDER BY ord ON CONFLICT (event_id) DO NOTHING RETURNING 1) "
                           "SELECT pg_notify('tally_outbox', '') WHERE EXISTS (SELECT 1 FROM ins)",
                           5, vals, NULL, NULL, err, errcap);
    }
    tly_outbox_rows_reset(rows);
    return ret;
}

void
tly_outbox_rows_reset(tly_outbox_rows_t *rows)
{
    for (int c = 0; c < TLY_OUTBOX_NCOLS; ++c)
        tly_pg_array_reset(&rows->col[c]);
}

void
tly_outbox_rows_free(tly_outbox_rows_t *rows)
{
    for (int c = 0; c < TLY_OUTBOX_NCOLS; ++c)
        tly_pg_array_free(&rows->col[c]);
}

int
tly_outbox_insert(PGconn *conn, const char *topic, const char *parent_tp, const tly_envelope_t *ev, char *err, size_t errcap)
{
    tly_outbox_rows_t rows;
    memset(&rows, 0, sizeof(rows));
    tly_outbox_rows_add(&rows, topic, parent_tp, ev);
    int ret = tly_outbox_rows_flush(&rows, conn, err, errcap);
    tly_outbox_rows_free(&rows);
    return ret;
}
