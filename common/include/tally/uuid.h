/*
 * UUIDs: random (v4) for new ids, name-based (v5) for ids that must be the same
 * every time they are derived (outcome events from their request event).
 */
#ifndef TALLY_UUID_H
#define TALLY_UUID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TLY_UUID_STR_LEN 36

typedef struct st_tly_uuid_t {
    uint8_t b[16];
} tly_uuid_t;

/** A random version 4 UUID from the kernel's CSPRNG. */
tly_uuid_t tly_uuid_v4(void);
/** A version 5 UUID: SHA-1 of namespace and name. Deterministic. */
tly_uuid_t tly_uuid_v5(const tly_uuid_t *ns, const void *name, size_t len);
/** Parses the canonical lower- or upper-case 8-4-4-4-12 form only. */
bool tly_uuid_parse(const char *s, tly_uuid_t *out) __attribute__((warn_unused_result));
/** Writes 36 characters and a NUL into `out` (at least 37 bytes). */
void tly_uuid_format(const tly_uuid_t *u, char *out);
bool tly_uuid_is_nil(const tly_uuid_t *u);
/** Fills `buf` with `len` bytes from the kernel's CSPRNG; aborts if it cannot. */
void tly_random_bytes(void *buf, size_t len);

#endif
