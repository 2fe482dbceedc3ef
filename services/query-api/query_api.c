/*
 * Query API: settings, prepared statements, routing and the per-thread
 * context. Each read is one prepared statement that filters by the caller's
 * tenant, so another tenant's resource is indistinguishable from a missing
 * one (404 either way, same body, same single query). Lists live in
 * qa_lists.c, jobs and their long-poll in qa_jobs.c, answers (ETag, 304,
 * gzip) in qa_respond.c.
 */
#include "query_api.h"
#include "tally/api.h"
#include "tally/api_service.h"
#include "tally/http.h"
#include "tally/ledger/job.h"
#include "tally/ledger/projection.h"
#include "tally/json.h"
#include "tally/keycache.h"
#include "tally/log.h"
#include "tally/pgasync.h"
#include "tally/server.h"
#include "query_internal.h"

#include <openssl/sha.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
#define US(col) "(extract(epoch FROM " col ") * 1000000)::bigint"
/* An account as json; `status`, `balance`, `version` and `updated_at` are expressions (GET ?as_of= computes them). */
#define ACCOUNT_OBJ_WITH(status, balance, version, updated_at)                                                                     \
    "json_build_object('id', id, 'currency', currency, 'label', label, 'status', " status ", 'balance', " balance                  \
    ", 'version', " version ", 'created_at', " TS("created_at") ", 'updated_at', " TS(updated_at) ")"
#define ACCOUNT_OBJ ACCOUNT_OBJ_WITH("status", "balance", "version", "updated_at")
#define ACCOUNT_JSON ACCOUNT_OBJ "::text"
/* The same object as the command API's answers (services/command-api/op.c); never the secrets. */
/* clang-format off */
#define WEBHOOK_ENDPOINT_JSON                                                                                                      \
    "json_build_object('id', id, 'url', url, 'description', description, 'event_types', event_types, "                          \
    "'enabled', enabled, 'disabled_reason', disabled_reason, 'failing_since', " TS("failing_since") ", "                         \
    "'previous_secret_expires_at', " TS("previous_secret_expires_at") ", 'version', version, "                                   \
    "'created_at', " TS("created_at") ", 'updated_at', " TS("updated_at") ")::text"
/* A delivery and every attempt made to send it, oldest attempt first. */
#define WEBHOOK_DELIVERY_JSON                                                                                                      \
    "json_build_object('id', d.id, 'endpoint_id', d.endpoint_id, 'event_id', d.event_id, 'event_type', d.event_type, "           \
    "'occurred_at', " TS("d.occurred_at") ", 'status', d.status, 'attempt_count', d.attempts, "                                 \
    "'next_attempt_at', CASE WHEN d.status = 'pending' THEN " TS("d.next_attempt_at") " END, "                                   \
    "'last_status_code', d.last_status_code, 'last_error', d.last_error, "                                                       \
    "'created_at', " TS("d.created_at") ", 'updated_at', " TS("d.updated_at") ", "                                               \
    "'attempts', coalesce((SELECT json_agg(json_build_object('attempt', a.attempt, 'started_at', " TS("a.started_at") ", "       \
    "'status_code', a.status_code, 'latency_ms', a.latency_ms, 'error', a.error) ORDER BY a.attempt) "                           \
    "FROM webhook_attempts a WHERE a.delivery_id = d.id), '[]'::json))::text"
/* clang-format on */
/* A transfer as json; `from` and `to` are expressions (the account ids, or the accounts with ?expand=). */
#define TRANSFER_OBJ_WITH(from, to)                                                                                                \
    "json_build_object('id', id, 'from_account', " from ", 'to_account', " to ", 'amount', amount, 'currency', "                   \
    "currency, 'reference', reference, 'status', status, 'compensated', compensated, 'error', CASE WHEN error_code IS NULL "       \
    "THEN NULL ELSE json_build_object('code', error_code, 'detail', error_detail) END, 'job_id', job_id, 'version', version, "     \
    "'timeline', timeline, 'created_at', " TS("created_at") ", 'updated_at', " TS("updated_at") ")"
