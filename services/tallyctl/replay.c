/*
 * Replay: tally.events from offset 0 into a shadow schema, through the
 * worker's projection functions (projection.h), never the decider, never a
 * producer. See README.md in this directory for the phases and the swap.
 *
 * Bookkeeping lives in the shadow schema itself, committed in the same
 * transaction as the rows it describes:
 *   _replay_meta       mode, models, --until, state (running, done, swapped)
 *   _replay_positions  per partition: next offset to apply, target end offset
 *   _replay_applied    event ids applied (the log may hold an event twice):
 *                      one row per batch, its ids' 16 bytes each end to end;
 *                      shadows of earlier versions have _replay_dedup
 *                      (one uuid per row) instead, read on resume too
 *   _replay_failures   events the projection refused (what the live
 *                      projector would have parked in dead_letters)
 * so a replay killed at any moment resumes where its last batch committed.
 */
#include "replay.h"
#include "db.h"
#include "tally/envscan.h"
#include "jarena.h"
#include "livewatch.h"
#include "tally/pgx.h"
#include "tally/ledger/projection.h"

#include "tally/kafka.h"
#include "tally/clock.h"
#include "tally/envelope.h"
#include "tally/pg.h"
#include "tally/ledger/upcast.h"

#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define REPLAY_LOCK_KEY 7246016001LL /* pg advisory lock: one replay or verify at a time */
#define MAX_PARTS 4096
#define CATCHUP_ROUNDS 8
#define CATCHUP_CLOSE_ENOUGH 2000 /* events behind the projector at which the final, locked catch-up starts */
#define STALL_US (60 * 1000000LL)
#define FINAL_TRIES 5
#define PARSE_THREADS 4 /* at most: one per CPU (the machine's PostgreSQL and broker want theirs too) */

/* --- read models --------------------------------------------------------- */

/* The models of projection.h by table name. "transfers" is every bit of
   TLY_MODEL_ALL that is not one of the three below (the saga's model), and
   exists only when that is non-zero and public.transfers is a table. */
#define KNOWN_MASK ((unsigned)TLY_MODEL_ACCOUNTS | (unsigned)TLY_MODEL_LEDGER | (unsigned)TLY_MODEL_JOBS)
static const struct {
    const char *name;
    const char *table;
    unsigned mask;
} model_names[] = {
    {"accounts", "accounts", TLY_MODEL_ACCOUNTS},
    {"ledger_entries", "ledger_entries", TLY_MODEL_LEDGER},
    {"ledger", "ledger_entries", TLY_MODEL_LEDGER},
    {"jobs", "jobs", TLY_MODEL_JOBS},
    {"transfers", "transfers", (unsigned)TLY_MODEL_ALL & ~KNOWN_MASK},
};
#define NMODEL_NAMES (sizeof(model_names) / sizeof(model_names[0]))

static bool
table_exists(PGconn *conn, const char *table)
{
    char err[256], q[160];
    snprintf(q, sizeof(q), "public.%s", table);
    const char *vals[] = {q};
    PGresult *res = tly_ctl_db_query(conn, "look up table", "SELECT to_regclass($1) IS NOT NULL", 1, vals, err, sizeof(err));
    bool ok = res != NULL && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return ok;
}

static bool
model_available(PGconn *conn, size_t i)
{
    return model_names[i].mask != 0 && (conn == NULL || table_exists(conn, model_names[i].table));
}

int
tly_ctl_models_parse(PGconn *conn, const char *list, unsigned *mask, const char **tables, int *ntables, char *err, size_t errcap)
{
    *mask = 0;
    *ntables = 0;
    if (list == NULL) {
        for (size_t i = 0; i < NMODEL_NAMES; ++i) {
            if (strcmp(model_names[i].name, model_names[i].table) != 0 || !model_available(conn, i))
                continue;
            *mask |= model_names[i].mask;
            tables[(*ntables)++] = model_names[i].table;
        }
        return 0;
    }
    for (const char *p = list; *p != '\0';) {
        size_t n = strcspn(p, ",");
        size_t i;
        for (i = 0; i < NMODEL_NAMES; ++i)
            if (strlen(model_names[i].name) == n && memcmp(model_names[i].name, p, n) == 0)
                break;
        if (i == NMODEL_NAMES || !model_available(conn, i)) {
            snprintf(err, errcap, "unknown read model \"%.*s\" (known: accounts, ledger_entries, jobs%s)", (int)n, p,
                     model_available(conn, 4) ? ", transfers" : "");
            return -1;
        }
        if ((*mask & model_names[i].mask) == 0) {
            *mask |= model_names[i].mask;
            tables[(*ntables)++] = model_names[i].table;
        }
        p += n;
        p += strspn(p, ",");
    }
    if (*ntables == 0) {
        snprintf(err, errcap, "--projection names no read model");
        return -1;
    }
    return 0;
}

int
tly_ctl_until_parse(const char *s, int64_t *until_us, bool *has_time, int64_t *ends, int maxends, int *nends, char *err,
                    size_t errcap)
{
    *has_time = false;
    *nends = 0;
    for (int i = 0; i < maxends; ++i)
        ends[i] = -1;
    if (tly_clock_parse_rfc3339(s, until_us)) {
        *has_time = true;
        return 0;
    }
    for (const char *p = s; *p != '\0';) {
        char *end;
        errno = 0;
        long part = strtol(p, &end, 10);
        if (end == p || *end != ':' || part < 0 || part >= maxends || errno != 0)
            goto bad;
        p = end + 1;
        long long off = strtoll(p, &end, 10);
        if (end == p || off < 0 || errno != 0 || (*end != ',' && *end != '\0'))
            goto bad;
        ends[part] = off;
        if (part + 1 > *nends)
            *nends = (int)part + 1;
        p = *end == ',' ? end + 1 : end;
    }
    if (*nends > 0)
        return 0;
bad:
    snprintf(err, errcap, "--until must be an RFC 3339 time (2026-11-22T14:00:00Z) or partition:offset pairs (0:1200,1:980)");
    return -1;
}

bool
tly_ctl_schema_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63 || !(islower((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (size_t i = 0; i < n; ++i)
        if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '_'))
            return false;
    return strcmp(s, "public") != 0 && strncmp(s, "pg_", 3) != 0 && strcmp(s, "information_schema") != 0;
}

/* --- a set of event ids (open addressing, tombstones) --------------------- */

typedef struct st_idset_t {
    uint8_t (*keys)[16];
    uint8_t *state; /* 0 empty, 1 used, 2 deleted */
    size_t cap, used;
} idset_t;

static uint64_t
id_hash(const uint8_t *k)
{
    uint64_t h;
    memcpy(&h, k + 8, sizeof(h)); /* v4 and v5 ids: random bits here */
    return h * 0x9e3779b97f4a7c15ULL;
}

static void idset_add(idset_t *s, const uint8_t *k);

static void
idset_grow(idset_t *s)
{
    idset_t old = *s;
    s->cap = old.cap == 0 ? 1 << 16 : old.cap * 2;
    s->keys = malloc(s->cap * 16);
    s->state = calloc(s->cap, 1);
    if (s->keys == NULL || s->state == NULL)
        abort();
    s->used = 0;
    for (size_t i = 0; i < old.cap; ++i)
        if (old.state[i] == 1)
            idset_add(s, old.keys[i]);
    free(old.keys);
    free(old.state);
}

static bool
idset_find(const idset_t *s, const uint8_t *k, size_t *slot)
{
    if (s->cap == 0)
        return false;
    for (size_t i = id_hash(k) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (s->state[i] == 0)
            return false;
        if (s->state[i] == 1 && memcmp(s->keys[i], k, 16) == 0) {
            *slot = i;
            return true;
        }
    }
}

static void
idset_add(idset_t *s, const uint8_t *k)
{
    if ((s->used + 1) * 2 > s->cap)
        idset_grow(s);
    size_t i = id_hash(k) & (s->cap - 1);
    while (s->state[i] == 1)
        i = (i + 1) & (s->cap - 1);
    memcpy(s->keys[i], k, 16);
    if (s->state[i] == 0)
        s->used++;
    s->state[i] = 1;
}

static void
idset_del(idset_t *s, const uint8_t *k)
{
    size_t slot;
    if (idset_find(s, k, &slot))
        s->state[slot] = 2;
}

/* --- the replay ---------------------------------------------------------- */

/* What reading a message gave, before any bookkeeping (see prepare). */
typedef enum en_prep_kind_t {
    PREP_OK,      /* env holds the event, upcast to the version the projection knows */
    PREP_INVALID, /* not an envelope, or the upcast failed: why */
    PREP_UNKNOWN, /* a type the projections do not know: skipped */
    PREP_TOO_NEW, /* a version newer than this tallyctl knows: env.type and env.version */
} prep_kind_t;

typedef struct st_prepared_t {
    prep_kind_t kind;
    tly_envelope_t env; /* data is NULL unless PREP_OK */
    char *why;          /* PREP_INVALID: malloc'd */
} prepared_t;

/* What becomes of a message of a batch (decided by the reader, in log order). */
typedef enum en_fate_t {
    FATE_APPLY,   /* a new event: folded (or, on the slow path, applied under a savepoint) */
    FATE_DUP,     /* its id was applied before */
    FATE_SKIP,    /* unknown type, or after --until */
    FATE_INVALID, /* not an envelope, or not upcast: a _replay_failures row (slow path) */
    FATE_FATAL,   /* newer than this tallyctl knows: the replay stops before this batch */
} fate_t;

/*
 * One batch: the messages read from Kafka, each one parsed and upcast, what
 * becomes of it, and the new events folded. The reader thread fills the next
 * unit while the current one is written; during a phase only that thread
 * touches the consumer, gpos, reached and the set of ids seen (so a batch
 * that fails keeps its ids seen: its retry applies the same events; ids of
 * batches never written are forgotten when the phase ends).
 */
typedef struct st_unit_t {
    rd_kafka_message_t **msgs;
    prepared_t *prep;
    uint8_t *fate; /* fate_t per message */
    bool *reached; /* reached[] when this batch's last message was read: what its positions may claim */
    int n;
    int fatal;           /* the message of FATE_FATAL, or -1 */
    bool invalid;        /* a FATE_INVALID message: straight to the slow path */
    int64_t dups, skips; /* messages of those fates */
    uint8_t (*ids)[16];  /* ids of the FATE_APPLY events, in order */
    size_t nids, cap_ids;
    tly_projection_batch_t *segs[8]; /* the FATE_APPLY events folded: a new one where a batch must be flushed first */
    int nsegs;
    bool folded;                            /* segs hold the events (a flush empties them) */
    tly_ctl_jarena_t arenas[PARSE_THREADS]; /* the events' JSON, one arena per parse thread (jarena.h) */
} unit_t;

