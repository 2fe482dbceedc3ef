/*
 * The transfer saga as a pure state machine: (saga state, event) -> (events to
 * send, next state), and (saga state, clock) -> (re-sent step, next state) for
 * deadlines. No I/O: the saga role (roles.c) loads and stores the state in
 * transfer_sagas and writes the events to the outbox in the consumer's batch
 * transaction, so every path, duplicate and out-of-order delivery is testable
 * without a broker or a database.
 *
 *   TransferRequested      (none)         -> TransferDebitRequested (source)    debiting
 *   AccountDebited         debiting       -> TransferCreditRequested (dest.)    crediting
 *   AccountDebitRejected   debiting       -> TransferRejected {code, detail}    rejected
 *   AccountCredited        crediting      -> TransferCompleted                  completed
 *   AccountCreditRejected  crediting      -> DebitReversalRequested (source)    compensating
 *   DebitReversed          compensating   -> TransferFailed {compensated: true} failed
 *   DebitReversalRejected  compensating   -> (nothing now; next deadline sends a new attempt)
 *
 * Anything else (a duplicate, an outcome for another step, another tenant's
 * or another account's event, an event for a finished saga) changes nothing.
 *
 * Every event the saga sends is derived from the transfer's request event,
 * with the type (and the reversal attempt) as the name, so a step re-sent
 * after its deadline has the same id as the first send and the decider
 * applies it once. Transfer events (Completed, Rejected, Failed) keep the
 * transfer as aggregate (Kafka key = transfer id); step commands have the
 * account as aggregate (key = account id, the decider's partitioning).
 */
#ifndef TALLY_LEDGER_SAGA_H
#define TALLY_LEDGER_SAGA_H

#include "tally/envelope.h"

#include <stdbool.h>
#include <stdint.h>

#define TLY_SAGA_MAX_EVENTS 1
#define TLY_SAGA_CODE_MAX 64
#define TLY_SAGA_DETAIL_MAX 256

typedef enum en_tly_saga_status_t {
    TLY_SAGA_NONE = 0, /* no saga yet (state->exists == false) */
    TLY_SAGA_DEBITING,
    TLY_SAGA_CREDITING,
    TLY_SAGA_COMPENSATING,
    TLY_SAGA_COMPLETED,
    TLY_SAGA_REJECTED,
    TLY_SAGA_FAILED,
} tly_saga_status_t;

typedef struct st_tly_saga_state_t {
    bool exists;
    tly_uuid_t transfer_id;
    tly_uuid_t tenant_id;
    tly_uuid_t job_id;
    tly_uuid_t request_event_id; /* the TransferRequested: every derived id hangs off it */
    tly_uuid_t from_account, to_account;
    int64_t amount;
    char currency[4];
    tly_saga_status_t status;
    char error_code[TLY_SAGA_CODE_MAX];     /* rejected / failed */
    char error_detail[TLY_SAGA_DETAIL_MAX]; /* rejected / failed */
    int attempt;                            /* reversal attempt: a rejected reversal is sent again with attempt + 1 */
    int sends;                              /* times the pending step was sent (1 = no re-send yet) */
    tly_uuid_t step_cause_id;               /* causation of the pending step (re-sent unchanged) */
    int64_t step_at_us;                     /* occurred_at of the pending step (re-sent unchanged) */
    int64_t deadline_us;                    /* re-send the pending step after this; 0 when finished */
    int64_t stuck_at_us;                    /* past this an unfinished saga is "stuck"; 0 when finished */
    int64_t created_us;
    int64_t version; /* transitions applied */
} tly_saga_state_t;

typedef struct st_tly_saga_config_t {
    int64_t step_timeout_us; /* a step without an outcome for this long is sent again */
    int64_t stuck_after_us;  /* a saga unfinished this long after it started is stuck */
} tly_saga_config_t;

typedef struct st_tly_saga_step_t {
    tly_envelope_t events[TLY_SAGA_MAX_EVENTS]; /* owned: tly_saga_step_clear */
    int nevents;
    bool changed; /* next differs from the input state: store it */
    tly_saga_state_t next;
} tly_saga_step_t;

/** True when the saga consumes events of `type`. */
bool tly_saga_handles(const char *type);

/**
 * The transfer `ev` belongs to: the aggregate of a TransferRequested, data.transfer_id
 * of an account outcome. False when it has none (or a malformed one).
 */
bool tly_saga_transfer_of(const tly_envelope_t *ev, tly_uuid_t *out);

/**
 * Advances saga `s` (exists == false when there is no row yet) with `ev`.
 * Fills `out` with the events to send (occurred_at = now_us) and the next
 * state. Returns 0, or -1 when `ev` is not a type the saga handles.
 */
int tly_saga_on_event(const tly_saga_state_t *s, const tly_envelope_t *ev, const tly_saga_config_t *cfg, int64_t now_us,
                      tly_saga_step_t *out) __attribute__((warn_unused_result));

/**
 * The deadline of `s` passed (now_us >= s->deadline_us): sends the pending
 * step again, with the id and content of the first send (a reversal after a
 * rejected one: the next attempt), and moves the deadline: the step timeout
 * times 2^(re-sends so far), at most 32 times the timeout. A finished saga,
 * or one whose deadline is ahead, yields nothing. Returns 0.
 */
int tly_saga_on_timeout(const tly_saga_state_t *s, const tly_saga_config_t *cfg, int64_t now_us, tly_saga_step_t *out)
    __attribute__((warn_unused_result));

void tly_saga_step_clear(tly_saga_step_t *step);

bool tly_saga_finished(tly_saga_status_t s);
const char *tly_saga_status_name(tly_saga_status_t s);
bool tly_saga_status_parse(const char *s, tly_saga_status_t *out) __attribute__((warn_unused_result));

#endif