#define TRANSFER_OBJ TRANSFER_OBJ_WITH("from_account", "to_account")
#define TRANSFER_JSON TRANSFER_OBJ "::text"
/* One level of ?expand=: an account of the caller's tenant (`id` an outer column), NULL when it is not visible. */
#define EXPANDED_ACCOUNT(id) "(SELECT " ACCOUNT_OBJ " FROM accounts x WHERE x.id = " id " AND x.tenant_id = $2)"
#define EXPANDED_ACCOUNT_VERSION(id) "(SELECT x.version FROM accounts x WHERE x.id = " id " AND x.tenant_id = $2)"
/*
 * A job as json; `object` is the expression of resource.object (?expand=resource), or nothing. The job is the
 * projected one or, before the projector saw its event, the command record (the queued fallback).
 */
#define JOB_JSON_WITH(object)                                                                                                      \
    "json_build_object('id', id, 'status', status, 'created_at', " TS("created_at") ", 'updated_at', " TS(                         \
        "updated_at") ", 'resource', json_build_object('type', resource_type, 'id', resource_id, 'url', '/v1/' || resource_type "  \
                      "|| 's/' || "                                                                                                \
                      "resource_id" object                                                                                         \
                      "), 'error', CASE WHEN error_code IS NULL THEN NULL ELSE json_build_object('code', error_code, "             \
                      "'detail', error_detail) END)::text"
/* clang-format off */
#define JOB_FROM                                                                                                                   \
    " FROM (SELECT id, status, created_at, updated_at, resource_type, resource_id, error_code, error_detail, "                    \
    TLY_JOB_READ_VERSION_SQL("version") " AS version FROM jobs WHERE id = $1 AND tenant_id = $2 "                                \
    "UNION ALL SELECT job_id, '" TLY_JOB_QUEUED_NAME "', created_at, created_at, resource_type, resource_id, NULL, NULL, "        \
    TLY_JOB_FALLBACK_VERSION_SQL " FROM command_requests WHERE job_id = $1 AND tenant_id = $2 AND state <> 'failed' "            \
    "AND NOT EXISTS (SELECT 1 FROM jobs WHERE id = $1)) j LIMIT 1"
/* The embedded resource of a succeeded job (an account or a transfer of the job's tenant), and its version. */
#define JOB_RESOURCE(what_account, what_transfer)                                                                                  \
    "CASE WHEN status = '" TLY_JOB_SUCCEEDED_NAME "' THEN CASE resource_type WHEN 'account' THEN (SELECT " what_account          \
    " FROM accounts x WHERE x.id = j.resource_id AND x.tenant_id = $2) WHEN 'transfer' THEN (SELECT " what_transfer              \
    " FROM transfers x WHERE x.id = j.resource_id AND x.tenant_id = $2 AND x.from_account IS NOT NULL) END END"
/* clang-format on */

