/* ISO 4217 currency codes and their minor units. */
#ifndef TALLY_CURRENCY_H
#define TALLY_CURRENCY_H

#include <stdbool.h>

/** True when `code` is an active ISO 4217 alphabetic code (upper case, 3 letters). */
bool tly_currency_valid(const char *code);

#endif
