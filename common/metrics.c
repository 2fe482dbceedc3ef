/* Lock-free Prometheus registry and text renderer. See tally/metrics.h. */
#include "tally/metrics.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_MAX 192    /* label values joined by \x1f */
#define LABELS_MAX 448 /* rendered a="x",b="y" */

enum { SLOT_EMPTY, SLOT_CLAIMING, SLOT_READY };

struct st_tly_series_t {
    _Atomic int state;
    atomic_bool visible;
    uint64_t hash;
    tly_metric_t *metric;
    _Atomic uint64_t value;    /* counter: count; gauge: double bits */
    _Atomic uint64_t sum_bits; /* histogram: double bits of the sum */
    _Atomic uint64_t *buckets; /* histogram: nbounds + 1 (the last is +Inf), not cumulative */
    char key[KEY_MAX];
    char labels[LABELS_MAX];
};

struct st_tly_metric_t {
    tly_metrics_t *reg;
    tly_metric_type_t type;
    char *name, *help;
    size_t nlabels;
    char label_names[TLY_METRICS_MAX_LABELS][64];
    double bounds[TLY_METRICS_MAX_BUCKETS];
    size_t nbounds;
    size_t cap;
    tly_series_t *series;
    _Atomic uint64_t *bucket_store;
};

struct st_tly_metrics_t {
    pthread_mutex_t lock;
    tly_metric_t **metrics;
    size_t n, cap;
    tly_metric_t *dropped; /* tally_metrics_dropped_series_total */
};

static uint64_t
dbl_bits(double v)
{
    uint64_t b;
    memcpy(&b, &v, sizeof(b));
    return b;
}

static double
bits_dbl(uint64_t b)
{
    double v;
    memcpy(&v, &b, sizeof(v));
    return v;
}

static void
atomic_add_double(_Atomic uint64_t *p, double v)
{
    uint64_t old = atomic_load_explicit(p, memory_order_relaxed), want;
    do {
        want = dbl_bits(bits_dbl(old) + v);
    } while (!atomic_compare_exchange_weak_explicit(p, &old, want, memory_order_relaxed, memory_order_relaxed));
}

static bool
name_ok(const char *s, bool colon)
{
    if (s == NULL || *s == '\0' || (*s >= '0' && *s <= '9'))
        return false;
    for (; *s != '\0'; ++s) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || (colon && c == ':')))
            return false;
    }
    return true;
}

static void
def_fail(const char *name, const char *why)
{
    fprintf(stderr, "metrics: bad definition of %s: %s\n", name != NULL ? name : "(null)", why);
    abort();
}

/* ---- registry ------------------------------------------------------------ */

static tly_metric_t *register_metric(tly_metrics_t *reg, tly_metric_type_t type, const char *name, const char *help,
                                     const char *labels, size_t max_series, const double *bounds, size_t nbounds);

tly_metrics_t *
tly_metrics_new(void)
{
    tly_metrics_t *reg = calloc(1, sizeof(*reg));
    if (reg == NULL)
        abort();
    pthread_mutex_init(&reg->lock, NULL);
    reg->dropped = register_metric(reg, TLY_METRIC_COUNTER, "tally_metrics_dropped_series_total",
                                   "Label sets not recorded because their metric's series table was full.", "metric", 64, NULL, 0);
    return reg;
}

void
tly_metrics_free(tly_metrics_t *reg)
{
    if (reg == NULL)
        return;
    for (size_t i = 0; i < reg->n; ++i) {
        tly_metric_t *m = reg->metrics[i];
        free(m->name);
        free(m->help);
        free(m->series);
        free(m->bucket_store);
        free(m);
    }
    free(reg->metrics);
    pthread_mutex_destroy(&reg->lock);
    free(reg);
}

static tly_metrics_t *default_reg;
static pthread_once_t default_once = PTHREAD_ONCE_INIT;

static void
default_init(void)
{
    default_reg = tly_metrics_new();
}

tly_metrics_t *
tly_metrics_default(void)
{
    pthread_once(&default_once, default_init);
    return default_reg;
}

