/* A set of event ids. See idset.h. */
#include "idset.h"

#include <stdlib.h>
#include <string.h>

static uint64_t
id_hash(const uint8_t *k)
{
    uint64_t h;
    memcpy(&h, k + 8, sizeof(h)); /* v4 and v5 ids: random bits here */
    return h * 0x9e3779b97f4a7c15ULL;
}

static void
grow(tly_ctl_idset_t *s)
{
    tly_ctl_idset_t old = *s;
    s->cap = old.cap == 0 ? 1 << 16 : old.cap * 2;
    s->keys = malloc(s->cap * 16);
    s->state = calloc(s->cap, 1);
    if (s->keys == NULL || s->state == NULL)
        abort();
    s->used = 0;
    for (size_t i = 0; i < old.cap; ++i)
        if (old.state[i] == 1)
            tly_ctl_idset_add(s, old.keys[i]);
    free(old.keys);
    free(old.state);
}

bool
tly_ctl_idset_find(const tly_ctl_idset_t *s, const uint8_t *k, size_t *slot)
{
    if (s->cap == 0)
        return false;
    for (size_t i = id_hash(k) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (s->state[i] == 0)
            return false;
        if (s->state[i] == 1 && memcmp(s->keys[i], k, 16) == 0) {
            *slot = i;
            return true;
        }
    }
}

void
tly_ctl_idset_add(tly_ctl_idset_t *s, const uint8_t *k)
{
    if ((s->used + 1) * 2 > s->cap)
        grow(s);
    size_t i = id_hash(k) & (s->cap - 1);
    while (s->state[i] == 1)
        i = (i + 1) & (s->cap - 1);
    memcpy(s->keys[i], k, 16);
    if (s->state[i] == 0)
        s->used++;
    s->state[i] = 1;
}

void
tly_ctl_idset_del(tly_ctl_idset_t *s, const uint8_t *k)
{
    size_t slot;
    if (tly_ctl_idset_find(s, k, &slot))
        s->state[slot] = 2;
}