const tly_pg_statement_t qa_statements[STMT__COUNT] = {
    [STMT_ACCOUNT] = {"get_account", "SELECT " ACCOUNT_JSON ", version FROM accounts WHERE id = $1 AND tenant_id = $2", 2},
    /* The projected job, or, before the projector saw its event, the command
       record: a job that got a 202 is never 404. The record is written before
       the append and marked accepted after the 202 (the command API's README
       says why), so any record but a failed one reads as queued (the queued
       fallback of tally/ledger/job.h, with its versions); a job id is
       only known to a client once its 202 was sent. */
    [STMT_JOB] = {"get_job", "SELECT " JOB_JSON_WITH("") ", version, status" JOB_FROM, 2},
    /* ?expand=resource: the ETag's version names the job's and the embedded resource's ("4-r7") */
    [STMT_JOB_EXPANDED] = {"get_job_expanded",
                           "SELECT " JOB_JSON_WITH(", 'object', " JOB_RESOURCE(
                               ACCOUNT_OBJ, TRANSFER_OBJ)) ", version || '-r' || "
                                                           "coalesce(" JOB_RESOURCE("x.version",
                                                                                    "x.version") ", 0), status" JOB_FROM,
                           2},
    /* clang-format on */
    /* $1 tenant, ($2, $3) exclusive lower position, $4 exclusive upper
       created_at, $5 status, $6 currency (NULL: any), $7 limit + 1 */
    [STMT_LIST_ACCOUNTS] =
        {"list_accounts",
         "SELECT " ACCOUNT_JSON
         ", " US("created_at") ", id FROM accounts WHERE tenant_id = $1 "
                               "AND (created_at, id) > ($2::timestamptz, $3::uuid) AND created_at < $4::timestamptz "
                               "AND ($5::text IS NULL OR status = $5::text) AND ($6::text IS NULL OR currency = $6::text) "
                               "ORDER BY created_at, id LIMIT $7::int",
         7},
    /* $1 account, $2 tenant, ($3, $4) lower position, $5 upper created_at,
       $6 kind, $7 limit + 1, $8 as_of (NULL: now). No row: no such account (for this tenant, or not yet at $8); one
       row of NULLs: the account has no entry on this page. */
    [STMT_LIST_ENTRIES] =
        {"list_entries",
         "SELECT e.body, e.us, e.id FROM accounts a LEFT JOIN LATERAL ("
         "SELECT json_build_object('id', id, 'account_id', account_id, 'kind', kind, 'amount', amount, "
         "'currency', currency, 'balance_after', balance_after, 'transfer_id', transfer_id, 'job_id', "
         "job_id, 'created_at', " TS("created_at") ")::text AS body, " US(
             "created_at") " AS us, id "
                           "FROM ledger_entries WHERE account_id = a.id AND tenant_id = $2 "
                           "AND (created_at, id) > ($3::timestamptz, $4::uuid) AND created_at < $5::timestamptz "
                           "AND ($6::text IS NULL OR kind = $6::text) AND ($8::timestamptz IS NULL OR created_at <= $8) "
                           "ORDER BY created_at, id LIMIT $7::int) e ON true "
                           "WHERE a.id = $1 AND a.tenant_id = $2 AND ($8::timestamptz IS NULL OR a.created_at <= $8)",
         8},
    /* Transfers: a row is shown once its TransferRequested is projected (from_account set). */
    [STMT_TRANSFER] = {"get_transfer",
                       "SELECT " TRANSFER_JSON ", version FROM transfers WHERE id = $1 AND tenant_id = $2 "
                       "AND from_account IS NOT NULL",
                       2},
    /* ?expand=from_account,to_account ($3, $4: which): each one the account (one level, the caller's tenant);
       the ETag's version names the transfer's and each embedded account's ("5-a3-a9") */
    [STMT_TRANSFER_EXPANDED] =
        {"get_transfer_expanded",
         "SELECT " TRANSFER_OBJ_WITH(
             "CASE WHEN $3 THEN coalesce(" EXPANDED_ACCOUNT("t.from_account") ", to_json(from_account)) "
                                                                              "ELSE to_json(from_account) END",
             "CASE WHEN $4 THEN coalesce(" EXPANDED_ACCOUNT(
                 "t.to_account") ", to_json(to_account)) "
                                 "ELSE to_json(to_account) END") "::text, "
                                                                 "version || CASE WHEN $3 THEN '-a' || "
                                                                 "coalesce(" EXPANDED_ACCOUNT_VERSION(
                                                                     "t.from_account") ", 0) ELSE '' END || "
                                                                                       "CASE WHEN $4 THEN '-a' || "
                                                                                       "coalesce(" EXPANDED_ACCOUNT_VERSION(
                                                                                           "t.to_account") ", 0) ELSE '' END "
                                                                                                           "FROM transfers t WHERE "
                                                                                                           "id = $1 AND tenant_id "
                                                                                                           "= $2 AND from_account "
                                                                                                           "IS NOT NULL",
         4},
    /*
     * The account as of $3 (GET /v1/accounts/{id}?as_of=): its events are its ledger entries and its status
     * changes (migrations/0011_reads_in_time.sql), so the version then is the version now less the events
     * after $3, the balance the last entry's up to $3 (0 before any), the status the last change's up to $3.
     * When nothing happened after $3 it is the row itself. No row before the account was opened. Column 3:
     * whether the projector has applied this account's events past $3 (then the answer is complete).
     */
    [STMT_ACCOUNT_AS_OF] =
        {"get_account_as_of",
         "SELECT CASE WHEN h.v = a.version THEN " ACCOUNT_OBJ_WITH(
             "a.status", "a.balance", "a.version",
             "a.updated_at") "::text ELSE " ACCOUNT_OBJ_WITH("h.status", "h.balance", "h.v",
                                                             "h.at") "::text END, h.v, $3 <= a.updated_at "
                                                                     "FROM accounts a CROSS JOIN LATERAL (SELECT "
                                                                     "a.version - (SELECT count(*) FROM ledger_entries e WHERE "
                                                                     "e.account_id = a.id AND e.created_at > $3) "
                                                                     "- (SELECT count(*) FROM "
                                                                     "jsonb_array_elements(a.status_changes) c WHERE "
                                                                     "(c->>'at')::timestamptz > $3) AS v, "
                                                                     "coalesce((SELECT e.balance_after FROM ledger_entries e WHERE "
                                                                     "e.account_id = a.id AND e.created_at <= $3 "
                                                                     "ORDER BY e.created_at DESC, e.id DESC LIMIT 1), 0) AS "
                                                                     "balance, "
                                                                     "coalesce((SELECT c->>'status' FROM "
                                                                     "jsonb_array_elements(a.status_changes) WITH ORDINALITY x(c, "
                                                                     "i) "
                                                                     "WHERE (c->>'at')::timestamptz <= $3 ORDER BY x.i DESC LIMIT "
                                                                     "1), "
                                                                     "CASE WHEN a.status_changes = '[]'::jsonb THEN a.status ELSE "
                                                                     "'open' END) AS status, "
                                                                     "greatest(a.created_at, (SELECT max(e.created_at) FROM "
                                                                     "ledger_entries e WHERE e.account_id = a.id "
                                                                     "AND e.created_at <= $3), (SELECT "
                                                                     "max((c->>'at')::timestamptz) FROM "
                                                                     "jsonb_array_elements(a.status_changes) c "
                                                                     "WHERE (c->>'at')::timestamptz <= $3)) AS at) h "
                                                                     "WHERE a.id = $1 AND a.tenant_id = $2 AND a.created_at <= "
                                                                     "$3::timestamptz",
         3},
    /* Whether the read models include a consistency token's command: its job is terminal and the projector is
       past its request event ($3 partition, -1: not known; $4 offset). */
    [STMT_TOKEN_REACHED] = {"token_reached",
                            "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND tenant_id = $2 AND status IN " TLY_JOB_TERMINAL_SQL
                            ") AND ($3::int < 0 OR EXISTS (SELECT 1 FROM consumer_positions "
                            "WHERE consumer = '" TLY_PROJECTOR_CONSUMER "' AND partition = $3::int AND next_offset > $4::bigint))",
                            4},
    /* The projector's watermark (Tally-Watermark): every event that occurred up to it is applied. */
    [STMT_WATERMARK] = {"watermark",
                        "SELECT " TS("min(applied_through)") ", " US("min(applied_through)") " FROM projector_watermarks", 0},
    /* $1 tenant, ($2, $3) exclusive lower position, $4 account (either side; NULL: any), $5 status, $6 limit + 1 */
    [STMT_LIST_TRANSFERS] = {"list_transfers",
                             "SELECT " TRANSFER_JSON ", " US(
                                 "created_at") ", id FROM transfers WHERE tenant_id = $1 "
                                               "AND from_account IS NOT NULL AND (created_at, id) > ($2::timestamptz, $3::uuid) "
                                               "AND ($4::uuid IS NULL OR from_account = $4::uuid OR to_account = $4::uuid) "
                                               "AND ($5::text IS NULL OR status = $5::text) ORDER BY created_at, id LIMIT $6::int",
                             6},
    /* The triggers that feed the conditional-GET cache exist on the live tables (2). */
    [STMT_VERSION_TRIGGERS] = {"version_triggers",
                               "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND (tgname, tgrelid) IN "
                               "(('accounts_notify_versions', 'public.accounts'::regclass), "
                               "('transfers_notify_versions', 'public.transfers'::regclass))",
                               0},
    /* clang-format off */
    [STMT_WEBHOOK_ENDPOINT] = {"get_webhook_endpoint",
        "SELECT " WEBHOOK_ENDPOINT_JSON ", version FROM webhook_endpoints "
        "WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL",
        2},
    /* $1 tenant, ($2, $3) exclusive lower position, $4 limit + 1 */
    [STMT_LIST_WEBHOOK_ENDPOINTS] = {"list_webhook_endpoints",
        "SELECT " WEBHOOK_ENDPOINT_JSON ", " US("created_at") ", id FROM webhook_endpoints "
        "WHERE tenant_id = $1 AND deleted_at IS NULL AND (created_at, id) > ($2::timestamptz, $3::uuid) "
        "ORDER BY created_at, id LIMIT $4::int",
        4},
    /* $1 endpoint, $2 tenant, ($3, $4) lower position, $5 status (NULL: any),
       $6 limit + 1. No row: no such endpoint (for this tenant, or deleted);
       one row of NULLs: the endpoint has no delivery on this page. */
    /* $1 tenant, ($2, $3) lower position, $4 limit + 1; oldest first */
    [STMT_LIST_AUDIT_EVENTS] = {"list_audit_events",
        "SELECT json_build_object('id', id, 'action', action, 'actor', json_build_object('type', actor_type, 'id', actor_id), "
        "'request_id', request_id, 'resource', json_build_object('type', resource_type, 'id', resource_id), "
        "'changes', changes, 'occurred_at', " TS("occurred_at") ")::text, " US("occurred_at") ", id FROM audit_events "
        "WHERE tenant_id = $1 AND (occurred_at, id) > ($2::timestamptz, $3::uuid) ORDER BY occurred_at, id LIMIT $4::int",
        4},
    [STMT_LIST_WEBHOOK_DELIVERIES] = {"list_webhook_deliveries",
        "SELECT p.body, p.us, p.id FROM webhook_endpoints e LEFT JOIN LATERAL ("
        "SELECT " WEBHOOK_DELIVERY_JSON " AS body, " US("d.created_at") " AS us, d.id "
        "FROM webhook_deliveries d WHERE d.endpoint_id = e.id AND d.tenant_id = $2 "
        "AND (d.created_at, d.id) > ($3::timestamptz, $4::uuid) AND ($5::text IS NULL OR d.status = $5::text) "
        "ORDER BY d.created_at, d.id LIMIT $6::int) p ON true "
        "WHERE e.id = $1 AND e.tenant_id = $2 AND e.deleted_at IS NULL",
        6},
    /* clang-format on */
};
#undef TS
#undef US

