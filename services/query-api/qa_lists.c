/*
 * List endpoints with keyset pagination: GET /v1/accounts and
 * GET /v1/accounts/{id}/entries.
 *
 * Every page is one prepared statement: tenant filter, the filters, and
 * `(created_at, id) > (position)` ordered by (created_at, id), which the
 * (tenant_id | account_id, created_at, id) indexes serve directly. The
 * position is the last item of the previous page, carried by a signed cursor
 * (qa_cursor.h), so rows inserted between two pages land either before the
 * position (never shown to this walk) or after it (shown once): no skip, no
 * repeat. One extra row is fetched to know whether there is a next page.
 */
#include "qa_cursor.h"
#include "query_internal.h"
#include "tally/clock.h"
#include "tally/http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Sends 422 validation_failed for one field. */
static void
reply_invalid(query_op_t *op, const char *field, const char *message, const char *detail)
{
    json_t *errors = json_array();
    tly_http_field_error(errors, field, message);
    tly_api_problem(&op->api, 422, "validation_failed", detail, errors);
    json_decref(errors);
}

/* Parses the query string into op->list; replies 400 or 422 itself. */
static bool
parse_query_or_reply(query_op_t *op, qa_list_t list)
{
    qa_pair_t pairs[QA_MAX_PARAMS];
    int n = qa_query_pairs_or_reply(op, pairs);
    if (n < 0)
        return false;
    json_t *errors = json_array();
    qa_list_query_parse(list, pairs, (size_t)n, &op->list, errors);
    return qa_params_ok_or_reply(op, errors);
}

static void
next_query(const query_op_t *op, const char *cursor, char *out, size_t cap)
{
    qa_list_query_next(&op->list, cursor, out, cap);
}

static void
on_page(void *data, PGresult *res, const char *err)
{
    query_op_t *op = data;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        qa_read_failed(op, res, err);
        goto done;
    }
    if (op->list.list == QA_LIST_ENTRIES && PQntuples(res) == 0) {
        tly_api_problem(&op->api, 404, "not_found", "no such account", NULL);
        goto done;
    }
    /* entries: one row of NULLs when the account exists but no entry matches */
    int rows = PQntuples(res) == 1 && PQgetisnull(res, 0, 0) ? 0 : PQntuples(res);
    qa_send_page(op, res, rows, op->base_path, next_query);
done:
    qa_op_destroy(op);
}

static void
exec_page(query_op_t *op, const char *lo_t, const char *lo_id)
{
    char hi_t[40], limit[16];
    const query_thread_t *thr = op->thr;
    const qa_list_query_t *q = &op->list;
    if (q->has_before)
        tly_clock_format_rfc3339(q->before_us, hi_t, sizeof(hi_t));
    else
        snprintf(hi_t, sizeof(hi_t), "infinity");
    snprintf(limit, sizeof(limit), "%d", q->limit + 1);
    if (q->list == QA_LIST_ACCOUNTS) {
        const char *params[7] = {
            op->tenant, lo_t, lo_id, hi_t, q->status[0] ? q->status : NULL, q->currency[0] ? q->currency : NULL, limit};
        tly_pgpool_exec(thr->pg, STMT_LIST_ACCOUNTS, params, on_page, op);
    } else {
        char as_of[40];
        if (q->has_as_of)
            tly_clock_format_rfc3339(q->as_of_us, as_of, sizeof(as_of));
        const char *params[8] = {
            op->id_text, op->tenant, lo_t, lo_id, hi_t, q->kind[0] ? q->kind : NULL, limit, q->has_as_of ? as_of : NULL};
        tly_pgpool_exec(thr->pg, STMT_LIST_ENTRIES, params, on_page, op);
    }
}

void
qa_list_start(query_op_t *op, qa_list_t list, h2o_iovec_t account_seg)
{
    char canonical[512], scope[2 * TLY_UUID_STR_LEN + 2], lo_t[40], lo_id[TLY_UUID_STR_LEN + 1];
    h2o_req_t *req = op->api.req;
    op->base_path = "/v1/accounts";
    if (list == QA_LIST_ENTRIES) {
        snprintf(op->id_text, sizeof(op->id_text), "%.*s", (int)account_seg.len, account_seg.base);
        if (account_seg.len != TLY_UUID_STR_LEN || !tly_uuid_parse(op->id_text, &op->id)) {
            reply_invalid(op, "id", "must be a uuid", "the id in the path is malformed");
            goto fail;
        }
        tly_uuid_format(&op->id, op->id_text); /* canonical lower case */
        size_t cap = sizeof("/v1/accounts//entries") + TLY_UUID_STR_LEN;
        char *base = h2o_mem_alloc_pool(&req->pool, cap);
        snprintf(base, cap, "/v1/accounts/%s/entries", op->id_text);
        op->base_path = base;
    }
    if (!parse_query_or_reply(op, list))
        goto fail;
    snprintf(scope, sizeof(scope), "%s/%s", op->tenant, list == QA_LIST_ENTRIES ? op->id_text : "");
    qa_list_query_canonical(&op->list, scope, canonical, sizeof(canonical));
    qa_cursor_filters_hash(canonical, op->filters);
    if (!qa_page_lower_bound_or_reply(op, lo_t, lo_id))
        goto fail;
    exec_page(op, lo_t, lo_id);
    return;
fail:
    qa_op_destroy(op);
}
