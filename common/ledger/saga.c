/*
 * The transfer saga's transitions. See saga.h for the table; this file only
 * computes: the caller stores the next state and the events in one
 * transaction.
 */
#include "tally/ledger/saga.h"
#include "tally/json.h"
#include "tally/names.h"
#include "tally/ledger/catalogue.h"
#include "tally/ledger/upcast.h"

#include <stdio.h>
#include <string.h>

#define T_REQUESTED "TransferRequested"
#define T_DEBIT "TransferDebitRequested"
#define T_CREDIT "TransferCreditRequested"
#define T_REVERSAL "DebitReversalRequested"
#define T_DEBITED "AccountDebited"
#define T_DEBIT_REJECTED "AccountDebitRejected"
#define T_CREDITED "AccountCredited"
#define T_CREDIT_REJECTED "AccountCreditRejected"
#define T_REVERSED "DebitReversed"
#define T_REVERSAL_REJECTED "DebitReversalRejected"
#define T_COMPLETED "TransferCompleted"
#define T_REJECTED "TransferRejected"
#define T_FAILED "TransferFailed"

static const char *handled[] = {T_REQUESTED,       T_DEBITED,  T_DEBIT_REJECTED,   T_CREDITED,
                                T_CREDIT_REJECTED, T_REVERSED, T_REVERSAL_REJECTED};

bool
tly_saga_handles(const char *type)
{
    for (size_t i = 0; i < sizeof(handled) / sizeof(handled[0]); ++i)
        if (strcmp(handled[i], type) == 0)
            return true;
    return false;
}

bool
tly_saga_transfer_of(const tly_envelope_t *ev, tly_uuid_t *out)
{
    if (strcmp(ev->type, T_REQUESTED) == 0) {
        *out = ev->aggregate_id;
        return true;
    }
    const char *t = tly_json_str(ev->data, "transfer_id");
    return t != NULL && tly_uuid_parse(t, out);
}

bool
tly_saga_finished(tly_saga_status_t s)
{
    return s == TLY_SAGA_COMPLETED || s == TLY_SAGA_REJECTED || s == TLY_SAGA_FAILED;
}

/* --- building events ------------------------------------------------------- */

/* The transfer's request event, as far as derivation needs it: every saga event hangs off its id. */
static void
root_of(const tly_saga_state_t *s, tly_envelope_t *root)
{
    memset(root, 0, sizeof(*root));
    root->id = s->request_event_id;
    snprintf(root->type, sizeof(root->type), "%s", T_REQUESTED);
    snprintf(root->aggregate_type, sizeof(root->aggregate_type), "transfer");
    root->aggregate_id = s->transfer_id;
    root->tenant_id = s->tenant_id;
    root->job_id = s->job_id;
    root->correlation_id = s->request_event_id;
}

/* The pending step of a saga in `s->status`: its type, account and derivation salt. */
static const char *
step_of(const tly_saga_state_t *s, tly_uuid_t *account, char *salt, size_t saltcap)
{
    salt[0] = '\0';
    switch (s->status) {
    case TLY_SAGA_DEBITING:
        *account = s->from_account;
        return T_DEBIT;
    case TLY_SAGA_CREDITING:
        *account = s->to_account;
        return T_CREDIT;
    case TLY_SAGA_COMPENSATING:
        *account = s->from_account;
        if (s->attempt > 0)
            snprintf(salt, saltcap, "attempt-%d", s->attempt);
        return T_REVERSAL;
    default:
        return NULL;
    }
}

/* Appends the pending step command of `out->next` (same id and content every time it is built). */
static void
emit_step(tly_saga_step_t *out)
{
    const tly_saga_state_t *s = &out->next;
    char transfer[TLY_UUID_STR_LEN + 1], salt[32];
    tly_uuid_t account;
    tly_envelope_t root;
    const char *type = step_of(s, &account, salt, sizeof(salt));
    if (type == NULL)
        return;
    root_of(s, &root);
    tly_uuid_format(&s->transfer_id, transfer);
    json_t *data = json_pack("{s:s, s:I, s:s}", "transfer_id", transfer, "amount", (json_int_t)s->amount, "currency", s->currency);
    tly_envelope_t *ev = &out->events[out->nevents++];
    tly_envelope_derive(ev, &root, type, tly_event_latest_version(type), data, salt[0] != '\0' ? salt : NULL);
    snprintf(ev->aggregate_type, sizeof(ev->aggregate_type), "account");
    ev->aggregate_id = account; /* Kafka key = the account: the decider's partition for it */
    ev->causation_id = s->step_cause_id;
    ev->occurred_at_us = s->step_at_us;
}

/* The id the pending step command has (what its outcome's causation_id must be). */
static tly_uuid_t
step_id(const tly_saga_state_t *s)
{
    tly_saga_step_t tmp;
    tly_uuid_t id = {{0}};
    memset(&tmp, 0, sizeof(tmp));
    tmp.next = *s;
    emit_step(&tmp);
    if (tmp.nevents == 1)
        id = tmp.events[0].id;
    tly_saga_step_clear(&tmp);
    return id;
}

