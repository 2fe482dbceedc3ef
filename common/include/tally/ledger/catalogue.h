/*
 * The catalogue of the ledger's events: every command and event type and
 * version, its aggregate, its kind, the fields of its data with their types
 * and limits, and for a command the problem codes its rejection can carry.
 * It is the one list of types: the command API validates bodies with it, the
 * decider and the saga check requests with it, the projector, the webhook
 * event types and the upcasters are checked against it, and
 * tests/unit/common/ledger/test_catalogue.c checks it against
 * schemas/events/<Type>.v<N>.json both ways.
 *
 * Everything here is static data: pointers are borrowed and live forever.
 */
#ifndef TALLY_LEDGER_CATALOGUE_H
#define TALLY_LEDGER_CATALOGUE_H

#include "tally/ledger/field.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* Problem codes, as they appear in <Xxx>Rejected.data.code and a failed job's error.code. */
#define TLY_CODE_ACCOUNT_NOT_FOUND "account_not_found"
#define TLY_CODE_ACCOUNT_EXISTS "account_exists"
#define TLY_CODE_CURRENCY_MISMATCH "currency_mismatch"
#define TLY_CODE_INSUFFICIENT_FUNDS "insufficient_funds"
#define TLY_CODE_ACCOUNT_FROZEN "account_frozen"
#define TLY_CODE_ACCOUNT_CLOSED "account_closed"
#define TLY_CODE_ACCOUNT_NOT_FROZEN "account_not_frozen"
#define TLY_CODE_BALANCE_NOT_ZERO "balance_not_zero"
#define TLY_CODE_INVALID_REQUEST "invalid_request"
#define TLY_CODE_DEAD_LETTERED "dead_lettered"

typedef enum en_tly_problem_t {
    TLY_PROBLEM_ACCOUNT_NOT_FOUND,
    TLY_PROBLEM_ACCOUNT_EXISTS,
    TLY_PROBLEM_CURRENCY_MISMATCH,
    TLY_PROBLEM_INSUFFICIENT_FUNDS,
    TLY_PROBLEM_ACCOUNT_FROZEN,
    TLY_PROBLEM_ACCOUNT_CLOSED,
    TLY_PROBLEM_ACCOUNT_NOT_FROZEN,
    TLY_PROBLEM_BALANCE_NOT_ZERO,
    TLY_PROBLEM_INVALID_REQUEST,
    TLY_PROBLEM_DEAD_LETTERED,
    TLY_PROBLEM__COUNT
} tly_problem_t;

/** The code of `p` ("insufficient_funds"). */
const char *tly_problem_code(tly_problem_t p);
/** Finds the problem whose code is `code`; false when none is. */
bool tly_problem_parse(const char *code, tly_problem_t *out) __attribute__((warn_unused_result));

typedef enum en_tly_event_kind_t {
    TLY_EVENT_REQUEST,   /* a client's command, written by the command API */
    TLY_EVENT_OUTCOME,   /* a command's (or a transfer's) success, written by the decider or the saga */
    TLY_EVENT_REJECTION, /* a command's (or a transfer's) refusal, with data.code and data.detail */
    TLY_EVENT_SAGA_STEP, /* a request the transfer saga sends to one account */
    TLY_EVENT_NOTICE,    /* a system notice outside the ledger (a webhook endpoint disabled) */
} tly_event_kind_t;

typedef enum en_tly_field_type_t {
    TLY_FIELD_UUID,      /* a lower-case uuid string */
    TLY_FIELD_AMOUNT,    /* an integer in [1, TLY_AMOUNT_MAX) */
    TLY_FIELD_BALANCE,   /* an integer >= 0 */
    TLY_FIELD_CURRENCY,  /* an ISO 4217 code */
    TLY_FIELD_TEXT,      /* a string of min_chars..max_chars characters (max 0: no limit) */
    TLY_FIELD_CODE,      /* a problem code */
    TLY_FIELD_TRUE,      /* the constant true */
    TLY_FIELD_TIMESTAMP, /* an RFC 3339 time */
    TLY_FIELD_WORD,      /* one of `words` */
} tly_field_type_t;

typedef struct st_tly_field_spec_t {
    const char *name;
    tly_field_type_t type;
    bool required;
    bool nullable; /* null is a value of its own (not "absent") */
    size_t min_chars, max_chars;
    const char *const *words; /* TLY_FIELD_WORD: NULL-terminated */
} tly_field_spec_t;

typedef struct st_tly_event_spec_t {
    const char *type;
    int version;
    const char *aggregate; /* "account", "transfer", "webhook_endpoint" */
    tly_event_kind_t kind;
    const tly_field_spec_t *fields; /* in the order the command API checks and writes them */
    size_t nfields;
    const char *outcome;   /* requests and saga steps: the type of their success */
    const char *rejection; /* requests and saga steps: the type of their refusal */
    unsigned problems;     /* requests and saga steps: 1 << tly_problem_t for each code the refusal may carry */
} tly_event_spec_t;

/** Every (type, version), sorted by type then version; `*n` receives the count. */
const tly_event_spec_t *tly_catalogue_all(size_t *n);

/** The spec of `type` at `version`, or at its newest version when `version` is 0; NULL when unknown. */
const tly_event_spec_t *tly_catalogue_find(const char *type, int version);

/** The newest version of `type`, or 0 when the catalogue does not know it. */
int tly_catalogue_latest_version(const char *type);

/** The distinct type names, sorted (strcmp order); `*n` receives the count. */
const char *const *tly_catalogue_types(size_t *n);

/** True when a refusal of `spec` may carry problem `p`. */
bool tly_catalogue_can_produce(const tly_event_spec_t *spec, tly_problem_t p);

/** The field `name` of `spec`, or NULL. */
const tly_field_spec_t *tly_catalogue_field(const tly_event_spec_t *spec, const char *name);

/**
 * True when `v` is a valid value of `f`. An absent member (`v` NULL) is valid
 * when `f` is optional; so is a JSON null, which a reader takes as absent.
 */
bool tly_field_value_ok(const tly_field_spec_t *f, const json_t *v);

/**
 * Checks the declared fields of `data` against `spec`, in the spec's order.
 * Returns NULL when every one is valid, or the first that is not. Members the
 * spec does not declare are not looked at (the command API refuses them
 * itself, with a message of its own).
 */
const tly_field_spec_t *tly_catalogue_check(const tly_event_spec_t *spec, const json_t *data);

#endif
