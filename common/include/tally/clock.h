/*
 * Wall-clock time in microseconds since the Unix epoch, and its RFC 3339
 * form with microseconds, as the event envelope carries it.
 */
#ifndef TALLY_CLOCK_H
#define TALLY_CLOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

int64_t tly_clock_now_us(void);
/** Monotonic clock in microseconds, for deadlines and latencies. */
int64_t tly_clock_mono_us(void);

/** Writes "2026-11-22T10:00:00.123456Z"; `cap` must be at least 28. */
void tly_clock_format_rfc3339(int64_t us, char *out, size_t cap);

/* The instants tly_clock_parse_rfc3339 takes: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z (and its fraction). */
#define TLY_CLOCK_MIN_S (-62135596800LL)
#define TLY_CLOCK_MAX_S 253402300799LL

/**
 * Parses RFC 3339 ("2026-11-22T10:00:00Z", optional fraction up to 9 digits,
 * "Z" or "+hh:mm"/"-hh:mm"). Returns false on anything else, and on an
 * instant outside years 1 to 9999 (UTC).
 */
bool tly_clock_parse_rfc3339(const char *s, int64_t *out_us) __attribute__((warn_unused_result));

#endif
