/*
 * One Kafka producer for the whole command-API process, and the way its
 * delivery reports get back to the loop thread of the op they belong to.
 *
 * Why one (until 2026-12-06 each loop thread had its own): the broker's work
 * goes with the number of produce requests, not of records. With a producer
 * per thread, each thread's linger window (1 ms) closed on its own few
 * records; one producer gathers every thread's records of that window into
 * one request per partition leader. Figures and the A/B are in
 * docs/performance.md.
 *
 * Routing: librdkafka serves delivery reports on whichever thread calls
 * rd_kafka_poll; here that is one poller thread of ours. The report callback
 * touches nothing of the op but its mailbox pointer and the two report
 * fields, then hands the op to its loop thread through an
 * h2o_multithread_receiver (a mutex-protected list and one wake-up of the
 * loop per batch of messages). The loop thread then runs cmd_op_delivered
 * exactly as it ran the report callback before. A mailbox outlives its loop:
 * once the thread is disposed, the mailbox is closed and a late report is
 * dropped (its op is past the shutdown grace; its record stays pending under
 * its lease, as before).
 */
#include "internal.h"
#include "tally/log.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#define POLL_MS 100
#define FLUSH_MS 2000

struct st_cmd_mailbox_t {
    struct st_cmd_mailbox_t *next; /* in the producer's list, freed with it */
    pthread_mutex_t lock;
    bool open;
    h2o_multithread_queue_t *queue;
    h2o_multithread_receiver_t receiver;
};

struct st_cmd_producer_t {
    rd_kafka_t *rk;
    pthread_t poller;
    atomic_bool stop;
    pthread_mutex_t lock; /* mailboxes */
    cmd_mailbox_t *mailboxes;
};

/* On librdkafka's polling thread: record the report in the op and wake its loop. */
static void
on_report(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
    cmd_op_t *op = msg->_private;
    cmd_mailbox_t *mb = op->mailbox;
    op->report_err = msg->err;
    op->report_latency_us = rd_kafka_message_latency(msg);
    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) { /* where the request event is in the log: the 202's consistency token */
        op->log_partition = msg->partition;
        op->log_offset = msg->offset;
    }
    pthread_mutex_lock(&mb->lock);
    if (mb->open)
        h2o_multithread_send_message(&mb->receiver, &op->report);
    pthread_mutex_unlock(&mb->lock);
}

/* On the op's loop thread: the reports gathered since the last wake-up. */
static void
on_reports(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    while (!h2o_linklist_is_empty(messages)) {
        h2o_multithread_message_t *m = H2O_STRUCT_FROM_MEMBER(h2o_multithread_message_t, link, messages->next);
        h2o_linklist_unlink(&m->link);
        cmd_op_delivered(H2O_STRUCT_FROM_MEMBER(cmd_op_t, report, m));
    }
}

static void *
poller_main(void *arg)
{
    cmd_producer_t *p = arg;
    while (!atomic_load(&p->stop))
        rd_kafka_poll(p->rk, POLL_MS);
    return NULL;
}

cmd_producer_t *
cmd_producer_create(const tly_command_api_config_t *cfg, char *err, size_t errcap)
{
    cmd_producer_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        abort();
    pthread_mutex_init(&p->lock, NULL);
    p->rk = tly_kafka_producer_create(cfg->kafka_brokers, (int)cfg->kafka_timeout_ms, on_report, p, err, errcap);
    if (p->rk == NULL) {
        pthread_mutex_destroy(&p->lock);
        free(p);
        return NULL;
    }
    if (pthread_create(&p->poller, NULL, poller_main, p) != 0)
        abort();
    return p;
}

rd_kafka_t *
cmd_producer_kafka(cmd_producer_t *p)
{
    return p->rk;
}

void
cmd_producer_destroy(cmd_producer_t *p)
{
    /* every loop is gone: what is still queued is delivered if it can be, its reports dropped */
    rd_kafka_flush(p->rk, FLUSH_MS);
    atomic_store(&p->stop, true);
    pthread_join(p->poller, NULL);
    rd_kafka_destroy(p->rk);
    for (cmd_mailbox_t *mb = p->mailboxes, *next; mb != NULL; mb = next) {
        next = mb->next;
        pthread_mutex_destroy(&mb->lock);
        free(mb);
    }
    pthread_mutex_destroy(&p->lock);
    free(p);
}

cmd_mailbox_t *
cmd_mailbox_open(cmd_producer_t *p, h2o_evloop_t *loop)
{
    cmd_mailbox_t *mb = calloc(1, sizeof(*mb));
    if (mb == NULL)
        abort();
    pthread_mutex_init(&mb->lock, NULL);
    mb->queue = h2o_multithread_create_queue(loop);
    h2o_multithread_register_receiver(mb->queue, &mb->receiver, on_reports);
    mb->open = true;
    pthread_mutex_lock(&p->lock);
    mb->next = p->mailboxes;
    p->mailboxes = mb;
    pthread_mutex_unlock(&p->lock);
    return mb;
}

void
cmd_mailbox_close(cmd_mailbox_t *mb, h2o_evloop_t *loop)
{
    pthread_mutex_lock(&mb->lock);
    mb->open = false;
    pthread_mutex_unlock(&mb->lock);
    /* serve the reports already handed over (the receiver must be empty when it goes); later ones are dropped */
    h2o_evloop_run(loop, 0);
    h2o_multithread_unregister_receiver(mb->queue, &mb->receiver);
    h2o_multithread_destroy_queue(mb->queue);
    mb->queue = NULL;
}
