/*
 * `tallyctl events tail|show`: the log, readable. A plain consumer with
 * assigned partitions (never a group member, never commits).
 */
#include "events.h"

#include "tally/clock.h"
#include "tally/envelope.h"
#include "tally/kafka.h"

#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static atomic_bool stop_flag;

static void
on_signal(int sig)
{
    (void)sig;
    atomic_store(&stop_flag, true);
}

static rd_kafka_t *
open_consumer(const tly_ctl_settings_t *s, int *nparts, char *err, size_t errcap)
{
    char rderr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *kv[][2] = {{"bootstrap.servers", s->kafka_brokers}, {"group.id", "tallyctl-events"},
                           {"enable.auto.commit", "false"},         {"enable.auto.offset.store", "false"},
                           {"enable.partition.eof", "true"},        {"fetch.wait.max.ms", "50"}};
    for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); ++i)
        if (rd_kafka_conf_set(conf, kv[i][0], kv[i][1], rderr, sizeof(rderr)) != RD_KAFKA_CONF_OK) {
            snprintf(err, errcap, "could not set kafka %s: %s", kv[i][0], rderr);
            rd_kafka_conf_destroy(conf);
            return NULL;
        }
    if (tly_kafka_conf_apply(conf, getenv("TALLY_KAFKA_CONFIG"), "TALLY_KAFKA_CONFIG", err, errcap) != 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, rderr, sizeof(rderr));
    if (rk == NULL) {
        snprintf(err, errcap, "could not create kafka consumer: %s", rderr);
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_poll_set_consumer(rk);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, s->kafka_topic, NULL);
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
    rd_kafka_topic_destroy(rkt);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR || md->topic_cnt != 1 || md->topics[0].err != RD_KAFKA_RESP_ERR_NO_ERROR ||
        md->topics[0].partition_cnt <= 0) {
        snprintf(err, errcap, "could not read the partitions of %s: %s", s->kafka_topic,
                 e != RD_KAFKA_RESP_ERR_NO_ERROR ? rd_kafka_err2str(e) : "unknown topic");
        if (md != NULL)
            rd_kafka_metadata_destroy(md);
        rd_kafka_destroy(rk);
        return NULL;
    }
    *nparts = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    return rk;
}

static void
close_consumer(rd_kafka_t *rk)
{
    rd_kafka_assign(rk, NULL);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
}

typedef struct st_line_t {
    int64_t when;
    int32_t partition;
    int64_t offset;
    char *text;
} line_t;

