/* tallyctl: the operator command line. Everything but main lives in tallyctl_core. */
#include "cli.h"

#include <stdlib.h>

int
main(int argc, char **argv)
{
    setenv("PGAPPNAME", "tally-tallyctl", 0); /* pg_stat_activity shows an operator's replay as such */
    return tly_ctl_main(argc, argv);
}
