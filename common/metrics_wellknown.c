/* Tally's well-known metrics, in the default registry. See tally/metrics_wellknown.h. */
#include "tally/metrics_wellknown.h"
#include "tally/metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

static const double http_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
static const double kafka_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

static struct {
    tly_metric_t *http_requests, *http_duration, *rate_limited, *idem_replays, *kafka_duration, *kafka_errors, *events_applied,
        *consumer_txs, *consumer_lag, *dead_letters, *saga_states, *cmd_statements, *cmd_rows;
} wk;
static pthread_once_t wk_once = PTHREAD_ONCE_INIT;

static void
wk_init(void)
{
    tly_metrics_t *r = tly_metrics_default();
    wk.http_requests = tly_metrics_counter(r, "tally_http_requests_total", "HTTP requests answered, by route, method and status.",
                                           "route,method,status", 512);
    wk.http_duration =
        tly_metrics_histogram(r, "tally_http_request_duration_seconds", "Time from request to answer, by route and method.",
                              "route,method", 128, http_bounds, sizeof(http_bounds) / sizeof(http_bounds[0]));
    wk.rate_limited =
        tly_metrics_counter(r, "tally_rate_limited_total", "Requests refused with 429 by the per-key rate limit.", "", 1);
    wk.idem_replays = tly_metrics_counter(r, "tally_idempotency_replays_total",
                                          "Commands answered with the stored 202 of an earlier request with the same "
                                          "Idempotency-Key (Idempotent-Replayed: true).",
                                          "", 1);
    wk.kafka_duration =
        tly_metrics_histogram(r, "tally_kafka_produce_duration_seconds",
                              "Time from produce to the broker's acknowledgement (acks=all), successful deliveries.", "", 1,
                              kafka_bounds, sizeof(kafka_bounds) / sizeof(kafka_bounds[0]));
    wk.kafka_errors =
        tly_metrics_counter(r, "tally_kafka_produce_errors_total",
                            "Events the broker did not take: refused when enqueued, failed delivery reports, or no report "
                            "within the deadline (answered 503 by the API's own timer).",
                            "stage", 4);
    tly_counter_add(tly_metric_s1(wk.kafka_errors, "enqueue"), 0);
    tly_counter_add(tly_metric_s1(wk.kafka_errors, "delivery"), 0);
    tly_counter_add(tly_metric_s1(wk.kafka_errors, "deadline"), 0);
    wk.events_applied =
        tly_metrics_counter(r, "tally_events_applied_total",
                            "Events whose consumer position was committed, by consumer (rate() gives events/s).", "consumer", 16);
    wk.consumer_txs =
        tly_metrics_counter(r, "tally_consumer_transactions_total",
                            "Batch transactions committed, by consumer (batches that write nothing need none).", "consumer", 16);
    wk.consumer_lag = tly_metrics_gauge(r, "tally_consumer_lag",
                                        "Events in the log not yet committed by this consumer, by consumer and partition.",
                                        "consumer,partition", 1024);
    wk.dead_letters =
        tly_metrics_counter(r, "tally_dead_letters_total", "Events parked in dead_letters, by consumer.", "consumer", 16);
    wk.saga_states = tly_metrics_gauge(r, "tally_saga_states", "Sagas (transfers) in each state.", "state", 32);
    wk.cmd_statements = tly_metrics_counter(r, "tally_command_statements_total",
                                            "Batched statements the command API ran, by statement (record: the command "
                                            "records of a loop iteration; accept: their acceptances).",
                                            "statement", 4);
    wk.cmd_rows = tly_metrics_counter(r, "tally_command_statement_rows_total",
                                      "Rows the command API's batched statements carried, by statement (rows / statements "
                                      "is the batch size).",
                                      "statement", 4);
    for (int i = 0; i < 2; ++i) {
        const char *st = i == 0 ? "record" : "accept";
        tly_counter_add(tly_metric_s1(wk.cmd_statements, st), 0);
        tly_counter_add(tly_metric_s1(wk.cmd_rows, st), 0);
    }
}

static inline void
wk_ready(void)
{
    pthread_once(&wk_once, wk_init);
}

void
tly_metrics_register_all(void)
{
    wk_ready();
}

static const char *
method_label(const char *method)
{
    static const char *known[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); ++i)
        if (method != NULL && strcmp(method, known[i]) == 0)
            return known[i];
    return "other"; /* clients choose methods: keep the label set bounded */
}

void
tly_metrics_http_request(const char *route, const char *method, int status, double seconds)
{
    char st[16];
    wk_ready();
    const char *m = method_label(method);
    snprintf(st, sizeof(st), "%d", status);
    tly_counter_add(tly_metric_s3(wk.http_requests, route, m, st), 1);
    tly_histogram_observe(tly_metric_s2(wk.http_duration, route, m), seconds);
}

void
tly_metrics_rate_limited(void)
{
    wk_ready();
    tly_counter_add(tly_metric_s0(wk.rate_limited), 1);
}

void
tly_metrics_command_statement(const char *statement, uint64_t rows)
{
    wk_ready();
    tly_counter_add(tly_metric_s1(wk.cmd_statements, statement), 1);
    tly_counter_add(tly_metric_s1(wk.cmd_rows, statement), rows);
}

void
tly_metrics_idempotency_replay(void)
{
    wk_ready();
    tly_counter_add(tly_metric_s0(wk.idem_replays), 1);
}

void
tly_metrics_kafka_delivery(bool ok, double seconds)
{
    wk_ready();
    if (ok)
        tly_histogram_observe(tly_metric_s0(wk.kafka_duration), seconds);
    else
        tly_counter_add(tly_metric_s1(wk.kafka_errors, "delivery"), 1);
}

void
tly_metrics_kafka_enqueue_error(void)
{
    wk_ready();
    tly_counter_add(tly_metric_s1(wk.kafka_errors, "enqueue"), 1);
}

void
tly_metrics_kafka_deadline(void)
{
    wk_ready();
    tly_counter_add(tly_metric_s1(wk.kafka_errors, "deadline"), 1);
}

void
tly_metrics_events_applied(const char *consumer, uint64_t n)
{
    wk_ready();
    tly_counter_add(tly_metric_s1(wk.events_applied, consumer), n);
}

void
tly_metrics_consumer_transaction(const char *consumer)
{
    wk_ready();
    tly_counter_add(tly_metric_s1(wk.consumer_txs, consumer), 1);
}

void
tly_metrics_consumer_lag(const char *consumer, int32_t partition, int64_t lag)
{
    char p[16];
    wk_ready();
    snprintf(p, sizeof(p), "%d", (int)partition);
    tly_gauge_set(tly_metric_s2(wk.consumer_lag, consumer, p), (double)(lag < 0 ? 0 : lag));
}

void
tly_metrics_consumer_lag_clear(const char *consumer, int32_t partition)
{
    char p[16];
    wk_ready();
    snprintf(p, sizeof(p), "%d", (int)partition);
    tly_series_hide(tly_metric_s2(wk.consumer_lag, consumer, p));
}

void
tly_metrics_dead_letter(const char *consumer)
{
    wk_ready();
    tly_counter_add(tly_metric_s1(wk.dead_letters, consumer), 1);
}

void
tly_metrics_saga_states(const char *state, int64_t count)
{
    wk_ready();
    tly_gauge_set(tly_metric_s1(wk.saga_states, state), (double)count);
}
