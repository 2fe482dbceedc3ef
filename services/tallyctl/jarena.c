/* Bump-pointer arenas for jansson: see jarena.h. */
#include "jarena.h"

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#define CHUNK_BYTES ((size_t)1 << 20)
#define ALIGN 16 /* what malloc guarantees on x86-64, and jansson may store any type */

struct st_tly_ctl_jarena_chunk_t {
    tly_ctl_jarena_chunk_t *next;
    size_t cap;
    _Alignas(ALIGN) unsigned char mem[];
};

static _Thread_local tly_ctl_jarena_t *current;
static _Thread_local bool skipping;

static tly_ctl_jarena_chunk_t *
chunk_new(size_t cap)
{
    tly_ctl_jarena_chunk_t *c = malloc(sizeof(*c) + cap);
    if (c == NULL)
        abort();
    c->next = NULL;
    c->cap = cap;
    return c;
}

static void *
arena_alloc(tly_ctl_jarena_t *a, size_t size)
{
    size = (size + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    if (a->cur != NULL && a->used + size <= a->cur->cap) {
        void *p = a->cur->mem + a->used;
        a->used += size;
        return p;
    }
    /* the next kept chunk if it is big enough, else a new one after cur */
    tly_ctl_jarena_chunk_t *next = a->cur != NULL ? a->cur->next : a->chunks;
    if (next == NULL || next->cap < size) {
        tly_ctl_jarena_chunk_t *c = chunk_new(size > CHUNK_BYTES ? size : CHUNK_BYTES);
        c->next = next;
        if (a->cur != NULL)
            a->cur->next = c;
        else
            a->chunks = c;
        next = c;
    }
    a->cur = next;
    a->used = size;
    return next->mem;
}

static void *
jmalloc(size_t size)
{
    return current != NULL ? arena_alloc(current, size) : malloc(size);
}

static void
jfree(void *p)
{
    if (!skipping)
        free(p);
}

static pthread_once_t installed = PTHREAD_ONCE_INIT;

static void
install(void)
{
    json_set_alloc_funcs(jmalloc, jfree);
}

void
tly_ctl_jarena_install(void)
{
    pthread_once(&installed, install);
}

void
tly_ctl_jarena_use(tly_ctl_jarena_t *a)
{
    current = a;
    skipping = a != NULL; /* what the thread frees while parsing (a copy replaced by its upcast) is arena memory too */
}

void
tly_ctl_jarena_skip_frees(bool on)
{
    skipping = on;
}

void
tly_ctl_jarena_reset(tly_ctl_jarena_t *a)
{
    a->cur = NULL;
    a->used = 0;
}

bool
tly_ctl_jarena_owns(const tly_ctl_jarena_t *a, const void *p)
{
    for (const tly_ctl_jarena_chunk_t *c = a->chunks; c != NULL; c = c->next)
        if ((const unsigned char *)p >= c->mem && (const unsigned char *)p < c->mem + c->cap)
            return true;
    return false;
}

void
tly_ctl_jarena_free(tly_ctl_jarena_t *a)
{
    for (tly_ctl_jarena_chunk_t *c = a->chunks, *n; c != NULL; c = n) {
        n = c->next;
        free(c);
    }
    a->chunks = a->cur = NULL;
    a->used = 0;
}
