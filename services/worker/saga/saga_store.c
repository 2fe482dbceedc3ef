/* transfer_sagas rows. See saga_store.h. */
#include "saga_store.h"
#include "tally/pgx.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define US_OF(col) "COALESCE((extract(epoch FROM " col ") * 1000000)::bigint, 0)"
#define TS_OF(n) "('epoch'::timestamptz + $" #n "::bigint * interval '1 microsecond')"

int
tly_saga_load(PGconn *conn, const tly_uuid_t *transfer, tly_saga_state_t *out, char *err, size_t errcap)
{
    char id_s[TLY_UUID_STR_LEN + 1];
    tly_uuid_format(transfer, id_s);
    const char *vals[] = {id_s};
    PGresult *res = tly_pgx_query(
        conn, "load saga",
        "SELECT tenant_id, job_id, request_event_id, from_account, to_account, amount, currency, state, "
        "COALESCE(error_code, ''), COALESCE(error_detail, ''), attempt, sends, step_cause_id, " US_OF("step_at") ", " US_OF(
            "deadline_at") ", " US_OF("stuck_at") ", " US_OF("created_at") ", version FROM transfer_sagas WHERE transfer_id = $1 "
                                                                           "FOR UPDATE",
        1, vals, err, errcap);
    if (res == NULL)
        return -1;
    memset(out, 0, sizeof(*out));
    out->transfer_id = *transfer;
    if (PQntuples(res) == 1) {
        out->exists = true;
        bool ok = tly_uuid_parse(PQgetvalue(res, 0, 0), &out->tenant_id) &&
                  (PQgetisnull(res, 0, 1) || tly_uuid_parse(PQgetvalue(res, 0, 1), &out->job_id)) &&
                  tly_uuid_parse(PQgetvalue(res, 0, 2), &out->request_event_id) &&
                  tly_uuid_parse(PQgetvalue(res, 0, 3), &out->from_account) &&
                  tly_uuid_parse(PQgetvalue(res, 0, 4), &out->to_account) &&
                  tly_saga_status_parse(PQgetvalue(res, 0, 7), &out->status) &&
                  (PQgetisnull(res, 0, 12) || tly_uuid_parse(PQgetvalue(res, 0, 12), &out->step_cause_id));
        out->amount = strtoll(PQgetvalue(res, 0, 5), NULL, 10);
        snprintf(out->currency, sizeof(out->currency), "%.3s", PQgetvalue(res, 0, 6));
        snprintf(out->error_code, sizeof(out->error_code), "%s", PQgetvalue(res, 0, 8));
        snprintf(out->error_detail, sizeof(out->error_detail), "%s", PQgetvalue(res, 0, 9));
        out->attempt = atoi(PQgetvalue(res, 0, 10));
        out->sends = atoi(PQgetvalue(res, 0, 11));
        out->step_at_us = strtoll(PQgetvalue(res, 0, 13), NULL, 10);
        out->deadline_us = strtoll(PQgetvalue(res, 0, 14), NULL, 10);
        out->stuck_at_us = strtoll(PQgetvalue(res, 0, 15), NULL, 10);
        out->created_us = strtoll(PQgetvalue(res, 0, 16), NULL, 10);
        out->version = strtoll(PQgetvalue(res, 0, 17), NULL, 10);
        if (!ok) {
            snprintf(err, errcap, "could not load saga: row %s is corrupt", id_s);
            PQclear(res);
            return -1;
        }
    }
    PQclear(res);
    return 0;
}

int
tly_saga_store(PGconn *conn, const tly_saga_state_t *s, char *err, size_t errcap)
{
    char id[TLY_UUID_STR_LEN + 1], tenant[TLY_UUID_STR_LEN + 1], job[TLY_UUID_STR_LEN + 1], req[TLY_UUID_STR_LEN + 1];
    char from[TLY_UUID_STR_LEN + 1], to[TLY_UUID_STR_LEN + 1], cause[TLY_UUID_STR_LEN + 1];
    char amount[24], attempt[16], sends[16], step_at[24], deadline[24], stuck[24], created[24], version[24];
    tly_uuid_format(&s->transfer_id, id);
    tly_uuid_format(&s->tenant_id, tenant);
    tly_uuid_format(&s->job_id, job);
    tly_uuid_format(&s->request_event_id, req);
    tly_uuid_format(&s->from_account, from);
    tly_uuid_format(&s->to_account, to);
    tly_uuid_format(&s->step_cause_id, cause);
    snprintf(amount, sizeof(amount), "%" PRId64, s->amount);
    snprintf(attempt, sizeof(attempt), "%d", s->attempt);
    snprintf(sends, sizeof(sends), "%d", s->sends);
    snprintf(step_at, sizeof(step_at), "%" PRId64, s->step_at_us);
    snprintf(deadline, sizeof(deadline), "%" PRId64, s->deadline_us);
    snprintf(stuck, sizeof(stuck), "%" PRId64, s->stuck_at_us);
    snprintf(created, sizeof(created), "%" PRId64, s->created_us);
    snprintf(version, sizeof(version), "%" PRId64, s->version);
    const char *vals[] = {id,
                          tenant,
                          tly_uuid_is_nil(&s->job_id) ? NULL : job,
                          req,
                          from,
                          to,
                          amount,
                          s->currency,
                          tly_saga_status_name(s->status),
                          s->error_code[0] != '\0' ? s->error_code : NULL,
                          s->error_code[0] != '\0' ? s->error_detail : NULL,
                          attempt,
                          sends,
                          tly_uuid_is_nil(&s->step_cause_id) ? NULL : cause,
                          s->step_at_us != 0 ? step_at : NULL,
                          s->deadline_us != 0 ? deadline : NULL,
                          s->stuck_at_us != 0 ? stuck : NULL,
                          created,
                          version};
    return tly_pgx_exec(conn, "store saga",
                        "INSERT INTO transfer_sagas (transfer_id, tenant_id, job_id, request_event_id, from_account, to_account, "
                        "amount, currency, state, error_code, error_detail, attempt, sends, step_cause_id, step_at, deadline_at, "
                        "stuck_at, created_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, "
                        "$14, " TS_OF(15) ", " TS_OF(16) ", " TS_OF(17) ", " TS_OF(
                            18) ", $19) "
                                "ON CONFLICT (transfer_id) DO UPDATE SET state = EXCLUDED.state, error_code = EXCLUDED.error_code, "
                                "error_detail = EXCLUDED.error_detail, attempt = EXCLUDED.attempt, sends = EXCLUDED.sends, "
                                "step_cause_id = EXCLUDED.step_cause_id, step_at = EXCLUDED.step_at, deadline_at = "
                                "EXCLUDED.deadline_at, "
                                "stuck_at = EXCLUDED.stuck_at, version = EXCLUDED.version, updated_at = now()",
                        19, vals, NULL, err, errcap);
}
