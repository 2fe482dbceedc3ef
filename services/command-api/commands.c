/* Stateless validation of commands. See commands.h. */
#include "commands.h"
#include "tally/http.h"
#include "tally/ledger/catalogue.h"

#include <stdio.h>
#include <string.h>

static const tly_command_spec_t specs[TLY_CMD__COUNT] = {
    [TLY_CMD_OPEN_ACCOUNT] = {NULL, "AccountOpenRequested", "account", false},
    [TLY_CMD_DEPOSIT] = {"deposits", "DepositRequested", "account", true},
    [TLY_CMD_WITHDRAW] = {"withdrawals", "WithdrawalRequested", "account", true},
    [TLY_CMD_FREEZE] = {"freeze", "AccountFreezeRequested", "account", false},
    [TLY_CMD_UNFREEZE] = {"unfreeze", "AccountUnfreezeRequested", "account", false},
    [TLY_CMD_CLOSE] = {"close", "AccountCloseRequested", "account", false},
    [TLY_CMD_TRANSFER] = {NULL, "TransferRequested", "transfer", true},
};

/* The request event's spec in the catalogue: the fields each command takes, their types and limits. */
static const tly_event_spec_t *
request_spec(tly_command_kind_t kind)
{
    return tly_catalogue_find(specs[kind].request_event, 0);
}

const tly_command_spec_t *
tly_command_spec(tly_command_kind_t kind)
{
    return &specs[kind];
}

bool
tly_command_route(const char *collection, const char *sub, tly_command_kind_t *out)
{
    if (sub == NULL) {
        if (strcmp(collection, "accounts") == 0)
            *out = TLY_CMD_OPEN_ACCOUNT;
        else if (strcmp(collection, "transfers") == 0)
            *out = TLY_CMD_TRANSFER; /* the worker's saga role runs it to a terminal state */
        else
            return false;
        return true;
    }
    if (strcmp(collection, "accounts") != 0)
        return false;
    for (int k = 0; k < TLY_CMD__COUNT; ++k) {
        if (specs[k].name != NULL && strcmp(specs[k].name, sub) == 0) {
            *out = (tly_command_kind_t)k;
            return true;
        }
    }
    return false;
}

static void
check_unknown_fields(const tly_event_spec_t *spec, const json_t *body, json_t *errors)
{
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)body, key, value)
    {
        if (tly_catalogue_field(spec, key) == NULL)
            tly_http_field_error(errors, key, "unknown field");
    }
}

static void
check_amount(const json_t *body, tly_command_t *out, json_t *errors)
{
    json_t *v = json_object_get(body, "amount");
    if (v == NULL)
        tly_http_field_error(errors, "amount", "is required");
    else if (!json_is_integer(v))
        tly_http_field_error(errors, "amount", "must be an integer number of minor units");
    else if (json_integer_value(v) <= 0 || json_integer_value(v) >= TLY_AMOUNT_MAX)
        tly_http_field_error(errors, "amount", "must be a positive integer below 2^53");
    else
        out->amount = json_integer_value(v);
}

static void
check_currency(const json_t *body, tly_command_t *out, json_t *errors)
{
    json_t *v = json_object_get(body, "currency");
    if (v == NULL)
        tly_http_field_error(errors, "currency", "is required");
    else if (!json_is_string(v))
        tly_http_field_error(errors, "currency", "must be a string");
    else if (!tly_field_currency_ok(v))
        tly_http_field_error(errors, "currency", "must be an ISO 4217 currency code, e.g. EUR");
    else
        memcpy(out->currency, json_string_value(v), 4);
}

static const char *
check_text(const json_t *body, const tly_field_spec_t *f, json_t *errors)
{
    char msg[64];
    const char *field = f->name;
    json_t *v = json_object_get(body, field);
    if (v == NULL) {
        if (f->required)
            tly_http_field_error(errors, field, "is required");
        return NULL;
    }
    if (!json_is_string(v)) {
        tly_http_field_error(errors, field, "must be a string");
        return NULL;
    }
    if (!tly_field_text_ok(v, f->max_chars)) {
        snprintf(msg, sizeof(msg), "must be at most %zu characters", f->max_chars);
        tly_http_field_error(errors, field, msg);
        return NULL;
    }
    return json_string_value(v);
}

