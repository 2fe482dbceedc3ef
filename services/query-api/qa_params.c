/* Query strings, list filters and request headers. See qa_params.h. */
#include "qa_params.h"
#include "tally/clock.h"
#include "tally/currency.h"
#include "tally/http.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* --- query strings ------------------------------------------------------- */

static int
hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes [p, end) into buf at *used, NUL-terminated; NULL on bad input. */
static const char *
decode(const char *p, const char *end, char *buf, size_t bufcap, size_t *used)
{
    char *out = buf + *used, *start = out;
    for (; p < end; ++p) {
        if ((size_t)(out - buf) + 2 > bufcap)
            return NULL;
        char c = *p;
        if (c == '%') {
            int hi, lo;
            if (end - p < 3 || (hi = hexval(p[1])) < 0 || (lo = hexval(p[2])) < 0)
                return NULL;
            c = (char)(hi * 16 + lo);
            p += 2;
        }
        if (c == '\0')
            return NULL;
        *out++ = c;
    }
    if ((size_t)(out - buf) + 1 > bufcap)
        return NULL;
    *out++ = '\0';
    *used = (size_t)(out - buf);
    return start;
}

int
qa_query_split(const char *q, size_t len, qa_pair_t *pairs, size_t max, char *buf, size_t bufcap)
{
    const char *p = q, *end = q + len;
    size_t n = 0, used = 0;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp != NULL ? amp : end;
        if (stop > p) {
            const char *eq = memchr(p, '=', (size_t)(stop - p));
            const char *name_end = eq != NULL ? eq : stop;
            if (n == max)
                return -1;
            if ((pairs[n].name = decode(p, name_end, buf, bufcap, &used)) == NULL ||
                (pairs[n].value = decode(eq != NULL ? eq + 1 : stop, stop, buf, bufcap, &used)) == NULL)
                return -1;
            ++n;
        }
        p = stop + 1;
    }
    return (int)n;
}

/* --- list filters -------------------------------------------------------- */

typedef enum en_param_t { P_LIMIT, P_CURSOR, P_STATUS, P_CURRENCY, P_KIND, P_AFTER, P_BEFORE, P_AS_OF } param_t;

typedef struct st_param_def_t {
    const char *name;
    param_t param;
} param_def_t;

static const param_def_t account_params[] = {
    {"limit", P_LIMIT},       {"cursor", P_CURSOR},       {"status", P_STATUS},
    {"currency", P_CURRENCY}, {"created_after", P_AFTER}, {"created_before", P_BEFORE},
};
static const param_def_t entry_params[] = {
    {"limit", P_LIMIT}, {"cursor", P_CURSOR}, {"kind", P_KIND}, {"after", P_AFTER}, {"before", P_BEFORE}, {"as_of", P_AS_OF},
};

static const param_def_t *
find_param(qa_list_t list, const char *name)
{
    const param_def_t *defs = list == QA_LIST_ACCOUNTS ? account_params : entry_params;
    size_t n = list == QA_LIST_ACCOUNTS ? sizeof(account_params) / sizeof(account_params[0])
                                        : sizeof(entry_params) / sizeof(entry_params[0]);
    for (size_t i = 0; i < n; ++i)
        if (strcmp(defs[i].name, name) == 0)
            return &defs[i];
    return NULL;
}

static bool
parse_limit(const char *v, int *out)
{
    size_t len = strlen(v);
    if (len == 0 || len > 3)
        return false;
    int n = 0;
    for (size_t i = 0; i < len; ++i) {
        if (!isdigit((unsigned char)v[i]))
            return false;
        n = n * 10 + (v[i] - '0');
    }
    if (n < 1 || n > QA_LIMIT_MAX)
        return false;
    *out = n;
    return true;
}

static bool
is_kind(const char *v)
{
    size_t len = strlen(v);
    if (len == 0 || len > 32)
        return false;
    for (size_t i = 0; i < len; ++i)
        if (!(islower((unsigned char)v[i]) || v[i] == '_'))
            return false;
    return true;
}

