/* Signed page cursors. See qa_cursor.h. */
#include "qa_cursor.h"
#include "tally/base64url.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <string.h>

#define CURSOR_VERSION 1
#define MAC_LEN 32
#define PAYLOAD_LEN (1 + 8 + 16 + QA_CURSOR_HASH_LEN)
#define RAW_LEN (PAYLOAD_LEN + MAC_LEN)

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
    tly_base64url_encode(raw, RAW_LEN, out);
}

qa_cursor_result_t
qa_cursor_decode(const char *text, const uint8_t *key, size_t keylen, const uint8_t filters[QA_CURSOR_HASH_LEN], qa_cursor_t *out)
{
    uint8_t raw[RAW_LEN + 1], mac[MAC_LEN];
    static const uint8_t zero[MAC_LEN];
    if (tly_base64url_decode(text, strlen(text), raw, sizeof(raw)) != RAW_LEN)
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
