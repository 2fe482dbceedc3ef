/* tally-query-api: the query API's settings table, then the server. */
#include "query_api.h"
#include "tally/service.h"

static int
run(void *cfg)
{
    return tly_query_api_run(cfg);
}

int
main(int argc, char **argv)
{
    tly_query_api_config_t cfg = {0};
    return tly_service_main("query-api", tly_query_api_settings, tly_query_api_nsettings, &cfg,
                            offsetof(tly_query_api_config_t, log_level), argc, argv,
                            "usage: tally-query-api [--name=value...]\n\nThe Tally query API: every GET and HEAD under /v1.", run);
}
