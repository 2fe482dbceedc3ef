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

#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QUERY_BUF 4096
#define UUID_MIN "00000000-0000-0000-0000-000000000000"

static const char *statuses[] = {"requested", "debited", "completed", "rejected", "compensating", "failed"};

/* Parses account, status, limit and cursor into the op; replies 400 or 422 itself. */
static bool
parse_or_reply(query_op_t *op)
{
    h2o_req_t *req = op->api.req;
    qa_pair_t pairs[QA_MAX_PARAMS];
    char *buf = h2o_mem_alloc_pool(&req->pool, QUERY_BUF);
    int n = 0;
    unsigned seen = 0;
    if (req->query_at != SIZE_MAX)
        n = qa_query_split(req->path.base + req->query_at + 1, req->path.len - req->query_at - 1, pairs, QA_MAX_PARAMS, buf,
                           QUERY_BUF);
    if (n < 0) {
        tly_api_problem(&op->api, 400, "malformed_query", "the query string is malformed or too long", NULL);
        return false;
    }
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
    bool ok = json_array_size(errors) == 0;
    if (!ok)
        tly_api_problem(&op->api, 422, "validation_failed", "some query parameters are invalid", errors);
    json_decref(errors);
    return ok;
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
page_etag(const char *body, size_t len, char *out)
{
    uint8_t md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)body, len, md);
    memcpy(out, "\"p-", 3);
    for (int i = 0; i < 16; ++i)
        snprintf(out + 3 + 2 * i, 3, "%02x", md[i]);
    memcpy(out + 35, "\"", 2);
}

/* {"data":[...],"has_more":..,"next_cursor":..}; caller frees. */
static char *
page_body(PGresult *res, int count, const char *cursor, size_t *len_out)
{
    size_t cap = 64 + (cursor != NULL ? strlen(cursor) : 0), len = 0;
    for (int i = 0; i < count; ++i)
        cap += (size_t)PQgetlength(res, i, 0) + 1;
    char *body = malloc(cap);
    if (body == NULL)
        abort();
    len += (size_t)snprintf(body, cap, "{\"data\":[");
    for (int i = 0; i < count; ++i) {
        if (i > 0)
            body[len++] = ',';
        memcpy(body + len, PQgetvalue(res, i, 0), (size_t)PQgetlength(res, i, 0));
        len += (size_t)PQgetlength(res, i, 0);
    }
    if (cursor != NULL)
        len += (size_t)snprintf(body + len, cap - len, "],\"has_more\":true,\"next_cursor\":\"%s\"}", cursor);
    else
        len += (size_t)snprintf(body + len, cap - len, "],\"has_more\":false,\"next_cursor\":null}");
    *len_out = len;
    return body;
}

static void
on_page(void *data, PGresult *res, const char *err)
{
    query_op_t *op = data;
    char cursor[QA_CURSOR_TEXT_CAP], etag[40];
    size_t len;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        qa_read_failed(op, res, err);
        goto done;
    }
    int rows = PQntuples(res);
    bool more = rows > op->list.limit;
    int count = more ? op->list.limit : rows;
    if (more) {
        qa_cursor_t c;
        c.created_us = strtoll(PQgetvalue(res, count - 1, 1), NULL, 10);
        if (!tly_uuid_parse(PQgetvalue(res, count - 1, 2), &c.id)) {
            qa_read_failed(op, NULL, "malformed id in the page");
            goto done;
        }
        memcpy(c.filters, op->filters, sizeof(c.filters));
        qa_cursor_encode(&c, op->thr->cursor_key, op->thr->cursor_keylen, cursor);
    }
    if (op->api.req == NULL)
        goto done;
    char *body = page_body(res, count, more ? cursor : NULL, &len);
    if (more) {
        char query[512];
        next_query(op, cursor, query, sizeof(query));
        size_t cap = strlen(query) + 64;
        char *link = h2o_mem_alloc_pool(&op->api.req->pool, cap);
        snprintf(link, cap, "</v1/transfers?%s>; rel=\"next\"", query);
        tly_http_add_header(op->api.req, "link", link);
    }
    page_etag(body, len, etag);
    qa_send_json(op, body, len, etag);
    free(body);
done:
    qa_op_destroy(op);
}

void
qa_transfers_list_start(query_op_t *op)
{
    char canonical[256], lo_t[40], lo_id[TLY_UUID_STR_LEN + 1], limit[16];
    qa_cursor_t c;
    if (!parse_or_reply(op))
        goto fail;
    snprintf(canonical, sizeof(canonical), "transfers\n%s\naccount=%s\nstatus=%s", op->tenant, op->id_text, op->transfer_status);
    qa_cursor_filters_hash(canonical, op->filters);
    if (op->list.cursor[0] == '\0') {
        snprintf(lo_t, sizeof(lo_t), "-infinity");
        snprintf(lo_id, sizeof(lo_id), "%s", UUID_MIN);
    } else {
        switch (qa_cursor_decode(op->list.cursor, op->thr->cursor_key, op->thr->cursor_keylen, op->filters, &c)) {
        case QA_CURSOR_OK:
            tly_clock_format_rfc3339(c.created_us, lo_t, sizeof(lo_t));
            tly_uuid_format(&c.id, lo_id);
            break;
        case QA_CURSOR_MISMATCH:
            tly_api_problem(&op->api, 400, "invalid_cursor", "the cursor was made for other filters; start again without a cursor",
                            NULL);
            goto fail;
        case QA_CURSOR_INVALID:
        default:
            tly_api_problem(&op->api, 400, "invalid_cursor", "the cursor is malformed or was not made by this API", NULL);
            goto fail;
        }
    }
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