const tly_config_def_t tly_query_api_settings[] = {
#define OFF(f) offsetof(tly_query_api_config_t, f)
    {"pg-dsn", "TALLY_PG_DSN", TLY_CONFIG_STRING, NULL, 0, 0, OFF(pg_dsn), "libpq connection string"},
    {"host", "TALLY_HTTP_HOST", TLY_CONFIG_STRING, "127.0.0.1", 0, 0, OFF(host), "address to listen on"},
    {"port", "TALLY_HTTP_PORT", TLY_CONFIG_INT, "8082", 1, 65535, OFF(port), "port to listen on"},
    {"admin-port", "TALLY_ADMIN_PORT", TLY_CONFIG_INT, "9182", 0, 65535, OFF(admin_port),
     "port of /metrics, /healthz and /readyz (on the same address; 0: none)"},
    {"threads", "TALLY_HTTP_THREADS", TLY_CONFIG_INT, "2", 1, 64, OFF(threads), "event-loop threads"},
    {"pg-pool", "TALLY_PG_POOL", TLY_CONFIG_INT, "4", 1, 64, OFF(pg_pool), "PostgreSQL connections per thread"},
    {"key-refresh-ms", "TALLY_KEY_REFRESH_MS", TLY_CONFIG_INT, "1000", 100, 5000, OFF(key_refresh_ms),
     "how often API key changes are loaded at the latest (they are pushed at once; this is the fallback)"},
    TLY_API_ABUSE_SETTINGS(OFF(abuse)),
    {"cursor-secret", "TALLY_CURSOR_SECRET", TLY_CONFIG_STRING, "", 0, 0, OFF(cursor_secret),
     "key that signs page cursors; the same on every instance (unset: random, cursors die with the process)"},
    {"read-cache", "TALLY_READ_CACHE", TLY_CONFIG_INT, "16384", 0, 16777216, OFF(version_cache),
     "accounts and transfers per thread kept in memory (current version and body, under 1 KiB each) to answer reads "
     "without the database (0: always read the database)"},
    TLY_CONSISTENCY_SETTING(OFF(consistency_secret)),
    {"log-level", "TALLY_LOG_LEVEL", TLY_CONFIG_STRING, "info", 0, 0, OFF(log_level), "debug, info, warn or error"},
    TLY_GUARD_SETTINGS(tly_query_api_config_t, guard),
#undef OFF
};
const size_t tly_query_api_nsettings = sizeof(tly_query_api_settings) / sizeof(tly_query_api_settings[0]);

