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

/**
 * Sets the trace this thread is working for: every later line of this thread
 * carries "trace_id" (unless the line gives one itself) until it is cleared
 * with NULL or "". Takes a W3C traceparent ("00-<trace id>-<span>-<flags>")
 * or a bare 32-hex trace id; anything else clears it.
 */
void tly_log_trace_set(const char *traceparent);
/** The trace id set on this thread, or "" (thread-local storage). */
const char *tly_log_trace_id(void);
/** Writes the 32-hex trace id of a valid traceparent to `out` (33 bytes); false and "" when invalid. */
bool tly_log_trace_id_of(const char *traceparent, char *out);

/**
 * A libpq notice processor (PQsetNoticeProcessor(conn, tly_log_pq_notice,
 * NULL)): libpq's own messages, e.g. "FATAL: terminating connection due to
 * administrator command" when the server stops, as JSON lines instead of raw
 * text on stderr. Warn level for WARNING, ERROR, FATAL and PANIC, else info.
 */
void tly_log_pq_notice(void *arg, const char *message);

/** printf-style message without fields, for simple cases. */
void tly_logf(tly_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
