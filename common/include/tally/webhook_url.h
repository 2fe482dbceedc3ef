/*
 * Where a webhook may be sent (SSRF rules), shared by the command API, which
 * checks a URL when an endpoint is created or changed, and the worker's
 * webhooks role, which checks every address it is about to connect to (after
 * DNS resolution, so a name that later resolves to a private address is still
 * refused; redirects are never followed).
 *
 * Refused unless `allow_private`: loopback (127/8, ::1), private (10/8,
 * 172.16/12, 192.168/16, fc00::/7), link-local (169.254/16 including the
 * 169.254.169.254 metadata address, fe80::/10), carrier-grade NAT
 * (100.64/10), unspecified, multicast, broadcast and reserved ranges, and the
 * IPv4-mapped/compatible IPv6 forms of all of them. The scheme must be https,
 * or http when `allow_private` is set (tests and local stacks).
 */
#ifndef TALLY_WEBHOOK_URL_H
#define TALLY_WEBHOOK_URL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/** True when connecting to `addr` is allowed. */
bool tly_webhook_addr_allowed(const struct sockaddr *addr, socklen_t len, bool allow_private);

/**
 * Checks a URL as a client gave it: absolute http(s), a host, no userinfo, at
 * most 2048 bytes; an IP-literal host must pass tly_webhook_addr_allowed, and
 * so must every address a host name resolves to when `resolve` is true.
 * Returns 0, or -1 with a sentence for the client in `err`.
 */
int tly_webhook_url_check(const char *url, bool allow_private, bool resolve, char *err, size_t errcap);

#endif