static tly_metric_t *
register_metric(tly_metrics_t *reg, tly_metric_type_t type, const char *name, const char *help, const char *labels,
                size_t max_series, const double *bounds, size_t nbounds)
{
    if (!name_ok(name, true))
        def_fail(name, "invalid metric name");
    pthread_mutex_lock(&reg->lock);
    for (size_t i = 0; i < reg->n; ++i) {
        if (strcmp(reg->metrics[i]->name, name) == 0) {
            tly_metric_t *found = reg->metrics[i];
            pthread_mutex_unlock(&reg->lock);
            if (found->type != type)
                def_fail(name, "registered twice with different types");
            return found;
        }
    }
    tly_metric_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        abort();
    m->reg = reg;
    m->type = type;
    m->name = strdup(name);
    m->help = strdup(help != NULL ? help : "");
    if (labels != NULL && *labels != '\0') {
        const char *p = labels;
        while (1) {
            size_t len = strcspn(p, ",");
            if (m->nlabels == TLY_METRICS_MAX_LABELS || len == 0 || len >= sizeof(m->label_names[0]))
                def_fail(name, "too many labels or an empty or long label name");
            memcpy(m->label_names[m->nlabels], p, len);
            m->label_names[m->nlabels][len] = '\0';
            if (!name_ok(m->label_names[m->nlabels], false) || strcmp(m->label_names[m->nlabels], "le") == 0)
                def_fail(name, "invalid label name");
            m->nlabels++;
            if (p[len] == '\0')
                break;
            p += len + 1;
        }
    }
    if (type == TLY_METRIC_HISTOGRAM) {
        if (nbounds == 0 || nbounds > TLY_METRICS_MAX_BUCKETS)
            def_fail(name, "a histogram needs 1 to TLY_METRICS_MAX_BUCKETS bounds");
        for (size_t i = 0; i < nbounds; ++i) {
            if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
                def_fail(name, "histogram bounds must be finite and ascending");
            m->bounds[i] = bounds[i];
        }
        m->nbounds = nbounds;
    }
    m->cap = m->nlabels == 0 ? 1 : (max_series < 1 ? 1 : max_series);
    m->series = calloc(m->cap, sizeof(*m->series));
    if (m->series == NULL)
        abort();
    if (type == TLY_METRIC_HISTOGRAM) {
        m->bucket_store = calloc(m->cap * (m->nbounds + 1), sizeof(*m->bucket_store));
        if (m->bucket_store == NULL)
            abort();
    }
    for (size_t i = 0; i < m->cap; ++i) {
        m->series[i].metric = m;
        if (m->bucket_store != NULL)
            m->series[i].buckets = m->bucket_store + i * (m->nbounds + 1);
    }
    if (reg->n == reg->cap) {
        reg->cap = reg->cap == 0 ? 16 : reg->cap * 2;
        tly_metric_t **grown = realloc(reg->metrics, reg->cap * sizeof(*grown));
        if (grown == NULL)
            abort();
        reg->metrics = grown;
    }
    reg->metrics[reg->n++] = m;
    pthread_mutex_unlock(&reg->lock);
    if (m->nlabels == 0)
        (void)tly_metric_series(m, NULL); /* shown as 0 from the start */
    return m;
}

tly_metric_t *
tly_metrics_counter(tly_metrics_t *reg, const char *name, const char *help, const char *labels, size_t max_series)
{
    return register_metric(reg, TLY_METRIC_COUNTER, name, help, labels, max_series, NULL, 0);
}

tly_metric_t *
tly_metrics_gauge(tly_metrics_t *reg, const char *name, const char *help, const char *labels, size_t max_series)
{
    return register_metric(reg, TLY_METRIC_GAUGE, name, help, labels, max_series, NULL, 0);
}

tly_metric_t *
tly_metrics_histogram(tly_metrics_t *reg, const char *name, const char *help, const char *labels, size_t max_series,
                      const double *bounds, size_t nbounds)
{
    return register_metric(reg, TLY_METRIC_HISTOGRAM, name, help, labels, max_series, bounds, nbounds);
}

/* ---- series -------------------------------------------------------------- */

/* Appends `s` to buf[*len] escaped for a label value, within cap (always NUL-terminated). */
static void
put_escaped(char *buf, size_t cap, size_t *len, const char *s, bool help)
{
    for (; *s != '\0' && *len + 3 < cap; ++s) {
        if (*s == '\\' || (*s == '"' && !help)) {
            buf[(*len)++] = '\\';
            buf[(*len)++] = *s;
        } else if (*s == '\n') {
            buf[(*len)++] = '\\';
            buf[(*len)++] = 'n';
        } else {
            buf[(*len)++] = *s;
        }
    }
    buf[*len] = '\0';
}

static void
put_text(char *buf, size_t cap, size_t *len, const char *s)
{
    for (; *s != '\0' && *len + 1 < cap; ++s)
        buf[(*len)++] = *s;
    buf[*len] = '\0';
}

