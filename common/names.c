/* Enum names. See tally/names.h. */
#include "tally/names.h"

#include <string.h>

int
tly_name_find(const char *const *names, int from, int n, const char *name)
{
    for (int i = from; i < n; ++i)
        if (strcmp(names[i], name) == 0)
            return i;
    return -1;
}
