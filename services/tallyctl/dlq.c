/*
 * `tallyctl dlq list|show|retry|discard`: the events the worker parked in
 * dead_letters.
 *
 * retry, projector dead letters: in one transaction, the event goes through
 * the projector's own retry path (tly_projection_retry_parked, upcast first):
 * the park is undone (its job back from failed/dead_lettered, the one move
 * down of the job state machine, tally/ledger/job.h) and the event applied as
 * the live projector applies it, so the result equals a replay in which the
 * event applied; then the dead letter is deleted. tallyctl writes no read
 * model itself. Refused when the
 * account changed after the event (applying an old balance_after out of
 * order would be wrong: rebuild with `tallyctl replay` instead).
 *
 * retry, decider dead letters: refused. When the decider parked the request
 * it also emitted <Xxx>Rejected {code: dead_lettered} into the log, so the
 * request has its outcome: deciding it again would give one request two
 * outcomes. The client sends the command again (a new Idempotency-Key);
 * `dlq discard` clears the row.
 */
#include "dlq.h"
#include "db.h"
#include "tally/pgx.h"
#include "tally/ledger/projection.h"

#include "tally/clock.h"
#include "tally/json.h"
#include "tally/pg.h"
#include "tally/ledger/upcast.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ERR_MAX 2048

static int
id_arg(const tly_ctl_args_t *args, char *out, size_t cap)
{
    char *end;
    long long id = strtoll(args->pos[0], &end, 10);
    if (*end != '\0' || id <= 0) {
        tly_ctl_error("the dead letter id must be a positive integer (see tallyctl dlq list)");
        return -1;
    }
    snprintf(out, cap, "%lld", id);
    return 0;
}

int
tly_ctl_dlq_list(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[ERR_MAX];
    const char *consumer = tly_ctl_arg(cmd, args, "consumer");
    int ret = TLY_CTL_FAIL;
    PGresult *res = NULL;
    PGconn *conn = tly_ctl_db_open(settings);
    if (conn == NULL)
        goto out;
    const char *vals[] = {consumer};
    res = tly_ctl_db_query(conn, "could not list dead letters",
                           "SELECT id, consumer, partition, \"offset\", event_id, "
                           "coalesce((payload::json)->>'type', '?') AS type, attempts, "
                           "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS created_at, "
                           "left(error, 80) AS error FROM dead_letters "
                           "WHERE $1::text IS NULL OR consumer = $1 ORDER BY id",
                           1, vals, err, sizeof(err));
    if (res == NULL) {
        /* a payload that is not JSON makes the cast fail: list without the type */
        res = tly_ctl_db_query(conn, "could not list dead letters",
                               "SELECT id, consumer, partition, \"offset\", event_id, attempts, created_at, left(error, 80) AS "
                               "error FROM dead_letters WHERE $1::text IS NULL OR consumer = $1 ORDER BY id",
                               1, vals, err, sizeof(err));
    }
    if (res == NULL) {
        tly_ctl_error("%s", err);
        goto out;
    }
    tly_ctl_db_print_table(res, stdout);
    ret = TLY_CTL_OK;
out:
    PQclear(res);
    PQfinish(conn);
    return ret;
}

int
tly_ctl_dlq_show(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[ERR_MAX], id[24];
    if (id_arg(args, id, sizeof(id)) != 0)
        return TLY_CTL_USAGE;
    int ret = TLY_CTL_FAIL;
    PGresult *res = NULL;
    PGconn *conn = tly_ctl_db_open(settings);
    if (conn == NULL)
        goto out;
    const char *vals[] = {id};
    res = tly_ctl_db_query(conn, "could not read the dead letter",
                           "SELECT id, consumer, topic, partition, \"offset\", event_id, attempts, created_at, error, "
                           "payload FROM dead_letters WHERE id = $1",
                           1, vals, err, sizeof(err));
    if (res == NULL || PQntuples(res) != 1) {
        tly_ctl_error("%s", res == NULL ? err : "no such dead letter");
        goto out;
    }
    for (int c = 0; c < PQnfields(res) - 1; ++c)
        printf("%-11s %s\n", PQfname(res, c), PQgetisnull(res, 0, c) ? "-" : PQgetvalue(res, 0, c));
    const char *payload = PQgetvalue(res, 0, PQnfields(res) - 1);
    json_error_t jerr;
    json_t *o = json_loads(payload, 0, &jerr);
    if (o != NULL) {
        char *pretty = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        printf("payload:\n%s\n", pretty);
        free(pretty);
        json_decref(o);
    } else {
        printf("payload (not JSON):\n%s\n", payload);
    }
    ret = TLY_CTL_OK;
out:
    PQclear(res);
    PQfinish(conn);
    return ret;
}

