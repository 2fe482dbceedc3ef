/*
 * Reads in time and reads of one's own writes (issue 25; docs/reads.md).
 *
 * Tally-Watermark: each loop thread reads the projector's watermark
 * (projector_watermarks, written in the projector's own transactions) every
 * QA_WATERMARK_EVERY ticks with one pooled query and adds the value it knows
 * to every read it answers: a value at most that much older than the newest,
 * never ahead of what the read models hold.
 *
 * Tally-Consistency-Token: a read that sends one waits until the token's job
 * is terminal in the read models and the projector is past its request event
 * (STMT_TOKEN_REACHED), checked every tick with one pooled query per waiter;
 * then it is routed like any read (not from the read cache, whose
 * notification may trail the commit the check saw). The wait is bounded by
 * Prefer: wait=N (at most 30 s; 5 s without): at the deadline the read is
 * answered with what is there and `Tally-Consistency: timeout` says so.
 * The token is checked before anything else: tampered, signed with another
 * key, or another tenant's is 400 invalid_consistency_token.
 *
 * ?as_of= on an account: the version then, derived from its ledger entries
 * and status history (STMT_ACCOUNT_AS_OF); `Tally-As-Of-Complete` says
 * whether the projector has applied everything up to that instant (past the
 * account's own last event or the watermark) or the answer is what is known.
 */
#include "query_internal.h"
#include "tally/clock.h"
#include "tally/http.h"
#include "tally/server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QA_READS_TICK_MS 10
#define QA_WATERMARK_EVERY 10 /* ticks: the watermark is at most 100 ms older than the table */
#define QA_TOKEN_WAIT_DEFAULT_S 5

/* --- watermark ----------------------------------------------------------- */

static void
on_watermark(void *data, PGresult *res, const char *err)
{
    query_thread_t *thr = data;
    thr->watermark_querying = false;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
        return; /* keep the last value: a watermark never moves back */
    snprintf(thr->watermark, sizeof(thr->watermark), "%s", PQgetvalue(res, 0, 0));
    thr->watermark_us = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
}

static void
watermark_refresh(query_thread_t *thr)
{
    if (thr->watermark_querying || thr->pg == NULL || !tly_pgpool_ready(thr->pg))
        return;
    thr->watermark_querying = true;
    tly_pgpool_exec(thr->pg, STMT_WATERMARK, NULL, on_watermark, thr);
}

/* --- consistency tokens -------------------------------------------------- */

static void
token_unlink(query_op_t *op)
{
    for (query_op_t **p = &op->thr->token_waiters; *p != NULL; p = &(*p)->next_token_waiter) {
        if (*p == op) {
            *p = op->next_token_waiter;
            break;
        }
    }
    if (h2o_timeout_is_linked(&op->token_timer))
        h2o_timeout_unlink(&op->token_timer);
}

/* The wait is over: the read goes on as if it had no token. */
static void
token_done(query_op_t *op, const char *how)
{
    token_unlink(op);
    if (op->api.req == NULL) { /* the client went away */
        qa_op_destroy(op);
        return;
    }
    tly_http_add_header(op->api.req, "tally-consistency", how);
    qa_route(op);
}

static void token_check(query_op_t *op);

static void
on_token_reached(void *data, PGresult *res, const char *err)
{
    query_op_t *op = data;
    op->token_querying = false;
    if (op->thr->reads_closing) { /* the pool is going: nothing more may be started */
        qa_op_destroy(op);
        return;
    }
    bool ok = res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
    if (ok && strcmp(PQgetvalue(res, 0, 0), "t") == 0)
        token_done(op, "reached");
    else if (op->api.req == NULL || tly_clock_mono_us() >= op->token_deadline_us || tly_server_stopping())
        token_done(op, "timeout");
    else
        h2o_timeout_link(op->thr->loop, &op->thr->reads_timeout, &op->token_timer);
}

static void
token_check(query_op_t *op)
{
    char job[TLY_UUID_STR_LEN + 1], part[16], off[24];
    tly_uuid_format(&op->token.job, job);
    snprintf(part, sizeof(part), "%d", (int)op->token.partition);
    snprintf(off, sizeof(off), "%lld", (long long)op->token.offset);
    const char *params[4] = {job, op->tenant, part, off};
    op->token_querying = true;
    tly_pgpool_exec(op->thr->pg, STMT_TOKEN_REACHED, params, on_token_reached, op);
}

static void
on_token_timer(h2o_timeout_entry_t *entry)
{
    token_check(H2O_STRUCT_FROM_MEMBER(query_op_t, token_timer, entry));
}

/* The token of the request, verified, into op->token; replies 400 and returns false when it is bad. */
static bool
token_or_reply(query_op_t *op, h2o_iovec_t v)
{
    const char *detail = NULL;
    if (op->thr->consistency_key == NULL)
        detail = "this server gives no consistency tokens (TALLY_CONSISTENCY_SECRET is not set)";
    else
        switch (tly_consistency_decode(v.base, v.len, op->thr->consistency_key, &op->api.principal.tenant_id, &op->token)) {
        case TLY_CONSISTENCY_OK:
            return true;
        case TLY_CONSISTENCY_OTHER_TENANT:
            detail = "the consistency token is not one of this tenant's";
            break;
        case TLY_CONSISTENCY_INVALID:
            detail = "the consistency token is malformed or was not issued by this service";
            break;
        }
    tly_api_problem(&op->api, 400, "invalid_consistency_token", detail, NULL);
    return false;
}

