/* --name=value flags for the bench's programs (bench_args.h). */
#include "bench_args.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int
bench_args_parse(int argc, char **argv, const bench_arg_t *specs, size_t nspecs, const char *usage)
{
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        size_t k = 0;
        for (; k < nspecs; ++k) {
            size_t n = strlen(specs[k].name);
            if (strncmp(a, "--", 2) == 0 && strncmp(a + 2, specs[k].name, n) == 0 && a[2 + n] == '=')
                break;
        }
        if (k == nspecs) {
            fprintf(stderr, "usage: %s\n", usage);
            return -1;
        }
        const char *v = a + 3 + strlen(specs[k].name);
        switch (specs[k].type) {
        case BENCH_ARG_STR:
            *(const char **)specs[k].dst = v;
            break;
        case BENCH_ARG_LONG:
            *(long *)specs[k].dst = atol(v);
            break;
        case BENCH_ARG_INT:
            *(int *)specs[k].dst = atoi(v);
            break;
        }
    }
    return 0;
}
