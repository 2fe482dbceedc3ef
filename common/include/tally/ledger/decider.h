/*
 * The ledger decider: pure functions from (account state, request event) to
 * (outcome events, next state), and from (state, outcome event) to the next
 * state. No I/O: the consumer around it loads and stores the state and writes
 * the outcomes to the outbox, so every rule is testable without a broker or a
 * database.
 *
 * Command types are rows of a table in decider.c (request type, rule); their
 * fields, outcome and rejection types and problem codes are the catalogue's
 * (tally/ledger/catalogue.h), which also checks each request's fields before
 * its rule runs. Outcome types are rows of a second table (outcome type,
 * evolve function). Adding a command is a catalogue row and rows here.
 */
#ifndef TALLY_LEDGER_DECIDER_H
#define TALLY_LEDGER_DECIDER_H

#include "tally/envelope.h"
#include "tally/ledger/catalogue.h" /* the TLY_CODE_* problem codes */

#include <stdbool.h>
#include <stdint.h>

/* Most outcome events one request can yield (a reversal may yield two). */
#define TLY_DECISION_MAX_EVENTS 2

typedef enum en_tly_account_status_t {
    TLY_ACCOUNT_OPEN = 0,
    TLY_ACCOUNT_FROZEN,
    TLY_ACCOUNT_CLOSED,
} tly_account_status_t;

typedef struct st_tly_account_state_t {
    bool exists;
    tly_uuid_t id;
    tly_uuid_t tenant_id;
    char currency[4];
    tly_account_status_t status;
    int64_t balance;
    int64_t version; /* number of state-changing outcome events applied */
} tly_account_state_t;

typedef struct st_tly_decision_t {
    tly_envelope_t events[TLY_DECISION_MAX_EVENTS]; /* owned: tly_decision_clear */
    int nevents;
    bool rejected;      /* events[0] is a <Xxx>Rejected */
    bool state_changed; /* next differs from the input state */
    tly_account_state_t next;
} tly_decision_t;

/** True when `type` is a request event the decider handles. */
bool tly_decider_is_request(const char *type);
/** True when `type` is an outcome event the decider emits (tly_decider_evolve knows it). */
bool tly_decider_is_outcome(const char *type);
/** True when `type` is a <Xxx>Rejected outcome. */
bool tly_decider_is_rejection(const char *type);
/** The rejection type of request `type` ("DepositRequested" -> "DepositRejected"), or NULL. */
const char *tly_decider_rejection_of(const char *type);

/**
 * Decides `request` against `state` (NULL, or exists == false, when the
 * account is unknown). Fills `out` with the outcome events (ids derived from
 * the request, so the same request always yields the same ids) and the next
 * state. Outcome events carry `now_us` as occurred_at. Returns 0, or -1 when
 * `request` is not a request type this decider knows (nothing is filled).
 */
int tly_decider_decide_at(const tly_account_state_t *state, const tly_envelope_t *request, int64_t now_us, tly_decision_t *out)
    __attribute__((warn_unused_result));
/** tly_decider_decide_at with the wall clock. */
int tly_decider_decide(const tly_account_state_t *state, const tly_envelope_t *request, tly_decision_t *out)
    __attribute__((warn_unused_result));

/**
 * A rejection of `request` with `code` and `detail` whatever the state (used
 * when a request is parked in dead_letters, so that its job still ends).
 */
int tly_decider_reject(const tly_envelope_t *request, const char *code, const char *detail, int64_t now_us, tly_decision_t *out)
    __attribute__((warn_unused_result));

/**
 * Applies outcome event `event` to `state` in place. Rejections and unknown
 * types leave it unchanged. Returns 0, or -1 when the event does not fit the
 * state (e.g. a deposit to an unknown account); the state is then unchanged.
 */
int tly_decider_evolve(tly_account_state_t *state, const tly_envelope_t *event) __attribute__((warn_unused_result));

void tly_decision_clear(tly_decision_t *d);

const char *tly_account_status_name(tly_account_status_t s);
bool tly_account_status_parse(const char *s, tly_account_status_t *out) __attribute__((warn_unused_result));

#endif
