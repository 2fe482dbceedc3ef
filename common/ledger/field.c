/* The command fields' checks. See tally/ledger/field.h. */
#include "tally/ledger/field.h"
#include "tally/currency.h"
#include "tally/utf8.h"

bool
tly_field_text_ok(const json_t *v, size_t max_chars)
{
    return json_is_string(v) && tly_utf8_chars(json_string_value(v)) <= max_chars;
}

bool
tly_field_currency_ok(const json_t *v)
{
    return json_is_string(v) && tly_currency_valid(json_string_value(v));
}
