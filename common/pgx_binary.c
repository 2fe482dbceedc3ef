/* PostgreSQL's binary COPY rows and binary arrays, built in memory. See tally/pgx_binary.h. */
#include "tally/pgx_binary.h"

#include <stdlib.h>
#include <string.h>

/* Grows *buf to at least `need` bytes, doubling from `first`; aborts when out of memory. */
static void
reserve(char **buf, size_t *cap, size_t need, size_t first)
{
    if (need <= *cap)
        return;
    size_t c = *cap == 0 ? first : *cap;
    while (need > c)
        c *= 2;
    char *p = realloc(*buf, c);
    if (p == NULL)
        abort();
    *buf = p;
    *cap = c;
}

/* --- COPY (FORMAT binary) data --------------------------------------------- */

#define PG_EPOCH_US 946684800000000LL /* 2000-01-01T00:00:00Z, the zero of PostgreSQL's binary timestamptz */

static void
copy_put(tly_pgx_copy_t *c, const void *p, size_t n)
{
    reserve(&c->buf, &c->cap, c->len + n, 1 << 16);
    memcpy(c->buf + c->len, p, n);
    c->len += n;
}

/* v in network byte order, n bytes */
static void
copy_put_be(tly_pgx_copy_t *c, uint64_t v, size_t n)
{
    uint8_t out[8];
    for (size_t i = 0; i < n; ++i)
        out[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
    copy_put(c, out, n);
}

/* A column: its length (-1 for NULL), then its bytes. */
static void
copy_field(tly_pgx_copy_t *c, const void *p, size_t n)
{
    copy_put_be(c, p != NULL ? (uint32_t)n : UINT32_MAX, 4);
    if (p != NULL)
        copy_put(c, p, n);
}

void
tly_pgx_copy_begin(tly_pgx_copy_t *c)
{
    static const char signature[] = "PGCOPY\n\377\r\n"; /* with its NUL: 11 bytes */
    c->len = 0;
    copy_put(c, signature, sizeof(signature));
    copy_put_be(c, 0, 8); /* flags, header extension length */
}

void
tly_pgx_copy_row(tly_pgx_copy_t *c, int nfields)
{
    copy_put_be(c, (uint16_t)nfields, 2);
}

void
tly_pgx_copy_uuid(tly_pgx_copy_t *c, const uint8_t *b)
{
    copy_field(c, b, 16);
}

void
tly_pgx_copy_text(tly_pgx_copy_t *c, const char *s)
{
    copy_field(c, s, s != NULL ? strlen(s) : 0);
}

void
tly_pgx_copy_i64(tly_pgx_copy_t *c, int64_t v)
{
    copy_put_be(c, 8, 4);
    copy_put_be(c, (uint64_t)v, 8);
}

void
tly_pgx_copy_time(tly_pgx_copy_t *c, int64_t unix_us)
{
    tly_pgx_copy_i64(c, unix_us - PG_EPOCH_US);
}

int
tly_pgx_copy_send(tly_pgx_copy_t *c, PGconn *conn, const char *what, const char *sql, char *err, size_t errcap)
{
    copy_put_be(c, UINT16_MAX, 2); /* the trailer: a row of -1 columns */
    return tly_pgx_copy(conn, what, sql, c->buf, c->len, err, errcap);
}

void
tly_pgx_copy_free(tly_pgx_copy_t *c)
{
    free(c->buf);
    *c = (tly_pgx_copy_t){0};
}

/* --- binary arrays -------------------------------------------------------- */

#define BARRAY_HEADER 20 /* ndim, flags, element type, then one dimension: its length and lower bound */

void
tly_pgx_barray_reset(tly_pgx_barray_t *a, uint32_t oid)
{
    a->data.len = 0;
    reserve(&a->data.buf, &a->data.cap, BARRAY_HEADER, 4096);
    a->data.len = BARRAY_HEADER; /* written by tly_pgx_barray_bytes, once the count is known */
    a->n = 0;
    a->hasnull = false;
    a->oid = oid;
}

void
tly_pgx_barray_uuid(tly_pgx_barray_t *a, const uint8_t *b)
{
    copy_field(&a->data, b, 16);
    a->hasnull = a->hasnull || b == NULL;
    a->n++;
}

void
tly_pgx_barray_text(tly_pgx_barray_t *a, const char *s)
{
    copy_field(&a->data, s, s != NULL ? strlen(s) : 0);
    a->hasnull = a->hasnull || s == NULL;
    a->n++;
}

void
tly_pgx_barray_i64(tly_pgx_barray_t *a, int64_t v)
{
    tly_pgx_copy_i64(&a->data, v);
    a->n++;
}

void
tly_pgx_barray_time(tly_pgx_barray_t *a, int64_t unix_us)
{
    tly_pgx_copy_time(&a->data, unix_us);
    a->n++;
}

const char *
tly_pgx_barray_bytes(tly_pgx_barray_t *a, int *len)
{
    if (a->data.len < BARRAY_HEADER)
        tly_pgx_barray_reset(a, a->oid); /* a zeroed struct: an empty array */
    size_t end = a->data.len;
    a->data.len = 0;
    if (a->n == 0) { /* no dimensions: the header's first 12 bytes only */
        copy_put_be(&a->data, 0, 4);
        copy_put_be(&a->data, 0, 4);
        copy_put_be(&a->data, a->oid, 4);
        *len = 12;
        a->data.len = end;
        return a->data.buf;
    }
    copy_put_be(&a->data, 1, 4);
    copy_put_be(&a->data, a->hasnull ? 1 : 0, 4);
    copy_put_be(&a->data, a->oid, 4);
    copy_put_be(&a->data, (uint32_t)a->n, 4);
    copy_put_be(&a->data, 1, 4);
    a->data.len = end;
    *len = (int)end;
    return a->data.buf;
}

void
tly_pgx_barray_free(tly_pgx_barray_t *a)
{
    tly_pgx_copy_free(&a->data);
    *a = (tly_pgx_barray_t){0};
}
