/*
 * Issue 22's sequence against librdkafka's mock cluster (no real broker, no
 * database): a consumer pauses partitions as the fenced consumer does
 * (rd_kafka_pause_partitions), its group rebalances (revocation, then the
 * same partitions assigned back, as after a session timeout), and the
 * partitions must then be consumed from the positions given at assignment,
 * contiguously, to the log end. tly_consumer_assign (what the consumer's
 * rebalance callback assigns with) must do it; plain rd_kafka_assign is
 * checked to leave the paused partitions stuck, which is what the worker did
 * before (so the test does provoke the bug).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "runtime/consumer.h"
#include "tally/clock.h"
#include "tally/kafka.h"

#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOPIC "t22"
#define NPART 4
#define PER_ROUND 40 /* messages per partition per round */
#define STORED 5     /* the stored position a fenced partition goes back to (its batch rolled back) */

/* Kafka protocol: API key of Heartbeat and the error that makes a member rejoin (revoke, then assign). */
#define API_HEARTBEAT 12

typedef struct st_fixture_t {
    rd_kafka_t *prk; /* owns the mock cluster, produces */
    rd_kafka_mock_cluster_t *mc;
    char bootstraps[256];
} fixture_t;

typedef struct st_cons_t {
    rd_kafka_t *rk;
    bool with_fix; /* assign with tly_consumer_assign, else rd_kafka_assign */
    int assigns, revokes;
    int64_t pos[NPART]; /* "stored positions": the next offset each partition must deliver */
    bool gap;           /* a message past the position arrived: something was skipped */
} cons_t;

static void
produce_round(fixture_t *f)
{
    for (int p = 0; p < NPART; ++p)
        for (int i = 0; i < PER_ROUND; ++i) {
            char v[32];
            int n = snprintf(v, sizeof(v), "p%d-%d", p, i);
            assert_int_equal(rd_kafka_producev(f->prk, RD_KAFKA_V_TOPIC(TOPIC), RD_KAFKA_V_PARTITION(p),
                                               RD_KAFKA_V_VALUE(v, (size_t)n), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                               RD_KAFKA_V_END),
                             RD_KAFKA_RESP_ERR_NO_ERROR);
        }
    assert_int_equal(rd_kafka_flush(f->prk, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

static int
setup(void **state)
{
    static fixture_t f;
    char err[256];
    memset(&f, 0, sizeof(f));
    /* a short session, so that a member the group dropped is replaced in seconds (the mock's rebalance waits for it) */
    setenv("TALLY_KAFKA_CONSUMER_CONFIG", "session.timeout.ms=3000;heartbeat.interval.ms=300", 1);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "log_level", "3", err, sizeof(err)) != RD_KAFKA_CONF_OK)
        return -1;
    f.prk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (f.prk == NULL)
        return -1;
    f.mc = rd_kafka_mock_cluster_new(f.prk, 1);
    if (f.mc == NULL || rd_kafka_mock_topic_create(f.mc, TOPIC, NPART, 1) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return -1;
    snprintf(f.bootstraps, sizeof(f.bootstraps), "%s", rd_kafka_mock_cluster_bootstraps(f.mc));
    rd_kafka_brokers_add(f.prk, f.bootstraps);
    *state = &f;
    return 0;
}

static int
teardown(void **state)
{
    fixture_t *f = *state;
    rd_kafka_mock_cluster_destroy(f->mc);
    rd_kafka_destroy(f->prk);
    return 0;
}

/* What the worker's rebalance callback does, minus the claim: positions in, assignment out. */
static void
on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *list, void *opaque)
{
    cons_t *c = opaque;
    if (err != RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        c->revokes++;
        (void)tly_consumer_assign(rk, NULL);
        return;
    }
    c->assigns++;
    for (int i = 0; i < list->cnt; ++i)
        list->elems[i].offset = c->pos[list->elems[i].partition];
    (void)(c->with_fix ? tly_consumer_assign(rk, list) : rd_kafka_assign(rk, list));
}

static void
cons_open(cons_t *c, const fixture_t *f, const char *group, bool with_fix)
{
    char err[256];
    memset(c, 0, sizeof(*c));
    c->with_fix = with_fix;
    /* the worker's own consumer settings (session timeout, prefetch, ...) */
    c->rk = tly_kafka_consumer_create(f->bootstraps, group, 0, 0, on_rebalance, c, err, sizeof(err));
    assert_non_null(c->rk);
    rd_kafka_topic_partition_list_t *t = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(t, TOPIC, RD_KAFKA_PARTITION_UA);
    assert_int_equal(rd_kafka_subscribe(c->rk, t), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_topic_partition_list_destroy(t);
}

static void
cons_close(cons_t *c)
{
    rd_kafka_consumer_close(c->rk);
    rd_kafka_destroy(c->rk);
}

/* Polls for up to `ms`, or until `want_assigns` assignments happened and every partition in `mask` reached `end`. */
static void
poll_until(cons_t *c, int want_assigns, unsigned mask, int64_t end, int ms)
{
    int64_t deadline = tly_clock_mono_us() + (int64_t)ms * 1000;
    while (tly_clock_mono_us() < deadline) {
        bool done = c->assigns >= want_assigns;
        for (int p = 0; p < NPART && done; ++p)
            done = !(mask & (1u << p)) || c->pos[p] >= end;
        if (done)
            return;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c->rk, 50);
        if (m == NULL)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR && m->partition >= 0 && m->partition < NPART) {
            if (m->offset > c->pos[m->partition])
                c->gap = true;
            else if (m->offset == c->pos[m->partition])
                c->pos[m->partition]++;
        }
        rd_kafka_message_destroy(m);
    }
}

