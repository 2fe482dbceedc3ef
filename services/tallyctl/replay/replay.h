/*
 * `tallyctl replay` and the rebuild `tallyctl verify` runs: the read models
 * rebuilt from the start of tally.events into a shadow schema with the
 * worker's own projection functions (projection.h), resumable, and swapped
 * into public atomically. README.md next to this file explains the phases
 * and the swap.
 */
#ifndef TALLYCTL_REPLAY_H
#define TALLYCTL_REPLAY_H

#include "cli.h"

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#define TLY_CTL_SCHEMA_MAX 64
#define TLY_CTL_MAX_TABLES 8

typedef enum en_tly_ctl_replay_mode_t {
    TLY_REPLAY_SWAP,   /* rebuild, catch up with the live projector, swap into public */
    TLY_REPLAY_COPY,   /* --until / --into: a point-in-time copy, no swap */
    TLY_REPLAY_VERIFY, /* a throw-away shadow for tallyctl verify */
} tly_ctl_replay_mode_t;

typedef struct st_tly_ctl_replay_opts_t {
    tly_ctl_replay_mode_t mode;
    const char *projections; /* "accounts,jobs" or NULL for every read model */
    const char *until;       /* RFC 3339 time, or "P:O,P:O" end offsets (exclusive); NULL */
    const char *into;        /* schema name (mode COPY) or NULL for tally_shadow_<n> */
    bool restart;            /* drop an unfinished shadow instead of resuming it */
    int batch;               /* events per transaction */
    int64_t max_rate;        /* events per second at most (0: as fast as it goes), to leave the live system its share */
    int64_t busy_rate;       /* events per second while other sessions are working (livewatch.h); 0: never slow down */
    int max_batches;         /* stop after this many batches (tests); 0 = no limit */
    bool quiet;              /* no progress output */
} tly_ctl_replay_opts_t;

/* --busy-rate's default: live POST p99 stayed within 1.4x of its value without a replay at 30,000/s (bench/run.sh replay) */
#define TLY_CTL_REPLAY_BUSY_RATE 25000

typedef struct st_tly_ctl_replay_t tly_ctl_replay_t;

/** A read model the replay knows: table name and projection mask. */
typedef struct st_tly_ctl_model_t {
    const char *table;
    unsigned mask;
} tly_ctl_model_t;

/**
 * Parses a --projection list into a mask and the tables it covers (only
 * models whose table exists in public when `conn` is given). Returns 0 or -1
 * with `err`. Pure when conn is NULL (unit tests).
 */
int tly_ctl_models_parse(PGconn *conn, const char *list, unsigned *mask, const char **tables, int *ntables, char *err,
                         size_t errcap) __attribute__((warn_unused_result));

/**
 * Parses --until: an RFC 3339 time (`*until_us`, `*has_time`) or a list of
 * "partition:offset" end offsets (`ends[p]`, -1 = no limit, `nends` entries).
 */
int tly_ctl_until_parse(const char *s, int64_t *until_us, bool *has_time, int64_t *ends, int maxends, int *nends, char *err,
                        size_t errcap) __attribute__((warn_unused_result));

/** True for a schema name replay accepts for --into: [a-z_][a-z0-9_]{0,62}. */
bool tly_ctl_schema_name_ok(const char *s);

/**
 * Connects, takes the replay lock, creates or resumes the shadow schema and
 * assigns the partitions. Returns NULL with `err` set.
 */
tly_ctl_replay_t *tly_ctl_replay_open(const tly_ctl_settings_t *s, const tly_ctl_replay_opts_t *o, char *err, size_t errcap);

/**
 * The bulk phase: replays up to the targets (high watermarks at start, or
 * the live projector's positions for SWAP/VERIFY), committing every batch.
 * For SWAP/VERIFY it then keeps catching up until the shadow is close to the
 * projector. Returns 0, 1 when stopped by max_batches, -1 with `err`.
 */
int tly_ctl_replay_bulk(tly_ctl_replay_t *r, char *err, size_t errcap);

/**
 * The final catch-up: BEGIN (REPEATABLE READ), LOCK the live tables of the
 * replayed models in `lockmode` ("EXCLUSIVE" for a swap, "SHARE" for verify),
 * read the projector's positions and replay up to them inside this
 * transaction. On success the transaction is left open: the shadow now
 * equals what the live tables hold. -1 with `err` (rolled back).
 */
int tly_ctl_replay_final(tly_ctl_replay_t *r, const char *lockmode, char *err, size_t errcap);

/** In the transaction of tly_ctl_replay_final: swaps the shadow tables into public, commits, drops the old tables. */
int tly_ctl_replay_swap(tly_ctl_replay_t *r, char *err, size_t errcap);

/** Marks a COPY replay finished (its schema stays as the point-in-time copy). */
int tly_ctl_replay_finish_copy(tly_ctl_replay_t *r, char *err, size_t errcap);

/** Rolls back what is open and drops the shadow schema (verify). */
int tly_ctl_replay_drop(tly_ctl_replay_t *r, char *err, size_t errcap);

PGconn *tly_ctl_replay_conn(tly_ctl_replay_t *r);
const char *tly_ctl_replay_schema(const tly_ctl_replay_t *r);
int tly_ctl_replay_tables(const tly_ctl_replay_t *r, const char *const **tables);
/** Prints "<events> events (<applied> applied, <dups> duplicates, <failed> failed) in S s: N events/s". */
void tly_ctl_replay_summary(const tly_ctl_replay_t *r, FILE *out);
int64_t tly_ctl_replay_failed(const tly_ctl_replay_t *r);

void tly_ctl_replay_close(tly_ctl_replay_t *r);

/* The commands. */
int tly_ctl_replay_cmd(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);

#endif