static int
retry_projector(PGconn *conn, const char *id, const char *payload, char *err, size_t errcap)
{
    tly_envelope_t env, up;
    char why[1024], agg[TLY_UUID_STR_LEN + 1], when[40], event_id[TLY_UUID_STR_LEN + 1];
    if (tly_envelope_parse(payload, strlen(payload), &env, why, sizeof(why)) != 0) {
        snprintf(err, errcap, "the payload is not an event (%s): no retry can apply it; discard it", why);
        return -1;
    }
    int maxv = tly_projection_max_version(env.type);
    if (!tly_projection_knows(env.type) || env.version > maxv) {
        snprintf(err, errcap, "%s v%d is not an event this tallyctl's projections know", env.type, env.version);
        tly_envelope_clear(&env);
        return -1;
    }
    int rc = tly_upcast(&env, maxv, &up, why, sizeof(why));
    tly_envelope_clear(&env);
    if (rc != 0) {
        snprintf(err, errcap, "%s", why);
        return -1;
    }
    tly_uuid_format(&up.aggregate_id, agg);
    tly_uuid_format(&up.id, event_id);
    tly_clock_format_rfc3339(up.occurred_at_us, when, sizeof(when));
    int ret = -1;
    /* out of order would be wrong: the projections write absolute balances */
    const char *later[] = {agg, when};
    PGresult *res = tly_ctl_db_query(conn, "could not read the account", "SELECT 1 FROM accounts WHERE id = $1 AND updated_at > $2",
                                     2, later, err, errcap);
    if (res == NULL)
        goto out;
    bool changed = PQntuples(res) > 0;
    PQclear(res);
    if (changed) {
        snprintf(err, errcap,
                 "account %s changed after this event (later events were applied): applying it now would "
                 "reorder its history; rebuild with `tallyctl replay` instead",
                 agg);
        goto out;
    }
    if (tly_projection_retry_parked(conn, &up, why, sizeof(why)) != 0) {
        snprintf(err, errcap, "the projection still fails: %s", why);
        goto out;
    }
    const char *dedup[] = {event_id};
    res = tly_ctl_db_query(conn, "could not record the event as applied",
                           "INSERT INTO consumer_dedup (consumer, event_id) VALUES ('projector', $1) ON CONFLICT DO NOTHING", 1,
                           dedup, err, errcap);
    if (res == NULL)
        goto out;
    PQclear(res);
    const char *del[] = {id};
    res = tly_ctl_db_query(conn, "could not delete the dead letter", "DELETE FROM dead_letters WHERE id = $1", 1, del, err, errcap);
    if (res == NULL)
        goto out;
    PQclear(res);
    ret = 0;
out:
    tly_envelope_clear(&up);
    return ret;
}

int
tly_ctl_dlq_retry(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[ERR_MAX], id[24];
    if (id_arg(args, id, sizeof(id)) != 0)
        return TLY_CTL_USAGE;
    PGconn *conn = tly_ctl_db_open(settings);
    if (conn == NULL)
        return TLY_CTL_FAIL;
    int ret = TLY_CTL_FAIL;
    if (tly_pg_exec(conn, "BEGIN", err, sizeof(err)) != 0) {
        tly_ctl_error("%s", err);
        goto out;
    }
    const char *vals[] = {id};
    PGresult *res =
        tly_ctl_db_query(conn, "could not read the dead letter",
                         "SELECT consumer, payload FROM dead_letters WHERE id = $1 FOR UPDATE", 1, vals, err, sizeof(err));
    if (res == NULL || PQntuples(res) != 1) {
        tly_ctl_error("%s", res == NULL ? err : "no such dead letter");
        PQclear(res);
        goto out;
    }
    char consumer[64];
    snprintf(consumer, sizeof(consumer), "%s", PQgetvalue(res, 0, 0));
    char *payload = strdup(PQgetvalue(res, 0, 1));
    PQclear(res);
    if (payload == NULL)
        abort();
    if (strcmp(consumer, "decider") == 0) {
        tly_ctl_error("dead letter %s is a request the decider parked: it already has its outcome in the log "
                      "(<Xxx>Rejected, code dead_lettered), so deciding it again would give it two. The client sends the "
                      "command again (new Idempotency-Key); `tallyctl dlq discard %s` clears this row.",
                      id, id);
    } else if (strcmp(consumer, "projector") != 0) {
        tly_ctl_error("dead letter %s belongs to consumer \"%s\", which tallyctl does not know how to retry", id, consumer);
    } else if (retry_projector(conn, id, payload, err, sizeof(err)) != 0) {
        tly_ctl_error("dead letter %s: %s", id, err);
    } else if (tly_pg_exec(conn, "COMMIT", err, sizeof(err)) != 0) {
        tly_ctl_error("%s", err);
    } else {
        printf("dead letter %s applied by the projection and removed\n", id);
        ret = TLY_CTL_OK;
    }
    free(payload);
out:
    if (ret != TLY_CTL_OK)
        (void)!tly_pg_exec(conn, "ROLLBACK", err, sizeof(err));
    PQfinish(conn);
    return ret;
}

int
tly_ctl_dlq_discard(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[ERR_MAX], id[24];
    if (id_arg(args, id, sizeof(id)) != 0)
        return TLY_CTL_USAGE;
    PGconn *conn = tly_ctl_db_open(settings);
    if (conn == NULL)
        return TLY_CTL_FAIL;
    const char *vals[] = {id};
    PGresult *res =
        tly_ctl_db_query(conn, "could not discard the dead letter",
                         "DELETE FROM dead_letters WHERE id = $1 RETURNING consumer, event_id", 1, vals, err, sizeof(err));
    int ret = TLY_CTL_FAIL;
    if (res == NULL)
        tly_ctl_error("%s", err);
    else if (PQntuples(res) != 1)
        tly_ctl_error("no such dead letter");
    else {
        printf("dead letter %s discarded (consumer %s, event %s)\n", id, PQgetvalue(res, 0, 0),
               PQgetisnull(res, 0, 1) ? "-" : PQgetvalue(res, 0, 1));
        ret = TLY_CTL_OK;
    }
    PQclear(res);
    PQfinish(conn);
    return ret;
}