static void
pause_fenced(cons_t *c, unsigned mask)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(NPART);
    for (int p = 0; p < NPART; ++p)
        if (mask & (1u << p)) {
            rd_kafka_topic_partition_list_add(l, TOPIC, p);
            c->pos[p] = STORED; /* the batch that hit the fence was rolled back */
        }
    assert_int_equal(rd_kafka_pause_partitions(c->rk, l), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_topic_partition_list_destroy(l);
}

/*
 * The sequence: assigned everything, consumed the first round, two
 * partitions fenced (paused, positions back to STORED), a second round
 * produced, then the group makes the member rejoin (`rejoin_err` on a
 * heartbeat): revoked, assigned the same partitions again. Returns the
 * consumer after `settle_ms` of polling.
 */
static void
run_sequence(fixture_t *f, cons_t *c, const char *group, bool with_fix, rd_kafka_resp_err_t rejoin_err, int round)
{
    const unsigned all = (1u << NPART) - 1, fenced = (1u << 1) | (1u << 2);
    cons_open(c, f, group, with_fix);
    poll_until(c, 1, all, (int64_t)PER_ROUND * round, 15000);
    assert_int_equal(c->assigns, 1);
    for (int p = 0; p < NPART; ++p)
        assert_int_equal(c->pos[p], (int64_t)PER_ROUND * round);
    pause_fenced(c, fenced);
    produce_round(f);
    rd_kafka_mock_push_request_errors(f->mc, API_HEARTBEAT, 1, rejoin_err);
    /* the partitions never fenced go on to the end either way; the rebalance comes with the next heartbeat */
    poll_until(c, 2, all & ~fenced, (int64_t)PER_ROUND * (round + 1), 15000);
    assert_int_equal(c->assigns, 2);
    assert_true(c->revokes >= 1);
}

static cons_t cur; /* the test's consumer; closed by close_consumer whatever the test's outcome */

static int
close_consumer(void **state)
{
    (void)state;
    if (cur.rk != NULL)
        cons_close(&cur);
    cur.rk = NULL;
    return 0;
}

static void
test_paused_partition_is_fetched_after_reassignment(void **state)
{
    fixture_t *f = *state;
    produce_round(f);
    run_sequence(f, &cur, "g-fix", true, RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS, 1);
    poll_until(&cur, 2, (1u << NPART) - 1, PER_ROUND * 2, 10000);
    for (int p = 0; p < NPART; ++p)
        assert_int_equal(cur.pos[p], PER_ROUND * 2); /* the fenced ones from STORED on, contiguously */
    assert_false(cur.gap);
}

/* The member dropped by the group (a session timeout) rejoins with a new id: the same. */
static void
test_paused_partition_is_fetched_after_losing_membership(void **state)
{
    fixture_t *f = *state;
    run_sequence(f, &cur, "g-lost", true, RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID, 2);
    poll_until(&cur, 2, (1u << NPART) - 1, PER_ROUND * 3, 10000);
    for (int p = 0; p < NPART; ++p)
        assert_int_equal(cur.pos[p], PER_ROUND * 3);
    assert_false(cur.gap);
}

/* The precondition: with a plain rd_kafka_assign, librdkafka keeps the application's pause and the partitions stay stuck. */
static void
test_plain_assign_leaves_paused_partition_stuck(void **state)
{
    fixture_t *f = *state;
    run_sequence(f, &cur, "g-plain", false, RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS, 3);
    poll_until(&cur, 2, (1u << NPART) - 1, PER_ROUND * 4, 3000);
    assert_int_equal(cur.pos[0], PER_ROUND * 4);
    assert_int_equal(cur.pos[3], PER_ROUND * 4);
    assert_int_equal(cur.pos[1], STORED);
    assert_int_equal(cur.pos[2], STORED);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_paused_partition_is_fetched_after_reassignment, close_consumer),
        cmocka_unit_test_teardown(test_paused_partition_is_fetched_after_losing_membership, close_consumer),
        cmocka_unit_test_teardown(test_plain_assign_leaves_paused_partition_stuck, close_consumer),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
