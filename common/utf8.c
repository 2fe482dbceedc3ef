/* Character counts of UTF-8 text. See tally/utf8.h. */
#include "tally/utf8.h"

size_t
tly_utf8_chars(const char *s)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; ++p)
        if ((*p & 0xc0) != 0x80) /* every byte but a continuation byte starts a character */
            ++n;
    return n;
}
