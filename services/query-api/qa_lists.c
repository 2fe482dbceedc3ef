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

#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QUERY_BUF 4096
#define UUID_MIN "00000000-0000-0000-0000-000000000000"
#define UUID_MAX "ffffffff-ffff-ffff-ffff-ffffffffffff"

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
    h2o_req_t *req = op->api.req;
    qa_pair_t pairs[QA_MAX_PARAMS];
    char *buf = h2o_mem_alloc_pool(&req->pool, QUERY_BUF);
    int n = 0;
    if (req->query_at != SIZE_MAX)
        n = qa_query_split(req->path.base + req->query_at + 1, req->path.len - req->query_at - 1, pairs, QA_MAX_PARAMS, buf,
                           QUERY_BUF);
    if (n < 0) {
        tly_api_problem(&op->api, 400, "malformed_query", "the query string is malformed or too long", NULL);
        return false;
    }
    json_t *errors = json_array();
    bool ok = qa_list_query_parse(list, pairs, (size_t)n, &op->list, errors);
    if (!ok)
        tly_api_problem(&op->api, 422, "validation_failed", "some query parameters are invalid", errors);
    json_decref(errors);
    return ok;
}

/* Decodes the cursor (if any) into the lower bound of the page; replies 400 itself. */
static bool
lower_bound_or_reply(query_op_t *op, char *t_out, char *id_out)
{
    qa_cursor_t c;
    if (op->list.cursor[0] == '\0') {
        if (op->list.has_after)
            tly_clock_format_rfc3339(op->list.after_us, t_out, 40);
        else
            snprintf(t_out, 40, "-infinity");
        snprintf(id_out, TLY_UUID_STR_LEN + 1, "%s", op->list.has_after ? UUID_MAX : UUID_MIN);
        return true;
    }
    switch (qa_cursor_decode(op->list.cursor, op->thr->cursor_key, op->thr->cursor_keylen, op->filters, &c)) {
    case QA_CURSOR_OK:
        tly_clock_format_rfc3339(c.created_us, t_out, 40);
        tly_uuid_format(&c.id, id_out);
        return true;
    case QA_CURSOR_MISMATCH:
        tly_api_problem(&op->api, 400, "invalid_cursor", "the cursor was made for other filters; start again without a cursor",
                        NULL);
        return false;
    case QA_CURSOR_INVALID:
    default:
        tly_api_problem(&op->api, 400, "invalid_cursor", "the cursor is malformed or was not made by this API", NULL);
        return false;
    }
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

/* The cursor after row `row`: its position and the filters of this request. */
static bool
next_cursor(query_op_t *op, PGresult *res, int row, char *out)
{
    qa_cursor_t c;
    c.created_us = strtoll(PQgetvalue(res, row, 1), NULL, 10);
    if (!tly_uuid_parse(PQgetvalue(res, row, 2), &c.id))
        return false;
    memcpy(c.filters, op->filters, sizeof(c.filters));
    qa_cursor_encode(&c, op->thr->cursor_key, op->thr->cursor_keylen, out);
    return true;
}

static void
add_link(query_op_t *op, const char *cursor)
{
    char query[1024];
    qa_list_query_next(&op->list, cursor, query, sizeof(query));
    size_t cap = strlen(op->base_path) + strlen(query) + 32;
    char *link = h2o_mem_alloc_pool(&op->api.req->pool, cap);
    snprintf(link, cap, "<%s?%s>; rel=\"next\"", op->base_path, query);
    tly_http_add_header(op->api.req, "link", link);
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
    if (op->list.list == QA_LIST_ENTRIES && PQntuples(res) == 0) {
        tly_api_problem(&op->api, 404, "not_found", "no such account", NULL);
        goto done;
    }
    /* entries: one row of NULLs when the account exists but no entry matches */
    int rows = PQntuples(res) == 1 && PQgetisnull(res, 0, 0) ? 0 : PQntuples(res);
    bool more = rows > op->list.limit;
    int count = more ? op->list.limit : rows;
    if (more && !next_cursor(op, res, count - 1, cursor)) {
        qa_read_failed(op, NULL, "malformed id in the page");
        goto done;
    }
    if (op->api.req == NULL)
        goto done;
    char *body = page_body(res, count, more ? cursor : NULL, &len);
    if (more)
        add_link(op, cursor);
    page_etag(body, len, etag);
    qa_send_json(op, body, len, etag);
    free(body);
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
        const char *params[7] = {op->id_text, op->tenant, lo_t, lo_id, hi_t, q->kind[0] ? q->kind : NULL, limit};
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
    if (!lower_bound_or_reply(op, lo_t, lo_id))
        goto fail;
    exec_page(op, lo_t, lo_id);
    return;
fail:
    qa_op_destroy(op);
}