tly_series_t *
tly_metric_series(tly_metric_t *m, const char *const *values)
{
    char key[KEY_MAX];
    size_t klen = 0;
    uint64_t h = 1469598103934665603ULL;
    if (m == NULL)
        return NULL;
    key[0] = '\0';
    for (size_t i = 0; i < m->nlabels; ++i) {
        const char *v = values != NULL && values[i] != NULL ? values[i] : "";
        if (i > 0 && klen + 1 < sizeof(key)) {
            key[klen++] = '\x1f';
            key[klen] = '\0';
        }
        put_text(key, sizeof(key), &klen, v);
    }
    for (size_t i = 0; i < klen; ++i) {
        h ^= (unsigned char)key[i];
        h *= 1099511628211ULL;
    }
    size_t idx = (size_t)(h % m->cap);
    for (size_t probes = 0; probes < m->cap; ++probes, idx = (idx + 1) % m->cap) {
        tly_series_t *s = &m->series[idx];
        int st = atomic_load_explicit(&s->state, memory_order_acquire);
        if (st == SLOT_EMPTY) {
            int expected = SLOT_EMPTY;
            if (atomic_compare_exchange_strong_explicit(&s->state, &expected, SLOT_CLAIMING, memory_order_acq_rel,
                                                        memory_order_acquire)) {
                size_t llen = 0;
                s->hash = h;
                memcpy(s->key, key, klen + 1);
                s->labels[0] = '\0';
                for (size_t i = 0; i < m->nlabels; ++i) {
                    const char *v = values != NULL && values[i] != NULL ? values[i] : "";
                    if (i > 0)
                        put_text(s->labels, sizeof(s->labels), &llen, ",");
                    put_text(s->labels, sizeof(s->labels), &llen, m->label_names[i]);
                    put_text(s->labels, sizeof(s->labels), &llen, "=\"");
                    put_escaped(s->labels, sizeof(s->labels), &llen, v, false);
                    put_text(s->labels, sizeof(s->labels), &llen, "\"");
                }
                atomic_store_explicit(&s->visible, true, memory_order_relaxed);
                atomic_store_explicit(&s->state, SLOT_READY, memory_order_release);
                return s;
            }
            st = expected;
        }
        while (st == SLOT_CLAIMING) { /* another thread is writing the key: a few stores */
            sched_yield();
            st = atomic_load_explicit(&s->state, memory_order_acquire);
        }
        if (s->hash == h && strcmp(s->key, key) == 0)
            return s;
    }
    if (m != m->reg->dropped)
        tly_counter_add(tly_metric_s1(m->reg->dropped, m->name), 1);
    return NULL;
}

tly_series_t *
tly_metric_s0(tly_metric_t *m)
{
    return tly_metric_series(m, NULL);
}

tly_series_t *
tly_metric_s1(tly_metric_t *m, const char *v1)
{
    const char *v[1] = {v1};
    return tly_metric_series(m, v);
}

tly_series_t *
tly_metric_s2(tly_metric_t *m, const char *v1, const char *v2)
{
    const char *v[2] = {v1, v2};
    return tly_metric_series(m, v);
}

tly_series_t *
tly_metric_s3(tly_metric_t *m, const char *v1, const char *v2, const char *v3)
{
    const char *v[3] = {v1, v2, v3};
    return tly_metric_series(m, v);
}

static void
show(tly_series_t *s)
{
    if (!atomic_load_explicit(&s->visible, memory_order_relaxed))
        atomic_store_explicit(&s->visible, true, memory_order_relaxed);
}

void
tly_counter_add(tly_series_t *s, uint64_t n)
{
    if (s == NULL || s->metric->type != TLY_METRIC_COUNTER)
        return;
    atomic_fetch_add_explicit(&s->value, n, memory_order_relaxed);
    show(s);
}

void
tly_gauge_set(tly_series_t *s, double v)
{
    if (s == NULL || s->metric->type != TLY_METRIC_GAUGE)
        return;
    atomic_store_explicit(&s->value, dbl_bits(v), memory_order_relaxed);
    show(s);
}

void
tly_gauge_add(tly_series_t *s, double v)
{
    if (s == NULL || s->metric->type != TLY_METRIC_GAUGE)
        return;
    atomic_add_double(&s->value, v);
    show(s);
}

void
tly_histogram_observe(tly_series_t *s, double v)
{
    if (s == NULL || s->metric->type != TLY_METRIC_HISTOGRAM || isnan(v))
        return;
    const tly_metric_t *m = s->metric;
    size_t b = 0;
    while (b < m->nbounds && v > m->bounds[b])
        ++b;
    atomic_fetch_add_explicit(&s->buckets[b], 1, memory_order_relaxed);
    atomic_add_double(&s->sum_bits, v);
    show(s);
}

void
tly_series_hide(tly_series_t *s)
{
    if (s != NULL)
        atomic_store_explicit(&s->visible, false, memory_order_relaxed);
}

uint64_t
tly_counter_value(const tly_series_t *s)
{
    return s != NULL && s->metric->type == TLY_METRIC_COUNTER ? atomic_load_explicit(&s->value, memory_order_relaxed) : 0;
}

double
tly_gauge_value(const tly_series_t *s)
{
    return s != NULL && s->metric->type == TLY_METRIC_GAUGE ? bits_dbl(atomic_load_explicit(&s->value, memory_order_relaxed)) : 0.0;
}

