/*
 * A small Prometheus registry: counters, gauges and histograms with fixed
 * buckets, each with a fixed list of label names, and the text exposition
 * format (version 0.0.4).
 *
 * Recording never takes a lock and never allocates: every series of a metric
 * lives in a table sized when the metric is registered, found by hashing the
 * label values and claimed with a compare-and-swap the first time a label set
 * is seen; values are atomics (relaxed). A scrape reads the atomics. When a
 * metric's table is full, new label sets are dropped (counted in
 * tally_metrics_dropped_series_total) rather than blocking or growing.
 *
 * Registration (tly_metrics_counter, ...) takes the registry's mutex; do it
 * at start-up, or through the well-known metrics below, which register
 * themselves once.
 */
#ifndef TALLY_METRICS_H
#define TALLY_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TLY_METRICS_MAX_LABELS 4
#define TLY_METRICS_MAX_BUCKETS 24

typedef struct st_tly_metrics_t tly_metrics_t;
typedef struct st_tly_metric_t tly_metric_t;
typedef struct st_tly_series_t tly_series_t;

typedef enum en_tly_metric_type_t {
    TLY_METRIC_COUNTER,
    TLY_METRIC_GAUGE,
    TLY_METRIC_HISTOGRAM,
} tly_metric_type_t;

/** A registry of its own (tests); services use tly_metrics_default(). */
tly_metrics_t *tly_metrics_new(void);
void tly_metrics_free(tly_metrics_t *reg);
/** The process-wide registry. */
tly_metrics_t *tly_metrics_default(void);

/**
 * Registers a metric, or returns the one already registered under `name`
 * (same type expected). `labels` is a comma-separated list of label names
 * ("route,method,status"; "" or NULL for none, at most TLY_METRICS_MAX_LABELS);
 * `max_series` bounds the label sets kept. Histograms take their upper bounds
 * (ascending, +Inf implied). Aborts on a malformed definition: it is a
 * programming error.
 */
tly_metric_t *tly_metrics_counter(tly_metrics_t *reg, const char *name, const char *help, const char *labels, size_t max_series);
tly_metric_t *tly_metrics_gauge(tly_metrics_t *reg, const char *name, const char *help, const char *labels, size_t max_series);
tly_metric_t *tly_metrics_histogram(tly_metrics_t *reg, const char *name, const char *help, const char *labels, size_t max_series,
                                    const double *bounds, size_t nbounds);

/**
 * The series for label values `values` (as many as the metric has labels;
 * NULL counts as ""), created on first use. Lock-free. NULL when the table is
 * full; every recording function accepts NULL and does nothing.
 */
tly_series_t *tly_metric_series(tly_metric_t *m, const char *const *values);
/** Shorthands for 0 to 3 labels. */
tly_series_t *tly_metric_s0(tly_metric_t *m);
tly_series_t *tly_metric_s1(tly_metric_t *m, const char *v1);
tly_series_t *tly_metric_s2(tly_metric_t *m, const char *v1, const char *v2);
tly_series_t *tly_metric_s3(tly_metric_t *m, const char *v1, const char *v2, const char *v3);

void tly_counter_add(tly_series_t *s, uint64_t n);
void tly_gauge_set(tly_series_t *s, double v);
void tly_gauge_add(tly_series_t *s, double v);
void tly_histogram_observe(tly_series_t *s, double v);
/** Hides a series from scrapes until it is written again (a partition no longer ours). */
void tly_series_hide(tly_series_t *s);

/** Current values, for tests and /readyz decisions. */
uint64_t tly_counter_value(const tly_series_t *s);
double tly_gauge_value(const tly_series_t *s);
uint64_t tly_histogram_count(const tly_series_t *s);

/** The exposition text of every metric; caller frees. `*len` gets its length. */
char *tly_metrics_render(tly_metrics_t *reg, size_t *len);

/** Content-Type of the rendered text. */
#define TLY_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* The series every service shares (tally_http_requests_total, ...) are tally/metrics_wellknown.h's. */
#include "tally/metrics_wellknown.h"

#endif
