/*
 * Secrets at rest (webhook signing secrets): AES-256-GCM with keys from the
 * environment, bound to the row they belong to.
 *
 * TALLY_SECRET_KEYS holds one or more keys, "id:base64,id:base64" (id: 1 to
 * 16 of [a-z0-9], base64 of 32 random bytes); the first one seals, every one
 * opens. A sealed value is "enc:v1:<key id>:<base64 of 12-byte nonce,
 * ciphertext, 16-byte tag>"; the additional data is the owner's id (the
 * endpoint's uuid), so a sealed value copied to another row does not open.
 * A value without the "enc:" prefix is a plaintext one (written before
 * encryption, or with no key configured) and opens as itself.
 *
 * The keys are read from the environment once, on first use; rotation is
 * documented in docs/security.md.
 */
#ifndef TALLY_SECRETBOX_H
#define TALLY_SECRETBOX_H

#include <stdbool.h>
#include <stddef.h>

#define TLY_SECRETBOX_ENV "TALLY_SECRET_KEYS"
#define TLY_SECRETBOX_PREFIX "enc:v1:"
/* what a sealed secret of up to 64 bytes takes, with its NUL */
#define TLY_SECRETBOX_SEALED_MAX 160

/**
 * Loads the keys (once). 1: keys configured; 0: none (values are stored in
 * plaintext); -1: TALLY_SECRET_KEYS is malformed (`err` says how).
 */
int tly_secretbox_init(char *err, size_t errcap) __attribute__((warn_unused_result));

/** Replaces the keys with `spec` (the TALLY_SECRET_KEYS syntax; NULL or "": none). For tests; not thread-safe. */
int tly_secretbox_configure(const char *spec, char *err, size_t errcap) __attribute__((warn_unused_result));

/**
 * Seals `plain` for `owner` with the current key into `out` (`cap` at least
 * TLY_SECRETBOX_SEALED_MAX); with no key configured, copies `plain`. 0 on
 * success, -1 on a bad configuration or a short buffer.
 */
int tly_secretbox_seal(const char *plain, const char *owner, char *out, size_t cap) __attribute__((warn_unused_result));

/**
 * Opens a stored value of `owner` into `out`: a sealed one with the key it
 * names, a plaintext one as it is. -1 (with `err`) when the key is unknown or
 * the value was tampered with or belongs to another owner.
 */
int tly_secretbox_open(const char *stored, const char *owner, char *out, size_t cap, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/** True when `stored` is sealed with the current key (nothing to re-encrypt). */
bool tly_secretbox_is_current(const char *stored);

#endif
