/*
 * What the security suite's tests share: keys made through tallyctl with
 * chosen scopes, tier and tenant; a raw TCP request for what libcurl would
 * refuse to send (two Authorization headers, two Content-Lengths, HTTP/0.9).
 */
#ifndef TLY_SEC_SUPPORT_H
#define TLY_SEC_SUPPORT_H

#include <stdbool.h>
#include <stddef.h>

/** A new tenant named `prefix`-<pid>-<n>; its id into `tenant`. */
void sec_tenant(const char *prefix, char *tenant, size_t cap);

/**
 * A key of `tenant` through tallyctl with `scopes` ("read,write"), `tier`
 * (NULL: standard) and `extra` tallyctl options (NULL: none), usable by both
 * APIs when this returns.
 */
void sec_key(const char *tenant, const char *scopes, const char *tier, const char *extra, char *key, size_t cap);

/** A new tenant (sec_tenant) and a standard-tier key of it with `scopes` (sec_key). */
void sec_tenant_key(const char *prefix, const char *scopes, char *tenant, size_t tcap, char *key, size_t kcap);

/** `tallyctl tenants quota TENANT <options>`, e.g. "--api-keys 3". */
void sec_quota(const char *tenant, const char *options);

/** Waits (bounded) until both APIs accept `key`. */
void sec_wait_usable(const char *key);

/**
 * Sends `raw` as it is to host:port of `url` (http://host:port) and reads the
 * answer until the peer closes or `timeout_ms` pass; returns the status code
 * of the first response line (0 when none), the whole answer in `out`.
 */
int sec_raw(const char *url, const char *raw, size_t len, char *out, size_t cap, int timeout_ms);
/** Like sec_raw, but a refused connection is status -1 instead of a test failure. */
int sec_raw_try(const char *url, const char *raw, size_t len, char *out, size_t cap, int timeout_ms);

/** Connects to `url` and sends `raw` without reading: a request held open; returns the socket. */
int sec_open(const char *url, const char *raw, size_t len);
/** Reads the answer on a socket from sec_open (bounded); its status code, 0 when none. */
int sec_read_status(int fd, int timeout_ms);
/** Closes what sec_open returned. */
void sec_close(int fd);

#endif
