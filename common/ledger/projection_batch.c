/*
 * A projection batch's storage: its strings, its key maps and the batch
 * itself (projection_batch.h). projection.c folds events into it,
 * projection_sql.c writes it.
 */
#include "projection_batch.h"

#include <stdlib.h>
#include <string.h>

tly_projection__str_t
tly_projection__str_put(tly_projection_batch_t *b, const char *s)
{
    if (s == NULL)
        return 0;
    size_t n = strlen(s) + 1;
    tly_projection__strs_t *st = &b->strs;
    if (st->len + n > st->cap) {
        size_t cap = st->cap == 0 ? 16384 : st->cap;
        while (st->len + n > cap)
            cap *= 2;
        char *buf = realloc(st->buf, cap);
        if (buf == NULL)
            abort();
        st->buf = buf;
        st->cap = cap;
    }
    memcpy(st->buf + st->len, s, n);
    st->len += n;
    return st->len - n + 1;
}

const char *
tly_projection__str(const tly_projection_batch_t *b, tly_projection__str_t s)
{
    return s == 0 ? NULL : b->strs.buf + s - 1;
}

static size_t
map_slot(const tly_projection__map_t *m, const tly_uuid_t *id)
{
    uint64_t h;
    memcpy(&h, id->b + 8, sizeof(h)); /* v4 and v5 ids: random bits here */
    return (size_t)((h * 0x9e3779b97f4a7c15ULL) >> 17) & (m->cap - 1);
}

int
tly_projection__map_find(const tly_projection__map_t *m, const tly_uuid_t *id)
{
    if (m->cap == 0)
        return -1;
    for (size_t i = map_slot(m, id);; i = (i + 1) & (m->cap - 1)) {
        if (m->gen[i] != m->cur)
            return -1;
        if (memcmp(&m->keys[i], id, sizeof(*id)) == 0)
            return m->vals[i];
    }
}

static void
map_grow(tly_projection__map_t *m)
{
    tly_projection__map_t old = *m;
    m->cap = old.cap == 0 ? 1024 : old.cap * 2;
    m->keys = malloc(sizeof(*m->keys) * m->cap);
    m->vals = malloc(sizeof(*m->vals) * m->cap);
    m->gen = calloc(m->cap, sizeof(*m->gen));
    if (m->keys == NULL || m->vals == NULL || m->gen == NULL)
        abort();
    m->cur = 1;
    m->used = 0;
    for (size_t i = 0; i < old.cap; ++i)
        if (old.gen[i] == old.cur)
            tly_projection__map_put(m, &old.keys[i], old.vals[i]);
    free(old.keys);
    free(old.vals);
    free(old.gen);
}

void
tly_projection__map_put(tly_projection__map_t *m, const tly_uuid_t *id, int32_t val)
{
    if ((m->used + 1) * 2 > m->cap)
        map_grow(m);
    size_t i = map_slot(m, id);
    while (m->gen[i] == m->cur)
        i = (i + 1) & (m->cap - 1);
    m->gen[i] = m->cur;
    m->keys[i] = *id;
    m->vals[i] = val;
    m->used++;
}

static void
map_clear(tly_projection__map_t *m)
{
    m->used = 0;
    if (++m->cur == 0) { /* wrapped: really clear */
        if (m->gen != NULL)
            memset(m->gen, 0, sizeof(*m->gen) * m->cap);
        m->cur = 1;
    }
}

static void
map_free(tly_projection__map_t *m)
{
    free(m->keys);
    free(m->vals);
    free(m->gen);
}

tly_projection_batch_t *
tly_projection_batch_create(unsigned models)
{
    tly_projection_batch_t *b = calloc(1, sizeof(*b));
    if (b == NULL)
        abort();
    b->models = models;
    b->account_map.cur = b->job_map.cur = b->transfer_map.cur = 1;
    return b;
}

void
tly_projection_batch_reset(tly_projection_batch_t *b)
{
    b->nevents = b->naccounts = b->nledger = b->njobs = b->ntransfers = b->nsteps = 0;
    b->strs.len = 0;
    map_clear(&b->account_map);
    map_clear(&b->job_map);
    map_clear(&b->transfer_map);
}

void
tly_projection_batch_destroy(tly_projection_batch_t *b)
{
    if (b == NULL)
        return;
    map_free(&b->account_map);
    map_free(&b->job_map);
    map_free(&b->transfer_map);
    free(b->strs.buf);
    free(b->accounts);
    free(b->ledger);
    free(b->jobs);
    free(b->transfers);
    free(b->steps);
    tly_pgx_copy_free(&b->copy);
    for (int i = 0; i < TLY_PROJ_NARRAYS; ++i)
        tly_pg_array_free(&b->arr[i]);
    for (int i = 0; i < TLY_PROJ_NARRAYS; ++i)
        tly_pgx_barray_free(&b->barr[i]);
    free(b);
}

int
tly_projection_batch_count(const tly_projection_batch_t *b)
{
    return b->nevents;
}
