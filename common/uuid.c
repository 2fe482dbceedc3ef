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

static int
hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

bool
tly_uuid_parse(const char *s, tly_uuid_t *out)
{
    size_t bi = 0;
    for (size_t i = 0; i < TLY_UUID_STR_LEN; i += 2) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
            ++i;
        }
        int hi = hexval(s[i]), lo = hi < 0 ? -1 : hexval(s[i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out->b[bi++] = (uint8_t)(hi << 4 | lo);
    }
    return s[TLY_UUID_STR_LEN] == '\0';
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
