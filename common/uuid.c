/* UUID generation and parsing (RFC 9562 versions 4 and 5). */
#include "tally/uuid.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

void
tly_random_bytes(void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0)
            abort(); /* no entropy means no safe ids or keys: stop */
        p += n;
        len -= (size_t)n;
    }
}

tly_uuid_t
tly_uuid_v4(void)
{
    tly_uuid_t u;
    tly_random_bytes(u.b, sizeof(u.b));
    u.b[6] = (uint8_t)((u.b[6] & 0x0f) | 0x40);
    u.b[8] = (uint8_t)((u.b[8] & 0x3f) | 0x80);
    return u;
}

tly_uuid_t
tly_uuid_v5(const tly_uuid_t *ns, const void *name, size_t len)
{
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) != 1 || EVP_DigestUpdate(ctx, ns->b, sizeof(ns->b)) != 1 ||
        EVP_DigestUpdate(ctx, name, len) != 1 || EVP_DigestFinal_ex(ctx, digest, &dlen) != 1)
        abort(); /* only on out-of-memory */
    EVP_MD_CTX_free(ctx);
    tly_uuid_t u;
    memcpy(u.b, digest, sizeof(u.b));
    u.b[6] = (uint8_t)((u.b[6] & 0x0f) | 0x50);
    u.b[8] = (uint8_t)((u.b[8] & 0x3f) | 0x80);
    return u;
}

/* A hex digit's value + 1; 0 for every other byte (so one table look-up checks and converts). */
static const uint8_t hex1[256] = {
    ['0'] = 1,  ['1'] = 2,  ['2'] = 3,  ['3'] = 4,  ['4'] = 5,  ['5'] = 6,  ['6'] = 7,  ['7'] = 8,
    ['8'] = 9,  ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
    ['A'] = 11, ['B'] = 12, ['C'] = 13, ['D'] = 14, ['E'] = 15, ['F'] = 16,
};

/* Where each byte's two hex digits start in "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx". */
static const uint8_t digit_at[16] = {0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34};

/*
 * Every id of every event goes through here (the worker's consumers and a
 * replay parse several per event), so it is a table look-up per digit with
 * one test at the end rather than a branch per character. strnlen first:
 * the loop reads all 36 bytes, which must not run past a shorter string.
 */
bool
tly_uuid_parse(const char *s, tly_uuid_t *out)
{
    if (strnlen(s, TLY_UUID_STR_LEN + 1) != TLY_UUID_STR_LEN || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-')
        return false;
    const unsigned char *u = (const unsigned char *)s;
    unsigned bad = 0;
    tly_uuid_t r;
    for (size_t i = 0; i < 16; ++i) {
        unsigned hi = hex1[u[digit_at[i]]], lo = hex1[u[digit_at[i] + 1]];
        bad |= (hi == 0) | (lo == 0);
        r.b[i] = (uint8_t)((hi - 1) << 4 | ((lo - 1) & 0x0f));
    }
    if (bad)
        return false;
    *out = r;
    return true;
}

void
tly_uuid_format(const tly_uuid_t *u, char *out)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < 16; ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[u->b[i] >> 4];
        out[o++] = hex[u->b[i] & 0xf];
    }
    out[o] = '\0';
}

bool
tly_uuid_is_nil(const tly_uuid_t *u)
{
    static const tly_uuid_t nil;
    return memcmp(u->b, nil.b, sizeof(u->b)) == 0;
}
