/* Command-line flags of the bench's programs: every flag is --name=value. */
#ifndef TALLY_BENCH_ARGS_H
#define TALLY_BENCH_ARGS_H

#include <stddef.h>

typedef enum { BENCH_ARG_STR, BENCH_ARG_LONG, BENCH_ARG_INT } bench_arg_type_t;

typedef struct {
    const char *name; /* without the dashes */
    bench_arg_type_t type;
    void *dst; /* const char **, long * or int *: keeps its value when the flag is absent */
} bench_arg_t;

/** Fills the destinations of `specs` from argv. Returns 0, or prints `usage` to stderr and returns -1 on any other argument. */
int bench_args_parse(int argc, char **argv, const bench_arg_t *specs, size_t nspecs, const char *usage);

#endif