bool
qa_reads_start(query_op_t *op)
{
    query_thread_t *thr = op->thr;
    if (thr->watermark[0] != '\0')
        tly_http_add_header(op->api.req, "tally-watermark", thr->watermark);
    h2o_iovec_t v = tly_http_header(op->api.req, TLY_CONSISTENCY_HEADER);
    if (v.base == NULL)
        return false;
    if (!token_or_reply(op, v)) {
        qa_op_destroy(op);
        return true;
    }
    h2o_iovec_t prefer = tly_http_header(op->api.req, "prefer");
    int wait_s = prefer.base != NULL ? qa_prefer_wait(prefer.base, prefer.len) : -1;
    if (wait_s < 0)
        wait_s = QA_TOKEN_WAIT_DEFAULT_S;
    if (wait_s > QA_WAIT_MAX)
        wait_s = QA_WAIT_MAX;
    op->token_deadline_us = tly_clock_mono_us() + (int64_t)wait_s * 1000000;
    op->token_timer.cb = on_token_timer;
    op->next_token_waiter = thr->token_waiters;
    thr->token_waiters = op;
    token_check(op);
    return true;
}

static void
on_reads_tick(h2o_timeout_entry_t *entry)
{
    query_thread_t *thr = H2O_STRUCT_FROM_MEMBER(query_thread_t, reads_tick, entry);
    if (thr->reads_ticks++ % QA_WATERMARK_EVERY == 0)
        watermark_refresh(thr);
    h2o_timeout_link(thr->loop, &thr->reads_timeout, &thr->reads_tick);
}

void
qa_reads_thread_init(query_thread_t *thr, const uint8_t *consistency_key)
{
    thr->consistency_key = consistency_key;
    thr->watermark_us = INT64_MIN;
    h2o_timeout_init(thr->loop, &thr->reads_timeout, QA_READS_TICK_MS);
    thr->reads_tick.cb = on_reads_tick;
    h2o_timeout_link(thr->loop, &thr->reads_timeout, &thr->reads_tick);
}

void
qa_reads_thread_dispose(query_thread_t *thr)
{
    thr->reads_closing = true;
    if (h2o_timeout_is_linked(&thr->reads_tick))
        h2o_timeout_unlink(&thr->reads_tick);
    /* past the grace period: waiters still here are dropped (their reads in flight fail with the pool) */
    while (thr->token_waiters != NULL) {
        query_op_t *op = thr->token_waiters;
        token_unlink(op);
        if (!op->token_querying)
            qa_op_destroy(op);
    }
    h2o_timeout_dispose(thr->loop, &thr->reads_timeout);
}

/* --- parameters of a single resource ------------------------------------ */

/* expand=a,b: every name must be one `route` allows; the flags into op. The message when it is bad. */
static const char *
parse_expand(query_op_t *op, const char *v)
{
    bool job = strcmp(op->what, "job") == 0;
    const char *p = v;
    if (*p == '\0')
        return "must name what to expand";
    while (*p != '\0') {
        size_t n = strcspn(p, ",");
        if (job && n == 8 && memcmp(p, "resource", 8) == 0)
            op->expand_resource = true;
        else if (!job && n == 12 && memcmp(p, "from_account", 12) == 0)
            op->expand_from = true;
        else if (!job && n == 10 && memcmp(p, "to_account", 10) == 0)
            op->expand_to = true;
        else
            return job ? "must be resource" : "must be from_account, to_account or both";
        p += n;
        if (*p == ',' && *++p == '\0')
            return "must not end with a comma";
    }
    return NULL;
}

bool
qa_resource_params_or_reply(query_op_t *op)
{
    qa_pair_t pairs[QA_MAX_PARAMS];
    int n = qa_query_pairs_or_reply(op, pairs);
    if (n < 0)
        return false;
    json_t *errors = json_array();
    bool account = strcmp(op->what, "account") == 0;
    bool expandable = strcmp(op->what, "job") == 0 || strcmp(op->what, "transfer") == 0;
    bool seen_as_of = false, seen_expand = false;
    for (int i = 0; i < n; ++i) {
        const char *name = pairs[i].name, *message = NULL;
        if (account && strcmp(name, "as_of") == 0) {
            message = seen_as_of                                                                 ? "is given more than once"
                      : (op->has_as_of = tly_clock_parse_rfc3339(pairs[i].value, &op->as_of_us)) ? NULL
                                                                                                 : "must be an RFC 3339 date-time";
            seen_as_of = true;
        } else if (expandable && strcmp(name, "expand") == 0) {
            message = seen_expand ? "is given more than once" : parse_expand(op, pairs[i].value);
            seen_expand = true;
        } else {
            message = "is not a parameter of this endpoint";
        }
        if (message != NULL)
            tly_http_field_error(errors, name, message);
    }
    return qa_params_ok_or_reply(op, errors);
}

/* --- as_of --------------------------------------------------------------- */

static void
on_account_as_of(void *data, PGresult *res, const char *err)
{
    query_op_t *op = data;
    char etag[48];
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        qa_read_failed(op, res, err);
    } else if (PQntuples(res) == 0) {
        tly_api_problem(&op->api, 404, "not_found", "no such account", NULL);
    } else {
        bool complete = strcmp(PQgetvalue(res, 0, 2), "t") == 0 ||
                        (op->thr->watermark_us != INT64_MIN && op->as_of_us <= op->thr->watermark_us);
        tly_http_add_header(op->api.req, "tally-as-of-complete", complete ? "true" : "false");
        snprintf(etag, sizeof(etag), "\"account-v%s\"", PQgetvalue(res, 0, 1));
        qa_send_json(op, PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0), etag);
    }
    qa_op_destroy(op);
}

void
qa_account_as_of_start(query_op_t *op)
{
    char as_of[40];
    tly_clock_format_rfc3339(op->as_of_us, as_of, sizeof(as_of));
    const char *params[3] = {op->id_text, op->tenant, as_of};
    tly_pgpool_exec(op->thr->pg, STMT_ACCOUNT_AS_OF, params, on_account_as_of, op);
}
