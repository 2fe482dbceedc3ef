/* Stateless validation of commands. See commands.h. */
#include "commands.h"
#include "tally/http.h"

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

/* Which body fields each command takes; everything else is an unknown field. */
typedef enum en_field_t { F_CURRENCY = 1, F_LABEL = 2, F_AMOUNT = 4, F_REFERENCE = 8, F_FROM = 16, F_TO = 32 } field_t;
static const int allowed_fields[TLY_CMD__COUNT] = {
    [TLY_CMD_OPEN_ACCOUNT] = F_CURRENCY | F_LABEL,
    [TLY_CMD_DEPOSIT] = F_AMOUNT | F_CURRENCY | F_REFERENCE,
    [TLY_CMD_WITHDRAW] = F_AMOUNT | F_CURRENCY | F_REFERENCE,
    [TLY_CMD_FREEZE] = 0,
    [TLY_CMD_UNFREEZE] = 0,
    [TLY_CMD_CLOSE] = 0,
    [TLY_CMD_TRANSFER] = F_FROM | F_TO | F_AMOUNT | F_CURRENCY | F_REFERENCE,
};
static const struct {
    const char *name;
    field_t bit;
} field_names[] = {{"currency", F_CURRENCY},   {"label", F_LABEL},       {"amount", F_AMOUNT},
                   {"reference", F_REFERENCE}, {"from_account", F_FROM}, {"to_account", F_TO}};

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

static int
field_bit(const char *name)
{
    for (size_t i = 0; i < sizeof(field_names) / sizeof(field_names[0]); ++i)
        if (strcmp(field_names[i].name, name) == 0)
            return field_names[i].bit;
    return 0;
}

static void
check_unknown_fields(tly_command_kind_t kind, const json_t *body, json_t *errors)
{
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)body, key, value)
    {
        if ((field_bit(key) & allowed_fields[kind]) == 0)
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
check_text(const json_t *body, const char *field, bool required, size_t max_chars, json_t *errors)
{
    char msg[64];
    json_t *v = json_object_get(body, field);
    if (v == NULL) {
        if (required)
            tly_http_field_error(errors, field, "is required");
        return NULL;
    }
    if (!json_is_string(v)) {
        tly_http_field_error(errors, field, "must be a string");
        return NULL;
    }
    if (!tly_field_text_ok(v, max_chars)) {
        snprintf(msg, sizeof(msg), "must be at most %zu characters", max_chars);
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

bool
tly_command_validate(tly_command_kind_t kind, const json_t *body, tly_command_t *out, json_t *errors)
{
    size_t before = json_array_size(errors);
    out->kind = kind;
    if (!json_is_object(body)) {
        tly_http_field_error(errors, "", "the body must be a JSON object");
        return false;
    }
    check_unknown_fields(kind, body, errors);
    int fields = allowed_fields[kind];
    if (fields & F_FROM)
        check_account_ref(body, "from_account", &out->account_id, errors);
    if (fields & F_TO)
        check_account_ref(body, "to_account", &out->to_account, errors);
    if (fields & F_AMOUNT)
        check_amount(body, out, errors);
    if (fields & F_CURRENCY)
        check_currency(body, out, errors);
    if (fields & F_LABEL)
        out->label = check_text(body, "label", true, TLY_LABEL_MAX_CHARS, errors);
    if (fields & F_REFERENCE)
        out->reference = check_text(body, "reference", false, TLY_REFERENCE_MAX_CHARS, errors);
    if (kind == TLY_CMD_TRANSFER && json_array_size(errors) == before &&
        memcmp(out->account_id.b, out->to_account.b, sizeof(out->to_account.b)) == 0)
        tly_http_field_error(errors, "to_account", "must differ from from_account");
    return json_array_size(errors) == before;
}

json_t *
tly_command_event_data(const tly_command_t *cmd)
{
    char id[TLY_UUID_STR_LEN + 1];
    json_t *d = json_object();
    int fields = allowed_fields[cmd->kind];
    if (fields & F_FROM) {
        tly_uuid_format(&cmd->account_id, id);
        json_object_set_new(d, "from_account", json_string(id));
    }
    if (fields & F_TO) {
        tly_uuid_format(&cmd->to_account, id);
        json_object_set_new(d, "to_account", json_string(id));
    }
    if (fields & F_AMOUNT)
        json_object_set_new(d, "amount", json_integer(cmd->amount));
    if (fields & F_CURRENCY)
        json_object_set_new(d, "currency", json_string(cmd->currency));
    if (fields & F_LABEL)
        json_object_set_new(d, "label", json_string(cmd->label));
    if ((fields & F_REFERENCE) && cmd->reference != NULL)
        json_object_set_new(d, "reference", json_string(cmd->reference));
    return d;
}