static tly_keycache_t *shared_keys;
static tly_guard_t *shared_guard;
static uint8_t cursor_key[64];
static uint8_t consistency_key[TLY_CONSISTENCY_KEY_LEN];
static bool has_consistency_key;
static size_t cursor_keylen;

/*
 * Whether the read cache (qa_versions.c) may hold this kind of resource: only
 * what the tally_versions triggers announce (accounts, transfers). A webhook
 * endpoint changes without a notification, so it is always read afresh.
 */
static bool
cacheable(const char *what)
{
    return strcmp(what, "account") == 0 || strcmp(what, "transfer") == 0;
}

static void
on_resource(void *data, PGresult *res, const char *err)
{
    query_op_t *op = data;
    char etag[48], detail[64];
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        qa_read_failed(op, res, err);
    } else if (PQntuples(res) == 0) {
        snprintf(detail, sizeof(detail), "no such %s", op->what);
        for (char *c = detail; *c != '\0'; ++c)
            if (*c == '-') /* "webhook-endpoint" names the ETag; the sentence says "webhook endpoint" */
                *c = ' ';
        tly_api_problem(&op->api, 404, "not_found", detail, NULL);
    } else {
        snprintf(etag, sizeof(etag), "\"%s-v%s\"", op->what, PQgetvalue(res, 0, 1));
        if (cacheable(op->what))
            qa_versions_note(op->thr->versions, op->ticket, op->what[0], &op->id, &op->api.principal.tenant_id,
                             strtoll(PQgetvalue(res, 0, 1), NULL, 10), PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0),
                             QA_GZIP_MIN);
        qa_send_json(op, PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0), etag);
    }
    qa_op_destroy(op);
}

