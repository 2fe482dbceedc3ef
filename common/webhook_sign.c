/* Standard Webhooks signatures. See tally/webhook_sign.h. */
#include "tally/webhook_sign.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int
tly_webhook_sign(const char *secret, const char *msg_id, int64_t timestamp, const char *body, size_t len, char *out, size_t cap)
{
    static const char prefix[] = "whsec_";
    unsigned char key[256], mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    char head[128], b64[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
    if (strncmp(secret, prefix, sizeof(prefix) - 1) != 0)
        return -1;
    const char *enc = secret + sizeof(prefix) - 1;
    size_t enclen = strlen(enc);
    if (enclen == 0 || enclen % 4 != 0 || enclen / 4 * 3 > sizeof(key))
        return -1;
    int keylen = EVP_DecodeBlock(key, (const unsigned char *)enc, (int)enclen);
    if (keylen < 0)
        return -1;
    keylen -= (enc[enclen - 1] == '=') + (enc[enclen - 2] == '='); /* EVP_DecodeBlock counts the padding */
    int hn = snprintf(head, sizeof(head), "%s.%lld.", msg_id, (long long)timestamp);
    if (hn < 0 || (size_t)hn >= sizeof(head))
        return -1;
    /* HMAC() over one buffer: the HMAC_CTX calls are deprecated in OpenSSL 3 */
    char *msg = malloc((size_t)hn + len + 1);
    if (msg == NULL)
        abort();
    memcpy(msg, head, (size_t)hn);
    memcpy(msg + hn, body, len);
    bool ok = HMAC(EVP_sha256(), key, keylen, (const unsigned char *)msg, (size_t)hn + len, mac, &maclen) != NULL;
    free(msg);
    OPENSSL_cleanse(key, sizeof(key));
    if (!ok)
        return -1;
    EVP_EncodeBlock((unsigned char *)b64, mac, (int)maclen);
    int on = snprintf(out, cap, "v1,%s", b64);
    return on > 0 && (size_t)on < cap ? 0 : -1;
}

int
tly_webhook_signature_header(const char *secret, const char *previous, const char *msg_id, int64_t timestamp, const char *body,
                             size_t len, char *out, size_t cap)
{
    char prev[TLY_WEBHOOK_SIGNATURE_MAX];
    if (tly_webhook_sign(secret, msg_id, timestamp, body, len, out, cap) != 0)
        return -1;
    if (previous == NULL || tly_webhook_sign(previous, msg_id, timestamp, body, len, prev, sizeof(prev)) != 0)
        return 0;
    size_t n = strlen(out);
    int m = snprintf(out + n, cap - n, " %s", prev);
    if (m < 0 || (size_t)m >= cap - n)
        out[n] = '\0'; /* no room: the current signature alone */
    return 0;
}
