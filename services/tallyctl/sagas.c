/*
 * tallyctl sagas list: the transfer sagas from transfer_sagas. A saga is in
 * flight until completed, rejected or failed; it is stuck when it is still in
 * flight past stuck_at (TALLY_SAGA_STUCK_MS after it started). Stuck sagas are
 * also counted in the worker's tally_saga_states{state="stuck"} gauge.
 */
#include "sagas.h"
#include "db.h"

#include <stdio.h>

int
tly_ctl_sagas_list(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[1024];
    const char *stuck = tly_ctl_arg(cmd, args, "stuck"), *all = tly_ctl_arg(cmd, args, "all");
    const char *filter = stuck != NULL ? "stuck" : all != NULL ? "all" : "open";
    int ret = TLY_CTL_FAIL;
    PGresult *res = NULL;
    PGconn *conn = tly_ctl_db_open(settings);
    if (conn == NULL)
        goto out;
    const char *vals[] = {filter};
    res = tly_ctl_db_query(conn, "could not list sagas",
                           "SELECT transfer_id, state, from_account, to_account, amount, currency, sends, "
                           "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS started, "
                           "to_char(deadline_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS next_resend, "
                           "CASE WHEN stuck_at <= now() THEN 'stuck' ELSE '' END AS stuck, coalesce(error_code, '') AS error "
                           "FROM transfer_sagas WHERE CASE $1 WHEN 'all' THEN true "
                           "WHEN 'stuck' THEN stuck_at <= now() "
                           "ELSE state NOT IN ('completed', 'rejected', 'failed') END ORDER BY created_at LIMIT 1000",
                           1, vals, err, sizeof(err));
    if (res == NULL) {
        tly_ctl_error("%s", err);
        goto out;
    }
    tly_ctl_db_print_table(res, stdout);
    fprintf(stderr, "%d saga(s) (%s)\n", PQntuples(res), filter);
    ret = TLY_CTL_OK;
out:
    PQclear(res);
    PQfinish(conn);
    return ret;
}
