/* API key format, generation, hashing and scope sets. */
#include "tally/auth.h"
#include "tally/uuid.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char base32_alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
static const char base64url_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static bool
all_in(const char *s, size_t n, const char *alphabet)
{
    for (size_t i = 0; i < n; ++i)
        if (s[i] == '\0' || strchr(alphabet, s[i]) == NULL)
            return false;
    return true;
}

bool
tly_key_parse(const char *key, size_t len, tly_key_parts_t *out)
{
    const size_t plen = sizeof(TLY_KEY_PREFIX) - 1;
    if (len != TLY_KEY_LEN || memcmp(key, TLY_KEY_PREFIX, plen) != 0 || key[plen + TLY_KEY_ID_LEN] != '_')
        return false;
    const char *id = key + plen, *secret = id + TLY_KEY_ID_LEN + 1;
    if (!all_in(id, TLY_KEY_ID_LEN, base32_alphabet) || !all_in(secret, TLY_KEY_SECRET_LEN, base64url_alphabet))
        return false;
    memcpy(out->id, id, TLY_KEY_ID_LEN);
    out->id[TLY_KEY_ID_LEN] = '\0';
    memcpy(out->secret, secret, TLY_KEY_SECRET_LEN);
    out->secret[TLY_KEY_SECRET_LEN] = '\0';
    return true;
}

void
tly_key_generate(tly_key_parts_t *parts, char *key_out)
{
    uint8_t raw[TLY_KEY_ID_LEN + TLY_KEY_SECRET_LEN];
    tly_random_bytes(raw, sizeof(raw));
    /* one random byte per character: 8 bits → 5 (id) or 6 (secret) bits, no bias
       since both alphabet sizes divide 256 */
    for (size_t i = 0; i < TLY_KEY_ID_LEN; ++i)
        parts->id[i] = base32_alphabet[raw[i] % 32];
    parts->id[TLY_KEY_ID_LEN] = '\0';
    for (size_t i = 0; i < TLY_KEY_SECRET_LEN; ++i)
        parts->secret[i] = base64url_alphabet[raw[TLY_KEY_ID_LEN + i] % 64];
    parts->secret[TLY_KEY_SECRET_LEN] = '\0';
    snprintf(key_out, TLY_KEY_LEN + 1, "%s%s_%s", TLY_KEY_PREFIX, parts->id, parts->secret);
}

/* Fetched once: an implicit fetch per EVP_Digest call was a tenth of the
   query API's instructions per request (callgrind). */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void
sha256_fetch(void)
{
    if ((sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL)) == NULL)
        abort();
}

void
tly_key_hash(const char *secret, uint8_t out[TLY_KEY_HASH_LEN])
{
    unsigned int n = 0;
    pthread_once(&sha256_once, sha256_fetch);
    if (EVP_Digest(secret, strlen(secret), out, &n, sha256_md, NULL) != 1 || n != TLY_KEY_HASH_LEN)
        abort(); /* only on out-of-memory */
}

bool
tly_key_hash_equal(const uint8_t a[TLY_KEY_HASH_LEN], const uint8_t b[TLY_KEY_HASH_LEN])
{
    return CRYPTO_memcmp(a, b, TLY_KEY_HASH_LEN) == 0;
}

static const struct {
    const char *name;
    int bit;
} scope_names[] = {{"read", TLY_SCOPE_READ}, {"write", TLY_SCOPE_WRITE}, {"admin", TLY_SCOPE_ADMIN}};
#define NSCOPES (sizeof(scope_names) / sizeof(scope_names[0]))

int
tly_scope_bit(const char *name, size_t len)
{
    for (size_t i = 0; i < NSCOPES; ++i)
        if (strlen(scope_names[i].name) == len && memcmp(scope_names[i].name, name, len) == 0)
            return scope_names[i].bit;
    return 0;
}

int
tly_scopes_parse(const char *s)
{
    int scopes = 0;
    const char *p = s;
    if (*p == '{')
        ++p;
    while (*p != '\0' && *p != '}') {
        size_t n = strcspn(p, ",}");
        int bit = tly_scope_bit(p, n);
        if (bit == 0)
            return -1;
        scopes |= bit;
        p += n;
        if (*p == ',')
            ++p;
    }
    return scopes;
}

void
tly_scopes_names(int scopes, char *out, size_t cap)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < NSCOPES; ++i)
        if ((scopes & scope_names[i].bit) && used < cap)
            used += (size_t)snprintf(out + used, cap - used, "%s%s", used > 0 ? ", " : "", scope_names[i].name);
}

void
tly_scopes_format_pg(int scopes, char *out, size_t cap)
{
    snprintf(out, cap, "{%s%s%s%s%s}", scopes & TLY_SCOPE_READ ? "read" : "",
             (scopes & TLY_SCOPE_READ) && (scopes & (TLY_SCOPE_WRITE | TLY_SCOPE_ADMIN)) ? "," : "",
             scopes & TLY_SCOPE_WRITE ? "write" : "", (scopes & TLY_SCOPE_WRITE) && (scopes & TLY_SCOPE_ADMIN) ? "," : "",
             scopes & TLY_SCOPE_ADMIN ? "admin" : "");
}