/* Checks one parameter's value and stores it; the message when it is bad. */
static const char *
set_param(qa_list_query_t *q, param_t p, const char *v)
{
    switch (p) {
    case P_LIMIT:
        return parse_limit(v, &q->limit) ? NULL : "must be an integer from 1 to 100";
    case P_CURSOR:
        if (v[0] == '\0' || strlen(v) >= sizeof(q->cursor))
            return "must be a cursor given by a previous page";
        snprintf(q->cursor, sizeof(q->cursor), "%s", v);
        return NULL;
    case P_STATUS:
        if (strcmp(v, "open") != 0 && strcmp(v, "frozen") != 0 && strcmp(v, "closed") != 0)
            return "must be one of open, frozen, closed";
        snprintf(q->status, sizeof(q->status), "%s", v);
        return NULL;
    case P_CURRENCY:
        if (!tly_currency_valid(v))
            return "must be an ISO 4217 currency code";
        snprintf(q->currency, sizeof(q->currency), "%s", v);
        return NULL;
    case P_KIND:
        if (!is_kind(v))
            return "must be an entry kind such as deposit or withdrawal";
        snprintf(q->kind, sizeof(q->kind), "%s", v);
        return NULL;
    case P_AFTER:
        q->has_after = tly_clock_parse_rfc3339(v, &q->after_us);
        return q->has_after ? NULL : "must be an RFC 3339 date-time";
    case P_BEFORE:
        q->has_before = tly_clock_parse_rfc3339(v, &q->before_us);
        return q->has_before ? NULL : "must be an RFC 3339 date-time";
    case P_AS_OF:
        q->has_as_of = tly_clock_parse_rfc3339(v, &q->as_of_us);
        return q->has_as_of ? NULL : "must be an RFC 3339 date-time";
    }
    return "is not supported";
}

bool
qa_list_query_parse(qa_list_t list, const qa_pair_t *pairs, size_t n, qa_list_query_t *out, json_t *errors)
{
    size_t before = json_array_size(errors);
    unsigned seen = 0;
    memset(out, 0, sizeof(*out));
    out->list = list;
    out->limit = QA_LIMIT_DEFAULT;
    for (size_t i = 0; i < n; ++i) {
        const param_def_t *def = find_param(list, pairs[i].name);
        const char *message = NULL;
        if (def == NULL)
            message = "is not a parameter of this endpoint";
        else if ((seen & (1u << def->param)) != 0)
            message = "is given more than once";
        else
            message = set_param(out, def->param, pairs[i].value);
        if (def != NULL)
            seen |= 1u << def->param;
        if (message != NULL)
            tly_http_field_error(errors, pairs[i].name, message);
    }
    return json_array_size(errors) == before;
}

void
qa_list_query_canonical(const qa_list_query_t *q, const char *scope, char *out, size_t cap)
{
    snprintf(out, cap, "%s\n%s\nstatus=%s\ncurrency=%s\nkind=%s\nafter=%s%lld\nbefore=%s%lld\nas_of=%s%lld",
             q->list == QA_LIST_ACCOUNTS ? "accounts" : "entries", scope, q->status, q->currency, q->kind, q->has_after ? "" : "-",
             q->has_after ? (long long)q->after_us : 0LL, q->has_before ? "" : "-", q->has_before ? (long long)q->before_us : 0LL,
             q->has_as_of ? "" : "-", q->has_as_of ? (long long)q->as_of_us : 0LL);
}

/* Appends "&name=value" with the value percent-encoded where needed. */
static void
append_param(char *out, size_t cap, const char *name, const char *value)
{
    size_t len = strlen(out);
    int n = snprintf(out + len, cap > len ? cap - len : 0, "%s%s=", len > 0 ? "&" : "", name);
    if (n < 0 || (len += (size_t)n) >= cap)
        return;
    for (const char *p = value; *p != '\0' && len + 4 < cap; ++p) {
        unsigned char c = (unsigned char)*p;
        if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || c == ':')
            out[len++] = (char)c;
        else
            len += (size_t)snprintf(out + len, cap - len, "%%%02X", c);
    }
    out[len < cap ? len : cap - 1] = '\0';
}

void
qa_list_query_next(const qa_list_query_t *q, const char *cursor, char *out, size_t cap)
{
    char t[40], limit[8];
    bool accounts = q->list == QA_LIST_ACCOUNTS;
    out[0] = '\0';
    if (q->status[0] != '\0')
        append_param(out, cap, "status", q->status);
    if (q->currency[0] != '\0')
        append_param(out, cap, "currency", q->currency);
    if (q->kind[0] != '\0')
        append_param(out, cap, "kind", q->kind);
    if (q->has_after) {
        tly_clock_format_rfc3339(q->after_us, t, sizeof(t));
        append_param(out, cap, accounts ? "created_after" : "after", t);
    }
    if (q->has_before) {
        tly_clock_format_rfc3339(q->before_us, t, sizeof(t));
        append_param(out, cap, accounts ? "created_before" : "before", t);
    }
    if (q->has_as_of) {
        tly_clock_format_rfc3339(q->as_of_us, t, sizeof(t));
        append_param(out, cap, "as_of", t);
    }
    snprintf(limit, sizeof(limit), "%d", q->limit);
    append_param(out, cap, "limit", limit);
    append_param(out, cap, "cursor", cursor);
}