uint64_t
tly_histogram_count(const tly_series_t *s)
{
    uint64_t n = 0;
    if (s == NULL || s->metric->type != TLY_METRIC_HISTOGRAM)
        return 0;
    for (size_t i = 0; i <= s->metric->nbounds; ++i)
        n += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
    return n;
}

/* ---- rendering ----------------------------------------------------------- */

typedef struct st_buf_t {
    char *p;
    size_t len, cap;
} buf_t;

static void __attribute__((format(printf, 2, 3))) bprintf(buf_t *b, const char *fmt, ...)
{
    va_list ap;
    while (1) {
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0)
            abort();
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        b->cap = (b->cap + (size_t)n + 1) * 2;
        if ((b->p = realloc(b->p, b->cap)) == NULL)
            abort();
    }
}

static void
fmt_double(char *out, size_t cap, double v)
{
    if (isnan(v))
        snprintf(out, cap, "NaN");
    else if (isinf(v))
        snprintf(out, cap, v > 0 ? "+Inf" : "-Inf");
    else {
        /* the shortest of %.15g..%.17g that reads back as the same double: le="0.1", not 0.10000000000000001 */
        for (int prec = 15; prec <= 17; ++prec) {
            snprintf(out, cap, "%.*g", prec, v);
            if (strtod(out, NULL) == v)
                break;
        }
    }
}

/* `name{labels,extra}` or `name{extra}` or `name` */
static void
series_name(buf_t *b, const char *name, const char *suffix, const char *labels, const char *extra)
{
    bool has_labels = labels[0] != '\0', has_extra = extra != NULL;
    bprintf(b, "%s%s", name, suffix);
    if (has_labels || has_extra)
        bprintf(b, "{%s%s%s}", labels, has_labels && has_extra ? "," : "", has_extra ? extra : "");
}

static void
render_metric(buf_t *b, tly_metric_t *m)
{
    static const char *types[] = {"counter", "gauge", "histogram"};
    char help[1024], num[64], le[80];
    size_t hlen = 0;
    help[0] = '\0';
    put_escaped(help, sizeof(help), &hlen, m->help, true);
    bprintf(b, "# HELP %s %s\n# TYPE %s %s\n", m->name, help, m->name, types[m->type]);
    for (size_t i = 0; i < m->cap; ++i) {
        tly_series_t *s = &m->series[i];
        if (atomic_load_explicit(&s->state, memory_order_acquire) != SLOT_READY ||
            !atomic_load_explicit(&s->visible, memory_order_relaxed))
            continue;
        switch (m->type) {
        case TLY_METRIC_COUNTER:
            series_name(b, m->name, "", s->labels, NULL);
            bprintf(b, " %llu\n", (unsigned long long)atomic_load_explicit(&s->value, memory_order_relaxed));
            break;
        case TLY_METRIC_GAUGE:
            fmt_double(num, sizeof(num), bits_dbl(atomic_load_explicit(&s->value, memory_order_relaxed)));
            series_name(b, m->name, "", s->labels, NULL);
            bprintf(b, " %s\n", num);
            break;
        case TLY_METRIC_HISTOGRAM: {
            uint64_t cum = 0;
            for (size_t k = 0; k <= m->nbounds; ++k) {
                cum += atomic_load_explicit(&s->buckets[k], memory_order_relaxed);
                if (k < m->nbounds) {
                    fmt_double(num, sizeof(num), m->bounds[k]);
                    snprintf(le, sizeof(le), "le=\"%s\"", num);
                } else {
                    snprintf(le, sizeof(le), "le=\"+Inf\"");
                }
                series_name(b, m->name, "_bucket", s->labels, le);
                bprintf(b, " %llu\n", (unsigned long long)cum);
            }
            fmt_double(num, sizeof(num), bits_dbl(atomic_load_explicit(&s->sum_bits, memory_order_relaxed)));
            series_name(b, m->name, "_sum", s->labels, NULL);
            bprintf(b, " %s\n", num);
            series_name(b, m->name, "_count", s->labels, NULL);
            bprintf(b, " %llu\n", (unsigned long long)cum);
            break;
        }
        }
    }
}

char *
tly_metrics_render(tly_metrics_t *reg, size_t *len)
{
    buf_t b = {.p = malloc(4096), .len = 0, .cap = 4096};
    if (b.p == NULL)
        abort();
    b.p[0] = '\0';
    pthread_mutex_lock(&reg->lock);
    for (size_t i = 0; i < reg->n; ++i)
        render_metric(&b, reg->metrics[i]);
    pthread_mutex_unlock(&reg->lock);
    if (len != NULL)
        *len = b.len;
    return b.p;
}