struct st_tly_ctl_replay_t {
    tly_ctl_replay_opts_t o;
    const tly_ctl_settings_t *s;
    PGconn *conn;
    rd_kafka_t *rk;
    char schema[TLY_CTL_SCHEMA_MAX];
    int shadow_n;
    bool created;
    unsigned mask;
    const char *tables[TLY_CTL_MAX_TABLES];
    int ntables;
    char models_text[128];
    int64_t until_us;
    bool has_until;
    int64_t until_end[MAX_PARTS];
    int nparts;
    int64_t *pos, *staged, *end, *gpos, *saved_pos;
    bool *reached;
    idset_t seen;
    idset_t jobs; /* job ids the shadow may hold: a job not in here is new, written by COPY */
    uint8_t (*fresh)[16];
    size_t nfresh, fresh_cap;
    unit_t units[2]; /* the batch being written and the one being read meanwhile */
    /* statistics */
    int64_t processed, applied, dups, failed, skipped;
    int64_t t0_us, last_print_us, phase_total;
    bool tty;
    int batches;
    int64_t pace_t0_us, paced;  /* pacing: when the first batch at this rate was written, events written since */
    int batch_now;              /* events per batch now: o.batch (the units' capacity), or fewer while paced */
    int64_t rate_now;           /* events/s now: o.max_rate, o.busy_rate while yielding, 0 = no limit */
    tly_ctl_livewatch_t *watch; /* o.busy_rate: is the live system working? */
    bool yielding;
    int64_t yield_since_us, yielded_us;
    bool in_final;
    int parse_threads;
};

PGconn *
tly_ctl_replay_conn(tly_ctl_replay_t *r)
{
    return r->conn;
}
const char *
tly_ctl_replay_schema(const tly_ctl_replay_t *r)
{
    return r->schema;
}
int
tly_ctl_replay_tables(const tly_ctl_replay_t *r, const char *const **tables)
{
    *tables = r->tables;
    return r->ntables;
}
int64_t
tly_ctl_replay_failed(const tly_ctl_replay_t *r)
{
    return r->failed;
}

static int
exec(tly_ctl_replay_t *r, const char *sql, char *err, size_t errcap)
{
    return tly_pg_exec(r->conn, sql, err, errcap);
}

static int execf(tly_ctl_replay_t *r, char *err, size_t errcap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int
execf(tly_ctl_replay_t *r, char *err, size_t errcap, const char *fmt, ...)
{
    char sql[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(sql)) {
        snprintf(err, errcap, "statement too long");
        return -1;
    }
    return tly_pg_exec(r->conn, sql, err, errcap);
}

static PGresult *queryf(tly_ctl_replay_t *r, const char *what, int n, const char *const *vals, char *err, size_t errcap,
                        const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static PGresult *
queryf(tly_ctl_replay_t *r, const char *what, int n, const char *const *vals, char *err, size_t errcap, const char *fmt, ...)
{
    char sql[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    return tly_ctl_db_query(r->conn, what, sql, n, vals, err, errcap);
}

static void
rollback(tly_ctl_replay_t *r)
{
    char err[256];
    if (!tly_pg_broken(r->conn) && PQtransactionStatus(r->conn) != PQTRANS_IDLE)
        (void)!tly_pg_exec(r->conn, "ROLLBACK", err, sizeof(err));
}

/* --- progress ------------------------------------------------------------ */

static int64_t
remaining(const tly_ctl_replay_t *r)
{
    int64_t left = 0;
    for (int p = 0; p < r->nparts; ++p)
        if (r->end[p] > r->staged[p])
            left += r->end[p] - r->staged[p];
    return left;
}

static void
progress(tly_ctl_replay_t *r, bool force)
{
    if (r->o.quiet)
        return;
    int64_t now = tly_clock_mono_us();
    if (!force && now - r->last_print_us < (r->tty ? 200000 : 2000000))
        return;
    r->last_print_us = now;
    double secs = (double)(now - r->t0_us) / 1e6;
    double rate = secs > 0 ? (double)r->processed / secs : 0;
    int64_t left = remaining(r);
    double eta = rate > 0 ? (double)left / rate : 0;
    char lag[256] = "";
    size_t used = 0;
    int shown = 0;
    for (int p = 0; p < r->nparts && used + 24 < sizeof(lag); ++p) {
        int64_t l = r->end[p] - r->staged[p];
        if (l <= 0)
            continue;
        if (shown++ == 8) {
            used += (size_t)snprintf(lag + used, sizeof(lag) - used, " ...");
            break;
        }
        used += (size_t)snprintf(lag + used, sizeof(lag) - used, " p%d:%" PRId64, p, l);
    }
    int64_t total = r->processed + left;
    double frac = total > 0 ? (double)r->processed / (double)total : 1.0;
    if (r->tty) {
        char bar[31];
        int fill = (int)(frac * 30);
        for (int i = 0; i < 30; ++i)
            bar[i] = i < fill ? '#' : '.';
        bar[30] = '\0';
        fprintf(stderr, "\r\033[K[%s] %3d%% %" PRId64 "/%" PRId64 " events %.0f ev/s ETA %.0fs lag%s", bar, (int)(frac * 100),
                r->processed, total, rate, eta, shown > 0 ? lag : " 0");
        if (force)
            fputc('\n', stderr);
    } else {
        fprintf(stderr, "replay %s: %" PRId64 "/%" PRId64 " events (%d%%), %.0f events/s, eta %.0fs, lag%s\n", r->schema,
                r->processed, total, (int)(frac * 100), rate, eta, shown > 0 ? lag : " 0");
    }
}

void
tly_ctl_replay_summary(const tly_ctl_replay_t *r, FILE *out)
{
    double secs = (double)(tly_clock_mono_us() - r->t0_us) / 1e6;
    fprintf(out,
            "%" PRId64 " events read (%" PRId64 " applied, %" PRId64 " duplicates, %" PRId64 " failed, %" PRId64
            " skipped) in %.1f s: %.0f events/s\n",
            r->processed, r->applied, r->dups, r->failed, r->skipped, secs, secs > 0 ? (double)r->processed / secs : 0);
    int64_t yielded = r->yielded_us + (r->yielding ? tly_clock_mono_us() - r->yield_since_us : 0);
    if (r->watch != NULL)
        fprintf(out, "at the busy rate (%" PRId64 " events/s) while live traffic was seen: %.1f s\n", r->o.busy_rate,
                (double)yielded / 1e6);
}

/* --- kafka --------------------------------------------------------------- */

static int
kafka_open(tly_ctl_replay_t *r, char *err, size_t errcap)
{
    char rderr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *kv[][2] = {
        {"bootstrap.servers", r->s->kafka_brokers},
        {"group.id", "tallyctl-replay"}, /* required by the API; partitions are assigned, never subscribed or committed */
        {"enable.auto.commit", "false"},
        {"enable.auto.offset.store", "false"},
        {"enable.partition.eof", "true"},
        {"auto.offset.reset", "earliest"},
        {"isolation.level", "read_committed"},
        {"fetch.wait.max.ms", "10"},
        {"queued.min.messages", "200000"},
    };
    for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); ++i) {
        if (rd_kafka_conf_set(conf, kv[i][0], kv[i][1], rderr, sizeof(rderr)) != RD_KAFKA_CONF_OK) {
            snprintf(err, errcap, "could not set kafka %s: %s", kv[i][0], rderr);
            rd_kafka_conf_destroy(conf);
            return -1;
        }
    }
    if (tly_kafka_conf_apply(conf, getenv("TALLY_KAFKA_CONFIG"), "TALLY_KAFKA_CONFIG", err, errcap) != 0) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    r->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, rderr, sizeof(rderr));
    if (r->rk == NULL) {
        snprintf(err, errcap, "could not create kafka consumer: %s", rderr);
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    rd_kafka_poll_set_consumer(r->rk);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(r->rk, r->s->kafka_topic, NULL);
    rd_kafka_resp_err_t e = rd_kafka_metadata(r->rk, 0, rkt, &md, 10000);
    rd_kafka_topic_destroy(rkt);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR || md->topic_cnt != 1 || md->topics[0].err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errcap, "could not read the partitions of %s: %s", r->s->kafka_topic,
                 rd_kafka_err2str(e != RD_KAFKA_RESP_ERR_NO_ERROR ? e : md->topics[0].err));
        if (md != NULL)
            rd_kafka_metadata_destroy(md);
        return -1;
    }
    r->nparts = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    if (r->nparts <= 0 || r->nparts > MAX_PARTS) {
        snprintf(err, errcap, "topic %s has %d partitions", r->s->kafka_topic, r->nparts);
        return -1;
    }
    return 0;
}

static int
high_watermarks(tly_ctl_replay_t *r, int64_t *high, char *err, size_t errcap)
{
    for (int p = 0; p < r->nparts; ++p) {
        int64_t lo, hi;
        rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(r->rk, r->s->kafka_topic, p, &lo, &hi, 10000);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
            snprintf(err, errcap, "could not read the end of partition %d: %s", p, rd_kafka_err2str(e));
            return -1;
        }
        if (lo > 0 && r->pos[p] < lo) {
            snprintf(err, errcap,
                     "partition %d starts at offset %" PRId64 ": events before it were deleted, so the log no longer "
                     "holds the whole history",
                     p, lo);
            return -1;
        }
        high[p] = hi;
    }
    return 0;
}

/* The live projector's committed positions (0 where it never claimed a partition). */
static int
projector_positions(tly_ctl_replay_t *r, int64_t *out, char *err, size_t errcap)
{
    const char *vals[] = {r->s->kafka_topic};
    PGresult *res = tly_ctl_db_query(r->conn, "could not read the projector's positions",
                                     "SELECT partition, next_offset FROM public.consumer_positions "
                                     "WHERE consumer = 'projector' AND topic = $1",
                                     1, vals, err, errcap);
    if (res == NULL)
        return -1;
    for (int p = 0; p < r->nparts; ++p)
        out[p] = 0;
    for (int i = 0; i < PQntuples(res); ++i) {
        int p = atoi(PQgetvalue(res, i, 0));
        if (p >= 0 && p < r->nparts)
            out[p] = strtoll(PQgetvalue(res, i, 1), NULL, 10);
    }
    PQclear(res);
    return 0;
}