/*
 * A resource whose current version this thread has read is answered from
 * memory: the same body and ETag (and 304 for a matching If-None-Match) the
 * database path would give, since only bodies under the gzip threshold are kept.
 */
static bool
answered_from_memory(query_op_t *op)
{
    int64_t version;
    const char *body;
    size_t len;
    char etag[48];
    if (!qa_versions_lookup(op->thr->versions, op->what[0], &op->id, &op->api.principal.tenant_id, &version, &body, &len))
        return false;
    snprintf(etag, sizeof(etag), "\"%s-v%lld\"", op->what, (long long)version);
    h2o_iovec_t inm = tly_http_header(op->api.req, "if-none-match");
    qa_versions_hit(op->thr->versions, inm.base != NULL && qa_etag_matches(inm.base, inm.len, etag) ? 304 : 200);
    qa_send_json(op, body, len, etag);
    return true;
}

/* Parses the {id} segment; replies 422 itself when it is not a uuid. */
static bool
id_or_reply(query_op_t *op, h2o_iovec_t seg)
{
    snprintf(op->id_text, sizeof(op->id_text), "%.*s", (int)(seg.len < 40 ? seg.len : 40), seg.base);
    if (seg.len != TLY_UUID_STR_LEN || !tly_uuid_parse(op->id_text, &op->id)) {
        json_t *errors = json_array();
        tly_http_field_error(errors, "id", "must be a uuid");
        tly_api_problem(&op->api, 422, "validation_failed", "the id in the path is malformed", errors);
        json_decref(errors);
        return false;
    }
    tly_uuid_format(&op->id, op->id_text);
    return true;
}

/* A single resource takes no query parameters. */
static bool
no_query_or_reply(query_op_t *op)
{
    h2o_req_t *req = op->api.req;
    if (req->query_at == SIZE_MAX || req->query_at + 1 == req->path.len)
        return true;
    json_t *errors = json_array();
    tly_http_field_error(errors, "query", "this endpoint takes no query parameters");
    tly_api_problem(&op->api, 422, "validation_failed", "some query parameters are invalid", errors);
    json_decref(errors);
    return false;
}

/* A transfer with ?expand=: never from or into the read cache (its body and ETag name the accounts too). */
static void
start_transfer_expanded(query_op_t *op)
{
    const char *params[4] = {op->id_text, op->tenant, op->expand_from ? "true" : "false", op->expand_to ? "true" : "false"};
    tly_pgpool_exec(op->thr->pg, STMT_TRANSFER_EXPANDED, params, on_resource, op);
}

