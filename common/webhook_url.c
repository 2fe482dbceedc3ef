/* SSRF rules for webhook URLs and the addresses they resolve to. */
#include "tally/webhook_url.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define URL_MAX 2048

typedef struct st_v4_range_t {
    uint32_t net;
    int bits;
} v4_range_t;

/*
 * IPv4: the IANA IPv4 Special-Purpose Address Registry (RFC 6890 and its
 * updates), plus multicast and the reserved 240/4. Every range there is
 * refused, including those the registry marks globally reachable (AS112,
 * AMT, 6to4 relays): a webhook has no business with any of them.
 */
static const v4_range_t v4_refused[] = {
    {0x00000000, 8},  /* 0/8 "this network", includes 0.0.0.0 */
    {0x0a000000, 8},  /* 10/8 private */
    {0x64400000, 10}, /* 100.64/10 shared address space (carrier-grade NAT) */
    {0x7f000000, 8},  /* 127/8 loopback */
    {0xa9fe0000, 16}, /* 169.254/16 link-local, cloud metadata */
    {0xac100000, 12}, /* 172.16/12 private */
    {0xc0000000, 24}, /* 192.0.0/24 IETF protocol assignments (DS-Lite, NAT64 discovery, ...) */
    {0xc0000200, 24}, /* 192.0.2/24 TEST-NET-1 */
    {0xc01fc400, 24}, /* 192.31.196/24 AS112-v4 */
    {0xc034c100, 24}, /* 192.52.193/24 AMT */
    {0xc0586300, 24}, /* 192.88.99/24 6to4 relay anycast */
    {0xc0a80000, 16}, /* 192.168/16 private */
    {0xc0af3000, 24}, /* 192.175.48/24 direct delegation AS112 */
    {0xc6120000, 15}, /* 198.18/15 benchmarking */
    {0xc6336400, 24}, /* 198.51.100/24 TEST-NET-2 */
    {0xcb007100, 24}, /* 203.0.113/24 TEST-NET-3 */
    {0xe0000000, 4},  /* 224/4 multicast */
    {0xf0000000, 4},  /* 240/4 reserved, includes 255.255.255.255 */
};

static bool
v4_allowed(uint32_t a)
{
    for (size_t i = 0; i < sizeof(v4_refused) / sizeof(v4_refused[0]); ++i) {
        uint32_t mask = v4_refused[i].bits == 0 ? 0 : 0xffffffffu << (32 - v4_refused[i].bits);
        if ((a & mask) == v4_refused[i].net)
            return false;
    }
    return true;
}

typedef struct st_v6_range_t {
    uint8_t net[16];
    int bits;
} v6_range_t;

/*
 * IPv6, deny by default: only global unicast (2000::/3) may be reached, and
 * within it none of the IANA IPv6 Special-Purpose Address Registry's blocks.
 * Every form that embeds an IPv4 address is refused outright rather than
 * judged by the IPv4 inside (a URL can name the IPv4 address itself):
 * ::ffff:a.b.c.d (mapped), ::ffff:0:a.b.c.d (translated), ::a.b.c.d
 * (compatible) and 64:ff9b::/96, 64:ff9b:1::/48 (NAT64) are outside
 * 2000::/3; 2001::/32 (Teredo) and 2002::/16 (6to4) are listed below.
 */
static const v6_range_t v6_refused[] = {
    {{0x20, 0x01}, 23},                   /* 2001::/23 IETF protocol assignments: Teredo, benchmarking, ORCHID, ... */
    {{0x20, 0x01, 0x0d, 0xb8}, 32},       /* 2001:db8::/32 documentation */
    {{0x20, 0x02}, 16},                   /* 2002::/16 6to4: embeds an IPv4 address */
    {{0x26, 0x20, 0x00, 0x4f, 0x80}, 48}, /* 2620:4f:8000::/48 direct delegation AS112 */
    {{0x3f, 0xff}, 20},                   /* 3fff::/20 documentation (RFC 9637) */
};

static bool
v6_in(const uint8_t *b, const v6_range_t *r)
{
    int whole = r->bits / 8, rest = r->bits % 8;
    if (memcmp(b, r->net, (size_t)whole) != 0)
        return false;
    return rest == 0 || (b[whole] & (uint8_t)(0xff << (8 - rest))) == (r->net[whole] & (uint8_t)(0xff << (8 - rest)));
}

static bool
v6_allowed(const uint8_t *b)
{
    if ((b[0] & 0xe0) != 0x20) /* not 2000::/3: loopback, unspecified, embedded IPv4, NAT64, ULA, link-local, multicast, ... */
        return false;
    for (size_t i = 0; i < sizeof(v6_refused) / sizeof(v6_refused[0]); ++i)
        if (v6_in(b, &v6_refused[i]))
            return false;
    return true;
}

bool
tly_webhook_addr_allowed(const struct sockaddr *addr, socklen_t len, bool allow_private)
{
    if (addr == NULL)
        return false;
    if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        if (allow_private)
            return true;
        return v4_allowed(ntohl(((const struct sockaddr_in *)addr)->sin_addr.s_addr));
    }
    if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        if (allow_private)
            return true;
        return v6_allowed(((const struct sockaddr_in6 *)addr)->sin6_addr.s6_addr);
    }
    return false; /* AF_UNIX and anything else: never */
}

/* Splits "scheme://authority/..." into the scheme length and host (without brackets) and port. */
typedef struct st_url_parts_t {
    bool https;
    char host[256];
    bool host_is_v6;
    char port[8];
} url_parts_t;

static int
fail(char *err, size_t errcap, const char *msg)
{
    snprintf(err, errcap, "%s", msg);
    return -1;
}

