/* Counting text the way the JSON Schemas' maxLength does: in Unicode characters. */
#ifndef TALLY_UTF8_H
#define TALLY_UTF8_H

#include <stddef.h>

/** Counts the characters (code points) of `s`, valid UTF-8 as jansson guarantees for every string it returns. */
size_t tly_utf8_chars(const char *s);

#endif
