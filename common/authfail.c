/* Failed-authentication throttling per source address. See tally/authfail.h. */
#include "tally/authfail.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct st_slot_t {
    tly_addr_t addr;
    bool used;
    int failures;
    bool reported;
    int64_t window_start_us;
} slot_t;

static slot_t slots[TLY_AUTHFAIL_SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int fail_limit = 20, window_s = 60;

#define MAX_PROXIES 16
static struct {
    tly_addr_t net;
    int bits;
} proxies[MAX_PROXIES];
static int nproxies;

void
tly_authfail_configure(int limit, int window)
{
    fail_limit = limit;
    window_s = window > 0 ? window : 1;
}

static size_t
hash_of(const tly_addr_t *a)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < sizeof(a->b); ++i)
        h = (h ^ a->b[i]) * 1099511628211ULL;
    return (size_t)(h % TLY_AUTHFAIL_SLOTS);
}

static bool
expired(const slot_t *s, int64_t now_us)
{
    return now_us - s->window_start_us >= (int64_t)window_s * 1000000;
}

/* The slot of `a` (probing 8 places), or when it has none and `create`, a free or expired one, else NULL. Under `lock`. */
static slot_t *
find(const tly_addr_t *a, int64_t now_us, bool create)
{
    size_t h = hash_of(a);
    slot_t *spare = NULL;
    for (size_t i = 0; i < 8; ++i) {
        slot_t *s = &slots[(h + i) % TLY_AUTHFAIL_SLOTS];
        if (s->used && memcmp(&s->addr, a, sizeof(*a)) == 0)
            return s;
        if (spare == NULL && (!s->used || expired(s, now_us)))
            spare = s;
    }
    if (!create || spare == NULL)
        return NULL; /* the neighbourhood is full of live windows: not counted rather than evicting one */
    memset(spare, 0, sizeof(*spare));
    spare->addr = *a;
    spare->used = true;
    spare->window_start_us = now_us;
    return spare;
}

int
tly_authfail_retry_after(const tly_addr_t *addr, int64_t now_us)
{
    int retry = 0;
    if (fail_limit <= 0)
        return 0;
    pthread_mutex_lock(&lock);
    slot_t *s = find(addr, now_us, false);
    if (s != NULL && !expired(s, now_us) && s->failures >= fail_limit) {
        int64_t left_us = (int64_t)window_s * 1000000 - (now_us - s->window_start_us);
        retry = (int)((left_us + 999999) / 1000000);
    }
    pthread_mutex_unlock(&lock);
    return retry;
}

bool
tly_authfail_record(const tly_addr_t *addr, int64_t now_us)
{
    bool crossed = false;
    if (fail_limit <= 0)
        return false;
    pthread_mutex_lock(&lock);
    slot_t *s = find(addr, now_us, true);
    if (s != NULL) {
        if (expired(s, now_us)) {
            s->failures = 0;
            s->reported = false;
            s->window_start_us = now_us;
        }
        ++s->failures;
        if (s->failures >= fail_limit && !s->reported)
            crossed = s->reported = true;
    }
    pthread_mutex_unlock(&lock);
    return crossed;
}

bool
tly_addr_from_sockaddr(const struct sockaddr *sa, tly_addr_t *out)
{
    memset(out, 0, sizeof(*out));
    if (sa->sa_family == AF_INET) {
        out->b[10] = out->b[11] = 0xff;
        memcpy(out->b + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        memcpy(out->b, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        return true;
    }
    return false;
}

bool
tly_addr_parse(const char *s, size_t len, tly_addr_t *out)
{
    char text[INET6_ADDRSTRLEN];
    while (len > 0 && (*s == ' ' || *s == '\t'))
        ++s, --len;
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        --len;
    if (len == 0 || len >= sizeof(text))
        return false;
    memcpy(text, s, len);
    text[len] = '\0';
    memset(out, 0, sizeof(*out));
    if (inet_pton(AF_INET, text, out->b + 12) == 1) {
        out->b[10] = out->b[11] = 0xff;
        return true;
    }
    return inet_pton(AF_INET6, text, out->b) == 1;
}

void
tly_addr_format(const tly_addr_t *addr, char *out)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(addr->b, mapped, sizeof(mapped)) == 0)
        inet_ntop(AF_INET, addr->b + 12, out, INET6_ADDRSTRLEN);
    else
        inet_ntop(AF_INET6, addr->b, out, INET6_ADDRSTRLEN);
}

bool
tly_trusted_proxies_set(const char *list)
{
    nproxies = 0;
    for (const char *p = list; *p != '\0';) {
        size_t n = strcspn(p, ",");
        const char *slash = memchr(p, '/', n);
        size_t alen = slash != NULL ? (size_t)(slash - p) : n;
        tly_addr_t a;
        if (nproxies == MAX_PROXIES || !tly_addr_parse(p, alen, &a))
            return false;
        bool v4 = memcmp(a.b, (const uint8_t[12]){0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}, 12) == 0;
        int bits = v4 ? 32 : 128;
        if (slash != NULL) {
            char *end;
            long v = strtol(slash + 1, &end, 10);
            if (end != p + n || v < 0 || v > bits)
                return false;
            bits = (int)v;
        }
        proxies[nproxies].net = a;
        proxies[nproxies].bits = v4 ? bits + 96 : bits;
        ++nproxies;
        p += n;
        if (*p == ',')
            ++p;
    }
    return true;
}

static bool
in_net(const tly_addr_t *a, const tly_addr_t *net, int bits)
{
    int whole = bits / 8, rest = bits % 8;
    if (memcmp(a->b, net->b, (size_t)whole) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a->b[whole] & mask) == (net->b[whole] & mask);
}

bool
tly_trusted_proxy(const tly_addr_t *addr)
{
    for (int i = 0; i < nproxies; ++i)
        if (in_net(addr, &proxies[i].net, proxies[i].bits))
            return true;
    return false;
}
