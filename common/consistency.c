/* Signed consistency tokens. See tally/consistency.h. */
#include "tally/consistency.h"
#include "tally/base64url.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <string.h>

#define TOKEN_VERSION 1
#define MAC_LEN 16
#define PAYLOAD_LEN (1 + 16 + 16 + 4 + 8)
#define RAW_LEN (PAYLOAD_LEN + MAC_LEN)

bool
tly_consistency_key(const char *secret, uint8_t key[TLY_CONSISTENCY_KEY_LEN])
{
    if (secret == NULL || secret[0] == '\0')
        return false;
    SHA256((const unsigned char *)secret, strlen(secret), key);
    return true;
}

static void
sign(const uint8_t *payload, const uint8_t key[TLY_CONSISTENCY_KEY_LEN], uint8_t mac[MAC_LEN])
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = sizeof(md);
    if (HMAC(EVP_sha256(), key, TLY_CONSISTENCY_KEY_LEN, payload, PAYLOAD_LEN, md, &mdlen) == NULL)
        memset(md, 0, sizeof(md)); /* never verifies: a zero tag is refused in decode */
    memcpy(mac, md, MAC_LEN);
}

static void
put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; --i, v >>= 8)
        p[i] = (uint8_t)(v & 0xff);
}

static uint64_t
get_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; ++i)
        v = v << 8 | p[i];
    return v;
}

void
tly_consistency_encode(const tly_consistency_t *t, const uint8_t key[TLY_CONSISTENCY_KEY_LEN], char *out)
{
    uint8_t raw[RAW_LEN];
    raw[0] = TOKEN_VERSION;
    memcpy(raw + 1, t->tenant.b, 16);
    memcpy(raw + 17, t->job.b, 16);
    put_be(raw + 33, (uint32_t)t->partition, 4);
    put_be(raw + 37, (uint64_t)t->offset, 8);
    sign(raw, key, raw + PAYLOAD_LEN);
    (void)tly_base64url_encode(raw, RAW_LEN, out);
}

tly_consistency_result_t
tly_consistency_decode(const char *text, size_t len, const uint8_t key[TLY_CONSISTENCY_KEY_LEN], const tly_uuid_t *tenant,
                       tly_consistency_t *out)
{
    static const uint8_t zero[MAC_LEN];
    uint8_t raw[RAW_LEN + 1], mac[MAC_LEN];
    if (len >= TLY_CONSISTENCY_TEXT_CAP || tly_base64url_decode(text, len, raw, sizeof(raw)) != RAW_LEN)
        return TLY_CONSISTENCY_INVALID;
    sign(raw, key, mac);
    if (CRYPTO_memcmp(mac, raw + PAYLOAD_LEN, MAC_LEN) != 0 || CRYPTO_memcmp(mac, zero, MAC_LEN) == 0 || raw[0] != TOKEN_VERSION)
        return TLY_CONSISTENCY_INVALID;
    if (memcmp(raw + 1, tenant->b, 16) != 0)
        return TLY_CONSISTENCY_OTHER_TENANT;
    memcpy(out->tenant.b, raw + 1, 16);
    memcpy(out->job.b, raw + 17, 16);
    out->partition = (int32_t)(uint32_t)get_be(raw + 33, 4);
    out->offset = (int64_t)get_be(raw + 37, 8);
    return TLY_CONSISTENCY_OK;
}
