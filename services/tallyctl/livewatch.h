/*
 * Live-traffic watch for tallyctl replay and verify: a thread with its own
 * connection samples how many other sessions of the database are inside a
 * statement or a transaction, every 50 ms, and says whether the live
 * services are working. A replay then slows to its busy rate and writes in
 * small batches, and goes back to full speed once the database is quiet.
 */
#ifndef TALLY_CTL_LIVEWATCH_H
#define TALLY_CTL_LIVEWATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TLY_CTL_WATCH_WINDOW 20       /* samples in the moving window: 1 s at 50 ms */
#define TLY_CTL_WATCH_CALM_SAMPLES 40 /* quiet this long (2 s) before full speed again */
#define TLY_CTL_WATCH_MIN_SAMPLES 10  /* no verdict of busy on fewer (the first ones are taken 10 ms apart) */

/*
 * The verdict, apart from PostgreSQL (unit-tested). Busy when the mean
 * number of active sessions over the window (at least 10 samples) reaches
 * 0.25; quiet again only after TLY_CTL_WATCH_CALM_SAMPLES samples in a row
 * with the window's mean below that. Measured on the local stack: 0 when
 * idle (the worker's pollers are too brief to be seen), about 0.6 at 100
 * commands/s and 6 at 1,000/s.
 */
typedef struct st_tly_ctl_loadavg_t {
    uint16_t ring[TLY_CTL_WATCH_WINDOW];
    int n, next, sum, calm;
    bool busy;
} tly_ctl_loadavg_t;

/** Adds one sample (active sessions seen) and returns the verdict: true while busy. */
bool tly_ctl_loadavg_add(tly_ctl_loadavg_t *a, int active);
/** The window's mean number of active sessions. */
double tly_ctl_loadavg_mean(const tly_ctl_loadavg_t *a);

typedef struct st_tly_ctl_livewatch_t tly_ctl_livewatch_t;

/**
 * Starts watching the database of `dsn`. Sessions named 'tallyctl' (this
 * replay's own, and any other tallyctl) do not count as live traffic.
 * Returns NULL with `err` when it cannot connect.
 */
tly_ctl_livewatch_t *tly_ctl_livewatch_start(const char *dsn, char *err, size_t errcap);
/** The current verdict; also true when the watch lost its connection (the safe side). */
bool tly_ctl_livewatch_busy(tly_ctl_livewatch_t *w);
/** The window's mean number of active sessions, for messages. */
double tly_ctl_livewatch_load(tly_ctl_livewatch_t *w);
/** Stops the thread and closes its connection. NULL is fine. */
void tly_ctl_livewatch_stop(tly_ctl_livewatch_t *w);

#endif
