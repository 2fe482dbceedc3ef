/* `tallyctl webhooks reencrypt`: one transaction, every endpoint's secrets re-sealed with the current key. */
#include "secrets.h"
#include "db.h"

#include "tally/secretbox.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>

#define ERR_MAX 1024

/* The stored value re-sealed with the current key into `out` (NULL stays NULL); false with `err` when it does not open. */
static bool
reseal(const char *stored, const char *owner, char *out, size_t cap, char *err, size_t errcap)
{
    char plain[TLY_SECRETBOX_SEALED_MAX], why[256];
    if (tly_secretbox_open(stored, owner, plain, sizeof(plain), why, sizeof(why)) != 0) {
        snprintf(err, errcap, "could not open the secret of endpoint %s: %s", owner, why);
        return false;
    }
    bool ok = tly_secretbox_seal(plain, owner, out, cap) == 0;
    OPENSSL_cleanse(plain, sizeof(plain));
    if (!ok)
        snprintf(err, errcap, "could not seal the secret of endpoint %s", owner);
    return ok;
}

/* Re-seals the rows of `res` that are not sealed with the current key; the count into `*changed`. */
static int
reseal_rows(PGconn *conn, PGresult *res, int *changed, char *err, size_t errcap)
{
    char cur[TLY_SECRETBOX_SEALED_MAX], prev[TLY_SECRETBOX_SEALED_MAX];
    for (int i = 0; i < PQntuples(res); ++i) {
        const char *id = PQgetvalue(res, i, 0), *secret = PQgetvalue(res, i, 1);
        const char *previous = PQgetisnull(res, i, 2) ? NULL : PQgetvalue(res, i, 2);
        if (tly_secretbox_is_current(secret) && (previous == NULL || tly_secretbox_is_current(previous)))
            continue;
        if (!reseal(secret, id, cur, sizeof(cur), err, errcap) ||
            (previous != NULL && !reseal(previous, id, prev, sizeof(prev), err, errcap)))
            return -1;
        const char *params[3] = {id, cur, previous != NULL ? prev : NULL};
        PGresult *u = tly_ctl_db_query(conn, "could not update endpoint",
                                       "UPDATE webhook_endpoints SET secret = $2, previous_secret = $3 WHERE id = $1::uuid", 3,
                                       params, err, errcap);
        OPENSSL_cleanse(cur, sizeof(cur));
        OPENSSL_cleanse(prev, sizeof(prev));
        if (u == NULL)
            return -1;
        PQclear(u);
        ++*changed;
    }
    return 0;
}

int
tly_ctl_webhooks_reencrypt(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args)
{
    char err[ERR_MAX];
    int ret = TLY_CTL_FAIL, changed = 0, keys = tly_secretbox_init(err, sizeof(err));
    PGconn *conn = NULL;
    PGresult *res = NULL, *done = NULL;
    if (keys <= 0) {
        if (keys == 0)
            snprintf(err, sizeof(err), "TALLY_SECRET_KEYS is not set: there is no key to seal with");
        tly_ctl_error("%s", err);
        return TLY_CTL_USAGE;
    }
    if ((conn = tly_ctl_db_connect(settings->pg_dsn, err, sizeof(err))) == NULL ||
        (done = tly_ctl_db_query(conn, "could not begin", "BEGIN", 0, NULL, err, sizeof(err))) == NULL)
        goto cleanup;
    PQclear(done);
    /* FOR UPDATE: a rotation through the API meanwhile waits, and is not overwritten */
    if ((res = tly_ctl_db_query(conn, "could not read endpoints",
                                "SELECT id, secret, previous_secret FROM webhook_endpoints ORDER BY id FOR UPDATE", 0, NULL, err,
                                sizeof(err))) == NULL ||
        reseal_rows(conn, res, &changed, err, sizeof(err)) != 0 ||
        (done = tly_ctl_db_query(conn, "could not commit", "COMMIT", 0, NULL, err, sizeof(err))) == NULL)
        goto cleanup;
    PQclear(done);
    printf("%d of %d endpoints re-encrypted with the current key\n", changed, PQntuples(res));
    ret = TLY_CTL_OK;
cleanup:
    if (ret != TLY_CTL_OK)
        tly_ctl_error("%s", err);
    PQclear(res);
    PQfinish(conn); /* an open transaction rolls back */
    return ret;
}
