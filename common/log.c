/*
 * JSON-lines logger. Each line is built in a stack buffer and written with one
 * write(2), so lines from several threads never interleave.
 */
#include "tally/log.h"
#include "tally/names.h"
#include "tally/clock.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define LINE_MAX_BYTES 8192

static const char *log_service = "tally";
static tly_log_level_t log_min_level = TLY_LOG_INFO;
static const char *level_names[] = {"debug", "info", "warn", "error"};
static __thread char thread_trace[33];

static bool
lower_hex(const char *s, size_t n)
{
    bool nonzero = false;
    for (size_t i = 0; i < n; ++i) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
        nonzero = nonzero || s[i] != '0';
    }
    return nonzero;
}

bool
tly_log_trace_id_of(const char *tp, char *out)
{
    out[0] = '\0';
    if (tp == NULL)
        return false;
    size_t len = strlen(tp);
    if (len == 32 && lower_hex(tp, 32)) {
        memcpy(out, tp, 33);
        return true;
    }
    if (len != 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-' || !lower_hex(tp + 3, 32))
        return false;
    memcpy(out, tp + 3, 32);
    out[32] = '\0';
    return true;
}

void
tly_log_trace_set(const char *traceparent)
{
    tly_log_trace_id_of(traceparent, thread_trace);
}

const char *
tly_log_trace_id(void)
{
    return thread_trace;
}

void
tly_log_init(const char *service, tly_log_level_t level)
{
    log_service = service;
    log_min_level = level;
}

bool
tly_log_level_parse(const char *s, tly_log_level_t *out)
{
    int i = tly_name_find(level_names, 0, 4, s);
    if (i >= 0)
        *out = (tly_log_level_t)i;
    return i >= 0;
}

bool
tly_log_enabled(tly_log_level_t level)
{
    return level >= log_min_level;
}

typedef struct st_line_t {
    char buf[LINE_MAX_BYTES];
    size_t len;
} line_t;

static void
put_raw(line_t *l, const char *s, size_t n)
{
    if (l->len + n >= sizeof(l->buf) - 2)
        n = sizeof(l->buf) - 2 - l->len;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

/* Copies runs of characters that need no escaping at once: the access log
   line is on every request's path. */
static void
put_escaped(line_t *l, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    put_raw(l, "\"", 1);
    const unsigned char *p = (const unsigned char *)s;
    while (*p != '\0') {
        const unsigned char *run = p;
        while (*p >= 0x20 && *p != '"' && *p != '\\')
            ++p;
        put_raw(l, (const char *)run, (size_t)(p - run));
        if (*p == '\0')
            break;
        if (*p == '"' || *p == '\\') {
            char esc[2] = {'\\', (char)*p};
            put_raw(l, esc, 2);
        } else {
            char esc[6] = {'\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 0xf]};
            put_raw(l, esc, 6);
        }
        ++p;
    }
    put_raw(l, "\"", 1);
}

static void
put_field(line_t *l, const char *key, const char *value)
{
    put_raw(l, ",", 1);
    put_escaped(l, key);
    put_raw(l, ":", 1);
    put_escaped(l, value);
}

void
tly_logv(tly_log_level_t level, const char *msg, va_list ap)
{
    if (!tly_log_enabled(level))
        return;
    line_t l;
    char now[40];
    l.len = 0;
    tly_clock_format_rfc3339(tly_clock_now_us(), now, sizeof(now));
    put_raw(&l, "{\"time\":", 8);
    put_escaped(&l, now);
    put_field(&l, "level", level_names[level]);
    put_field(&l, "service", log_service);
    put_field(&l, "msg", msg);
    const char *key;
    bool traced = false;
    while ((key = va_arg(ap, const char *)) != NULL) {
        const char *value = va_arg(ap, const char *);
        if (value != NULL) {
            put_field(&l, key, value);
            traced = traced || strcmp(key, "trace_id") == 0;
        }
    }
    if (!traced && thread_trace[0] != '\0')
        put_field(&l, "trace_id", thread_trace);
    l.buf[l.len++] = '}';
    l.buf[l.len++] = '\n';
    ssize_t ignored = write(STDERR_FILENO, l.buf, l.len);
    (void)ignored;
}

void
tly_log(tly_log_level_t level, const char *msg, ...)
{
    va_list ap;
    va_start(ap, msg);
    tly_logv(level, msg, ap);
    va_end(ap);
}

void
tly_logf(tly_log_level_t level, const char *fmt, ...)
{
    if (!tly_log_enabled(level))
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    tly_log(level, msg, NULL);
}

void
tly_log_pq_notice(void *arg, const char *message)
{
    static const char *warn_prefixes[] = {"WARNING:", "ERROR:", "FATAL:", "PANIC:"};
    char msg[1024];
    size_t n = strlen(message);
    while (n > 0 && (message[n - 1] == '\n' || message[n - 1] == ' '))
        --n;
    snprintf(msg, sizeof(msg), "%.*s", (int)(n < sizeof(msg) - 1 ? n : sizeof(msg) - 1), message);
    tly_log_level_t level = TLY_LOG_INFO;
    for (size_t i = 0; i < sizeof(warn_prefixes) / sizeof(warn_prefixes[0]); ++i)
        if (strncmp(msg, warn_prefixes[i], strlen(warn_prefixes[i])) == 0)
            level = TLY_LOG_WARN;
    tly_log(level, msg, "component", "libpq", NULL);
}
