/* tally-command-api: the command API's settings table, then the server. */
#include "command_api.h"
#include "tally/service.h"

static int
run(void *cfg)
{
    return tly_command_api_run(cfg);
}

int
main(int argc, char **argv)
{
    tly_command_api_config_t cfg = {0};
    return tly_service_main("command-api", tly_command_api_settings, tly_command_api_nsettings, &cfg,
                            offsetof(tly_command_api_config_t, log_level), argc, argv,
                            "usage: tally-command-api [--name=value...]\n\nThe Tally command API: every POST under /v1.", run);
}