/* Sets the targets: high watermarks (capped by --until offsets), or for a swap or verify also by the projector's positions. */
static int
set_targets(tly_ctl_replay_t *r, char *err, size_t errcap)
{
    int64_t *high = calloc((size_t)r->nparts, sizeof(*high)), *proj = calloc((size_t)r->nparts, sizeof(*proj));
    int ret = -1;
    if (high == NULL || proj == NULL)
        abort();
    if (high_watermarks(r, high, err, errcap) != 0)
        goto out;
    if (r->o.mode != TLY_REPLAY_COPY && projector_positions(r, proj, err, errcap) != 0)
        goto out;
    for (int p = 0; p < r->nparts; ++p) {
        int64_t e = high[p];
        if (r->until_end[p] >= 0 && r->until_end[p] < e)
            e = r->until_end[p];
        if (r->o.mode != TLY_REPLAY_COPY && proj[p] < e)
            e = proj[p]; /* never ahead of the live tables: the swap needs the shadow at the projector's positions */
        r->end[p] = e;
    }
    ret = 0;
out:
    free(high);
    free(proj);
    return ret;
}

static int
assign_from_positions(tly_ctl_replay_t *r, int *nassigned)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(r->nparts);
    *nassigned = 0;
    for (int p = 0; p < r->nparts; ++p) {
        r->gpos[p] = r->pos[p];
        r->staged[p] = r->pos[p];
        r->reached[p] = r->pos[p] >= r->end[p];
        if (!r->reached[p]) {
            rd_kafka_topic_partition_list_add(list, r->s->kafka_topic, p)->offset = r->pos[p];
            ++*nassigned;
        }
    }
    rd_kafka_resp_err_t e = rd_kafka_assign(r->rk, list);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR && list->cnt > 0)
        rd_kafka_resume_partitions(r->rk, list); /* paused when the previous phase reached its end */
    rd_kafka_topic_partition_list_destroy(list);
    return e == RD_KAFKA_RESP_ERR_NO_ERROR ? 0 : -1;
}

static void
pause_one(tly_ctl_replay_t *r, int p)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(list, r->s->kafka_topic, p);
    rd_kafka_pause_partitions(r->rk, list);
    rd_kafka_topic_partition_list_destroy(list);
}

static bool
all_reached(const tly_ctl_replay_t *r)
{
    for (int p = 0; p < r->nparts; ++p)
        if (!r->reached[p])
            return false;
    return true;
}

/* Polls up to batch messages of [gpos, end) per partition into u. Returns the count; sets reached[] on the way. */
static int
gather(tly_ctl_replay_t *r, unit_t *u)
{
    int n = 0;
    while (n < r->batch_now && !all_reached(r)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(r->rk, n == 0 ? 200 : 5);
        if (m == NULL) {
            if (n > 0)
                break;
            return 0;
        }
        int p = m->partition;
        if (p < 0 || p >= r->nparts) {
            rd_kafka_message_destroy(m);
            continue;
        }
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            if (m->offset >= r->end[p] && !r->reached[p]) {
                r->reached[p] = true; /* everything before the end was delivered already */
                pause_one(r, p);
            }
            rd_kafka_message_destroy(m);
            continue;
        }
        if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            fprintf(stderr, "tallyctl: kafka: %s\n", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        if (r->reached[p] || m->offset < r->gpos[p]) {
            rd_kafka_message_destroy(m);
            continue;
        }
        if (m->offset >= r->end[p]) {
            r->reached[p] = true;
            pause_one(r, p);
            rd_kafka_message_destroy(m);
            continue;
        }
        r->gpos[p] = m->offset + 1;
        if (r->gpos[p] >= r->end[p]) {
            r->reached[p] = true;
            pause_one(r, p);
        }
        u->msgs[n++] = m;
    }
    return n;
}

/* Parses and upcasts one message: no bookkeeping, so the reader thread can run it ahead of the write. */
static void
prepare(const rd_kafka_message_t *m, prepared_t *p)
{
    tly_envelope_t env;
    char why[256];
    memset(p, 0, sizeof(*p));
    const char *payload = m->payload != NULL ? m->payload : "";
    if (tly_envelope_scan(payload, m->len, &env) != 0 && tly_envelope_parse(payload, m->len, &env, why, sizeof(why)) != 0)
        goto invalid;
    if (!tly_projection_knows(env.type) || env.version > tly_projection_max_version(env.type)) {
        p->kind = tly_projection_knows(env.type) ? PREP_TOO_NEW : PREP_UNKNOWN;
        p->env = env;
        json_decref(p->env.data);
        p->env.data = NULL;
        return;
    }
    int rc = tly_upcast(&env, tly_projection_max_version(env.type), &p->env, why, sizeof(why));
    tly_envelope_clear(&env);
    if (rc == 0)
        return; /* PREP_OK */
invalid:
    p->kind = PREP_INVALID;
    if ((p->why = strdup(why)) == NULL)
        abort();
}

static void
prepared_clear(prepared_t *p)
{
    tly_envelope_clear(&p->env);
    free(p->why);
    p->why = NULL;
}

static void
unit_free_msgs(unit_t *u)
{
    tly_ctl_jarena_skip_frees(true); /* the events' JSON is in u's arenas, emptied below */
    for (int i = 0; i < u->n; ++i) {
        prepared_clear(&u->prep[i]);
        rd_kafka_message_destroy(u->msgs[i]);
    }
    tly_ctl_jarena_skip_frees(false);
    for (int t = 0; t < PARSE_THREADS; ++t)
        tly_ctl_jarena_reset(&u->arenas[t]);
    u->n = 0;
}

static void decide(tly_ctl_replay_t *r, unit_t *u);
static bool fold_unit(tly_ctl_replay_t *r, unit_t *u);

/* Messages [from, to) of a unit, parsed by one thread. */
typedef struct st_slice_t {
    unit_t *u;
    int from, to, t;
    pthread_t thread;
    bool started;
} slice_t;

static void *
prepare_slice(void *arg)
{
    slice_t *sl = arg;
    tly_ctl_jarena_use(&sl->u->arenas[sl->t]);
    for (int i = sl->from; i < sl->to; ++i)
        prepare(sl->u->msgs[i], &sl->u->prep[i]);
    tly_ctl_jarena_use(NULL);
    return NULL;
}

/*
 * Reads the next batch into u: gathered, parsed (on up to PARSE_THREADS
 * threads), and reached[] as of its last message. What u held (the batch
 * written before) is freed first, here, off the writing thread.
 */
static void
read_unit(tly_ctl_replay_t *r, unit_t *u)
{
    slice_t sl[PARSE_THREADS];
    unit_free_msgs(u);
    u->n = gather(r, u);
    memcpy(u->reached, r->reached, sizeof(bool) * (size_t)r->nparts);
    int k = u->n < 1000 ? 1 : r->parse_threads;
    for (int t = 0; t < k; ++t) {
        sl[t] = (slice_t){.u = u, .from = (int)((int64_t)u->n * t / k), .to = (int)((int64_t)u->n * (t + 1) / k), .t = t};
        if (t > 0)
            sl[t].started = pthread_create(&sl[t].thread, NULL, prepare_slice, &sl[t]) == 0;
    }
    for (int t = 0; t < k; ++t) {
        if (t == 0 || !sl[t].started)
            prepare_slice(&sl[t]);
        else
            pthread_join(sl[t].thread, NULL);
    }
    decide(r, u);
    if (u->fatal < 0 && !u->invalid)
        (void)fold_unit(r, u);
}

static void
unit_add_id(unit_t *u, const uint8_t *id)
{
    if (u->nids == u->cap_ids) {
        u->cap_ids = u->cap_ids == 0 ? 4096 : u->cap_ids * 2;
        if ((u->ids = realloc(u->ids, u->cap_ids * 16)) == NULL)
            abort();
    }
    memcpy(u->ids[u->nids++], id, 16);
}

/* Decides the fate of each message in log order: the one place (during a phase) that adds to the ids seen. */
static void
decide(tly_ctl_replay_t *r, unit_t *u)
{
    u->fatal = -1;
    u->invalid = false;
    u->dups = u->skips = 0;
    u->nids = 0;
    for (int i = 0; i < u->n && u->fatal < 0; ++i) {
        const prepared_t *p = &u->prep[i];
        size_t slot;
        fate_t f = FATE_APPLY;
        if (p->kind == PREP_TOO_NEW)
            f = FATE_FATAL, u->fatal = i;
        else if (p->kind == PREP_INVALID)
            f = FATE_INVALID, u->invalid = true;
        else if (p->kind == PREP_UNKNOWN || (r->has_until && p->env.occurred_at_us > r->until_us))
            f = FATE_SKIP, u->skips++;
        else if (idset_find(&r->seen, p->env.id.b, &slot))
            f = FATE_DUP, u->dups++;
        if (f == FATE_APPLY) {
            idset_add(&r->seen, p->env.id.b);
            unit_add_id(u, p->env.id.b);
        }
        u->fate[i] = (uint8_t)f;
    }
}

/* Forgets the ids of a batch that will not be written (the phase ended before it, or it failed for good). */
static void
unit_forget(tly_ctl_replay_t *r, unit_t *u)
{
    for (size_t i = 0; i < u->nids; ++i)
        idset_del(&r->seen, u->ids[i]);
    u->nids = 0;
}

static bool job_may_exist(void *ctx, const tly_uuid_t *id);

/*
 * Folds the FATE_APPLY events into u->segs, the live projector's code in
 * bulk mode. Returns false when the fold refuses an event (the slow path
 * then finds it) or a batch asks to be flushed first once too often.
 */
static bool
fold_unit(tly_ctl_replay_t *r, unit_t *u)
{
    char err[512];
    u->nsegs = 0;
    u->folded = false;
    for (int i = 0; i < u->n; ++i) {
        if (u->fate[i] != FATE_APPLY)
            continue;
        int a = u->nsegs == 0 ? 1 : tly_projection_batch_add(u->segs[u->nsegs - 1], &u->prep[i].env, err, sizeof(err));
        if (a == 1) { /* cannot be folded after what the batch holds: it goes to the next one, written after */
            if (u->nsegs == (int)(sizeof(u->segs) / sizeof(u->segs[0])))
                return false;
            if (u->segs[u->nsegs] == NULL) {
                u->segs[u->nsegs] = tly_projection_batch_create(r->mask);
                tly_projection_batch_set_bulk(u->segs[u->nsegs], job_may_exist, r);
            }
            tly_projection_batch_reset(u->segs[u->nsegs]);
            a = tly_projection_batch_add(u->segs[u->nsegs++], &u->prep[i].env, err, sizeof(err));
        }
        if (a != 0)
            return false;
    }
    u->folded = true;
    return true;
}