/* Appends a transfer event (aggregate = the transfer) caused by `cause`. */
static void
emit_transfer_event(tly_saga_step_t *out, const char *type, json_t *data, const tly_uuid_t *cause, int64_t now_us)
{
    tly_envelope_t root;
    root_of(&out->next, &root);
    tly_envelope_t *ev = &out->events[out->nevents++];
    tly_envelope_derive(ev, &root, type, tly_event_latest_version(type), data, NULL);
    ev->causation_id = *cause;
    ev->occurred_at_us = now_us;
}

/* Moves to a step state: the step is sent now, with a fresh deadline. */
static void
enter_step(tly_saga_step_t *out, tly_saga_status_t status, const tly_uuid_t *cause, const tly_saga_config_t *cfg, int64_t now_us)
{
    tly_saga_state_t *n = &out->next;
    n->status = status;
    n->step_cause_id = *cause;
    n->step_at_us = now_us;
    n->sends = 1;
    n->deadline_us = now_us + cfg->step_timeout_us;
    n->version++;
    out->changed = true;
    emit_step(out);
}

static void
finish(tly_saga_step_t *out, tly_saga_status_t status, int64_t now_us)
{
    tly_saga_state_t *n = &out->next;
    n->status = status;
    n->deadline_us = 0;
    n->stuck_at_us = 0;
    n->version++;
    out->changed = true;
    (void)now_us;
}

static void
set_error(tly_saga_state_t *n, const tly_envelope_t *ev)
{
    const char *code = tly_json_str(ev->data, "code"), *detail = tly_json_str(ev->data, "detail");
    snprintf(n->error_code, sizeof(n->error_code), "%s", code != NULL ? code : "rejected");
    snprintf(n->error_detail, sizeof(n->error_detail), "%s", detail != NULL ? detail : "");
}

static json_t *
error_data(const tly_saga_state_t *n)
{
    return json_pack("{s:s, s:s}", "code", n->error_code, "detail", n->error_detail);
}

/* --- transitions ------------------------------------------------------------ */

static bool
uuid_field(const json_t *data, const char *key, tly_uuid_t *out)
{
    const char *v = tly_json_str(data, key);
    return v != NULL && tly_uuid_parse(v, out);
}

/* A new saga from its TransferRequested: debit the source, or reject a malformed request at once. */
static void
start(const tly_envelope_t *ev, const tly_saga_config_t *cfg, int64_t now_us, tly_saga_step_t *out)
{
    tly_saga_state_t *n = &out->next;
    json_t *amount = json_object_get(ev->data, "amount");
    const char *currency = tly_json_str(ev->data, "currency");
    memset(n, 0, sizeof(*n));
    n->exists = true;
    n->transfer_id = ev->aggregate_id;
    n->tenant_id = ev->tenant_id;
    n->job_id = ev->job_id;
    n->request_event_id = ev->id;
    n->created_us = now_us;
    n->stuck_at_us = now_us + cfg->stuck_after_us;
    /* the command API's rules (the catalogue's fields), so an accepted transfer is never refused as invalid here */
    bool ok = tly_catalogue_check(tly_catalogue_find(T_REQUESTED, 0), ev->data) == NULL &&
              uuid_field(ev->data, "from_account", &n->from_account) && uuid_field(ev->data, "to_account", &n->to_account) &&
              memcmp(&n->from_account, &n->to_account, sizeof(n->to_account)) != 0;
    if (!ok) {
        snprintf(n->error_code, sizeof(n->error_code), "invalid_request");
        snprintf(n->error_detail, sizeof(n->error_detail),
                 "a transfer needs two different account ids, a positive integer amount, an ISO 4217 currency and a "
                 "reference of at most %d characters",
                 TLY_REFERENCE_MAX_CHARS);
        finish(out, TLY_SAGA_REJECTED, now_us);
        emit_transfer_event(out, T_REJECTED, error_data(n), &ev->id, now_us);
        return;
    }
    n->amount = (int64_t)json_integer_value(amount);
    memcpy(n->currency, currency, 4);
    enter_step(out, TLY_SAGA_DEBITING, &ev->id, cfg, now_us);
}

