/* Wall and monotonic clocks, RFC 3339 formatting and strict parsing. */
#include "tally/clock.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int64_t
tly_clock_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t
tly_clock_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/*
 * Every log line formats the time: the date and time of day are kept per
 * thread for the current second, and only the microseconds are written.
 */
void
tly_clock_format_rfc3339(int64_t us, char *out, size_t cap)
{
    static __thread int64_t cached_sec = INT64_MIN;
    static __thread char cached[64]; /* "YYYY-MM-DDTHH:MM:SS." */
    int64_t secs = us / 1000000, frac = us % 1000000;
    if (frac < 0) {
        frac += 1000000;
        secs -= 1;
    }
    if (secs != cached_sec) {
        struct tm tm;
        time_t t = (time_t)secs;
        gmtime_r(&t, &tm);
        snprintf(cached, sizeof(cached), "%04d-%02d-%02dT%02d:%02d:%02d.", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                 tm.tm_min, tm.tm_sec);
        cached_sec = secs;
    }
    char buf[80];
    size_t n = strlen(cached);
    memcpy(buf, cached, n);
    for (int i = 5; i >= 0; --i) {
        buf[n + (size_t)i] = (char)('0' + frac % 10);
        frac /= 10;
    }
    buf[n + 6] = 'Z';
    size_t total = n + 7, copy = total < cap ? total : cap - 1;
    memcpy(out, buf, copy);
    out[copy] = '\0';
}

static bool
take_digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; ++i) {
        if (!isdigit((unsigned char)(*p)[i]))
            return false;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *out = v;
    return true;
}

static bool
expect(const char **p, char c)
{
    if (**p != c)
        return false;
    ++*p;
    return true;
}

static int
days_in_month(int year, int month)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return month == 2 && leap ? 29 : days[month - 1];
}

bool
tly_clock_parse_rfc3339(const char *s, int64_t *out_us)
{
    const char *p = s;
    int year, mon, day, hour, min, sec;
    if (!take_digits(&p, 4, &year) || !expect(&p, '-') || !take_digits(&p, 2, &mon) || !expect(&p, '-') ||
        !take_digits(&p, 2, &day))
        return false;
    if (*p != 'T' && *p != 't')
        return false;
    ++p;
    if (!take_digits(&p, 2, &hour) || !expect(&p, ':') || !take_digits(&p, 2, &min) || !expect(&p, ':') ||
        !take_digits(&p, 2, &sec))
        return false;
    if (mon < 1 || mon > 12 || day < 1 || day > days_in_month(year, mon) || hour > 23 || min > 59 || sec > 59)
        return false;
    int64_t frac_us = 0;
    if (*p == '.') {
        ++p;
        int ndigits = 0;
        while (isdigit((unsigned char)*p)) {
            if (ndigits < 6)
                frac_us = frac_us * 10 + (*p - '0');
            ++ndigits;
            ++p;
        }
        if (ndigits == 0 || ndigits > 9)
            return false;
        for (int i = ndigits; i < 6; ++i)
            frac_us *= 10;
    }
    int offset_min = 0;
    if (*p == 'Z' || *p == 'z') {
        ++p;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1, oh, om;
        ++p;
        if (!take_digits(&p, 2, &oh) || !expect(&p, ':') || !take_digits(&p, 2, &om) || oh > 23 || om > 59)
            return false;
        offset_min = sign * (oh * 60 + om);
    } else {
        return false;
    }
    if (*p != '\0')
        return false;
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    tm.tm_year = year - 1900;
    tm.tm_mon = mon - 1;
    tm.tm_mday = day;
    tm.tm_hour = hour;
    tm.tm_min = min;
    tm.tm_sec = sec;
    int64_t secs = (int64_t)timegm(&tm) - (int64_t)offset_min * 60;
    /* years 1 to 9999 in UTC: what PostgreSQL and RFC 3339 both take, so
       client input never reaches the database as a date it refuses */
    if (secs < TLY_CLOCK_MIN_S || secs > TLY_CLOCK_MAX_S)
        return false;
    *out_us = secs * 1000000 + frac_us;
    return true;
}