typedef struct st_reader_t {
    tly_ctl_replay_t *r;
    unit_t *u;
    pthread_t thread;
    bool started;
} reader_t;

static void *
reader_main(void *arg)
{
    reader_t *rd = arg;
    read_unit(rd->r, rd->u);
    return NULL;
}

/* Starts reading u on the reader thread; when no thread can be started, reader_finish reads it instead. */
static void
reader_start(reader_t *rd, tly_ctl_replay_t *r, unit_t *u)
{
    *rd = (reader_t){.r = r, .u = u};
    rd->started = pthread_create(&rd->thread, NULL, reader_main, rd) == 0;
}

static void
reader_finish(reader_t *rd)
{
    if (rd->started)
        pthread_join(rd->thread, NULL);
    else
        read_unit(rd->r, rd->u);
}

/* --- applying a batch ---------------------------------------------------- */

typedef enum en_ev_result_t {
    EV_OK,
    EV_FAILED,    /* the event's own failure (fast mode: redo the batch with savepoints) */
    EV_TRANSIENT, /* PostgreSQL trouble: roll back, retry later */
    EV_FATAL,     /* cannot go on (a version this tallyctl does not know) */
} ev_result_t;

static void
fresh_push(tly_ctl_replay_t *r, const uint8_t *id)
{
    if (r->nfresh == r->fresh_cap) {
        r->fresh_cap = r->fresh_cap == 0 ? 4096 : r->fresh_cap * 2;
        r->fresh = realloc(r->fresh, r->fresh_cap * 16);
        if (r->fresh == NULL)
            abort();
    }
    memcpy(r->fresh[r->nfresh++], id, 16);
}

