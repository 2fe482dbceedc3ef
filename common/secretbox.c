/* AES-256-GCM for secrets at rest. See tally/secretbox.h. */
#include "tally/secretbox.h"
#include "tally/uuid.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_LEN 32
#define NONCE_LEN 12
#define TAG_LEN 16
#define MAX_KEYS 8
#define KEY_ID_MAX 16

typedef struct st_box_key_t {
    char id[KEY_ID_MAX + 1];
    unsigned char key[KEY_LEN];
} box_key_t;

static box_key_t keys[MAX_KEYS];
static int nkeys;
static int init_result;
static char init_err[160];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static bool
id_ok(const char *s, size_t n)
{
    if (n == 0 || n > KEY_ID_MAX)
        return false;
    for (size_t i = 0; i < n; ++i)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9')))
            return false;
    return true;
}

/* Standard base64 of exactly `n` bytes into `out`; false otherwise. */
static bool
decode_exact(const char *s, size_t len, unsigned char *out, size_t n)
{
    unsigned char buf[256];
    if (len == 0 || len % 4 != 0 || len / 4 * 3 > sizeof(buf))
        return false;
    int got = EVP_DecodeBlock(buf, (const unsigned char *)s, (int)len);
    int pad = (s[len - 1] == '=') + (len > 1 && s[len - 2] == '=');
    bool ok = got >= 0 && (size_t)(got - pad) == n;
    if (ok)
        memcpy(out, buf, n);
    OPENSSL_cleanse(buf, sizeof(buf));
    return ok;
}

static void
load_spec(const char *env)
{
    nkeys = 0;
    OPENSSL_cleanse(keys, sizeof(keys));
    if (env == NULL || env[0] == '\0') {
        init_result = 0;
        return;
    }
    for (const char *p = env; *p != '\0';) {
        size_t n = strcspn(p, ","), idlen = strcspn(p, ":");
        if (nkeys == MAX_KEYS || idlen >= n || !id_ok(p, idlen) ||
            !decode_exact(p + idlen + 1, n - idlen - 1, keys[nkeys].key, KEY_LEN)) {
            snprintf(init_err, sizeof(init_err), "invalid %s: entry %d is not id:base64-of-32-bytes (at most %d keys)",
                     TLY_SECRETBOX_ENV, nkeys + 1, MAX_KEYS);
            init_result = -1;
            return;
        }
        memcpy(keys[nkeys].id, p, idlen);
        keys[nkeys].id[idlen] = '\0';
        ++nkeys;
        p += n;
        if (*p == ',')
            ++p;
    }
    init_result = 1;
}

static void
load(void)
{
    load_spec(getenv(TLY_SECRETBOX_ENV));
}

int
tly_secretbox_configure(const char *spec, char *err, size_t errcap)
{
    pthread_once(&once, load);
    load_spec(spec);
    if (init_result < 0)
        snprintf(err, errcap, "%s", init_err);
    return init_result;
}

int
tly_secretbox_init(char *err, size_t errcap)
{
    pthread_once(&once, load);
    if (init_result < 0)
        snprintf(err, errcap, "%s", init_err);
    return init_result;
}

/* AES-256-GCM of `in` (`len` bytes) with `aad`: encrypt (`out` gets len bytes, `tag` is written) or decrypt (`tag` is checked). */
static bool
gcm(bool enc, const unsigned char *key, const unsigned char *nonce, const char *aad, const unsigned char *in, int len,
    unsigned char *out, unsigned char *tag)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0, fin = 0;
    bool ok =
        c != NULL && EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) == 1 &&
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) == 1 &&
        EVP_CipherInit_ex(c, NULL, NULL, key, nonce, enc) == 1 &&
        EVP_CipherUpdate(c, NULL, &n, (const unsigned char *)aad, (int)strlen(aad)) == 1 &&
        EVP_CipherUpdate(c, out, &n, in, len) == 1 && (enc || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) == 1) &&
        EVP_CipherFinal_ex(c, out + n, &fin) == 1 && (!enc || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) == 1);
    EVP_CIPHER_CTX_free(c);
    return ok;
}

