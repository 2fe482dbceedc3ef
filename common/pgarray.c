/* PostgreSQL array literals. See tally/pgarray.h. */
#include "tally/pgarray.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Room for `more` bytes, the closing brace and the NUL. */
static void
array_reserve(tly_pg_array_t *a, size_t more)
{
    size_t need = a->len + more + 3;
    if (need <= a->cap)
        return;
    size_t c = a->cap == 0 ? 4096 : a->cap;
    while (need > c)
        c *= 2;
    char *p = realloc(a->buf, c);
    if (p == NULL)
        abort();
    a->buf = p;
    a->cap = c;
}

void
tly_pg_array_reset(tly_pg_array_t *a)
{
    a->len = 0;
    a->n = 0;
}

void
tly_pg_array_add(tly_pg_array_t *a, const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;
    array_reserve(a, 2 * n + 4);
    if (a->len == 0)
        a->buf[a->len++] = '{';
    if (a->n++ > 0)
        a->buf[a->len++] = ',';
    if (s == NULL) {
        memcpy(a->buf + a->len, "NULL", 4);
        a->len += 4;
        return;
    }
    a->buf[a->len++] = '"';
    for (size_t i = 0; i < n; ++i) {
        if (s[i] == '"' || s[i] == '\\')
            a->buf[a->len++] = '\\';
        a->buf[a->len++] = s[i];
    }
    a->buf[a->len++] = '"';
}

void
tly_pg_array_add_i64(tly_pg_array_t *a, int64_t v)
{
    char s[24];
    snprintf(s, sizeof(s), "%" PRId64, v);
    tly_pg_array_add(a, s);
}

const char *
tly_pg_array_text(tly_pg_array_t *a)
{
    array_reserve(a, 0);
    if (a->len == 0)
        a->buf[a->len++] = '{';
    a->buf[a->len] = '}';
    a->buf[a->len + 1] = '\0';
    return a->buf;
}

void
tly_pg_array_free(tly_pg_array_t *a)
{
    free(a->buf);
    *a = (tly_pg_array_t){0};
}