static void
start_resource(query_op_t *op, h2o_iovec_t seg, const char *what, const char *route)
{
    op->what = what;
    op->api.route = route;
    if (!id_or_reply(op, seg) ||
        !(strcmp(what, "webhook-endpoint") == 0 ? no_query_or_reply(op) : qa_resource_params_or_reply(op))) {
        qa_op_destroy(op);
        return;
    }
    if (strcmp(what, "job") == 0) {
        qa_job_start(op);
        return;
    }
    if (op->has_as_of) {
        qa_account_as_of_start(op);
        return;
    }
    if (op->expand_from || op->expand_to) {
        start_transfer_expanded(op);
        return;
    }
    /* a read with a consistency token saw the commit; the cache may not have heard of it yet */
    bool from_memory = cacheable(what) && op->token_deadline_us == 0;
    if (from_memory && answered_from_memory(op)) {
        qa_op_destroy(op);
        return;
    }
    const char *params[2] = {op->id_text, op->tenant};
    size_t stmt = strcmp(what, "transfer") == 0           ? STMT_TRANSFER
                  : strcmp(what, "webhook-endpoint") == 0 ? STMT_WEBHOOK_ENDPOINT
                                                          : STMT_ACCOUNT;
    if (cacheable(what))
        op->ticket = qa_versions_ticket(op->thr->versions, what[0], &op->id);
    tly_pgpool_exec(op->thr->pg, stmt, params, on_resource, op);
}

void
qa_route(query_op_t *op)
{
    h2o_iovec_t segs[4];
    int n = tly_http_path_segments(op->api.req, segs, 3);
    bool accounts = n >= 1 && tly_http_seg_is(segs[0], "accounts");
    if (accounts && n == 1) {
        op->api.route = "/v1/accounts";
        qa_list_start(op, QA_LIST_ACCOUNTS, h2o_iovec_init(NULL, 0));
    } else if (accounts && n == 2) {
        start_resource(op, segs[1], "account", "/v1/accounts/{id}");
    } else if (accounts && n == 3 && tly_http_seg_is(segs[2], "entries")) {
        op->api.route = "/v1/accounts/{id}/entries";
        qa_list_start(op, QA_LIST_ENTRIES, segs[1]);
    } else if (n == 1 && tly_http_seg_is(segs[0], "transfers")) {
        op->api.route = "/v1/transfers";
        qa_transfers_list_start(op);
    } else if (n == 2 && tly_http_seg_is(segs[0], "transfers")) {
        start_resource(op, segs[1], "transfer", "/v1/transfers/{id}");
    } else if (n == 1 && tly_http_seg_is(segs[0], "webhook-endpoints")) {
        op->api.route = "/v1/webhook-endpoints";
        qa_webhooks_list_start(op);
    } else if (n == 2 && tly_http_seg_is(segs[0], "webhook-endpoints")) {
        start_resource(op, segs[1], "webhook-endpoint", "/v1/webhook-endpoints/{id}");
    } else if (n == 3 && tly_http_seg_is(segs[0], "webhook-endpoints") && tly_http_seg_is(segs[2], "deliveries")) {
        op->api.route = "/v1/webhook-endpoints/{id}/deliveries";
        qa_webhooks_deliveries_start(op, segs[1]);
    } else if (n == 1 && tly_http_seg_is(segs[0], "audit-events")) {
        op->api.route = "/v1/audit-events";
        qa_audit_list_start(op);
    } else if (n == 2 && tly_http_seg_is(segs[0], "jobs")) {
        start_resource(op, segs[1], "job", "/v1/jobs/{id}");
    } else {
        tly_api_problem(&op->api, 404, "not_found", "no such endpoint", NULL);
        qa_op_destroy(op);
    }
}

/* PostgreSQL reachable and API keys loaded (also the admin port's /readyz). */
static bool
thread_ready(void *app, json_t *reasons)
{
    query_thread_t *thr = app;
    bool ok = tly_api_service_ready(thr->pg, thr->keys, reasons);
    tly_guard_ready(thr->guard, reasons);
    return ok;
}

/* The first request may come in: the pool has a connection and the API keys are loaded (tly_server_config_t). */
static bool
thread_serving(void *app)
{
    query_thread_t *thr = app;
    return tly_api_service_serving(thr->pg, thr->keys);
}