static int
cmp_line(const void *a, const void *b)
{
    const line_t *x = a, *y = b;
    if (x->when != y->when)
        return x->when < y->when ? -1 : 1;
    if (x->partition != y->partition)
        return x->partition < y->partition ? -1 : 1;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* One line per event: time, partition@offset, type vN, aggregate, job, id. */
static char *
format_line(const rd_kafka_message_t *m, const tly_envelope_t *env)
{
    char when[40], agg[TLY_UUID_STR_LEN + 1], job[TLY_UUID_STR_LEN + 1], id[TLY_UUID_STR_LEN + 1], pos[48], type[96];
    tly_clock_format_rfc3339(env->occurred_at_us, when, sizeof(when));
    tly_uuid_format(&env->aggregate_id, agg);
    tly_uuid_format(&env->id, id);
    if (tly_uuid_is_nil(&env->job_id))
        snprintf(job, sizeof(job), "-");
    else
        tly_uuid_format(&env->job_id, job);
    snprintf(pos, sizeof(pos), "p%" PRId32 "@%" PRId64, m->partition, m->offset);
    snprintf(type, sizeof(type), "%s v%d", env->type, env->version);
    char *s = NULL;
    if (asprintf(&s, "%s  %-10s  %-28s  %s %s  job %s  id %s", when, pos, type, env->aggregate_type, agg, job, id) < 0)
        abort();
    return s;
}

int
tly_ctl_events_tail(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[1024];
    const char *type = tly_ctl_arg(cmd, args, "type"), *agg_s = tly_ctl_arg(cmd, args, "aggregate");
    const char *from_s = tly_ctl_arg(cmd, args, "from"), *last_s = tly_ctl_arg(cmd, args, "last");
    bool follow = tly_ctl_arg(cmd, args, "follow") != NULL;
    tly_uuid_t agg;
    int64_t from_us = 0;
    long last = last_s != NULL ? strtol(last_s, NULL, 10) : (from_s != NULL ? 0 : 20);
    if (agg_s != NULL && !tly_uuid_parse(agg_s, &agg)) {
        tly_ctl_error("--aggregate must be a uuid");
        return TLY_CTL_USAGE;
    }
    if (from_s != NULL && !tly_clock_parse_rfc3339(from_s, &from_us)) {
        tly_ctl_error("--from must be an RFC 3339 time, e.g. 2026-11-22T14:00:00Z");
        return TLY_CTL_USAGE;
    }
    if (last < 0 || last > 1000000) {
        tly_ctl_error("--last must be 0 to 1000000");
        return TLY_CTL_USAGE;
    }
    int nparts;
    rd_kafka_t *rk = open_consumer(settings, &nparts, err, sizeof(err));
    if (rk == NULL) {
        tly_ctl_error("%s", err);
        return TLY_CTL_FAIL;
    }
    /* start offsets: the time given, else the last N of each partition (the whole log when filtering) */
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(nparts);
    int64_t *high = calloc((size_t)nparts, sizeof(int64_t));
    bool *done = calloc((size_t)nparts, sizeof(bool));
    if (high == NULL || done == NULL)
        abort();
    for (int p = 0; p < nparts; ++p) {
        int64_t lo = 0, hi = 0;
        if (rd_kafka_query_watermark_offsets(rk, settings->kafka_topic, p, &lo, &hi, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
            tly_ctl_error("could not read the end of partition %d", p);
            goto fail;
        }
        high[p] = hi;
        done[p] = hi <= lo;
        int64_t start = lo;
        if (from_s != NULL)
            start = from_us / 1000; /* a timestamp, resolved below */
        else if (type == NULL && agg_s == NULL && last > 0 && hi - last > lo)
            start = hi - last;
        rd_kafka_topic_partition_list_add(list, settings->kafka_topic, p)->offset = start;
    }
    if (from_s != NULL && rd_kafka_offsets_for_times(rk, list, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        tly_ctl_error("could not find the offsets of --from");
        goto fail;
    }
    for (int p = 0; p < nparts; ++p) {
        rd_kafka_topic_partition_t *tp = &list->elems[p];
        if (tp->offset < 0) /* no event at or after --from: start at the end */
            tp->offset = high[p];
        if (tp->offset >= high[p])
            done[p] = true;
    }
    rd_kafka_assign(rk, list);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    line_t *lines = NULL;
    size_t nlines = 0, cap = 0;
    bool caught_up = false;
    for (;;) {
        if (!caught_up) {
            caught_up = true;
            for (int p = 0; p < nparts; ++p)
                caught_up = caught_up && done[p];
            if (caught_up) {
                /* the backlog: sorted by time, the last N of it */
                qsort(lines, nlines, sizeof(*lines), cmp_line);
                size_t first = last > 0 && nlines > (size_t)last ? nlines - (size_t)last : 0;
                for (size_t i = 0; i < nlines; ++i) {
                    if (i >= first)
                        puts(lines[i].text);
                    free(lines[i].text);
                }
                free(lines);
                lines = NULL;
                nlines = 0;
                fflush(stdout);
                if (!follow)
                    break;
            }
        }
        if (atomic_load(&stop_flag))
            break;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
        if (m == NULL)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            if (m->partition >= 0 && m->partition < nparts && m->offset >= high[m->partition])
                done[m->partition] = true;
            rd_kafka_message_destroy(m);
            continue;
        }
        if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            fprintf(stderr, "tallyctl: kafka: %s\n", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        if (m->partition >= 0 && m->partition < nparts && m->offset + 1 >= high[m->partition])
            done[m->partition] = true;
        tly_envelope_t env;
        char why[256];
        if (tly_envelope_parse(m->payload != NULL ? m->payload : "", m->len, &env, why, sizeof(why)) != 0) {
            fprintf(stderr, "tallyctl: p%" PRId32 "@%" PRId64 " is not an event: %s\n", m->partition, m->offset, why);
            rd_kafka_message_destroy(m);
            continue;
        }
        bool match = (type == NULL || strcmp(env.type, type) == 0) &&
                     (agg_s == NULL || memcmp(&env.aggregate_id, &agg, sizeof(agg)) == 0) &&
                     (from_s == NULL || env.occurred_at_us >= from_us);
        if (match) {
            char *text = format_line(m, &env);
            if (caught_up) {
                puts(text);
                fflush(stdout);
                free(text);
            } else {
                if (nlines == cap) {
                    cap = cap == 0 ? 1024 : cap * 2;
                    if ((lines = realloc(lines, cap * sizeof(*lines))) == NULL)
                        abort();
                }
                lines[nlines++] = (line_t){env.occurred_at_us, m->partition, m->offset, text};
            }
        }
        tly_envelope_clear(&env);
        rd_kafka_message_destroy(m);
    }
    for (size_t i = 0; i < nlines; ++i)
        free(lines[i].text);
    free(lines);
    rd_kafka_topic_partition_list_destroy(list);
    free(high);
    free(done);
    close_consumer(rk);
    return TLY_CTL_OK;
fail:
    rd_kafka_topic_partition_list_destroy(list);
    free(high);
    free(done);
    close_consumer(rk);
    return TLY_CTL_FAIL;
}

static void
print_event(const rd_kafka_message_t *m)
{
    char ts[40] = "-", buf[256];
    rd_kafka_timestamp_type_t tstype;
    int64_t ms = rd_kafka_message_timestamp(m, &tstype);
    if (ms >= 0)
        tly_clock_format_rfc3339(ms * 1000, ts, sizeof(ts));
    printf("partition:  %" PRId32 "\noffset:     %" PRId64 "\ntimestamp:  %s\nkey:        %.*s\n", m->partition, m->offset, ts,
           (int)m->key_len, m->key != NULL ? (const char *)m->key : "");
    rd_kafka_headers_t *hdrs;
    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        const char *name;
        const void *val;
        size_t size;
        for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &val, &size) == RD_KAFKA_RESP_ERR_NO_ERROR; ++i) {
            snprintf(buf, sizeof(buf), "header %s:", name);
            printf("%-12s%.*s\n", buf, (int)size, val != NULL ? (const char *)val : "");
        }
    }
    json_error_t jerr;
    json_t *o = json_loadb(m->payload != NULL ? m->payload : "", m->len, 0, &jerr);
    if (o != NULL) {
        char *pretty = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        printf("\n%s\n", pretty);
        free(pretty);
        json_decref(o);
    } else {
        printf("\n%.*s\n", (int)m->len, m->payload != NULL ? (const char *)m->payload : "");
    }
}

