/*
 * The query API's answers: ETag and If-None-Match (304), gzip for bodies over
 * 1 KiB when the client accepts it, and the 503 of a failed read.
 */
#include "query_internal.h"
#include "tally/http.h"
#include "tally/json.h"
#include "tally/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

void
qa_op_destroy(query_op_t *op)
{
    if (op->dispose_guard != NULL)
        *op->dispose_guard = NULL;
    tly_api_req_finish(&op->api);
    free(op);
}

bool
qa_gzip(const char *in, size_t len, char **out, size_t *outlen)
{
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    /* 15 + 16: a gzip wrapper, not zlib's */
    if (deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return false;
    size_t cap = deflateBound(&zs, (uLong)len);
    char *buf = malloc(cap);
    if (buf == NULL)
        abort();
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)len;
    zs.next_out = (Bytef *)buf;
    zs.avail_out = (uInt)cap;
    int rc = deflate(&zs, Z_FINISH);
    deflateEnd(&zs);
    if (rc != Z_STREAM_END) {
        free(buf);
        return false;
    }
    *out = buf;
    *outlen = zs.total_out;
    return true;
}

static bool
wants_gzip(h2o_req_t *req, size_t len)
{
    h2o_iovec_t ae = tly_http_header(req, "accept-encoding");
    return len > QA_GZIP_MIN && ae.base != NULL && qa_accepts_gzip(ae.base, ae.len);
}

void
qa_send_json(query_op_t *op, const char *text, size_t text_len, const char *etag)
{
    h2o_req_t *req = op->api.req;
    char weak[96], *gz = NULL;
    size_t gzlen = 0;
    if (req == NULL)
        return;
    /* PostgreSQL writes {"id" : "x"}; both APIs answer in tly_json_dump's style, {"id":"x"} */
    char *body = h2o_mem_alloc_pool(&req->pool, text_len + 1);
    size_t len = tly_json_compact(text, text_len, body);
    bool compress = wants_gzip(req, len);
    if (compress)
        snprintf(weak, sizeof(weak), "W/%s", etag);
    tly_http_add_header(req, "etag", compress ? weak : etag);
    if (len > QA_GZIP_MIN)
        tly_http_add_header(req, "vary", "accept-encoding");
    h2o_iovec_t inm = tly_http_header(req, "if-none-match");
    if (inm.base != NULL && qa_etag_matches(inm.base, inm.len, etag)) {
        tly_api_send(&op->api, 304, NULL, "", 0);
        return;
    }
    if (compress && qa_gzip(body, len, &gz, &gzlen)) {
        tly_http_add_header(req, "content-encoding", "gzip");
        tly_api_send(&op->api, 200, "application/json", gz, gzlen);
        free(gz);
        return;
    }
    if (compress) /* zlib failed: send the identity body; the weak tag still names the same content */
        tly_log(TLY_LOG_WARN, "could not compress response", "request_id", op->api.request_id, NULL);
    tly_api_send(&op->api, 200, "application/json", body, len);
}

void
qa_read_failed(query_op_t *op, PGresult *res, const char *err)
{
    tly_api_db_failed(&op->api, res, err, "the read models cannot be reached right now");
}
