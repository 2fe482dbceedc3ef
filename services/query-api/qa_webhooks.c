/*
 * GET /v1/webhook-endpoints?limit=&cursor= and
 * GET /v1/webhook-endpoints/{id}/deliveries?status=&limit=&cursor=.
 * (GET /v1/webhook-endpoints/{id} is a single resource: query_api.c.)
 *
 * Keyset-paginated like qa_lists.c: (created_at, id) order, oldest first, a
 * signed cursor carrying the last position and bound (filter hash) to the
 * tenant, the endpoint and the status it was made with. Deleted endpoints
 * and their deliveries are 404 like another tenant's. A delivery keeps its
 * created_at when it is replayed, so a replay never moves it in the list.
 * The signing secrets are never read here.
 */
#include "qa_cursor.h"
#include "query_internal.h"
#include "tally/http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *statuses[] = {"pending", "succeeded", "failed"};

enum { P_LIMIT, P_CURSOR, P_STATUS };

/* One query parameter into the op; the message for the client when it is bad, else NULL. */
static const char *
take_param(query_op_t *op, int p, const char *v)
{
    if (p == P_LIMIT) {
        char *end = NULL;
        long l = strtol(v, &end, 10);
        if (v[0] < '0' || v[0] > '9' || *end != '\0' || l < 1 || l > QA_LIMIT_MAX)
            return "must be an integer from 1 to 100";
        op->list.limit = (int)l;
        return NULL;
    }
    if (p == P_CURSOR) {
        if (v[0] == '\0' || strlen(v) >= sizeof(op->list.cursor))
            return "must be a cursor from next_cursor";
        snprintf(op->list.cursor, sizeof(op->list.cursor), "%s", v);
        return NULL;
    }
    for (size_t k = 0; k < sizeof(statuses) / sizeof(statuses[0]); ++k)
        if (strcmp(statuses[k], v) == 0) {
            snprintf(op->delivery_status, sizeof(op->delivery_status), "%s", statuses[k]);
            return NULL;
        }
    return "must be one of pending, succeeded, failed";
}

/* Parses limit, cursor and (deliveries) status into the op; replies 400 or 422 itself. */
static bool
parse_or_reply(query_op_t *op, bool deliveries)
{
    static const char *names[] = {[P_LIMIT] = "limit", [P_CURSOR] = "cursor", [P_STATUS] = "status"};
    qa_pair_t pairs[QA_MAX_PARAMS];
    unsigned seen = 0;
    int n = qa_query_pairs_or_reply(op, pairs), nnames = deliveries ? 3 : 2;
    if (n < 0)
        return false;
    memset(&op->list, 0, sizeof(op->list));
    op->list.limit = QA_LIMIT_DEFAULT;
    op->delivery_status[0] = '\0';
    json_t *errors = json_array();
    for (int i = 0; i < n; ++i) {
        const char *message = NULL;
        int p = -1;
        for (int k = 0; k < nnames; ++k)
            if (strcmp(names[k], pairs[i].name) == 0)
                p = k;
        if (p < 0)
            message = "is not a parameter of this endpoint";
        else if (seen & (1u << p))
            message = "is given more than once";
        else
            message = take_param(op, p, pairs[i].value);
        if (p >= 0)
            seen |= 1u << p;
        if (message != NULL)
            tly_http_field_error(errors, pairs[i].name, message);
    }
    return qa_params_ok_or_reply(op, errors);
}

static void
next_query(const query_op_t *op, const char *cursor, char *out, size_t cap)
{
    if (op->delivery_status[0] != '\0')
        snprintf(out, cap, "status=%s&limit=%d&cursor=%s", op->delivery_status, op->list.limit, cursor);
    else
        qa_page_next_query(op, cursor, out, cap);
}

bool
qa_page_params_or_reply(query_op_t *op)
{
    return parse_or_reply(op, false);
}