int
tly_ctl_events_show(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[1024], want[TLY_UUID_STR_LEN + 1];
    tly_uuid_t id;
    if (!tly_uuid_parse(args->pos[0], &id)) {
        tly_ctl_error("the event id must be a uuid");
        return TLY_CTL_USAGE;
    }
    tly_uuid_format(&id, want);
    int nparts;
    rd_kafka_t *rk = open_consumer(settings, &nparts, err, sizeof(err));
    if (rk == NULL) {
        tly_ctl_error("%s", err);
        return TLY_CTL_FAIL;
    }
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(nparts);
    int64_t *high = calloc((size_t)nparts, sizeof(int64_t));
    int pending = 0, found = 0;
    if (high == NULL)
        abort();
    for (int p = 0; p < nparts; ++p) {
        int64_t lo = 0, hi = 0;
        if (rd_kafka_query_watermark_offsets(rk, settings->kafka_topic, p, &lo, &hi, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR)
            continue;
        high[p] = hi;
        if (hi > lo) {
            rd_kafka_topic_partition_list_add(list, settings->kafka_topic, p)->offset = lo;
            ++pending;
        }
    }
    rd_kafka_assign(rk, list);
    int idle = 0;
    while (pending > 0 && idle < 100) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (m == NULL) {
            ++idle;
            continue;
        }
        idle = 0;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            --pending;
        } else if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR && m->payload != NULL &&
                   memmem(m->payload, m->len, want, TLY_UUID_STR_LEN) != NULL) {
            tly_envelope_t env;
            char why[256];
            if (tly_envelope_parse(m->payload, m->len, &env, why, sizeof(why)) == 0) {
                if (memcmp(&env.id, &id, sizeof(id)) == 0) {
                    if (found++ > 0)
                        printf("\n--- the same event again ---\n");
                    print_event(m);
                }
                tly_envelope_clear(&env);
            }
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_topic_partition_list_destroy(list);
    free(high);
    close_consumer(rk);
    if (found == 0) {
        tly_ctl_error("no event %s in %s", want, settings->kafka_topic);
        return TLY_CTL_FAIL;
    }
    return TLY_CTL_OK;
}
