/* The Prometheus registry: series, values, the text format, full tables, threads; the log's trace id. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tally/log.h"
#include "tally/metrics.h"

#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static bool
has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p += n)
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return true;
    return false;
}

static void
test_counter_gauge(void **state)
{
    tly_metrics_t *r = tly_metrics_new();
    tly_metric_t *c = tly_metrics_counter(r, "t_requests_total", "Requests.", "route,status", 8);
    assert_ptr_equal(c, tly_metrics_counter(r, "t_requests_total", "again", "route,status", 8));
    tly_counter_add(tly_metric_s2(c, "/v1/a", "200"), 1);
    tly_counter_add(tly_metric_s2(c, "/v1/a", "200"), 2);
    tly_counter_add(tly_metric_s2(c, "/v1/a", "404"), 1);
    assert_int_equal(tly_counter_value(tly_metric_s2(c, "/v1/a", "200")), 3);
    tly_metric_t *g = tly_metrics_gauge(r, "t_lag", "Lag \\ with\nnewline.", "partition", 4);
    tly_gauge_set(tly_metric_s1(g, "0"), 42);
    tly_gauge_add(tly_metric_s1(g, "0"), -2.5);
    assert_true(tly_gauge_value(tly_metric_s1(g, "0")) == 39.5);
    tly_metric_t *plain = tly_metrics_counter(r, "t_plain_total", "No labels.", NULL, 0);

    char *text = tly_metrics_render(r, NULL);
    assert_true(has_line(text, "# TYPE t_requests_total counter"));
    assert_true(has_line(text, "# HELP t_requests_total Requests."));
    assert_true(has_line(text, "t_requests_total{route=\"/v1/a\",status=\"200\"} 3"));
    assert_true(has_line(text, "t_requests_total{route=\"/v1/a\",status=\"404\"} 1"));
    assert_true(has_line(text, "# HELP t_lag Lag \\\\ with\\nnewline."));
    assert_true(has_line(text, "# TYPE t_lag gauge"));
    assert_true(has_line(text, "t_lag{partition=\"0\"} 39.5"));
    assert_true(has_line(text, "t_plain_total 0")); /* no labels: shown from the start */
    free(text);

    /* a hidden series disappears until written again */
    tly_series_hide(tly_metric_s1(g, "0"));
    text = tly_metrics_render(r, NULL);
    assert_null(strstr(text, "t_lag{"));
    free(text);
    tly_gauge_set(tly_metric_s1(g, "0"), 1);
    text = tly_metrics_render(r, NULL);
    assert_true(has_line(text, "t_lag{partition=\"0\"} 1"));
    free(text);
    (void)plain;
    tly_metrics_free(r);
}

static void
test_histogram(void **state)
{
    static const double bounds[] = {0.01, 0.1, 1};
    tly_metrics_t *r = tly_metrics_new();
    tly_metric_t *h = tly_metrics_histogram(r, "t_seconds", "Latency.", "route", 4, bounds, 3);
    tly_series_t *s = tly_metric_s1(h, "x");
    tly_histogram_observe(s, 0.005);
    tly_histogram_observe(s, 0.01); /* le is inclusive */
    tly_histogram_observe(s, 0.5);
    tly_histogram_observe(s, 3);
    assert_int_equal(tly_histogram_count(s), 4);
    char *text = tly_metrics_render(r, NULL);
    assert_true(has_line(text, "# TYPE t_seconds histogram"));
    assert_true(has_line(text, "t_seconds_bucket{route=\"x\",le=\"0.01\"} 2"));
    assert_true(has_line(text, "t_seconds_bucket{route=\"x\",le=\"0.1\"} 2"));
    assert_true(has_line(text, "t_seconds_bucket{route=\"x\",le=\"1\"} 3"));
    assert_true(has_line(text, "t_seconds_bucket{route=\"x\",le=\"+Inf\"} 4"));
    assert_true(has_line(text, "t_seconds_sum{route=\"x\"} 3.515"));
    assert_true(has_line(text, "t_seconds_count{route=\"x\"} 4"));
    free(text);

    tly_metric_t *bare = tly_metrics_histogram(r, "t_bare_seconds", "No labels.", "", 1, bounds, 3);
    tly_histogram_observe(tly_metric_s0(bare), 0.05);
    text = tly_metrics_render(r, NULL);
    assert_true(has_line(text, "t_bare_seconds_bucket{le=\"+Inf\"} 1"));
    assert_true(has_line(text, "t_bare_seconds_count 1"));
    free(text);
    tly_metrics_free(r);
}

static void
test_escaping_and_full_table(void **state)
{
    tly_metrics_t *r = tly_metrics_new();
    tly_metric_t *c = tly_metrics_counter(r, "t_total", "Escapes.", "v", 2);
    tly_counter_add(tly_metric_s1(c, "a\"b\\c\nd"), 1);
    tly_counter_add(tly_metric_s1(c, "second"), 1);
    assert_null(tly_metric_s1(c, "third"));        /* full: dropped, not blocking */
    tly_counter_add(tly_metric_s1(c, "third"), 1); /* NULL series: a no-op */
    assert_non_null(tly_metric_s1(c, "second"));   /* existing ones still found */
    char *text = tly_metrics_render(r, NULL);
    assert_true(has_line(text, "t_total{v=\"a\\\"b\\\\c\\nd\"} 1"));
    assert_null(strstr(text, "third"));
    assert_true(has_line(text, "tally_metrics_dropped_series_total{metric=\"t_total\"} 2"));
    free(text);
    tly_metrics_free(r);
}

typedef struct st_worker_arg_t {
    tly_metric_t *c, *h;
    int id;
} worker_arg_t;