static void
check_account_ref(const json_t *body, const char *field, tly_uuid_t *out, json_t *errors)
{
    json_t *v = json_object_get(body, field);
    if (v == NULL)
        tly_http_field_error(errors, field, "is required");
    else if (!json_is_string(v) || !tly_uuid_parse(json_string_value(v), out))
        tly_http_field_error(errors, field, "must be an account id (uuid)");
}

/* Where a uuid field of the body lands in the command. */
static tly_uuid_t *
uuid_slot(tly_command_t *cmd, const char *field)
{
    return strcmp(field, "to_account") == 0 ? &cmd->to_account : &cmd->account_id;
}

/* Where a text field of the body lands in the command. */
static const char **
text_slot(tly_command_t *cmd, const char *field)
{
    return strcmp(field, "label") == 0 ? &cmd->label : &cmd->reference;
}

static void
check_field(const tly_field_spec_t *f, const json_t *body, tly_command_t *out, json_t *errors)
{
    switch (f->type) {
    case TLY_FIELD_UUID:
        check_account_ref(body, f->name, uuid_slot(out, f->name), errors);
        break;
    case TLY_FIELD_AMOUNT:
        check_amount(body, out, errors);
        break;
    case TLY_FIELD_CURRENCY:
        check_currency(body, out, errors);
        break;
    case TLY_FIELD_TEXT:
        *text_slot(out, f->name) = check_text(body, f, errors);
        break;
    default: /* no request has fields of the other types */
        tly_http_field_error(errors, f->name, "cannot be given");
        break;
    }
}

bool
tly_command_validate(tly_command_kind_t kind, const json_t *body, tly_command_t *out, json_t *errors)
{
    size_t before = json_array_size(errors);
    const tly_event_spec_t *spec = request_spec(kind);
    out->kind = kind;
    if (!json_is_object(body)) {
        tly_http_field_error(errors, "", "the body must be a JSON object");
        return false;
    }
    check_unknown_fields(spec, body, errors);
    for (size_t i = 0; i < spec->nfields; ++i)
        check_field(&spec->fields[i], body, out, errors);
    if (kind == TLY_CMD_TRANSFER && json_array_size(errors) == before &&
        memcmp(out->account_id.b, out->to_account.b, sizeof(out->to_account.b)) == 0)
        tly_http_field_error(errors, "to_account", "must differ from from_account");
    return json_array_size(errors) == before;
}

/* The data member of field `f` from command `cmd` (a copy: the slots are the validator's), or NULL to leave it out. */
static json_t *
field_value(const tly_field_spec_t *f, tly_command_t cmd)
{
    char id[TLY_UUID_STR_LEN + 1];
    switch (f->type) {
    case TLY_FIELD_UUID:
        tly_uuid_format(uuid_slot(&cmd, f->name), id);
        return json_string(id);
    case TLY_FIELD_AMOUNT:
        return json_integer(cmd.amount);
    case TLY_FIELD_CURRENCY:
        return json_string(cmd.currency);
    case TLY_FIELD_TEXT: {
        const char *text = *text_slot(&cmd, f->name);
        return text != NULL ? json_string(text) : NULL; /* an optional text left out stays out */
    }
    default:
        return NULL;
    }
}

json_t *
tly_command_event_data(const tly_command_t *cmd)
{
    const tly_event_spec_t *spec = request_spec(cmd->kind);
    json_t *d = json_object();
    for (size_t i = 0; i < spec->nfields; ++i) {
        json_t *v = field_value(&spec->fields[i], *cmd);
        if (v != NULL)
            json_object_set_new(d, spec->fields[i].name, v);
    }
    return d;
}
