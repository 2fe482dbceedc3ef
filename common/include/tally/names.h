/* Enum names: the index of a name in a service's table of them (statuses, log levels). */
#ifndef TALLY_NAMES_H
#define TALLY_NAMES_H

/** The index i in [from, n) with names[i] equal to `name`, or -1. */
int tly_name_find(const char *const *names, int from, int n, const char *name);

#endif
