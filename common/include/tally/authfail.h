/*
 * Failed-authentication throttling per source address, shared by every
 * thread of one API process.
 *
 * Each address gets a fixed window: after `limit` failed authentications
 * (a key presented that is malformed, unknown, wrong, revoked or expired)
 * within `window_s` seconds, every request from that address is refused with
 * 429 and Retry-After until the window ends, valid keys included (answering
 * a valid key differently would tell a guesser when it hit). The table is
 * bounded (TLY_AUTHFAIL_SLOTS addresses; an address past its window is
 * reused first), so a flood of spoofed-looking sources costs fixed memory.
 *
 * Behind the gateway the source is the address the gateway saw: the last
 * X-Forwarded-For entry, trusted only when the peer is a trusted proxy.
 */
#ifndef TALLY_AUTHFAIL_H
#define TALLY_AUTHFAIL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#define TLY_AUTHFAIL_SLOTS 8192

typedef struct st_tly_addr_t {
    uint8_t b[16]; /* IPv4 as ::ffff:a.b.c.d */
} tly_addr_t;

/** Sets the limit (failures per window) and the window; 0 limit turns throttling off. Not thread-safe: call before serving. */
void tly_authfail_configure(int limit, int window_s);

/** Seconds until `addr` may try again (0: not throttled) at monotonic time `now_us`. */
int tly_authfail_retry_after(const tly_addr_t *addr, int64_t now_us);

/** Counts one failure of `addr`; true exactly once per window, when the address reaches the limit (log it then). */
bool tly_authfail_record(const tly_addr_t *addr, int64_t now_us);

/** `sa` as a tly_addr_t; false for a family that is not IPv4 or IPv6. */
bool tly_addr_from_sockaddr(const struct sockaddr *sa, tly_addr_t *out);
/** Parses a textual IPv4 or IPv6 address (surrounding spaces allowed). */
bool tly_addr_parse(const char *s, size_t len, tly_addr_t *out);
/** Formats the address (IPv4 dotted for mapped ones); `out` holds 46 bytes. */
void tly_addr_format(const tly_addr_t *addr, char *out);

/**
 * Parses "127.0.0.1/32,10.0.0.0/8,::1" into the trusted proxy list (at most
 * 16 entries; a bare address is a /32 or /128). False on a malformed entry.
 */
bool tly_trusted_proxies_set(const char *list);
/** True when `addr` is in the trusted proxy list. */
bool tly_trusted_proxy(const tly_addr_t *addr);

#endif
