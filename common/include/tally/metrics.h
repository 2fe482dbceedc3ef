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

/* ---- Tally's well-known metrics (in the default registry) ---------------- */

/** One answered HTTP request: tally_http_requests_total and tally_http_request_duration_seconds. */
void tly_metrics_http_request(const char *route, const char *method, int status, double seconds);
/** tally_rate_limited_total */
void tly_metrics_rate_limited(void);
/** tally_idempotency_replays_total: a stored 202 answered again. */
void tly_metrics_idempotency_replay(void);
/** One batched statement of the command API: tally_command_statements_total and tally_command_statement_rows_total. */
void tly_metrics_command_statement(const char *statement, uint64_t rows);
/** A Kafka delivery report: tally_kafka_produce_duration_seconds, or tally_kafka_produce_errors_total{stage="delivery"}. */
void tly_metrics_kafka_delivery(bool ok, double seconds);
/** tally_kafka_produce_errors_total{stage="enqueue"}: the producer refused the message. */
void tly_metrics_kafka_enqueue_error(void);
/** tally_kafka_produce_errors_total{stage="deadline"}: no delivery report within the deadline, the client got 503. */
void tly_metrics_kafka_deadline(void);
/** tally_events_applied_total{consumer}: events whose position was committed. */
void tly_metrics_events_applied(const char *consumer, uint64_t n);
/** tally_consumer_transactions_total{consumer}: batch transactions committed. */
void tly_metrics_consumer_transaction(const char *consumer);
/** tally_consumer_lag{consumer,partition}: high watermark minus committed position. */
void tly_metrics_consumer_lag(const char *consumer, int32_t partition, int64_t lag);
/** Removes the lag series of a partition this consumer no longer owns. */
void tly_metrics_consumer_lag_clear(const char *consumer, int32_t partition);
/** tally_dead_letters_total{consumer} */
void tly_metrics_dead_letter(const char *consumer);
/** tally_saga_states{state}: how many sagas are in `state` (set by the saga's owner). */
void tly_metrics_saga_states(const char *state, int64_t count);
/** Registers every well-known metric, so a scrape lists them before their first use. */
void tly_metrics_register_all(void);

#endif
