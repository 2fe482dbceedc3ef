/*
 * The commands the API accepts, parsed and validated without any state: the
 * pure half of the command API, shared by the HTTP handlers, the unit tests
 * and the fuzz target.
 */
#ifndef TALLY_COMMANDS_H
#define TALLY_COMMANDS_H

#include "tally/ledger/field.h"
#include "tally/utf8.h"
#include "tally/uuid.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum en_tly_command_kind_t {
    TLY_CMD_OPEN_ACCOUNT,
    TLY_CMD_DEPOSIT,
    TLY_CMD_WITHDRAW,
    TLY_CMD_FREEZE,
    TLY_CMD_UNFREEZE,
    TLY_CMD_CLOSE,
    TLY_CMD_TRANSFER,
    TLY_CMD__COUNT
} tly_command_kind_t;

typedef struct st_tly_command_t {
    tly_command_kind_t kind;
    tly_uuid_t account_id; /* path id, or the new account's id */
    tly_uuid_t to_account; /* transfers */
    int64_t amount;
    char currency[4];
    const char *label;     /* borrowed from the body json */
    const char *reference; /* borrowed; may be NULL */
} tly_command_t;

typedef struct st_tly_command_spec_t {
    const char *name;          /* route suffix: "deposits", "freeze", ... */
    const char *request_event; /* e.g. "DepositRequested" */
    const char *aggregate_type;
    bool needs_idempotency_key;
} tly_command_spec_t;

const tly_command_spec_t *tly_command_spec(tly_command_kind_t kind);

/**
 * Finds the command for a route: `sub` is NULL for POST /v1/accounts and
 * /v1/transfers (given by `collection`), or the action after
 * /v1/accounts/{id}/. Returns false when no command has that route.
 */
bool tly_command_route(const char *collection, const char *sub, tly_command_kind_t *out);

/**
 * Validates `body` (a parsed JSON value) for `kind`. Appends every problem to
 * `errors` (field, message) and returns true only when there were none. Strings
 * in `out` are borrowed from `body`.
 */
bool tly_command_validate(tly_command_kind_t kind, const json_t *body, tly_command_t *out, json_t *errors);

/** The request event's data object for a validated command (new reference). */
json_t *tly_command_event_data(const tly_command_t *cmd);

#endif
