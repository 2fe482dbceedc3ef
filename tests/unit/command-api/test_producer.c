/*
 * The command API's one producer (services/command-api/producer.c) against
 * librdkafka's mock cluster: two loop threads produce on the shared
 * producer, and every delivery report comes back on the loop thread of the
 * op it belongs to, once. cmd_op_delivered is wrapped (-Wl,--wrap), so the
 * test sees each report as the loop would.
 */
#include "internal.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <librdkafka/rdkafka_mock.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#define TOPIC "test.producer"
#define PER_THREAD 200
#define THREADS 2

static cmd_producer_t *producer;
static __thread cmd_mailbox_t *my_mailbox;
static __thread int my_reports;
static atomic_int wrong_thread, failed;

/* What the loop thread runs for each report that reached it. */
void __wrap_cmd_op_delivered(cmd_op_t *op);
void
__wrap_cmd_op_delivered(cmd_op_t *op)
{
    if (op->mailbox != my_mailbox)
        atomic_fetch_add(&wrong_thread, 1);
    if (op->report_err != RD_KAFKA_RESP_ERR_NO_ERROR)
        atomic_fetch_add(&failed, 1);
    ++my_reports;
}

typedef struct {
    cmd_op_t ops[PER_THREAD];
    int reports;
} loop_thread_t;

static void *
loop_main(void *arg)
{
    loop_thread_t *t = arg;
    h2o_evloop_t *loop = h2o_evloop_create();
    my_mailbox = cmd_mailbox_open(producer, loop);
    for (int i = 0; i < PER_THREAD; ++i) {
        char key[16];
        snprintf(key, sizeof(key), "k%d", i % 7);
        t->ops[i].mailbox = my_mailbox;
        if (tly_kafka_produce_raw(cmd_producer_kafka(producer), TOPIC, key, "{}", 2, "T", 1, NULL, &t->ops[i]) !=
            RD_KAFKA_RESP_ERR_NO_ERROR)
            atomic_fetch_add(&failed, 1);
    }
    for (int waited = 0; my_reports < PER_THREAD && waited < 20000; waited += 10)
        h2o_evloop_run(loop, 10);
    cmd_mailbox_close(my_mailbox, loop);
    t->reports = my_reports;
    return NULL;
}

static void
test_reports_reach_their_loop(void **state)
{
    (void)state;
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    assert_int_equal(rd_kafka_conf_set(conf, "log_level", "3", err, sizeof(err)), RD_KAFKA_CONF_OK);
    rd_kafka_t *mrk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    assert_non_null(mrk);
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(mrk, 1);
    assert_non_null(mc);
    assert_int_equal(rd_kafka_mock_topic_create(mc, TOPIC, 3, 1), RD_KAFKA_RESP_ERR_NO_ERROR);

    tly_command_api_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.kafka_brokers = (char *)rd_kafka_mock_cluster_bootstraps(mc);
    cfg.kafka_timeout_ms = 10000;
    producer = cmd_producer_create(&cfg, err, sizeof(err));
    assert_non_null(producer);

    static loop_thread_t threads[THREADS];
    pthread_t tids[THREADS];
    for (int i = 0; i < THREADS; ++i)
        assert_int_equal(pthread_create(&tids[i], NULL, loop_main, &threads[i]), 0);
    for (int i = 0; i < THREADS; ++i) {
        pthread_join(tids[i], NULL);
        assert_int_equal(threads[i].reports, PER_THREAD);
    }
    assert_int_equal(atomic_load(&wrong_thread), 0);
    assert_int_equal(atomic_load(&failed), 0);
    cmd_producer_destroy(producer);
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(mrk);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reports_reach_their_loop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
