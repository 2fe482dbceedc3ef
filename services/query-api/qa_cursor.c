/* Signed page cursors. See qa_cursor.h. */
#include "qa_cursor.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <string.h>

#define CURSOR_VERSION 1
#define MAC_LEN 32
#define PAYLOAD_LEN (1 + 8 + 16 + QA_CURSOR_HASH_LEN)
#define RAW_LEN (PAYLOAD_LEN + MAC_LEN)

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t
qa_base64url_encode(const uint8_t *in, size_t len, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64url[v >> 18 & 63];
        out[o++] = b64url[v >> 12 & 63];
        out[o++] = b64url[v >> 6 & 63];
        out[o++] = b64url[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = b64url[v >> 18 & 63];
        out[o++] = b64url[v >> 12 & 63];
        if (i + 1 < len)
            out[o++] = b64url[v >> 6 & 63];
    }
    out[o] = '\0';
    return o;
}

static int
b64val(char c)
{
    const char *p = c != '\0' ? strchr(b64url, c) : NULL;
    return p != NULL ? (int)(p - b64url) : -1;
}

int
qa_base64url_decode(const char *in, size_t len, uint8_t *out, size_t cap)
{
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    if (len % 4 == 1)
        return -1;
    for (size_t i = 0; i < len; ++i) {
        int v = b64val(in[i]);
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o == cap)
                return -1;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    /* leftover bits must be zero: one text per byte string */
    if ((acc & ((1u << bits) - 1)) != 0)
        return -1;
    return (int)o;
}

void
qa_cursor_filters_hash(const char *canonical, uint8_t out[QA_CURSOR_HASH_LEN])
{
    uint8_t md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)canonical, strlen(canonical), md);
    memcpy(out, md, QA_CURSOR_HASH_LEN);
}

static void
sign(const uint8_t *payload, const uint8_t *key, size_t keylen, uint8_t mac[MAC_LEN])
{
    unsigned int maclen = MAC_LEN;
    if (HMAC(EVP_sha256(), key, (int)keylen, payload, PAYLOAD_LEN, mac, &maclen) == NULL)
        memset(mac, 0, MAC_LEN); /* never verifies: HMAC rejects the zero tag below */
}

void
qa_cursor_encode(const qa_cursor_t *c, const uint8_t *key, size_t keylen, char *out)
{
    uint8_t raw[RAW_LEN];
    uint64_t t = (uint64_t)c->created_us;
    raw[0] = CURSOR_VERSION;
    for (int i = 0; i < 8; ++i)
        raw[1 + i] = (uint8_t)(t >> (56 - 8 * i));
    memcpy(raw + 9, c->id.b, 16);
    memcpy(raw + 25, c->filters, QA_CURSOR_HASH_LEN);
    sign(raw, key, keylen, raw + PAYLOAD_LEN);
    qa_base64url_encode(raw, RAW_LEN, out);
}

qa_cursor_result_t
qa_cursor_decode(const char *text, const uint8_t *key, size_t keylen, const uint8_t filters[QA_CURSOR_HASH_LEN], qa_cursor_t *out)
{
    uint8_t raw[RAW_LEN + 1], mac[MAC_LEN];
    static const uint8_t zero[MAC_LEN];
    if (qa_base64url_decode(text, strlen(text), raw, sizeof(raw)) != RAW_LEN)
        return QA_CURSOR_INVALID;
    sign(raw, key, keylen, mac);
    if (CRYPTO_memcmp(mac, raw + PAYLOAD_LEN, MAC_LEN) != 0 || CRYPTO_memcmp(mac, zero, MAC_LEN) == 0 || raw[0] != CURSOR_VERSION)
        return QA_CURSOR_INVALID;
    if (CRYPTO_memcmp(raw + 25, filters, QA_CURSOR_HASH_LEN) != 0)
        return QA_CURSOR_MISMATCH;
    uint64_t t = 0;
    for (int i = 0; i < 8; ++i)
        t = t << 8 | raw[1 + i];
    out->created_us = (int64_t)t;
    memcpy(out->id.b, raw + 9, 16);
    memcpy(out->filters, raw + 25, QA_CURSOR_HASH_LEN);
    return QA_CURSOR_OK;
}
