/* Replay's progress lines and summary. See replay_internal.h. */
#include "replay_internal.h"

/* --- progress ------------------------------------------------------------ */

int64_t
tly_ctl_replay__remaining(const tly_ctl_replay_t *r)
{
    int64_t left = 0;
    for (int p = 0; p < r->nparts; ++p)
        if (r->end[p] > r->staged[p])
            left += r->end[p] - r->staged[p];
    return left;
}

void
tly_ctl_replay__progress(tly_ctl_replay_t *r, bool force)
{
    if (r->o.quiet)
        return;
    int64_t now = tly_clock_mono_us();
    if (!force && now - r->last_print_us < (r->tty ? 200000 : 2000000))
        return;
    r->last_print_us = now;
    double secs = (double)(now - r->t0_us) / 1e6;
    double rate = secs > 0 ? (double)r->processed / secs : 0;
    int64_t left = tly_ctl_replay__remaining(r);
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