void
qa_page_next_query(const query_op_t *op, const char *cursor, char *out, size_t cap)
{
    snprintf(out, cap, "limit=%d&cursor=%s", op->list.limit, cursor);
}

static void
on_endpoints(void *data, PGresult *res, const char *err)
{
    query_op_t *op = data;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK)
        qa_read_failed(op, res, err);
    else
        qa_send_page(op, res, PQntuples(res), "/v1/webhook-endpoints", next_query);
    qa_op_destroy(op);
}

void
qa_webhooks_list_start(query_op_t *op)
{
    char canonical[128], lo_t[40], lo_id[TLY_UUID_STR_LEN + 1], limit[16];
    if (!parse_or_reply(op, false))
        goto fail;
    snprintf(canonical, sizeof(canonical), "webhook-endpoints\n%s", op->tenant);
    qa_cursor_filters_hash(canonical, op->filters);
    if (!qa_page_lower_bound_or_reply(op, lo_t, lo_id))
        goto fail;
    snprintf(limit, sizeof(limit), "%d", op->list.limit + 1);
    const char *params[4] = {op->tenant, lo_t, lo_id, limit};
    tly_pgpool_exec(op->thr->pg, STMT_LIST_WEBHOOK_ENDPOINTS, params, on_endpoints, op);
    return;
fail:
    qa_op_destroy(op);
}

static void
on_deliveries(void *data, PGresult *res, const char *err)
{
    query_op_t *op = data;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        qa_read_failed(op, res, err);
    } else if (PQntuples(res) == 0) {
        tly_api_problem(&op->api, 404, "not_found", "no such webhook endpoint", NULL);
    } else {
        /* one row of NULLs when the endpoint exists but no delivery is on this page */
        int rows = PQntuples(res) == 1 && PQgetisnull(res, 0, 0) ? 0 : PQntuples(res);
        qa_send_page(op, res, rows, op->base_path, next_query);
    }
    qa_op_destroy(op);
}

void
qa_webhooks_deliveries_start(query_op_t *op, h2o_iovec_t endpoint_seg)
{
    char canonical[160], lo_t[40], lo_id[TLY_UUID_STR_LEN + 1], limit[16];
    snprintf(op->id_text, sizeof(op->id_text), "%.*s", (int)(endpoint_seg.len < 40 ? endpoint_seg.len : 40), endpoint_seg.base);
    if (endpoint_seg.len != TLY_UUID_STR_LEN || !tly_uuid_parse(op->id_text, &op->id)) {
        json_t *errors = json_array();
        tly_http_field_error(errors, "id", "must be a webhook endpoint id (uuid)");
        tly_api_problem(&op->api, 422, "validation_failed", "the id in the path is malformed", errors);
        json_decref(errors);
        goto fail;
    }
    tly_uuid_format(&op->id, op->id_text); /* canonical lower case */
    size_t cap = sizeof("/v1/webhook-endpoints//deliveries") + TLY_UUID_STR_LEN;
    char *base = h2o_mem_alloc_pool(&op->api.req->pool, cap);
    snprintf(base, cap, "/v1/webhook-endpoints/%s/deliveries", op->id_text);
    op->base_path = base;
    if (!parse_or_reply(op, true))
        goto fail;
    snprintf(canonical, sizeof(canonical), "webhook-deliveries\n%s\n%s\nstatus=%s", op->tenant, op->id_text, op->delivery_status);
    qa_cursor_filters_hash(canonical, op->filters);
    if (!qa_page_lower_bound_or_reply(op, lo_t, lo_id))
        goto fail;
    snprintf(limit, sizeof(limit), "%d", op->list.limit + 1);
    const char *params[6] = {op->id_text, op->tenant, lo_t, lo_id, op->delivery_status[0] != '\0' ? op->delivery_status : NULL,
                             limit};
    tly_pgpool_exec(op->thr->pg, STMT_LIST_WEBHOOK_DELIVERIES, params, on_deliveries, op);
    return;
fail:
    qa_op_destroy(op);
}
