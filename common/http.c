/* Responses, problems and request helpers over h2o 2.2. */
#include "tally/http.h"
#include "tally/json.h"
#include "tally/uuid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void
tly_http_add_header(h2o_req_t *req, const char *name, const char *value)
{
    size_t nlen = strlen(name), vlen = strlen(value);
    char *n = h2o_mem_alloc_pool(&req->pool, nlen + 1);
    char *v = h2o_mem_alloc_pool(&req->pool, vlen + 1);
    memcpy(n, name, nlen + 1);
    memcpy(v, value, vlen + 1);
    h2o_add_header_by_str(&req->pool, &req->res.headers, n, nlen, 1, NULL, v, vlen);
}

h2o_iovec_t
tly_http_header(h2o_req_t *req, const char *name)
{
    ssize_t i = h2o_find_header_by_str(&req->headers, name, strlen(name), -1);
    if (i < 0)
        return h2o_iovec_init(NULL, 0);
    return req->headers.entries[i].value;
}

const char *
tly_http_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 413:
        return "Content Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Unknown";
    }
}

static void
send_body(h2o_req_t *req, int status, const char *content_type, const char *body, size_t len)
{
    req->res.status = status;
    req->res.reason = tly_http_reason(status);
    req->res.content_length = len; /* h2o_send_inline leaves it unset: keep-alive needs it */
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, content_type, strlen(content_type));
    h2o_send_inline(req, body, len);
}

void
tly_http_send_json_text(h2o_req_t *req, int status, const char *body, size_t len)
{
    send_body(req, status, "application/json", body, len);
}

void
tly_http_send_json(h2o_req_t *req, int status, const json_t *v)
{
    char *s = tly_json_dump(v);
    tly_http_send_json_text(req, status, s, strlen(s));
    free(s);
}

char *
tly_http_problem_body(int status, const char *code, const char *detail, const json_t *errors)
{
    char type[128];
    snprintf(type, sizeof(type), "/problems/%s", code);
    json_t *p = json_object();
    json_object_set_new(p, "type", json_string(type));
    json_object_set_new(p, "title", json_string(tly_http_reason(status)));
    json_object_set_new(p, "status", json_integer(status));
    json_object_set_new(p, "detail", json_string(detail));
    json_object_set_new(p, "code", json_string(code));
    if (errors != NULL)
        json_object_set(p, "errors", (json_t *)errors);
    char *s = tly_json_dump(p);
    json_decref(p);
    return s;
}

void
tly_http_send_problem(h2o_req_t *req, int status, const char *code, const char *detail, const json_t *errors)
{
    char *s = tly_http_problem_body(status, code, detail, errors);
    send_body(req, status, "application/problem+json", s, strlen(s));
    free(s);
}

void
tly_http_send_unavailable(h2o_req_t *req, int status, const char *code, const char *detail, int retry_after)
{
    char secs[16];
    snprintf(secs, sizeof(secs), "%d", retry_after);
    tly_http_add_header(req, "retry-after", secs);
    tly_http_send_problem(req, status, code, detail, NULL);
}

void
tly_http_field_error(json_t *errors, const char *field, const char *message)
{
    json_t *e = json_object();
    json_object_set_new(e, "field", json_string(field));
    json_object_set_new(e, "message", json_string(message));
    json_array_append_new(errors, e);
}

int
tly_http_path_segments(h2o_req_t *req, h2o_iovec_t *segs, int max)
{
    const char *p = req->path_normalized.base;
    size_t len = req->path_normalized.len;
    if (len < 4 || memcmp(p, "/v1/", 4) != 0)
        return -1;
    size_t i = 4;
    int n = 0;
    while (i < len) {
        size_t start = i;
        while (i < len && p[i] != '/')
            ++i;
        if (n == max)
            return max + 1; /* too many: no route has that many */
        segs[n++] = h2o_iovec_init(p + start, i - start);
        ++i;
    }
    return n;
}

bool
tly_http_seg_is(h2o_iovec_t seg, const char *s)
{
    return h2o_memis(seg.base, seg.len, s, strlen(s));
}

static bool
request_id_ok(h2o_iovec_t v)
{
    if (v.len == 0 || v.len > 128)
        return false;
    for (size_t i = 0; i < v.len; ++i) {
        char c = v.base[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

const char *
tly_http_request_id(h2o_req_t *req)
{
    h2o_iovec_t given = tly_http_header(req, "x-request-id");
    char *out;
    if (request_id_ok(given)) {
        out = h2o_mem_alloc_pool(&req->pool, given.len + 1);
        memcpy(out, given.base, given.len);
        out[given.len] = '\0';
    } else {
        tly_uuid_t id = tly_uuid_v4();
        out = h2o_mem_alloc_pool(&req->pool, TLY_UUID_STR_LEN + 1);
        tly_uuid_format(&id, out);
    }
    return out;
}

const char *
tly_http_allow(h2o_req_t *req, const char *own)
{
    h2o_iovec_t segs[3];
    int n = tly_http_path_segments(req, segs, 2);
    /* collections that are read on the query API and written on the command API */
    if (h2o_memis(req->path_normalized.base, req->path_normalized.len, H2O_STRLIT("/v1/accounts")) ||
        h2o_memis(req->path_normalized.base, req->path_normalized.len, H2O_STRLIT("/v1/transfers")) ||
        h2o_memis(req->path_normalized.base, req->path_normalized.len, H2O_STRLIT("/v1/webhook-endpoints")))
        return "GET, HEAD, POST";
    /* a webhook endpoint: read on the query API, changed and deleted on the command API */
    if (n == 2 && tly_http_seg_is(segs[0], "webhook-endpoints"))
        return "GET, HEAD, PATCH, DELETE";
    return own;
}