static int
split(const char *url, url_parts_t *p, char *err, size_t errcap)
{
    memset(p, 0, sizeof(*p));
    size_t len = strlen(url);
    if (len == 0 || len > URL_MAX)
        return fail(err, errcap, "url must be 1 to 2048 characters");
    for (size_t i = 0; i < len; ++i)
        if ((unsigned char)url[i] <= 0x20 || (unsigned char)url[i] >= 0x7f)
            return fail(err, errcap, "url must not contain spaces, control or non-ASCII characters");
    const char *rest;
    if (strncasecmp(url, "https://", 8) == 0) {
        p->https = true;
        rest = url + 8;
    } else if (strncasecmp(url, "http://", 7) == 0) {
        rest = url + 7;
    } else {
        return fail(err, errcap, "url must be an absolute https URL");
    }
    size_t alen = strcspn(rest, "/?#");
    if (memchr(rest, '@', alen) != NULL)
        return fail(err, errcap, "url must not contain user information");
    const char *host = rest, *hend, *port = NULL;
    if (alen > 0 && rest[0] == '[') {
        const char *close = memchr(rest, ']', alen);
        if (close == NULL)
            return fail(err, errcap, "url has an unterminated IPv6 address");
        host = rest + 1;
        hend = close;
        p->host_is_v6 = true;
        if (close + 1 < rest + alen) {
            if (close[1] != ':')
                return fail(err, errcap, "url has a malformed authority");
            port = close + 2;
        }
    } else {
        const char *colon = memchr(rest, ':', alen);
        hend = colon != NULL ? colon : rest + alen;
        if (colon != NULL)
            port = colon + 1;
    }
    size_t hlen = (size_t)(hend - host);
    if (hlen == 0 || hlen >= sizeof(p->host))
        return fail(err, errcap, "url must name a host");
    memcpy(p->host, host, hlen);
    while (!p->host_is_v6 && hlen > 0 && p->host[hlen - 1] == '.')
        p->host[--hlen] = '\0'; /* "localhost." and "localhost.." are localhost */
    if (hlen == 0)
        return fail(err, errcap, "url must name a host");
    if (!p->host_is_v6) {
        for (size_t i = 0; i < hlen; ++i)
            if (!isalnum((unsigned char)host[i]) && host[i] != '-' && host[i] != '.')
                return fail(err, errcap, "url host must be a DNS name or an IP address");
    }
    if (port != NULL) {
        size_t plen = (size_t)(rest + alen - port);
        if (plen == 0 || plen > 5 || strspn(port, "0123456789") < plen)
            return fail(err, errcap, "url port must be a number from 1 to 65535");
        memcpy(p->port, port, plen);
        long v = strtol(p->port, NULL, 10);
        if (v < 1 || v > 65535)
            return fail(err, errcap, "url port must be a number from 1 to 65535");
    } else {
        snprintf(p->port, sizeof(p->port), "%s", p->https ? "443" : "80");
    }
    return 0;
}

/* Parses a literal the way a connecting client would (including inet_aton's short and octal IPv4 forms). */
static bool
literal(const url_parts_t *p, struct sockaddr_storage *ss, socklen_t *sslen)
{
    memset(ss, 0, sizeof(*ss));
    if (p->host_is_v6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        char h[256];
        snprintf(h, sizeof(h), "%s", p->host);
        char *zone = strchr(h, '%');
        if (zone != NULL)
            *zone = '\0';
        if (inet_pton(AF_INET6, h, &s6->sin6_addr) != 1)
            return false;
        s6->sin6_family = AF_INET6;
        *sslen = sizeof(*s6);
        return true;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    if (inet_aton(p->host, &s4->sin_addr) == 0)
        return false;
    s4->sin_family = AF_INET;
    *sslen = sizeof(*s4);
    return true;
}

int
tly_webhook_url_check(const char *url, bool allow_private, bool resolve, char *err, size_t errcap)
{
    url_parts_t p;
    if (url == NULL)
        return fail(err, errcap, "url is required");
    if (split(url, &p, err, errcap) != 0)
        return -1;
    if (p.host_is_v6 && strchr(p.host, '%') != NULL)
        return fail(err, errcap, "url must not use an IPv6 zone");
    struct sockaddr_storage ss;
    socklen_t sslen;
    bool is_literal = literal(&p, &ss, &sslen);
    if (p.host_is_v6 && !is_literal)
        return fail(err, errcap, "url has a malformed IPv6 address");
    if (!p.https && !allow_private)
        return fail(err, errcap, "url must use https");
    if (allow_private)
        return 0;
    if (is_literal) {
        if (!tly_webhook_addr_allowed((const struct sockaddr *)&ss, sslen, false))
            return fail(err, errcap, "url points to a private, loopback, link-local or reserved address");
        return 0;
    }
    size_t hlen = strlen(p.host);
    const char *tail = hlen >= 10 ? p.host + hlen - 10 : "";
    if (strcasecmp(p.host, "localhost") == 0 || strcasecmp(tail, ".localhost") == 0 ||
        (hlen >= 9 && strcasecmp(p.host + hlen - 9, ".internal") == 0) || strchr(p.host, '.') == NULL)
        return fail(err, errcap, "url must name a public host");
    if (!resolve)
        return 0;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(p.host, p.port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errcap, "url host could not be resolved: %s", gai_strerror(rc));
        return -1;
    }
    int ret = 0;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        if (!tly_webhook_addr_allowed(ai->ai_addr, ai->ai_addrlen, false)) {
            ret = fail(err, errcap, "url host resolves to a private, loopback, link-local or reserved address");
            break;
        }
    }
    freeaddrinfo(res);
    return ret;
}
