/*
 * Tally's well-known metrics: the series the services share, registered in
 * the default registry (tally/metrics.h) on first use, or all at once with
 * tly_metrics_register_all.
 */
#ifndef TALLY_METRICS_WELLKNOWN_H
#define TALLY_METRICS_WELLKNOWN_H

#include <stdbool.h>
#include <stdint.h>

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