/* --- headers ------------------------------------------------------------- */

/* The next comma-separated element of a header list, quote-aware and trimmed. */
static bool
next_element(const char **p, const char *end, const char **start, size_t *len)
{
    while (*p < end && (**p == ' ' || **p == '\t' || **p == ','))
        ++*p;
    if (*p >= end)
        return false;
    const char *s = *p;
    bool quoted = false;
    for (; *p < end && (quoted || **p != ','); ++*p)
        if (**p == '"')
            quoted = !quoted;
    const char *e = *p;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
        --e;
    *start = s;
    *len = (size_t)(e - s);
    return true;
}

static void
strip_weak(const char **s, size_t *len)
{
    if (*len >= 2 && (*s)[0] == 'W' && (*s)[1] == '/') {
        *s += 2;
        *len -= 2;
    }
}

bool
qa_etag_matches(const char *inm, size_t len, const char *etag)
{
    const char *p = inm, *end = inm + len, *el, *want = etag;
    size_t ellen, wantlen = strlen(etag);
    strip_weak(&want, &wantlen);
    while (next_element(&p, end, &el, &ellen)) {
        if (ellen == 1 && el[0] == '*')
            return true;
        strip_weak(&el, &ellen);
        if (ellen == wantlen && memcmp(el, want, ellen) == 0)
            return true;
    }
    return false;
}

/* Parses "N" or "\"N\"" as a non-negative integer (capped at 10^6); -1 otherwise. */
static int
parse_seconds(const char *v, size_t len)
{
    if (len >= 2 && v[0] == '"' && v[len - 1] == '"') {
        ++v;
        len -= 2;
    }
    if (len == 0 || len > 7)
        return -1;
    int n = 0;
    for (size_t i = 0; i < len; ++i) {
        if (!isdigit((unsigned char)v[i]))
            return -1;
        n = n * 10 + (v[i] - '0');
    }
    return n;
}

int
qa_prefer_wait(const char *v, size_t len)
{
    const char *p = v, *end = v + len, *el;
    size_t ellen;
    while (next_element(&p, end, &el, &ellen)) {
        const char *semi = memchr(el, ';', ellen);
        size_t tok = semi != NULL ? (size_t)(semi - el) : ellen;
        while (tok > 0 && (el[tok - 1] == ' ' || el[tok - 1] == '\t'))
            --tok;
        if (tok < 5 || strncasecmp(el, "wait", 4) != 0)
            continue;
        const char *q = el + 4, *qend = el + tok;
        while (q < qend && (*q == ' ' || *q == '\t'))
            ++q;
        if (q == qend || *q != '=')
            continue;
        for (++q; q < qend && (*q == ' ' || *q == '\t');)
            ++q;
        return parse_seconds(q, (size_t)(qend - q));
    }
    return -1;
}

/* True when the parameters of an Accept-Encoding element give q > 0. */
static bool
q_positive(const char *params, size_t len)
{
    const char *q = NULL;
    for (size_t i = 0; i + 1 < len; ++i)
        if ((params[i] == 'q' || params[i] == 'Q') && (i == 0 || params[i - 1] == ';' || params[i - 1] == ' ')) {
            size_t j = i + 1;
            while (j < len && params[j] == ' ')
                ++j;
            if (j < len && params[j] == '=') {
                q = params + j + 1;
                break;
            }
        }
    if (q == NULL)
        return true;
    for (const char *e = params + len; q < e && *q != ';'; ++q)
        if (*q >= '1' && *q <= '9')
            return true;
    return false;
}

bool
qa_accepts_gzip(const char *v, size_t len)
{
    const char *p = v, *end = v + len, *el;
    size_t ellen;
    int gzip = -1, star = -1;
    while (next_element(&p, end, &el, &ellen)) {
        const char *semi = memchr(el, ';', ellen);
        size_t tok = semi != NULL ? (size_t)(semi - el) : ellen;
        while (tok > 0 && el[tok - 1] == ' ')
            --tok;
        bool pos = q_positive(el + tok, ellen - tok);
        if ((tok == 4 && strncasecmp(el, "gzip", 4) == 0) || (tok == 6 && strncasecmp(el, "x-gzip", 6) == 0))
            gzip = pos;
        else if (tok == 1 && el[0] == '*')
            star = pos;
    }
    return gzip >= 0 ? gzip == 1 : star == 1;
}
