/* The scaffold of both HTTP APIs. See tally/api_service.h. */
#include "tally/api_service.h"
#include "tally/log.h"

int
tly_api_service_run(tly_api_service_t *svc, tly_keycache_t **keys)
{
    char err[512];
    if (!tly_api_abuse_setup(svc->abuse, err, sizeof(err))) {
        tly_log(TLY_LOG_ERROR, err, NULL);
        return 1;
    }
    *keys = tly_keycache_create(svc->pg_dsn, (int)svc->key_refresh_ms);
    int ret = tly_server_run(&svc->server);
    tly_keycache_destroy(*keys);
    *keys = NULL;
    return ret == 0 ? 0 : 1;
}

bool
tly_api_service_ready(tly_pgpool_t *pg, tly_keycache_t *keys, json_t *reasons)
{
    bool pg_ok = tly_pgpool_ready(pg), keys_ok = tly_keycache_ready(keys);
    json_object_set_new(reasons, "postgresql", json_boolean(pg_ok));
    json_object_set_new(reasons, "api_keys", json_boolean(keys_ok));
    return pg_ok && keys_ok;
}

bool
tly_api_service_serving(tly_pgpool_t *pg, tly_keycache_t *keys)
{
    return tly_pgpool_ready(pg) && tly_keycache_ready(keys);
}
