/*
 * One page of a list, shared by every list endpoint: the body
 * {"data":[...],"has_more":..,"next_cursor":..}, the cursor after the last
 * row (signed, bound to this request's filters), the Link to the next page,
 * and an ETag of the page's content.
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

bool
qa_page_lower_bound_or_reply(query_op_t *op, char *t_out, char *id_out)
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

int
qa_query_pairs_or_reply(query_op_t *op, qa_pair_t *pairs)
{
    h2o_req_t *req = op->api.req;
    char *buf = h2o_mem_alloc_pool(&req->pool, QUERY_BUF);
    int n = 0;
    if (req->query_at != SIZE_MAX)
        n = qa_query_split(req->path.base + req->query_at + 1, req->path.len - req->query_at - 1, pairs, QA_MAX_PARAMS, buf,
                           QUERY_BUF);
    if (n < 0)
        tly_api_problem(&op->api, 400, "malformed_query", "the query string is malformed or too long", NULL);
    return n;
}

bool
qa_params_ok_or_reply(query_op_t *op, json_t *errors)
{
    bool ok = json_array_size(errors) == 0;
    if (!ok)
        tly_api_problem(&op->api, 422, "validation_failed", "some query parameters are invalid", errors);
    json_decref(errors);
    return ok;
}

static void
page_etag(const char *body, size_t len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)body, len, md);
    memcpy(out, "\"p-", 3);
    for (int i = 0; i < 16; ++i) {
        out[3 + 2 * i] = hex[md[i] >> 4];
        out[4 + 2 * i] = hex[md[i] & 0xf];
    }
    memcpy(out + 35, "\"", 2);
}

/* Rows [0, count) of column 0, joined into the page body; caller frees. */
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

/* The cursor after row `row` (columns 1 and 2: created_at in µs, id). */
static bool
cursor_after(query_op_t *op, PGresult *res, int row, char *out)
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
add_link(query_op_t *op, const char *path, const char *query)
{
    size_t cap = strlen(path) + strlen(query) + 32;
    char *link = h2o_mem_alloc_pool(&op->api.req->pool, cap);
    snprintf(link, cap, "<%s?%s>; rel=\"next\"", path, query);
    tly_http_add_header(op->api.req, "link", link);
}

void
qa_send_page(query_op_t *op, PGresult *res, int rows, const char *path, qa_next_query_fn next_query)
{
    char cursor[QA_CURSOR_TEXT_CAP], etag[40], query[1024];
    size_t len;
    bool more = rows > op->list.limit;
    int count = more ? op->list.limit : rows;
    if (more && !cursor_after(op, res, count - 1, cursor)) {
        qa_read_failed(op, NULL, "malformed id in the page");
        return;
    }
    if (op->api.req == NULL)
        return;
    char *body = page_body(res, count, more ? cursor : NULL, &len);
    if (more) {
        next_query(op, cursor, query, sizeof(query));
        add_link(op, path, query);
    }
    page_etag(body, len, etag);
    qa_send_json(op, body, len, etag);
    free(body);
}
