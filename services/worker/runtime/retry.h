/*
 * Waiting and retrying in the worker's background loops (consumers, relay,
 * saga timer, retention, webhook sender): capped exponential backoff and
 * sleeps that end early on stop.
 */
#ifndef TALLY_WORKER_RETRY_H
#define TALLY_WORKER_RETRY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/** Exponential backoff: 50 ms doubling to 5 s. Sleeps `*delay_ms` in slices, returns early on stop. */
void tly_retry_backoff(int *delay_ms, atomic_bool *stop);
/*
 * The retry bookkeeping of a background loop (relay, saga timer, retention):
 * the first failure of a run of failures is logged as "<what> failed,
 * retrying" and the first success after it as "<what> recovered", with
 * consumer=<name>; failures back off (tly_retry_backoff). Zeroed plus
 * `what` and `name` is ready.
 */
typedef struct st_tly_retry_t {
    const char *what, *name;
    int delay_ms;
    bool failing;
} tly_retry_t;

/** After a failed pass: logs it if it starts a run of failures, then backs off. */
void tly_retry_failed(tly_retry_t *rt, const char *err, atomic_bool *stop);
/** After a good pass: logs the recovery if there were failures, and resets the backoff. */
void tly_retry_ok(tly_retry_t *rt);

/** Sleeps `ms` in 20 ms steps, returning early once `*stop` is set. */
void tly_retry_sleep(int64_t ms, atomic_bool *stop);

#endif
