/*
 * Structured logging: one JSON object per line on stderr.
 *
 * Only the service layer logs; library functions return errors instead.
 * Fields given as key/value pairs are escaped, so a value can never break the
 * line. Never pass a secret or an API key as a field.
 */
#ifndef TALLY_LOG_H
#define TALLY_LOG_H

#include <stdarg.h>
#include <stdbool.h>

typedef enum en_tly_log_level_t {
    TLY_LOG_DEBUG = 0,
    TLY_LOG_INFO,
    TLY_LOG_WARN,
    TLY_LOG_ERROR,
} tly_log_level_t;

/** Sets the service name written in every line and the minimum level. */
void tly_log_init(const char *service, tly_log_level_t level);
/** Parses "debug", "info", "warn" or "error"; returns false when unknown. */
bool tly_log_level_parse(const char *s, tly_log_level_t *out);
bool tly_log_enabled(tly_log_level_t level);

/**
 * Writes one line: {"time":..., "level":..., "service":..., "msg":..., k: v...}.
 * The variadic tail is pairs of `const char *key, const char *value`, ended by
 * NULL. A NULL value is skipped.
 */
void tly_log(tly_log_level_t level, const char *msg, ...);
void tly_logv(tly_log_level_t level, const char *msg, va_list ap);

/** printf-style message without fields, for simple cases. */
void tly_logf(tly_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
