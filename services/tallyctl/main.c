/* tallyctl: the operator command line. Everything but main lives in tallyctl_core. */
#include "cli.h"

int
main(int argc, char **argv)
{
    return tly_ctl_main(argc, argv);
}
