/* A set of 16-byte event ids: open addressing with tombstones; zeroed is empty. Aborts when out of memory. */
#ifndef TALLY_CTL_IDSET_H
#define TALLY_CTL_IDSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct st_tly_ctl_idset_t {
    uint8_t (*keys)[16];
    uint8_t *state; /* 0 empty, 1 used, 2 deleted */
    size_t cap, used;
} tly_ctl_idset_t;

bool tly_ctl_idset_find(const tly_ctl_idset_t *s, const uint8_t *k, size_t *slot);
void tly_ctl_idset_add(tly_ctl_idset_t *s, const uint8_t *k);
void tly_ctl_idset_del(tly_ctl_idset_t *s, const uint8_t *k);

#endif