int
tly_saga_on_event(const tly_saga_state_t *s, const tly_envelope_t *ev, const tly_saga_config_t *cfg, int64_t now_us,
                  tly_saga_step_t *out)
{
    memset(out, 0, sizeof(*out));
    if (s != NULL && s->exists)
        out->next = *s;
    if (!tly_saga_handles(ev->type))
        return -1;
    if (strcmp(ev->type, T_REQUESTED) == 0) {
        if (s == NULL || !s->exists) /* else: the same request again (or a copy with another id): started already */
            start(ev, cfg, now_us, out);
        return 0;
    }
    tly_uuid_t transfer;
    if (s == NULL || !s->exists || !tly_saga_transfer_of(ev, &transfer) ||
        memcmp(&transfer, &s->transfer_id, sizeof(transfer)) != 0 ||
        memcmp(&ev->tenant_id, &s->tenant_id, sizeof(s->tenant_id)) != 0)
        return 0; /* not ours */
    /* An outcome counts only for the step in flight: its causation is that step's command (same id on every send). */
    if (tly_saga_finished(s->status) || s->sends == 0)
        return 0;
    tly_uuid_t expected = step_id(s);
    if (memcmp(&ev->causation_id, &expected, sizeof(expected)) != 0)
        return 0; /* a duplicate, a late outcome of an earlier step, or an outcome of a rejected reversal attempt */
    tly_saga_state_t *n = &out->next;
    if (s->status == TLY_SAGA_DEBITING && strcmp(ev->type, T_DEBITED) == 0) {
        enter_step(out, TLY_SAGA_CREDITING, &ev->id, cfg, now_us);
    } else if (s->status == TLY_SAGA_DEBITING && strcmp(ev->type, T_DEBIT_REJECTED) == 0) {
        set_error(n, ev);
        finish(out, TLY_SAGA_REJECTED, now_us);
        emit_transfer_event(out, T_REJECTED, error_data(n), &ev->id, now_us);
    } else if (s->status == TLY_SAGA_CREDITING && strcmp(ev->type, T_CREDITED) == 0) {
        char from[TLY_UUID_STR_LEN + 1], to[TLY_UUID_STR_LEN + 1];
        tly_uuid_format(&n->from_account, from);
        tly_uuid_format(&n->to_account, to);
        finish(out, TLY_SAGA_COMPLETED, now_us);
        emit_transfer_event(out, T_COMPLETED,
                            json_pack("{s:s, s:s, s:I, s:s}", "from_account", from, "to_account", to, "amount",
                                      (json_int_t)n->amount, "currency", n->currency),
                            &ev->id, now_us);
    } else if (s->status == TLY_SAGA_CREDITING && strcmp(ev->type, T_CREDIT_REJECTED) == 0) {
        set_error(n, ev); /* the reason the transfer fails, reported once the money is back */
        n->attempt = 0;
        enter_step(out, TLY_SAGA_COMPENSATING, &ev->id, cfg, now_us);
    } else if (s->status == TLY_SAGA_COMPENSATING && strcmp(ev->type, T_REVERSED) == 0) {
        finish(out, TLY_SAGA_FAILED, now_us);
        json_t *data = error_data(n);
        json_object_set_new(data, "compensated", json_true());
        emit_transfer_event(out, T_FAILED, data, &ev->id, now_us);
    } else if (s->status == TLY_SAGA_COMPENSATING && strcmp(ev->type, T_REVERSAL_REJECTED) == 0) {
        /* Never abandoned: this attempt was decided (and refused) once and for all, so the next
           deadline sends a new attempt with a new id; the money stays owed until one applies. */
        n->attempt++;
        n->sends = 0;
        n->step_cause_id = ev->id;
        n->deadline_us = now_us + cfg->step_timeout_us;
        n->version++;
        out->changed = true;
    }
    return 0;
}

int
tly_saga_on_timeout(const tly_saga_state_t *s, const tly_saga_config_t *cfg, int64_t now_us, tly_saga_step_t *out)
{
    memset(out, 0, sizeof(*out));
    if (s == NULL || !s->exists)
        return 0;
    out->next = *s;
    if (tly_saga_finished(s->status) || s->deadline_us == 0 || now_us < s->deadline_us)
        return 0;
    tly_saga_state_t *n = &out->next;
    if (n->sends == 0) /* a new reversal attempt: sent for the first time now */
        n->step_at_us = now_us;
    n->sends++;
    /* back off (x2 per re-send, at most x32) so that a long backlog is not flooded with re-sends */
    int shift = n->sends - 1 < 5 ? n->sends - 1 : 5;
    n->deadline_us = now_us + (cfg->step_timeout_us << shift);
    n->version++;
    out->changed = true;
    emit_step(out);
    return 0;
}

void
tly_saga_step_clear(tly_saga_step_t *step)
{
    for (int i = 0; i < step->nevents; ++i)
        tly_envelope_clear(&step->events[i]);
    step->nevents = 0;
}

static const char *const status_names[] = {"none", "debiting", "crediting", "compensating", "completed", "rejected", "failed"};

const char *
tly_saga_status_name(tly_saga_status_t s)
{
    return status_names[s];
}

bool
tly_saga_status_parse(const char *s, tly_saga_status_t *out)
{
    int i = tly_name_find(status_names, 1, 7, s); /* "none" is no status a row holds */
    if (i >= 0)
        *out = (tly_saga_status_t)i;
    return i >= 0;
}
