/*
 * GET /v1/transfers/{id} and GET /v1/transfers?account=&status=&limit=&cursor=.
 *
 * Served from the projector's `transfers` read model. A row the projector
 * created from an account event before the transfer's own TransferRequested
 * (events of one transfer come from three partitions) has no from_account
 * yet and is not shown: a transfer appears whole or not at all.
 *
 * The list is keyset-paginated like qa_lists.c: (created_at, id) order, a
 * signed cursor carrying the last position and bound (filter hash) to the
 * tenant, the account and the status it was made with. `account` matches
 * either side of a transfer.
 */
#include "qa_cursor.h"
#include "query_internal.h"
#include "tally/clock.h"
#include "tally/http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *statuses[] = {"requested", "debited", "completed", "rejected", "compensating", "failed"};

/* Parses account, status, limit and cursor into the op; replies 400 or 422 itself. */
static bool
parse_or_reply(query_op_t *op)
{
    qa_pair_t pairs[QA_MAX_PARAMS];
    unsigned seen = 0;
    int n = qa_query_pairs_or_reply(op, pairs);
    if (n < 0)
        return false;
    memset(&op->list, 0, sizeof(op->list));
    op->list.limit = QA_LIMIT_DEFAULT;
    op->id_text[0] = op->transfer_status[0] = '\0';
    json_t *errors = json_array();
    for (int i = 0; i < n; ++i) {
        static const char *names[] = {"account", "status", "limit", "cursor"};
        const char *name = pairs[i].name, *v = pairs[i].value, *message = NULL;
        int p = -1;
        for (int k = 0; k < 4; ++k)
            if (strcmp(names[k], name) == 0)
                p = k;
        if (p < 0) {
            message = "is not a parameter of this endpoint";
        } else if (seen & (1u << p)) {
            message = "is given more than once";
        } else if (p == 0) {
            tly_uuid_t id;
            if (strlen(v) != TLY_UUID_STR_LEN || !tly_uuid_parse(v, &id))
                message = "must be an account id (uuid)";
            else
                tly_uuid_format(&id, op->id_text);
        } else if (p == 1) {
            message = "must be one of requested, debited, completed, rejected, compensating, failed";
            for (size_t k = 0; k < sizeof(statuses) / sizeof(statuses[0]); ++k)
                if (strcmp(statuses[k], v) == 0) {
                    snprintf(op->transfer_status, sizeof(op->transfer_status), "%s", statuses[k]);
                    message = NULL;
                }
        } else if (p == 2) {
            char *end = NULL;
            long l = strtol(v, &end, 10);
            if (v[0] < '0' || v[0] > '9' || *end != '\0' || l < 1 || l > QA_LIMIT_MAX)
                message = "must be an integer from 1 to 100";
            else
                op->list.limit = (int)l;
        } else {
            if (v[0] == '\0' || strlen(v) >= sizeof(op->list.cursor))
                message = "must be a cursor from next_cursor";
            else
                snprintf(op->list.cursor, sizeof(op->list.cursor), "%s", v);
        }
        if (p >= 0)
            seen |= 1u << p;
        if (message != NULL)
            tly_http_field_error(errors, name, message);
    }
    return qa_params_ok_or_reply(op, errors);
}

/* The query string of the next page (the same filters and limit, and `cursor`). */
static void
next_query(const query_op_t *op, const char *cursor, char *out, size_t cap)
{
    size_t len = 0;
    out[0] = '\0';
    if (op->id_text[0] != '\0')
        len += (size_t)snprintf(out + len, cap - len, "account=%s&", op->id_text);
    if (op->transfer_status[0] != '\0' && len < cap)
        len += (size_t)snprintf(out + len, cap - len, "status=%s&", op->transfer_status);
    if (len < cap)
        snprintf(out + len, cap - len, "limit=%d&cursor=%s", op->list.limit, cursor);
}

static void
on_page(void *data, PGresult *res, const char *err)
{
    query_op_t *op = data;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK)
        qa_read_failed(op, res, err);
    else
        qa_send_page(op, res, PQntuples(res), "/v1/transfers", next_query);
    qa_op_destroy(op);
}

void
qa_transfers_list_start(query_op_t *op)
{
    char canonical[256], lo_t[40], lo_id[TLY_UUID_STR_LEN + 1], limit[16];
    if (!parse_or_reply(op))
        goto fail;
    snprintf(canonical, sizeof(canonical), "transfers\n%s\naccount=%s\nstatus=%s", op->tenant, op->id_text, op->transfer_status);
    qa_cursor_filters_hash(canonical, op->filters);
    if (!qa_page_lower_bound_or_reply(op, lo_t, lo_id))
        goto fail;
    snprintf(limit, sizeof(limit), "%d", op->list.limit + 1);
    const char *params[6] = {op->tenant,
                             lo_t,
                             lo_id,
                             op->id_text[0] != '\0' ? op->id_text : NULL,
                             op->transfer_status[0] != '\0' ? op->transfer_status : NULL,
                             limit};
    tly_pgpool_exec(op->thr->pg, STMT_LIST_TRANSFERS, params, on_page, op);
    return;
fail:
    qa_op_destroy(op);
}