int
tly_secretbox_seal(const char *plain, const char *owner, char *out, size_t cap)
{
    char err[200];
    size_t len = strlen(plain);
    unsigned char raw[NONCE_LEN + 64 + TAG_LEN];
    int init = tly_secretbox_init(err, sizeof(err));
    if (init < 0)
        return -1;
    if (init == 0) {
        if (len + 1 > cap)
            return -1;
        memcpy(out, plain, len + 1);
        return 0;
    }
    size_t header = strlen(TLY_SECRETBOX_PREFIX) + strlen(keys[0].id) + 1;
    size_t total = NONCE_LEN + len + TAG_LEN;
    if (len > 64 || header + 4 * ((total + 2) / 3) + 1 > cap)
        return -1;
    tly_random_bytes(raw, NONCE_LEN);
    if (!gcm(true, keys[0].key, raw, owner, (const unsigned char *)plain, (int)len, raw + NONCE_LEN, raw + NONCE_LEN + len))
        return -1;
    snprintf(out, cap, "%s%s:", TLY_SECRETBOX_PREFIX, keys[0].id);
    EVP_EncodeBlock((unsigned char *)out + header, raw, (int)total);
    OPENSSL_cleanse(raw, sizeof(raw));
    return 0;
}

static int
fail(char *err, size_t errcap, const char *msg)
{
    snprintf(err, errcap, "%s", msg);
    return -1;
}

int
tly_secretbox_open(const char *stored, const char *owner, char *out, size_t cap, char *err, size_t errcap)
{
    const size_t plen = strlen(TLY_SECRETBOX_PREFIX);
    unsigned char raw[NONCE_LEN + 64 + TAG_LEN], plain[64];
    if (strncmp(stored, "enc:", 4) != 0) {
        if (strlen(stored) + 1 > cap)
            return fail(err, errcap, "the stored secret is too long");
        memcpy(out, stored, strlen(stored) + 1);
        return 0;
    }
    if (tly_secretbox_init(err, errcap) < 0)
        return -1;
    if (strncmp(stored, TLY_SECRETBOX_PREFIX, plen) != 0)
        return fail(err, errcap, "the stored secret is sealed in an unknown format");
    const char *id = stored + plen, *colon = strchr(id, ':');
    const box_key_t *k = NULL;
    for (int i = 0; colon != NULL && i < nkeys; ++i)
        if (strlen(keys[i].id) == (size_t)(colon - id) && memcmp(keys[i].id, id, (size_t)(colon - id)) == 0)
            k = &keys[i];
    if (k == NULL)
        return fail(err, errcap, "the stored secret is sealed with a key that TALLY_SECRET_KEYS does not hold");
    const char *b64 = colon + 1;
    size_t blen = strlen(b64);
    int pad = blen > 0 ? (b64[blen - 1] == '=') + (blen > 1 && b64[blen - 2] == '=') : 0;
    if (blen == 0 || blen % 4 != 0 || blen / 4 * 3 > sizeof(raw))
        return fail(err, errcap, "the stored secret is malformed");
    int got = EVP_DecodeBlock(raw, (const unsigned char *)b64, (int)blen) - pad;
    if (got < NONCE_LEN + TAG_LEN || got > (int)sizeof(raw))
        return fail(err, errcap, "the stored secret is malformed");
    int len = got - NONCE_LEN - TAG_LEN;
    if ((size_t)len + 1 > cap || !gcm(false, k->key, raw, owner, raw + NONCE_LEN, len, plain, raw + NONCE_LEN + len))
        return fail(err, errcap, "the stored secret does not open (tampered with, or another row's)");
    memcpy(out, plain, (size_t)len);
    out[len] = '\0';
    OPENSSL_cleanse(plain, sizeof(plain));
    return 0;
}

bool
tly_secretbox_is_current(const char *stored)
{
    char err[200];
    if (tly_secretbox_init(err, sizeof(err)) != 1)
        return strncmp(stored, "enc:", 4) != 0;
    size_t plen = strlen(TLY_SECRETBOX_PREFIX), idlen = strlen(keys[0].id);
    return strncmp(stored, TLY_SECRETBOX_PREFIX, plen) == 0 && strncmp(stored + plen, keys[0].id, idlen) == 0 &&
           stored[plen + idlen] == ':';
}