static int
record_failure(tly_ctl_replay_t *r, const rd_kafka_message_t *m, const tly_envelope_t *env, const char *why, char *err,
               size_t errcap)
{
    char part[16], off[24], id[TLY_UUID_STR_LEN + 1];
    snprintf(part, sizeof(part), "%" PRId32, m->partition);
    snprintf(off, sizeof(off), "%" PRId64, m->offset);
    if (env != NULL)
        tly_uuid_format(&env->id, id);
    const char *vals[] = {part, off, env != NULL ? id : NULL, env != NULL ? env->type : NULL, why};
    PGresult *res = queryf(r, "could not record a failed event", 5, vals, err, errcap,
                           "INSERT INTO %s._replay_failures (partition, \"offset\", event_id, type, error) "
                           "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                           r->schema);
    PQclear(res);
    r->failed++;
    return res != NULL ? 0 : -1;
}

/* Bulk loading (tly_projection_batch_set_bulk): a job may be in the shadow once a batch wrote it. Ids stay when
   that batch rolls back: "may exist" only costs an upsert instead of a COPY. */
static bool
job_may_exist(void *ctx, const tly_uuid_t *id)
{
    tly_ctl_replay_t *r = ctx;
    size_t slot;
    if (idset_find(&r->jobs, id->b, &slot))
        return true;
    idset_add(&r->jobs, id->b);
    return false;
}

/* Applies one event under a savepoint of its own; when it fails on its own account, parks it as the live projector does. */
static ev_result_t
apply_one(tly_ctl_replay_t *r, const rd_kafka_message_t *m, const tly_envelope_t *env, char *err, size_t errcap)
{
    char why[1024];
    tly_pgx_reset_last();
    if (exec(r, "SAVEPOINT ev", err, errcap) != 0)
        return EV_TRANSIENT;
    if (!tly_uuid_is_nil(&env->job_id))
        (void)job_may_exist(r, &env->job_id); /* written below by an upsert, not by the bulk COPY */
    if (tly_projection_apply(r->conn, env, r->mask, why, sizeof(why)) == 0) {
        r->applied++;
        return exec(r, "RELEASE SAVEPOINT ev", err, errcap) != 0 ? EV_TRANSIENT : EV_OK;
    }
    bool transient = tly_pgx_last_transient(r->conn);
    snprintf(err, errcap, "%s", why);
    if (exec(r, "ROLLBACK TO SAVEPOINT ev", err, errcap) != 0 || transient)
        return EV_TRANSIENT;
    /* As the live projector does when it parks an event: its job ends failed (dead_lettered). */
    char ignored[512];
    if (tly_projection_job_dead_lettered(r->conn, env, why, ignored, sizeof(ignored)) != 0 &&
        exec(r, "ROLLBACK TO SAVEPOINT ev", err, errcap) != 0)
        return EV_TRANSIENT;
    if (exec(r, "RELEASE SAVEPOINT ev", err, errcap) != 0)
        return EV_TRANSIENT;
    fprintf(stderr, "tallyctl: partition %" PRId32 " offset %" PRId64 ": %s\n", m->partition, m->offset, why);
    return record_failure(r, m, env, why, err, errcap) == 0 ? EV_OK : EV_TRANSIENT;
}

/* Why the last write of the batch failed: PostgreSQL trouble, or (redo with savepoints) an event's own. */
static ev_result_t
write_failure(tly_ctl_replay_t *r)
{
    return tly_pgx_last_transient(r->conn) ? EV_TRANSIENT : EV_FAILED;
}

/* The slow path for message i: a new event applied under a savepoint of its own, an invalid one recorded. */
static ev_result_t
apply_slow(tly_ctl_replay_t *r, const unit_t *u, int i, char *err, size_t errcap)
{
    const prepared_t *p = &u->prep[i];
    if (u->fate[i] == FATE_INVALID)
        return record_failure(r, u->msgs[i], NULL, p->why, err, errcap) == 0 ? EV_OK : EV_TRANSIENT;
    return u->fate[i] == FATE_APPLY ? apply_one(r, u->msgs[i], &p->env, err, errcap) : EV_OK;
}

/* Writes the ids applied since `from` to _replay_applied: one row of their 16 bytes each, however many. */
static int
save_dedup(tly_ctl_replay_t *r, size_t from, char *err, size_t errcap)
{
    char sql[256];
    if (from >= r->nfresh)
        return 0;
    snprintf(sql, sizeof(sql), "INSERT INTO %s._replay_applied (ids) VALUES ($1)", r->schema);
    const char *vals[] = {(const char *)r->fresh[from]};
    const int lens[] = {(int)((r->nfresh - from) * 16)}, binary[] = {1};
    PGresult *res = PQexecParams(r->conn, sql, 1, NULL, vals, lens, binary, 0);
    int ret = PQresultStatus(res) == PGRES_COMMAND_OK ? 0 : -1;
    if (ret != 0)
        snprintf(err, errcap, "could not save applied event ids: %s", PQerrorMessage(r->conn));
    PQclear(res);
    return ret;
}

/* Stores staged[] (end[] for a partition reached[] says is done) and end[]. */
static int
save_positions(tly_ctl_replay_t *r, const bool *reached, char *err, size_t errcap)
{
    size_t cap = (size_t)r->nparts * 48 + 16;
    char *parts = malloc(cap), *offs = malloc(cap), *ends = malloc(cap);
    if (parts == NULL || offs == NULL || ends == NULL)
        abort();
    size_t a = 0, b = 0, c = 0;
    parts[a++] = '{', offs[b++] = '{', ends[c++] = '{';
    for (int p = 0; p < r->nparts; ++p) {
        int64_t next = reached[p] && r->staged[p] < r->end[p] ? r->end[p] : r->staged[p];
        a += (size_t)snprintf(parts + a, cap - a, "%s%d", p > 0 ? "," : "", p);
        b += (size_t)snprintf(offs + b, cap - b, "%s%" PRId64, p > 0 ? "," : "", next);
        c += (size_t)snprintf(ends + c, cap - c, "%s%" PRId64, p > 0 ? "," : "", r->end[p]);
    }
    snprintf(parts + a, cap - a, "}");
    snprintf(offs + b, cap - b, "}");
    snprintf(ends + c, cap - c, "}");
    const char *vals[] = {parts, offs, ends};
    PGresult *res = queryf(r, "could not save replay positions", 3, vals, err, errcap,
                           "INSERT INTO %s._replay_positions AS rp (partition, next_offset, end_offset) "
                           "SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[]) "
                           "ON CONFLICT (partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, "
                           "end_offset = EXCLUDED.end_offset WHERE rp.next_offset IS DISTINCT FROM EXCLUDED.next_offset "
                           "OR rp.end_offset IS DISTINCT FROM EXCLUDED.end_offset",
                           r->schema);
    free(parts);
    free(offs);
    free(ends);
    PQclear(res);
    return res != NULL ? 0 : -1;
}

typedef struct st_counters_t {
    int64_t processed, applied, dups, failed, skipped;
} counters_t;

static void
counters_save(const tly_ctl_replay_t *r, counters_t *c)
{
    *c = (counters_t){r->processed, r->applied, r->dups, r->failed, r->skipped};
}

static void
counters_restore(tly_ctl_replay_t *r, const counters_t *c)
{
    r->processed = c->processed, r->applied = c->applied, r->dups = c->dups, r->failed = c->failed, r->skipped = c->skipped;
}

/* Forgets the ids applied since `from` (their transaction rolled back). */
static void
forget_fresh(tly_ctl_replay_t *r, size_t from)
{
    for (size_t i = from; i < r->nfresh; ++i)
        idset_del(&r->seen, r->fresh[i]);
    r->nfresh = from;
}

/* The statements of a batch whose events were folded (the fast path): one set of statements per segment. */
static ev_result_t
write_folded(tly_ctl_replay_t *r, unit_t *u, char *err, size_t errcap)
{
    if (!u->folded && !fold_unit(r, u))
        return EV_FAILED;
    u->folded = false; /* a flush empties its batch: a retry folds again */
    for (int k = 0; k < u->nsegs; ++k)
        if (tly_projection_batch_flush(u->segs[k], r->conn, err, errcap) != 0)
            return write_failure(r);
    return EV_OK;
}

static ev_result_t
too_new(const unit_t *u, char *err, size_t errcap)
{
    const rd_kafka_message_t *m = u->msgs[u->fatal];
    const tly_envelope_t *env = &u->prep[u->fatal].env;
    snprintf(err, errcap,
             "partition %" PRId32 " offset %" PRId64 ": %s version %d is newer than this tallyctl knows (%d); "
             "upgrade tallyctl and run the replay again (it resumes here)",
             m->partition, m->offset, env->type, env->version, tly_projection_max_version(env->type));
    return EV_FATAL;
}

/*
 * Applies the batch u and the positions. own_tx: in a transaction of its
 * own, committed; else inside the final transaction, under a savepoint.
 * First written set-based (folded by the reader, projection.h); when that
 * fails for an event's own reason, redone with a savepoint per event to
 * isolate it. Returns 0, -1 fatal, -2 transient (rolled back when own_tx).
 */
static int
run_batch(tly_ctl_replay_t *r, unit_t *u, bool own_tx, char *err, size_t errcap)
{
    bool slow = u->invalid;
    counters_t before;
    size_t fresh_from = r->nfresh;
    counters_save(r, &before);
    int64_t *staged0 = malloc(sizeof(int64_t) * (size_t)r->nparts);
    if (staged0 == NULL)
        abort();
    memcpy(staged0, r->staged, sizeof(int64_t) * (size_t)r->nparts);
    int ret = -2;
    for (;;) {
        tly_pgx_reset_last();
        if (exec(r, own_tx ? "BEGIN" : "SAVEPOINT batch", err, errcap) != 0)
            goto out;
        ev_result_t res = u->fatal >= 0 ? too_new(u, err, errcap) : EV_OK;
        for (size_t i = 0; i < u->nids; ++i)
            fresh_push(r, u->ids[i]);
        for (int i = 0; i < u->n && res == EV_OK; ++i) {
            if (slow)
                res = apply_slow(r, u, i, err, errcap);
            r->staged[u->msgs[i]->partition] = u->msgs[i]->offset + 1;
        }
        if (res == EV_OK && !slow)
            res = write_folded(r, u, err, errcap);
        if (res == EV_OK && save_dedup(r, fresh_from, err, errcap) != 0)
            res = EV_TRANSIENT;
        if (res == EV_OK && save_positions(r, u->reached, err, errcap) != 0)
            res = EV_TRANSIENT;
        if (res == EV_OK && exec(r, own_tx ? "COMMIT" : "RELEASE SAVEPOINT batch", err, errcap) != 0)
            res = EV_TRANSIENT;
        if (res == EV_OK)
            break;
        if (own_tx)
            rollback(r);
        else if (exec(r, "ROLLBACK TO SAVEPOINT batch", err, errcap) != 0)
            res = EV_TRANSIENT; /* the final transaction is retried whole */
        r->nfresh = fresh_from; /* not saved; they stay seen: the retry, or the slow path, applies the same events */
        counters_restore(r, &before);
        memcpy(r->staged, staged0, sizeof(int64_t) * (size_t)r->nparts);
        if (res == EV_FAILED && !slow) {
            slow = true; /* an event failed on its own: redo with a savepoint per event to isolate it */
            continue;
        }
        ret = res == EV_FATAL ? -1 : -2;
        goto out;
    }
    r->processed += u->n;
    r->dups += u->dups;
    r->skipped += u->skips;
    if (!slow)
        r->applied += (int64_t)u->nids; /* the slow path counted each one it applied */
    for (int p = 0; p < r->nparts; ++p) {
        if (u->reached[p] && r->staged[p] < r->end[p])
            r->staged[p] = r->end[p];
        if (own_tx)
            r->pos[p] = r->staged[p];
    }
    if (own_tx)
        r->nfresh = 0; /* committed: nothing to forget any more */
    ret = 0;
out:
    free(staged0);
    return ret;
}

static void
sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Stores the positions alone: an empty batch (end-of-partition markers move them too). */
static int
write_positions(tly_ctl_replay_t *r, bool own_tx, char *err, size_t errcap)
{
    unit_t none = {.reached = r->reached, .fatal = -1};
    return run_batch(r, &none, own_tx, err, errcap);
}

/* Writes u in a transaction of its own (own_tx), retrying transient failures, or under the final transaction's savepoint. */
/*
 * --max-rate: after a batch of n events, sleeps as long as it takes for the
 * events written since the first batch to be no more than max_rate per
 * second (the next batch is read meanwhile). The batches are small then
 * (tly_ctl_replay_open), so the live services get the CPUs between them
 * instead of waiting behind one long burst.
 */
static void
pace(tly_ctl_replay_t *r, int n)
{
    if (r->rate_now <= 0)
        return;
    int64_t now = tly_clock_mono_us();
    if (r->pace_t0_us == 0)
        r->pace_t0_us = now;
    r->paced += n;
    int64_t due = r->pace_t0_us + r->paced * 1000000 / r->rate_now;
    if (due > now) {
        struct timespec ts = {(time_t)((due - now) / 1000000), (long)((due - now) % 1000000) * 1000};
        nanosleep(&ts, NULL);
    }
}

/* At most 50 ms of events per batch at `rate`, at least 500, at most the units' capacity. */
static int
paced_batch(const tly_ctl_replay_t *r, int64_t rate)
{
    int64_t b = rate / 20 < 500 ? 500 : rate / 20;
    return b < r->o.batch ? (int)b : r->o.batch;
}

/*
 * The busy rate: between batches (the reader thread is not running), asks
 * the live-traffic watch whether other sessions are working and, when the
 * answer changed, switches between full speed in full batches and
 * o.busy_rate in 50-ms batches. --max-rate fixes the rate instead.
 */
static void
adapt(tly_ctl_replay_t *r)
{
    if (r->watch == NULL)
        return;
    bool busy = tly_ctl_livewatch_busy(r->watch);
    if (busy == r->yielding)
        return;
    int64_t now = tly_clock_mono_us();
    r->yielding = busy;
    r->pace_t0_us = 0;
    r->paced = 0;
    r->rate_now = busy ? r->o.busy_rate : 0;
    r->batch_now = busy ? paced_batch(r, r->o.busy_rate) : r->o.batch;
    if (busy)
        r->yield_since_us = now;
    else
        r->yielded_us += now - r->yield_since_us;
    if (!r->o.quiet)
        fprintf(stderr, "%stallyctl: %s (%.1f active sessions on average)\n", r->tty ? "\r\033[K" : "",
                busy ? "live traffic: slowing to the busy rate" : "the database is quiet: full speed",
                tly_ctl_livewatch_load(r->watch));
    if (!r->o.quiet)
        fflush(stderr);
}

static int
write_unit(tly_ctl_replay_t *r, unit_t *u, bool own_tx, char *err, size_t errcap)
{
    int rc, tries = 0, delay = 50;
    while ((rc = run_batch(r, u, own_tx, err, errcap)) == -2 && own_tx && ++tries < 20) {
        fprintf(stderr, "tallyctl: batch failed, retrying: %s\n", err);
        if (tly_pg_broken(r->conn))
            PQreset(r->conn);
        sleep_ms(delay);
        delay = delay * 2 > 5000 ? 5000 : delay * 2;
    }
    return rc;
}

/*
 * Replays [pos, end) of every partition. Batch N+1 is read from Kafka and
 * parsed on a second thread while batch N is folded and written here, so
 * the JSON parsing overlaps PostgreSQL's work. Returns 0, 1 (max_batches
 * reached), -1 fatal, -2 transient (final phase).
 */
static int
run_phase(tly_ctl_replay_t *r, bool own_tx, char *err, size_t errcap)
{
    int nassigned;
    if (assign_from_positions(r, &nassigned) != 0) {
        snprintf(err, errcap, "could not assign the partitions of %s", r->s->kafka_topic);
        return -1;
    }
    if (nassigned == 0)
        return 0;
    unit_t *cur = &r->units[0], *next = &r->units[1];
    read_unit(r, cur);
    int64_t last_progress = tly_clock_mono_us();
    int rc = 0;
    bool more = false, cur_written = false;
    for (;;) {
        more = !all_reached(r); /* the reader thread is not running: its state is ours to read */
        reader_t rd;
        if (own_tx)
            adapt(r);
        if (more)
            reader_start(&rd, r, next);
        int64_t now = tly_clock_mono_us();
        cur_written = false;
        if (cur->n > 0) {
            last_progress = now;
            rc = write_unit(r, cur, own_tx, err, errcap);
            cur_written = rc == 0;
        } else if (more && now - last_progress > STALL_US) {
            snprintf(err, errcap, "no events from %s for %d s while %" PRId64 " are still expected; is the broker up?",
                     r->s->kafka_topic, (int)(STALL_US / 1000000), remaining(r));
            rc = -1;
        }
        if (cur_written && own_tx) /* the final phase holds the live tables' lock: never slowed */
            pace(r, cur->n);
        if (more)
            reader_finish(&rd);
        if (cur_written) {
            progress(r, false);
            if (own_tx && r->o.max_batches > 0 && ++r->batches >= r->o.max_batches)
                rc = 1;
        }
        if (rc != 0 || !more)
            break;
        unit_t *t = cur;
        cur = next;
        next = t;
    }
    if (rc != 0 && !cur_written)
        unit_forget(r, cur);
    if (rc != 0 && more)
        unit_forget(r, next); /* read ahead, never written */
    unit_free_msgs(cur);
    unit_free_msgs(next);
    if (rc != 0)
        return rc;
    /* a phase with nothing but end-of-partition markers still moves positions */
    return own_tx ? write_positions(r, true, err, errcap) : 0;
}

/* --- the shadow schema ---------------------------------------------------- */

/* CREATE [UNIQUE] INDEX ... name ON public.t USING ... -> ... ON <schema>.t USING ... */
static int
index_into_shadow(tly_ctl_replay_t *r, const char *t, const char *def, char *sql, size_t cap, char *err, size_t errcap)
{
    char on[200], target[200];
    snprintf(on, sizeof(on), " ON public.%s ", t);
    snprintf(target, sizeof(target), " ON %s.%s ", r->schema, t);
    const char *at = strstr(def, on);
    if (at == NULL) {
        snprintf(err, errcap, "could not copy index: %s", def);
        return -1;
    }
    snprintf(sql, cap, "%.*s%s%s", (int)(at - def), def, target, at + strlen(on));
    return 0;
}

/* Creates the read-model tables like public's: same columns, defaults, checks, and constraint and index names. */
static int
create_table_like(tly_ctl_replay_t *r, const char *t, char *err, size_t errcap)
{
    if (execf(r, err, errcap, "CREATE TABLE %s.%s (LIKE public.%s INCLUDING ALL EXCLUDING INDEXES)", r->schema, t, t) != 0)
        return -1;
    char q[160];
    snprintf(q, sizeof(q), "public.%s", t);
    const char *vals[] = {q};
    /* unique/primary/exclusion constraints by name, then the other unique indexes by name (ON CONFLICT needs
       them); the rest are built once the bulk is in (create_deferred_indexes): cheaper than maintained per row */
    PGresult *res = tly_ctl_db_query(r->conn, "could not read the indexes of a read model",
                                     "SELECT 'ALTER TABLE %s ADD CONSTRAINT ' || quote_ident(c.conname) || ' ' || "
                                     "pg_get_constraintdef(c.oid) FROM pg_constraint c WHERE c.conrelid = $1::regclass "
                                     "AND c.contype IN ('p', 'u', 'x') "
                                     "UNION ALL SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = "
                                     "$1::regclass AND i.indisunique AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE "
                                     "c.conindid = i.indexrelid AND c.conrelid = i.indrelid)",
                                     1, vals, err, errcap);
    if (res == NULL)
        return -1;
    int ret = 0;
    for (int i = 0; i < PQntuples(res) && ret == 0; ++i) {
        const char *def = PQgetvalue(res, i, 0);
        char sql[2048];
        if (strncmp(def, "ALTER TABLE %s", 14) == 0)
            snprintf(sql, sizeof(sql), "ALTER TABLE %s.%s%s", r->schema, t, def + 14);
        else if ((ret = index_into_shadow(r, t, def, sql, sizeof(sql), err, errcap)) != 0)
            break;
        ret = exec(r, sql, err, errcap);
    }
    PQclear(res);
    return ret;
}

/*
 * Builds the shadow's non-unique indexes, like public's and with their names,
 * once the bulk of the events is in (IF NOT EXISTS: a resumed replay may
 * have built them already).
 */
static int
create_deferred_indexes(tly_ctl_replay_t *r, char *err, size_t errcap)
{
    int ret = 0;
    for (int k = 0; k < r->ntables && ret == 0; ++k) {
        char q[160];
        snprintf(q, sizeof(q), "public.%s", r->tables[k]);
        const char *vals[] = {q};
        PGresult *res = tly_ctl_db_query(r->conn, "could not read the indexes of a read model",
                                         "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = $1::regclass "
                                         "AND NOT i.indisunique AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE "
                                         "c.conindid = i.indexrelid AND c.conrelid = i.indrelid)",
                                         1, vals, err, errcap);
        if (res == NULL)
            return -1;
        for (int i = 0; i < PQntuples(res) && ret == 0; ++i) {
            const char *def = PQgetvalue(res, i, 0);
            char sql[2048];
            if (strncmp(def, "CREATE INDEX ", 13) != 0) {
                snprintf(err, errcap, "could not copy index: %s", def);
                ret = -1;
                break;
            }
            char ine[2048];
            snprintf(ine, sizeof(ine), "CREATE INDEX IF NOT EXISTS %s", def + 13);
            if ((ret = index_into_shadow(r, r->tables[k], ine, sql, sizeof(sql), err, errcap)) == 0)
                ret = exec(r, sql, err, errcap);
        }
        PQclear(res);
    }
    return ret;
}

/* _replay_applied: its ids are random bytes, so the values are stored as they are, never compressed (pglz would try). */
static int
create_applied(tly_ctl_replay_t *r, const char *if_not_exists, char *err, size_t errcap)
{
    return execf(r, err, errcap,
                 "CREATE TABLE %s%s._replay_applied (ids bytea NOT NULL); "
                 "ALTER TABLE %s._replay_applied ALTER COLUMN ids SET STORAGE EXTERNAL",
                 if_not_exists, r->schema, r->schema);
}

static int
create_shadow(tly_ctl_replay_t *r, const char *until_text, char *err, size_t errcap)
{
    if (exec(r, "BEGIN", err, errcap) != 0)
        return -1;
    if (execf(r, err, errcap, "CREATE SCHEMA %s", r->schema) != 0)
        goto fail;
    for (int i = 0; i < r->ntables; ++i)
        if (create_table_like(r, r->tables[i], err, errcap) != 0)
            goto fail;
    if (execf(r, err, errcap,
              "CREATE TABLE %s._replay_meta (mode text NOT NULL, models text NOT NULL, until text NOT NULL, "
              "state text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz)",
              r->schema) != 0 ||
        execf(r, err, errcap,
              "CREATE TABLE %s._replay_positions (partition integer PRIMARY KEY, next_offset bigint NOT NULL, "
              "end_offset bigint NOT NULL)",
              r->schema) != 0 ||
        /* no index: ids are deduplicated in memory; this is read whole, on resume only */
        create_applied(r, "", err, errcap) != 0 ||
        execf(r, err, errcap,
              "CREATE TABLE %s._replay_failures (partition integer NOT NULL, \"offset\" bigint NOT NULL, event_id uuid, "
              "type text, error text NOT NULL, PRIMARY KEY (partition, \"offset\"))",
              r->schema) != 0 ||
        /* The projections NOTIFY tally_jobs for long-polling readers; a replay must not wake them a million times.
           search_path puts this schema before pg_catalog, so this no-op is the pg_notify they call. */
        execf(r, err, errcap, "CREATE FUNCTION %s.pg_notify(text, text) RETURNS void LANGUAGE sql AS 'SELECT NULL::void'",
              r->schema) != 0)
        goto fail;
    const char *mode = r->o.mode == TLY_REPLAY_SWAP ? "swap" : r->o.mode == TLY_REPLAY_COPY ? "copy" : "verify";
    const char *vals[] = {mode, r->models_text, until_text};
    PGresult *res = queryf(r, "could not write replay metadata", 3, vals, err, errcap,
                           "INSERT INTO %s._replay_meta (mode, models, until, state) VALUES ($1, $2, $3, 'running')", r->schema);
    if (res == NULL)
        goto fail;
    PQclear(res);
    if (exec(r, "COMMIT", err, errcap) != 0)
        goto fail;
    r->created = true;
    return 0;
fail:
    rollback(r);
    return -1;
}

static int
drop_schema(tly_ctl_replay_t *r, const char *schema, char *err, size_t errcap)
{
    return execf(r, err, errcap, "DROP SCHEMA IF EXISTS %s CASCADE", schema);
}

/* Adds the uuids of column `col` of shadow table `t` to `set`; `*count` (optional) gets how many. */
static int
load_ids(tly_ctl_replay_t *r, const char *t, const char *col, idset_t *set, int64_t *count, char *err, size_t errcap)
{
    PGresult *res =
        queryf(r, "could not read the ids of a shadow table", 0, NULL, err, errcap, "SELECT %s FROM %s.%s", col, r->schema, t);
    if (res == NULL)
        return -1;
    for (int i = 0; i < PQntuples(res); ++i) {
        tly_uuid_t u;
        if (tly_uuid_parse(PQgetvalue(res, i, 0), &u))
            idset_add(set, u.b);
    }
    if (count != NULL)
        *count = PQntuples(res);
    PQclear(res);
    return 0;
}

/* Loads the applied ids of _replay_applied, and of _replay_dedup in a shadow an earlier version began (it then gets
   _replay_applied for the rest). */
static int
load_applied(tly_ctl_replay_t *r, int64_t *count, char *err, size_t errcap)
{
    char q[160];
    snprintf(q, sizeof(q), "%s._replay_dedup", r->schema);
    const char *vals[] = {q};
    PGresult *res =
        tly_ctl_db_query(r->conn, "could not look up table", "SELECT to_regclass($1) IS NOT NULL", 1, vals, err, errcap);
    if (res == NULL)
        return -1;
    bool old = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    *count = 0;
    if (old && (load_ids(r, "_replay_dedup", "event_id", &r->seen, count, err, errcap) != 0 ||
                create_applied(r, "IF NOT EXISTS ", err, errcap) != 0))
        return -1;
    if ((res = queryf(r, "could not read applied event ids", 0, NULL, err, errcap, "SELECT ids FROM %s._replay_applied",
                      r->schema)) == NULL)
        return -1;
    for (int i = 0; i < PQntuples(res); ++i) {
        size_t n = 0;
        unsigned char *ids = PQunescapeBytea((const unsigned char *)PQgetvalue(res, i, 0), &n);
        if (ids == NULL)
            abort();
        for (size_t k = 0; k + 16 <= n; k += 16)
            idset_add(&r->seen, ids + k);
        *count += (int64_t)(n / 16);
        PQfreemem(ids);
    }
    PQclear(res);
    return 0;
}

/* Loads positions, applied ids and the jobs already written of a shadow being resumed. */
static int
load_progress(tly_ctl_replay_t *r, char *err, size_t errcap)
{
    PGresult *res = queryf(r, "could not read replay positions", 0, NULL, err, errcap,
                           "SELECT partition, next_offset, end_offset FROM %s._replay_positions", r->schema);
    if (res == NULL)
        return -1;
    for (int i = 0; i < PQntuples(res); ++i) {
        int p = atoi(PQgetvalue(res, i, 0));
        if (p >= 0 && p < r->nparts) {
            r->pos[p] = strtoll(PQgetvalue(res, i, 1), NULL, 10);
            r->end[p] = strtoll(PQgetvalue(res, i, 2), NULL, 10);
        }
    }
    int stored = PQntuples(res);
    PQclear(res);
    int64_t applied = 0;
    if (load_applied(r, &applied, err, errcap) != 0 ||
        ((r->mask & TLY_MODEL_JOBS) && load_ids(r, "jobs", "id", &r->jobs, NULL, err, errcap) != 0))
        return -1;
    if (!r->o.quiet && stored > 0)
        fprintf(stderr, "tallyctl: resuming %s (%" PRId64 " events applied before)\n", r->schema, applied);
    return 0;
}

typedef struct st_shadow_info_t {
    char name[TLY_CTL_SCHEMA_MAX];
    int n;
    char mode[16], models[128], until[128], state[16];
} shadow_info_t;

/* Lists tally_shadow_<n> schemas (and --into's) with their metadata. Returns the count; -1 on error. */
static int
list_shadows(tly_ctl_replay_t *r, shadow_info_t *out, int cap, int *max_n, char *err, size_t errcap)
{
    PGresult *res = tly_ctl_db_query(r->conn, "could not list shadow schemas",
                                     "SELECT nspname, substring(nspname from 14)::int FROM pg_namespace "
                                     "WHERE nspname ~ '^tally_shadow_[0-9]{1,9}$' ORDER BY 2",
                                     0, NULL, err, errcap);
    if (res == NULL)
        return -1;
    int n = 0;
    *max_n = 0;
    for (int i = 0; i < PQntuples(res); ++i) {
        int num = atoi(PQgetvalue(res, i, 1));
        if (num > *max_n)
            *max_n = num;
        if (n == cap)
            continue;
        shadow_info_t *s = &out[n];
        memset(s, 0, sizeof(*s));
        snprintf(s->name, sizeof(s->name), "%s", PQgetvalue(res, i, 0));
        s->n = num;
        char q[160];
        snprintf(q, sizeof(q), "%s._replay_meta", s->name);
        const char *vals[] = {q};
        PGresult *has = tly_ctl_db_query(r->conn, "could not inspect a shadow schema", "SELECT to_regclass($1) IS NOT NULL", 1,
                                         vals, err, errcap);
        if (has == NULL) {
            PQclear(res);
            return -1;
        }
        bool meta = strcmp(PQgetvalue(has, 0, 0), "t") == 0;
        PQclear(has);
        if (!meta)
            continue;
        PGresult *m = queryf(r, "could not read replay metadata", 0, NULL, err, errcap,
                             "SELECT mode, models, until, state FROM %s._replay_meta LIMIT 1", s->name);
        if (m == NULL) {
            PQclear(res);
            return -1;
        }
        if (PQntuples(m) == 1) {
            snprintf(s->mode, sizeof(s->mode), "%s", PQgetvalue(m, 0, 0));
            snprintf(s->models, sizeof(s->models), "%s", PQgetvalue(m, 0, 1));
            snprintf(s->until, sizeof(s->until), "%s", PQgetvalue(m, 0, 2));
            snprintf(s->state, sizeof(s->state), "%s", PQgetvalue(m, 0, 3));
            ++n;
        }
        PQclear(m);
    }
    PQclear(res);
    return n;
}

/* Picks the shadow schema: resume an unfinished one with the same options, or create tally_shadow_<n+1> / --into. */
static int
choose_shadow(tly_ctl_replay_t *r, char *err, size_t errcap)
{
    shadow_info_t found[64];
    int max_n = 0;
    const char *mode = r->o.mode == TLY_REPLAY_SWAP ? "swap" : r->o.mode == TLY_REPLAY_COPY ? "copy" : "verify";
    const char *until_text = r->o.until != NULL ? r->o.until : "";
    int n = list_shadows(r, found, 64, &max_n, err, errcap);
    if (n < 0)
        return -1;
    bool resume = false;
    if (r->o.into != NULL) {
        snprintf(r->schema, sizeof(r->schema), "%s", r->o.into);
        char q[160];
        snprintf(q, sizeof(q), "%s", r->o.into);
        const char *vals[] = {q};
        PGresult *res = tly_ctl_db_query(r->conn, "could not look up schema",
                                         "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1), "
                                         "to_regclass(quote_ident($1) || '._replay_meta') IS NOT NULL",
                                         1, vals, err, errcap);
        if (res == NULL)
            return -1;
        bool exists = strcmp(PQgetvalue(res, 0, 0), "t") == 0, ours = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
        PQclear(res);
        if (exists && !ours) {
            snprintf(err, errcap, "schema %s exists and is not a replay's: choose another --into", r->o.into);
            return -1;
        }
        if (exists && r->o.restart) {
            if (drop_schema(r, r->schema, err, errcap) != 0)
                return -1;
        } else if (exists) {
            PGresult *m = queryf(r, "could not read replay metadata", 0, NULL, err, errcap,
                                 "SELECT models, until, state FROM %s._replay_meta", r->schema);
            if (m == NULL)
                return -1;
            bool same = PQntuples(m) == 1 && strcmp(PQgetvalue(m, 0, 0), r->models_text) == 0 &&
                        strcmp(PQgetvalue(m, 0, 1), until_text) == 0;
            bool done = PQntuples(m) == 1 && strcmp(PQgetvalue(m, 0, 2), "running") != 0;
            PQclear(m);
            if (done) {
                snprintf(err, errcap, "schema %s holds a finished replay; --restart rebuilds it", r->schema);
                return -1;
            }
            if (!same) {
                snprintf(err, errcap,
                         "schema %s holds an unfinished replay with other options; run with the same "
                         "options to resume it, or add --restart",
                         r->schema);
                return -1;
            }
            resume = true;
        }
    } else {
        for (int i = 0; i < n; ++i) {
            bool unfinished = strcmp(found[i].state, "running") == 0;
            if (!unfinished || strcmp(found[i].mode, mode) != 0)
                continue;
            if (r->o.restart || r->o.mode == TLY_REPLAY_VERIFY) {
                if (!r->o.quiet)
                    fprintf(stderr, "tallyctl: dropping unfinished %s\n", found[i].name);
                if (drop_schema(r, found[i].name, err, errcap) != 0)
                    return -1;
                continue;
            }
            if (strcmp(found[i].models, r->models_text) != 0 || strcmp(found[i].until, until_text) != 0) {
                snprintf(err, errcap,
                         "%s holds an unfinished replay with other options (--projection %s%s%s); run with "
                         "the same options to resume it, or add --restart",
                         found[i].name, found[i].models, found[i].until[0] ? " --until " : "", found[i].until);
                return -1;
            }
            if (!resume) {
                memcpy(r->schema, found[i].name, sizeof(r->schema));
                r->shadow_n = found[i].n;
                resume = true;
            }
        }
        if (!resume) {
            r->shadow_n = max_n + 1;
            snprintf(r->schema, sizeof(r->schema), "tally_shadow_%d", r->shadow_n);
        }
    }
    if (resume)
        return load_progress(r, err, errcap);
    return create_shadow(r, until_text, err, errcap);
}

/* --- public -------------------------------------------------------------- */

tly_ctl_replay_t *
tly_ctl_replay_open(const tly_ctl_settings_t *s, const tly_ctl_replay_opts_t *o, char *err, size_t errcap)
{
    tly_ctl_replay_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        abort();
    r->o = *o;
    r->s = s;
    tly_ctl_jarena_install();
    if (r->o.batch <= 0)
        r->o.batch = 40000;
    if (r->o.max_rate > 0) {
        r->o.batch = paced_batch(r, r->o.max_rate);
        r->o.busy_rate = 0; /* a fixed rate: nothing to adapt */
    }
    r->batch_now = r->o.batch;
    r->rate_now = r->o.max_rate;
    r->tty = isatty(2);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    r->parse_threads = cpus < 1 ? 1 : cpus > PARSE_THREADS ? PARSE_THREADS : (int)cpus;
    const char *pt = getenv("TALLY_REPLAY_PARSE_THREADS");
    if (pt != NULL && atoi(pt) >= 1 && atoi(pt) <= PARSE_THREADS)
        r->parse_threads = atoi(pt);
    r->t0_us = tly_clock_mono_us();
    int nends = 0;
    for (int p = 0; p < MAX_PARTS; ++p)
        r->until_end[p] = -1;
    if (o->until != NULL &&
        tly_ctl_until_parse(o->until, &r->until_us, &r->has_until, r->until_end, MAX_PARTS, &nends, err, errcap) != 0)
        goto fail;
    if (o->into != NULL && !tly_ctl_schema_name_ok(o->into)) {
        snprintf(err, errcap, "--into must be a lower-case schema name ([a-z_][a-z0-9_]*), not public or pg_*");
        goto fail;
    }
    if ((r->conn = tly_ctl_db_connect(s->pg_dsn, err, errcap)) == NULL)
        goto fail;
    PGresult *res = tly_ctl_db_query(r->conn, "could not take the replay lock", "SELECT pg_try_advisory_lock(7246016001)", 0, NULL,
                                     err, errcap);
    if (res == NULL)
        goto fail;
    bool locked = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (!locked) {
        snprintf(err, errcap, "another tallyctl replay or verify is running against this database");
        goto fail;
    }
    if (tly_ctl_models_parse(r->conn, o->projections, &r->mask, r->tables, &r->ntables, err, errcap) != 0)
        goto fail;
    if (r->o.busy_rate > 0 && (r->watch = tly_ctl_livewatch_start(s->pg_dsn, err, errcap)) == NULL)
        goto fail;
    size_t used = 0;
    for (int i = 0; i < r->ntables; ++i)
        used += (size_t)snprintf(r->models_text + used, sizeof(r->models_text) - used, "%s%s", i > 0 ? "," : "", r->tables[i]);
    if (kafka_open(r, err, errcap) != 0)
        goto fail;
    r->pos = calloc((size_t)r->nparts, sizeof(int64_t));
    r->staged = calloc((size_t)r->nparts, sizeof(int64_t));
    r->end = calloc((size_t)r->nparts, sizeof(int64_t));
    r->gpos = calloc((size_t)r->nparts, sizeof(int64_t));
    r->saved_pos = calloc((size_t)r->nparts, sizeof(int64_t));
    r->reached = calloc((size_t)r->nparts, sizeof(bool));
    if (r->pos == NULL || r->staged == NULL || r->end == NULL || r->gpos == NULL || r->saved_pos == NULL || r->reached == NULL)
        abort();
    for (int i = 0; i < 2; ++i) {
        unit_t *u = &r->units[i];
        u->msgs = calloc((size_t)r->o.batch, sizeof(*u->msgs));
        u->prep = calloc((size_t)r->o.batch, sizeof(*u->prep));
        u->fate = calloc((size_t)r->o.batch, sizeof(*u->fate));
        u->reached = calloc((size_t)r->nparts, sizeof(bool));
        if (u->msgs == NULL || u->prep == NULL || u->fate == NULL || u->reached == NULL)
            abort();
    }
    if (choose_shadow(r, err, errcap) != 0)
        goto fail;
    char sp[256];
    snprintf(sp, sizeof(sp), "SET search_path = %s, pg_catalog", r->schema);
    if (exec(r, sp, err, errcap) != 0 || exec(r, "SET synchronous_commit = off", err, errcap) != 0)
        goto fail;
    if (r->o.mode == TLY_REPLAY_COPY && r->created) {
        /* a point-in-time copy: targets fixed now (resumes keep them) */
        if (set_targets(r, err, errcap) != 0 || exec(r, "BEGIN", err, errcap) != 0 ||
            save_positions(r, r->reached, err, errcap) != 0 || exec(r, "COMMIT", err, errcap) != 0)
            goto fail;
    }
    if (!r->o.quiet)
        fprintf(stderr, "tallyctl: replaying %s (%s) into %s\n", r->s->kafka_topic, r->models_text, r->schema);
    return r;
fail:
    tly_ctl_replay_close(r);
    return NULL;
}

int
tly_ctl_replay_bulk(tly_ctl_replay_t *r, char *err, size_t errcap)
{
    for (int round = 0;; ++round) {
        if (r->o.mode != TLY_REPLAY_COPY && set_targets(r, err, errcap) != 0)
            return -1;
        for (int p = 0; p < r->nparts; ++p)
            r->staged[p] = r->pos[p];
        int64_t left = remaining(r);
        if (r->o.mode != TLY_REPLAY_COPY && round > 0 && (left < CATCHUP_CLOSE_ENOUGH || round >= CATCHUP_ROUNDS))
            break;
        int rc = run_phase(r, true, err, errcap);
        if (rc != 0)
            return rc;
        if (r->o.mode == TLY_REPLAY_COPY)
            break;
    }
    progress(r, true);
    return create_deferred_indexes(r, err, errcap);
}

static bool
lock_failure(const char *err)
{
    return strstr(err, "lock timeout") != NULL || strstr(err, "deadlock") != NULL || strstr(err, "could not obtain lock") != NULL;
}

int
tly_ctl_replay_final(tly_ctl_replay_t *r, const char *lockmode, char *err, size_t errcap)
{
    char tables[512] = "";
    size_t used = 0;
    for (int i = 0; i < r->ntables; ++i)
        used += (size_t)snprintf(tables + used, sizeof(tables) - used, "%spublic.%s", i > 0 ? ", " : "", r->tables[i]);
    memcpy(r->saved_pos, r->pos, sizeof(int64_t) * (size_t)r->nparts);
    for (int attempt = 1;; ++attempt) {
        r->nfresh = 0;
        if (exec(r, "BEGIN ISOLATION LEVEL REPEATABLE READ", err, errcap) != 0 ||
            exec(r, "SET LOCAL lock_timeout = '10s'", err, errcap) != 0 ||
            exec(r, "SET LOCAL synchronous_commit = on", err, errcap) != 0 ||
            execf(r, err, errcap, "LOCK TABLE %s IN %s MODE", tables, lockmode) != 0 ||
            /* the live projector cannot commit into these tables now: its positions are what they hold */
            set_targets(r, err, errcap) != 0)
            goto retry;
        for (int p = 0; p < r->nparts; ++p) {
            if (r->end[p] < r->pos[p]) {
                snprintf(err, errcap,
                         "partition %d: the shadow is at offset %" PRId64 ", ahead of the projector (%" PRId64 "); "
                         "its positions were reset? run with --restart",
                         p, r->pos[p], r->end[p]);
                rollback(r);
                return -1;
            }
        }
        int rc = run_phase(r, false, err, errcap);
        if (rc == 0)
            rc = write_positions(r, false, err, errcap); /* positions of the final range */
        if (rc == 0) {
            for (int p = 0; p < r->nparts; ++p)
                r->pos[p] = r->staged[p];
            return 0;
        }
        if (rc == -1) {
            rollback(r);
            forget_fresh(r, 0);
            memcpy(r->pos, r->saved_pos, sizeof(int64_t) * (size_t)r->nparts);
            return -1;
        }
    retry:
        rollback(r);
        forget_fresh(r, 0);
        memcpy(r->pos, r->saved_pos, sizeof(int64_t) * (size_t)r->nparts);
        if (attempt >= FINAL_TRIES || !(lock_failure(err) || tly_pgx_last_transient(r->conn))) {
            char tmp[1024];
            snprintf(tmp, sizeof(tmp), "%s", err);
            snprintf(err, errcap, "final catch-up failed (attempt %d): %s", attempt, tmp);
            return -1;
        }
        fprintf(stderr, "tallyctl: final catch-up: %s; retrying\n", err);
        sleep_ms(500 * attempt);
    }
}

int
tly_ctl_replay_swap(tly_ctl_replay_t *r, char *err, size_t errcap)
{
    char backup[TLY_CTL_SCHEMA_MAX + 16];
    snprintf(backup, sizeof(backup), "tally_backup_%d", r->shadow_n);
    if (execf(r, err, errcap, "DROP SCHEMA IF EXISTS %s CASCADE", backup) != 0 ||
        execf(r, err, errcap, "CREATE SCHEMA %s", backup) != 0)
        goto fail;
    for (int i = 0; i < r->ntables; ++i) {
        if (execf(r, err, errcap, "ALTER TABLE public.%s SET SCHEMA %s", r->tables[i], backup) != 0 ||
            execf(r, err, errcap, "ALTER TABLE %s.%s SET SCHEMA public", r->schema, r->tables[i]) != 0)
            goto fail;
        /* the query API's conditional-GET cache hears of new versions through these (migrations/0004) */
        bool accounts = strcmp(r->tables[i], "accounts") == 0, transfers = strcmp(r->tables[i], "transfers") == 0;
        if ((accounts || transfers) &&
            execf(r, err, errcap,
                  "CREATE TRIGGER %s_notify_versions AFTER UPDATE ON public.%s REFERENCING NEW TABLE AS changed "
                  "FOR EACH STATEMENT EXECUTE FUNCTION public.tally_notify_versions('%s')",
                  r->tables[i], r->tables[i], accounts ? "a" : "t") != 0)
            goto fail;
    }
    /* at commit: every query API empties its cache and checks the triggers again */
    if (exec(r, "NOTIFY tally_versions, '*'", err, errcap) != 0 ||
        execf(r, err, errcap, "UPDATE %s._replay_meta SET state = 'swapped', finished_at = now()", r->schema) != 0 ||
        exec(r, "COMMIT", err, errcap) != 0)
        goto fail;
    if (!r->o.quiet)
        fprintf(stderr, "tallyctl: swapped %s into public; dropping the old tables\n", r->models_text);
    if (drop_schema(r, backup, err, errcap) != 0 || drop_schema(r, r->schema, err, errcap) != 0)
        return -1;
    return 0;
fail:
    rollback(r);
    return -1;
}

int
tly_ctl_replay_finish_copy(tly_ctl_replay_t *r, char *err, size_t errcap)
{
    return execf(r, err, errcap, "UPDATE %s._replay_meta SET state = 'done', finished_at = now()", r->schema);
}

int
tly_ctl_replay_drop(tly_ctl_replay_t *r, char *err, size_t errcap)
{
    rollback(r);
    return drop_schema(r, r->schema, err, errcap);
}

void
tly_ctl_replay_close(tly_ctl_replay_t *r)
{
    if (r == NULL)
        return;
    tly_ctl_livewatch_stop(r->watch);
    if (r->rk != NULL) {
        rd_kafka_assign(r->rk, NULL);
        rd_kafka_consumer_close(r->rk);
        rd_kafka_destroy(r->rk);
    }
    if (r->conn != NULL)
        PQfinish(r->conn);
    free(r->pos);
    free(r->staged);
    free(r->end);
    free(r->gpos);
    free(r->saved_pos);
    free(r->reached);
    for (int i = 0; i < 2; ++i) {
        free(r->units[i].msgs);
        free(r->units[i].prep);
        free(r->units[i].fate);
        free(r->units[i].ids);
        for (int k = 0; k < (int)(sizeof(r->units[i].segs) / sizeof(r->units[i].segs[0])); ++k)
            tly_projection_batch_destroy(r->units[i].segs[k]);
        free(r->units[i].reached);
        for (int t = 0; t < PARSE_THREADS; ++t)
            tly_ctl_jarena_free(&r->units[i].arenas[t]);
    }
    free(r->fresh);
    free(r->seen.keys);
    free(r->seen.state);
    free(r->jobs.keys);
    free(r->jobs.state);
    free(r);
}

/* --- the command --------------------------------------------------------- */

int
tly_ctl_replay_cmd(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[2048];
    const char *batch = tly_ctl_arg(cmd, args, "batch"), *max_rate = tly_ctl_arg(cmd, args, "max-rate"),
               *busy_rate = tly_ctl_arg(cmd, args, "busy-rate");
    tly_ctl_replay_opts_t o = {
        .projections = tly_ctl_arg(cmd, args, "projection"),
        .until = tly_ctl_arg(cmd, args, "until"),
        .into = tly_ctl_arg(cmd, args, "into"),
        .restart = tly_ctl_arg(cmd, args, "restart") != NULL,
        .batch = batch != NULL ? atoi(batch) : 40000,
        .max_rate = max_rate != NULL ? atoll(max_rate) : 0,
        .busy_rate = busy_rate != NULL ? atoll(busy_rate) : TLY_CTL_REPLAY_BUSY_RATE,
        .quiet = tly_ctl_arg(cmd, args, "quiet") != NULL,
    };
    if (o.max_rate < 0) {
        tly_ctl_error("--max-rate must be 0 (no limit) or more");
        return TLY_CTL_USAGE;
    }
    if (o.busy_rate < 0) {
        tly_ctl_error("--busy-rate must be 0 (never slow down) or more");
        return TLY_CTL_USAGE;
    }
    const char *stop = getenv("TALLY_REPLAY_MAX_BATCHES"); /* tests: stop after N batches, as if killed */
    o.max_batches = stop != NULL ? atoi(stop) : 0;
    if (o.batch < 1 || o.batch > 100000) {
        tly_ctl_error("--batch must be 1 to 100000");
        return TLY_CTL_USAGE;
    }
    o.mode = (o.until != NULL || o.into != NULL) ? TLY_REPLAY_COPY : TLY_REPLAY_SWAP;
    tly_ctl_replay_t *r = tly_ctl_replay_open(settings, &o, err, sizeof(err));
    if (r == NULL) {
        tly_ctl_error("%s", err);
        return TLY_CTL_FAIL;
    }
    int ret = TLY_CTL_FAIL, rc = tly_ctl_replay_bulk(r, err, sizeof(err));
    if (rc == 1) {
        tly_ctl_error("stopped after %d batches (TALLY_REPLAY_MAX_BATCHES); run again to resume", o.max_batches);
        goto out;
    }
    if (rc != 0) {
        tly_ctl_error("%s", err);
        goto out;
    }
    if (o.mode == TLY_REPLAY_COPY) {
        if (tly_ctl_replay_finish_copy(r, err, sizeof(err)) != 0) {
            tly_ctl_error("%s", err);
            goto out;
        }
        tly_ctl_replay_summary(r, stdout);
        printf("point-in-time copy in schema %s (tables: %s)\n", r->schema, r->models_text);
        ret = TLY_CTL_OK;
        goto out;
    }
    if (tly_ctl_replay_final(r, "EXCLUSIVE", err, sizeof(err)) != 0 || tly_ctl_replay_swap(r, err, sizeof(err)) != 0) {
        tly_ctl_error("%s", err);
        goto out;
    }
    tly_ctl_replay_summary(r, stdout);
    printf("swapped into public: %s\n", r->models_text);
    if (r->failed > 0)
        printf("%" PRId64 " events failed to apply (as the live projector parks them); see the log above\n", r->failed);
    ret = TLY_CTL_OK;
out:
    tly_ctl_replay_close(r);
    return ret;
}
