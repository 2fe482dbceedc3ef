/*
 * Internal to services/tallyctl/replay/: the state of one replay and the
 * functions its files share (tly_ctl_replay__*). One idea per file:
 *   options.c   --models, --until, schema names
 *   idset.c     a set of event ids (idset.h)
 *   progress.c  progress lines and the summary
 *   reader.c    reading tally.events: the reader thread, parsing, each message's fate
 *   apply.c     writing a batch and its bookkeeping, pacing
 *   shadow.c    the shadow schema: DDL, resuming one
 *   replay.c    the connection, the phases, the command
 * replay.h is the public side.
 */
#ifndef TALLY_CTL_REPLAY_INTERNAL_H
#define TALLY_CTL_REPLAY_INTERNAL_H

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
#include "idset.h"

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

typedef struct st_reader_t {
    tly_ctl_replay_t *r;
    unit_t *u;
    pthread_t thread;
    bool started;
} reader_t;

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
    tly_ctl_idset_t seen;
    tly_ctl_idset_t jobs; /* job ids the shadow may hold: a job not in here is new, written by COPY */
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

/* replay.c: the replay's connection and its statements */
int tly_ctl_replay__exec(tly_ctl_replay_t *r, const char *sql, char *err, size_t errcap);
int tly_ctl_replay__execf(tly_ctl_replay_t *r, char *err, size_t errcap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
PGresult *tly_ctl_replay__queryf(tly_ctl_replay_t *r, const char *what, int n, const char *const *vals, char *err, size_t errcap,
                                 const char *fmt, ...) __attribute__((format(printf, 7, 8)));
void tly_ctl_replay__rollback(tly_ctl_replay_t *r);

/* progress.c: progress lines and the summary */
void tly_ctl_replay__progress(tly_ctl_replay_t *r, bool force);
int64_t tly_ctl_replay__remaining(const tly_ctl_replay_t *r);

/* reader.c: reading tally.events (the reader thread, parsing, deciding each message's fate) */
bool tly_ctl_replay__all_reached(const tly_ctl_replay_t *r);
int tly_ctl_replay__assign_from_positions(tly_ctl_replay_t *r, int *nassigned);
bool tly_ctl_replay__fold_unit(tly_ctl_replay_t *r, unit_t *u);
int tly_ctl_replay__kafka_open(tly_ctl_replay_t *r, char *err, size_t errcap);
void tly_ctl_replay__read_unit(tly_ctl_replay_t *r, unit_t *u);
void tly_ctl_replay__reader_finish(reader_t *rd);
void tly_ctl_replay__reader_start(reader_t *rd, tly_ctl_replay_t *r, unit_t *u);
int tly_ctl_replay__set_targets(tly_ctl_replay_t *r, char *err, size_t errcap);
void tly_ctl_replay__unit_forget(tly_ctl_replay_t *r, unit_t *u);
void tly_ctl_replay__unit_free_msgs(unit_t *u);

/* apply.c: writing a batch, its bookkeeping, pacing */
void tly_ctl_replay__adapt(tly_ctl_replay_t *r);
void tly_ctl_replay__forget_fresh(tly_ctl_replay_t *r, size_t from);
bool tly_ctl_replay__job_may_exist(void *ctx, const tly_uuid_t *id);
int tly_ctl_replay__paced_batch(const tly_ctl_replay_t *r, int64_t rate);
int tly_ctl_replay__run_phase(tly_ctl_replay_t *r, bool own_tx, char *err, size_t errcap);
int tly_ctl_replay__save_positions(tly_ctl_replay_t *r, const bool *reached, char *err, size_t errcap);
void tly_ctl_replay__sleep_ms(int ms);
int tly_ctl_replay__write_positions(tly_ctl_replay_t *r, bool own_tx, char *err, size_t errcap);

/* shadow.c: the shadow schema (DDL) and resuming one */
int tly_ctl_replay__choose_shadow(tly_ctl_replay_t *r, char *err, size_t errcap);
int tly_ctl_replay__create_deferred_indexes(tly_ctl_replay_t *r, char *err, size_t errcap);
int tly_ctl_replay__drop_schema(tly_ctl_replay_t *r, const char *schema, char *err, size_t errcap);

#endif
