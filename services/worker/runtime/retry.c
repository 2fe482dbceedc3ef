/* Waiting and retrying in background loops. See retry.h. */
#include "retry.h"
#include "tally/log.h"

#include <stdio.h>
#include <time.h>

void
tly_retry_backoff(int *delay_ms, atomic_bool *stop)
{
    if (*delay_ms < 50)
        *delay_ms = 50;
    tly_retry_sleep(*delay_ms, stop);
    *delay_ms = *delay_ms * 2 > 5000 ? 5000 : *delay_ms * 2;
}

void
tly_retry_failed(tly_retry_t *rt, const char *err, atomic_bool *stop)
{
    if (!rt->failing) {
        char msg[96];
        snprintf(msg, sizeof(msg), "%s failed, retrying", rt->what);
        tly_log(TLY_LOG_ERROR, msg, "consumer", rt->name, "error", err, NULL);
    }
    rt->failing = true;
    tly_retry_backoff(&rt->delay_ms, stop);
}

void
tly_retry_ok(tly_retry_t *rt)
{
    if (rt->failing) {
        char msg[96];
        snprintf(msg, sizeof(msg), "%s recovered", rt->what);
        tly_log(TLY_LOG_INFO, msg, "consumer", rt->name, NULL);
    }
    rt->failing = false;
    rt->delay_ms = 0;
}

void
tly_retry_sleep(int64_t ms, atomic_bool *stop)
{
    for (int64_t slept = 0; slept < ms && !atomic_load(stop); slept += 20) {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
}