static int
on_req(h2o_handler_t *self, h2o_req_t *req)
{
    query_thread_t *thr = tly_server_thread_of(req)->app;
    /* health is the admin port's (/healthz, /readyz): never public through the gateway */
    if (tly_guard_shed_or_pass(thr->guard, req, &thr->inflight))
        return 0;
    query_op_t *op = calloc(1, sizeof(*op));
    if (op == NULL)
        abort();
    op->thr = thr;
    op->wait_s = -1;
    tly_api_req_init(&op->api, req, &thr->inflight);
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")) &&
        !h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"))) {
        tly_http_add_header(req, "allow", tly_http_allow(req, "GET, HEAD"));
        tly_api_problem(&op->api, 405, "method_not_allowed", "the query API serves GET and HEAD", NULL);
        qa_op_destroy(op);
        return 0;
    }
    if (!tly_api_authenticate_or_reply(&op->api, thr->keys, qa_audit_route(req) ? TLY_SCOPE_ADMIN : TLY_SCOPE_READ)) {
        qa_op_destroy(op);
        return 0;
    }
    tly_uuid_format(&op->api.principal.tenant_id, op->tenant);
    if (!qa_reads_start(op))
        qa_route(op);
    return 0;
}

static void *
thread_init(tly_server_thread_t *t, void *arg)
{
    tly_query_api_config_t *cfg = arg;
    query_thread_t *thr = calloc(1, sizeof(*thr));
    if (thr == NULL)
        abort();
    thr->loop = t->loop;
    thr->keys = shared_keys;
    thr->cursor_key = cursor_key;
    thr->cursor_keylen = cursor_keylen;
    thr->pg = tly_pgpool_create(t->loop, cfg->pg_dsn, (size_t)cfg->pg_pool, qa_statements, STMT__COUNT);
    qa_jobs_thread_init(thr, cfg->pg_dsn);
    qa_reads_thread_init(thr, has_consistency_key ? consistency_key : NULL);
    thr->versions = qa_versions_create(thr, cfg->pg_dsn, (size_t)cfg->version_cache);
    thr->guard = tly_guard_thread_create(shared_guard, t->loop, &thr->inflight, thr->pg, t->index == 0);
    return thr;
}

static size_t
thread_inflight(void *app)
{
    return ((query_thread_t *)app)->inflight;
}

static void
thread_dispose(void *app)
{
    query_thread_t *thr = app;
    qa_reads_thread_dispose(thr);
    qa_jobs_thread_dispose(thr); /* destroys the pool too, after the waiters */
    tly_guard_thread_destroy(thr->guard);
    qa_versions_destroy(thr->versions);
    free(thr);
}

/* The cursor key: SHA-256 of TALLY_CURSOR_SECRET, or random bytes for this process only. */
static void
load_cursor_key(const char *secret)
{
    if (secret != NULL && secret[0] != '\0') {
        SHA256((const unsigned char *)secret, strlen(secret), cursor_key);
        cursor_keylen = SHA256_DIGEST_LENGTH;
        return;
    }
    tly_random_bytes(cursor_key, 32);
    cursor_keylen = 32;
    tly_log(TLY_LOG_WARN,
            "cursor secret is not set: using a random one, so page cursors will not survive a restart "
            "nor work on another instance; set TALLY_CURSOR_SECRET to the same value on every instance",
            NULL);
}

int
tly_query_api_run(tly_query_api_config_t *cfg)
{
    load_cursor_key(cfg->cursor_secret);
    has_consistency_key = tly_consistency_key(cfg->consistency_secret, consistency_key);
    if (!has_consistency_key)
        tly_log(TLY_LOG_WARN,
                "consistency secret is not set: reads with a Tally-Consistency-Token are refused; set "
                "TALLY_CONSISTENCY_SECRET to the same value on every command and query API instance",
                NULL);
    shared_guard = tly_guard_create(&cfg->guard, cfg->pg_dsn);
    tly_api_service_t svc = {
        .server =
            {
                .name = "query-api",
                .host = cfg->host,
                .port = (uint16_t)cfg->port,
                .threads = (size_t)cfg->threads,
                .max_body = 64 * 1024,
                .on_req = on_req,
                .thread_init = thread_init,
                .thread_inflight = thread_inflight,
                .thread_dispose = thread_dispose,
                .arg = cfg,
                .shutdown_grace_ms = 5000,
                .admin_port = (uint16_t)cfg->admin_port,
                .thread_ready = thread_ready,
                .thread_serving = thread_serving,
            },
        .abuse = &cfg->abuse,
        .pg_dsn = cfg->pg_dsn,
        .key_refresh_ms = cfg->key_refresh_ms,
    };
    int ret = tly_api_service_run(&svc, &shared_keys);
    tly_guard_destroy(shared_guard);
    return ret;
}
