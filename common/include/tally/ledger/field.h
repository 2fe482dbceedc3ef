/*
 * The limits of the ledger's command fields and their checks, shared by the
 * command API (which answers 422) and the decider and saga (which reject an
 * event that bypassed the API), so that both sides agree on every value.
 * Text limits count Unicode characters, as the event schemas' maxLength does.
 */
#ifndef TALLY_LEDGER_FIELD_H
#define TALLY_LEDGER_FIELD_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TLY_LABEL_MAX_CHARS 200
#define TLY_REFERENCE_MAX_CHARS 200
/* Amounts are integer minor units below 2^53, so that every JSON reader holds them exactly. */
#define TLY_AMOUNT_MAX ((int64_t)1 << 53)

/** True when `v` is a JSON string of at most `max_chars` characters. */
bool tly_field_text_ok(const json_t *v, size_t max_chars);

/** True when `v` is a JSON string holding an active ISO 4217 code (tally/currency.h). */
bool tly_field_currency_ok(const json_t *v);

#endif
