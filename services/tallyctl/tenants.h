/* `tallyctl tenants ...`, and finding a tenant by id or name for other commands. */
#ifndef TALLYCTL_TENANTS_H
#define TALLYCTL_TENANTS_H

#include "cli.h"

#include <libpq-fe.h>

#define TLY_CTL_TENANT_NAME_MAX 200

int tly_ctl_tenants_create(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);
/** `tenants quota TENANT [--api-keys N] [--webhook-endpoints N] [--long-polls N]`: prints the quotas after any change. */
int tly_ctl_tenants_quota(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);
int tly_ctl_tenants_list(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);

/**
 * Finds the tenant `ref` names: a UUID is looked up as an id, anything else as
 * a name (names that are UUIDs are refused at creation, so the two never
 * clash). Writes the canonical id to `id` (37 bytes). Returns 0, or -1 with
 * `err` set: "tenant \"x\" does not exist" or the database error.
 */
int tly_ctl_tenant_resolve(PGconn *conn, const char *ref, char *id, char *err, size_t errcap) __attribute__((warn_unused_result));

#endif