static void *
hammer(void *p)
{
    worker_arg_t *a = p;
    char label[16];
    for (int i = 0; i < 20000; ++i) {
        snprintf(label, sizeof(label), "s%d", i % 37);
        tly_counter_add(tly_metric_s1(a->c, label), 1);
        tly_histogram_observe(tly_metric_s1(a->h, label), (double)(i % 100) / 1000.0);
    }
    return NULL;
}

static void
test_threads(void **state)
{
    static const double bounds[] = {0.01, 0.05};
    tly_metrics_t *r = tly_metrics_new();
    worker_arg_t args[4];
    pthread_t t[4];
    tly_metric_t *c = tly_metrics_counter(r, "t_total", "Hammered.", "s", 64);
    tly_metric_t *h = tly_metrics_histogram(r, "t_seconds", "Hammered.", "s", 64, bounds, 2);
    for (int i = 0; i < 4; ++i) {
        args[i] = (worker_arg_t){.c = c, .h = h, .id = i};
        assert_int_equal(pthread_create(&t[i], NULL, hammer, &args[i]), 0);
    }
    for (int i = 0; i < 4; ++i)
        pthread_join(t[i], NULL);
    uint64_t total = 0, hist = 0;
    char label[16];
    for (int i = 0; i < 37; ++i) {
        snprintf(label, sizeof(label), "s%d", i);
        total += tly_counter_value(tly_metric_s1(c, label));
        hist += tly_histogram_count(tly_metric_s1(h, label));
    }
    assert_int_equal(total, 80000);
    assert_int_equal(hist, 80000);
    char *text = tly_metrics_render(r, NULL);
    assert_null(strstr(text, "dropped_series_total{"));
    free(text);
    tly_metrics_free(r);
}

static void
test_well_known(void **state)
{
    tly_metrics_register_all();
    tly_metrics_http_request("/v1/accounts", "POST", 202, 0.003);
    tly_metrics_http_request("/v1/accounts", "BREW", 405, 0.001);
    tly_metrics_consumer_lag("projector", 3, 17);
    tly_metrics_saga_states("debited", 2);
    char *text = tly_metrics_render(tly_metrics_default(), NULL);
    assert_true(has_line(text, "tally_http_requests_total{route=\"/v1/accounts\",method=\"POST\",status=\"202\"} 1"));
    assert_true(has_line(text, "tally_http_requests_total{route=\"/v1/accounts\",method=\"other\",status=\"405\"} 1"));
    assert_true(has_line(text, "tally_http_request_duration_seconds_count{route=\"/v1/accounts\",method=\"POST\"} 1"));
    assert_true(has_line(text, "tally_consumer_lag{consumer=\"projector\",partition=\"3\"} 17"));
    assert_true(has_line(text, "tally_saga_states{state=\"debited\"} 2"));
    assert_true(has_line(text, "tally_kafka_produce_errors_total{stage=\"delivery\"} 0"));
    assert_true(has_line(text, "tally_rate_limited_total 0"));
    assert_true(has_line(text, "tally_kafka_produce_duration_seconds_count 0"));
    free(text);
    tly_metrics_consumer_lag_clear("projector", 3);
    text = tly_metrics_render(tly_metrics_default(), NULL);
    assert_null(strstr(text, "tally_consumer_lag{"));
    free(text);
}

/* Captures what tly_log writes to stderr while `fn` runs. */
static char *
capture_log(void (*fn)(void))
{
    char path[] = "/tmp/tly-log-XXXXXX";
    int fd = mkstemp(path), saved = dup(STDERR_FILENO);
    assert_true(fd >= 0 && saved >= 0);
    dup2(fd, STDERR_FILENO);
    fn();
    dup2(saved, STDERR_FILENO);
    close(saved);
    off_t size = lseek(fd, 0, SEEK_END);
    char *buf = calloc(1, (size_t)size + 1);
    assert_int_equal(pread(fd, buf, (size_t)size, 0), size);
    close(fd);
    unlink(path);
    return buf;
}

static void
log_with_trace(void)
{
    tly_log_trace_set("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    tly_log(TLY_LOG_INFO, "one", "k", "v", NULL);
    tly_log(TLY_LOG_INFO, "two", "trace_id", "explicit", NULL);
    tly_log_trace_set("not a traceparent");
    tly_log(TLY_LOG_INFO, "three", NULL);
    tly_log_trace_set("0af7651916cd43dd8448eb211c80319c");
    tly_log(TLY_LOG_INFO, "four", NULL);
    tly_log_trace_set(NULL);
    tly_log(TLY_LOG_INFO, "five", NULL);
}

static void
test_log_trace_id(void **state)
{
    tly_log_init("test", TLY_LOG_INFO);
    char *out = capture_log(log_with_trace);
    const char *want[] = {"0af7651916cd43dd8448eb211c80319c", "explicit", NULL, "0af7651916cd43dd8448eb211c80319c", NULL};
    char *line = out;
    for (int i = 0; i < 5; ++i) {
        char *nl = strchr(line, '\n');
        assert_non_null(nl);
        *nl = '\0';
        json_error_t jerr;
        json_t *o = json_loads(line, JSON_REJECT_DUPLICATES, &jerr);
        assert_non_null(o);
        const char *got = json_string_value(json_object_get(o, "trace_id"));
        if (want[i] == NULL)
            assert_null(got);
        else
            assert_string_equal(got, want[i]);
        json_decref(o);
        line = nl + 1;
    }
    free(out);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_gauge), cmocka_unit_test(test_histogram),  cmocka_unit_test(test_escaping_and_full_table),
        cmocka_unit_test(test_threads),       cmocka_unit_test(test_well_known), cmocka_unit_test(test_log_trace_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
