/* "Accepted by the API => not invalid_request in the worker". See tly_test_accept.h. */
#include "tly_test_accept.h"
#include "tally/ledger/decider.h"
#include "tally/ledger/saga.h"
#include "tally/json.h"
#include "tally/ledger/catalogue.h"
#include "tally/ledger/upcast.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOW_US 1700000000000000LL

/* The request event of `cmd` as the command API writes it, read back as the worker reads it. */
static bool
request_event(const tly_command_t *cmd, const tly_uuid_t *tenant, tly_envelope_t *out, char *why, size_t cap)
{
    tly_envelope_t env;
    const tly_command_spec_t *spec = tly_command_spec(cmd->kind);
    memset(&env, 0, sizeof(env));
    env.id = tly_uuid_v4();
    snprintf(env.type, sizeof(env.type), "%s", spec->request_event);
    env.version = tly_event_latest_version(spec->request_event);
    snprintf(env.aggregate_type, sizeof(env.aggregate_type), "%s", spec->aggregate_type);
    env.aggregate_id = cmd->kind == TLY_CMD_TRANSFER ? tly_uuid_v4() : cmd->account_id;
    env.tenant_id = *tenant;
    env.job_id = tly_uuid_v4();
    env.correlation_id = env.id;
    env.occurred_at_us = NOW_US;
    env.data = tly_command_event_data(cmd);
    char *wire = tly_envelope_to_json(&env);
    int rc = tly_envelope_parse(wire, strlen(wire), out, why, cap);
    free(wire);
    tly_envelope_clear(&env);
    return rc == 0;
}

/* The accounts a request may meet: unknown, then open, frozen, closed, empty, and in another currency. */
static int
states(const tly_envelope_t *req, tly_account_state_t *out)
{
    const char *currency = tly_json_str(req->data, "currency");
    if (currency == NULL)
        currency = "EUR";
    memset(out, 0, sizeof(*out) * 6);
    for (int i = 1; i < 6; ++i) {
        out[i].exists = true;
        out[i].id = req->aggregate_id;
        out[i].tenant_id = req->tenant_id;
        snprintf(out[i].currency, sizeof(out[i].currency), "%s", currency);
        out[i].balance = 1000000;
        out[i].version = 2;
    }
    out[2].status = TLY_ACCOUNT_FROZEN;
    out[3].status = TLY_ACCOUNT_CLOSED;
    out[4].balance = 0;
    snprintf(out[5].currency, sizeof(out[5].currency), "%s", strcmp(currency, "EUR") == 0 ? "USD" : "EUR");
    return 6;
}

/* Decides `req` against every state: never an error, never invalid_request, only the catalogue's codes. */
static bool
decide_everywhere(const tly_envelope_t *req, char *why, size_t cap)
{
    tly_account_state_t s[6];
    int n = states(req, s);
    const tly_event_spec_t *spec = tly_catalogue_find(req->type, 0);
    for (int i = 0; i < n; ++i) {
        tly_decision_t d;
        if (tly_decider_decide_at(i == 0 ? NULL : &s[i], req, NOW_US, &d) != 0) {
            snprintf(why, cap, "the decider does not know %s", req->type);
            return false;
        }
        const char *code = d.rejected ? tly_json_str(d.events[0].data, "code") : NULL;
        tly_problem_t p;
        bool ok = code == NULL || (strcmp(code, TLY_CODE_INVALID_REQUEST) != 0 && tly_problem_parse(code, &p) &&
                                   tly_catalogue_can_produce(spec, p));
        if (!ok)
            snprintf(why, cap, "%s against state %d: refused as %s (%s)", req->type, i, code,
                     tly_json_str(d.events[0].data, "detail"));
        tly_decision_clear(&d);
        if (!ok)
            return false;
    }
    return true;
}

/* A transfer: the saga starts it (never TransferRejected as invalid_request), and its debit meets every state. */
static bool
start_transfer(const tly_envelope_t *req, char *why, size_t cap)
{
    tly_saga_config_t cfg = {.step_timeout_us = 1000000, .stuck_after_us = 60000000};
    tly_saga_step_t step;
    if (tly_saga_on_event(NULL, req, &cfg, NOW_US, &step) != 0 || step.nevents != 1) {
        snprintf(why, cap, "the saga did not start the transfer");
        return false;
    }
    bool ok = strcmp(step.events[0].type, "TransferDebitRequested") == 0;
    if (!ok)
        snprintf(why, cap, "the saga answered %s (%s)", step.events[0].type, tly_json_str(step.events[0].data, "detail"));
    else
        ok = decide_everywhere(&step.events[0], why, cap);
    tly_saga_step_clear(&step);
    return ok;
}

bool
tly_test_accept_check(tly_command_kind_t kind, const json_t *body, bool *accepted, char *why, size_t cap)
{
    tly_command_t cmd;
    tly_envelope_t req;
    json_t *errors = json_array();
    memset(&cmd, 0, sizeof(cmd));
    cmd.account_id = tly_uuid_v4(); /* the path's id, or the new account's */
    *accepted = tly_command_validate(kind, body, &cmd, errors);
    json_decref(errors);
    if (!*accepted)
        return true;
    tly_uuid_t tenant = tly_uuid_v4();
    if (!request_event(&cmd, &tenant, &req, why, cap))
        return false;
    bool ok = kind == TLY_CMD_TRANSFER ? start_transfer(&req, why, cap) : decide_everywhere(&req, why, cap);
    tly_envelope_clear(&req);
    return ok;
}
