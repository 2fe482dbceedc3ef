/*
 * GET /v1/audit-events?limit=&cursor= (scope admin): the tenant's audit
 * trail (migrations/0006_credentials.sql), oldest first, keyset-paginated
 * like the other lists on (occurred_at, id) with a signed cursor bound to the
 * tenant. Another tenant's events are never in the result: the statement
 * filters by the key's tenant.
 */
#include "qa_cursor.h"
#include "query_internal.h"

#include <stdio.h>
#include <string.h>

bool
qa_audit_route(h2o_req_t *req)
{
    return h2o_memis(req->path_normalized.base, req->path_normalized.len, H2O_STRLIT("/v1/audit-events"));
}

static void
on_events(void *data, PGresult *res, const char *err)
{
    query_op_t *op = data;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK)
        qa_read_failed(op, res, err);
    else
        qa_send_page(op, res, PQntuples(res), "/v1/audit-events", qa_page_next_query);
    qa_op_destroy(op);
}

void
qa_audit_list_start(query_op_t *op)
{
    char canonical[128], lo_t[40], lo_id[TLY_UUID_STR_LEN + 1], limit[16];
    if (!qa_page_params_or_reply(op))
        goto fail;
    snprintf(canonical, sizeof(canonical), "audit-events\n%s", op->tenant);
    qa_cursor_filters_hash(canonical, op->filters);
    if (!qa_page_lower_bound_or_reply(op, lo_t, lo_id))
        goto fail;
    snprintf(limit, sizeof(limit), "%d", op->list.limit + 1);
    const char *params[4] = {op->tenant, lo_t, lo_id, limit};
    tly_pgpool_exec(op->thr->pg, STMT_LIST_AUDIT_EVENTS, params, on_events, op);
    return;
fail:
    qa_op_destroy(op);
}
