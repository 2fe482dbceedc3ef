/*
 * Arenas for the JSON a replay parses. A replay builds a jansson tree for
 * each event's data (a dozen small allocations an event), keeps it until its
 * batch is written, then frees the whole batch at once: malloc and free were
 * a quarter of tallyctl's CPU on a 1M-event replay (perf). While a thread
 * has an arena (tly_ctl_jarena_use), jansson allocates from it by bumping a
 * pointer; frees of that memory are skipped while tly_ctl_jarena_skip_frees
 * is on, and the batch's arenas are emptied in one go afterwards.
 *
 * The rule that keeps this safe: JSON allocated from an arena is only
 * released inside a skip-frees window on a thread, and only before the
 * arena is reset. Everything else goes to malloc and free as usual, so
 * jansson works unchanged for the rest of tallyctl.
 */
#ifndef TALLY_CTL_JARENA_H
#define TALLY_CTL_JARENA_H

#include <stdbool.h>
#include <stddef.h>

typedef struct st_tly_ctl_jarena_chunk_t tly_ctl_jarena_chunk_t;

typedef struct st_tly_ctl_jarena_t {
    tly_ctl_jarena_chunk_t *chunks; /* the one in use first; the rest are kept for reuse */
    tly_ctl_jarena_chunk_t *cur;
    size_t used; /* bytes used in cur */
} tly_ctl_jarena_t;

/** Makes jansson allocate through this module (once per process; idempotent). */
void tly_ctl_jarena_install(void);
/** The calling thread allocates JSON from `a` until called again with NULL. */
void tly_ctl_jarena_use(tly_ctl_jarena_t *a);
/** While on, the calling thread's jansson frees are skipped (the memory is an arena's). */
void tly_ctl_jarena_skip_frees(bool on);
/** Empties `a` for reuse, keeping its memory. Nothing allocated from it may be used afterwards. */
void tly_ctl_jarena_reset(tly_ctl_jarena_t *a);
/** True when `p` points into memory of `a` (tests). */
bool tly_ctl_jarena_owns(const tly_ctl_jarena_t *a, const void *p);
/** Gives `a`'s memory back. */
void tly_ctl_jarena_free(tly_ctl_jarena_t *a);

#endif
