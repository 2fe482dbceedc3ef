/*
 * `tallyctl migrate`: applies the migration files the database does not have
 * yet, each once, in version order, under an advisory lock.
 */
#ifndef TALLYCTL_MIGRATE_H
#define TALLYCTL_MIGRATE_H

#include "cli.h"

/* Key of the session advisory lock held for a whole run: "TALLYMIG" in ASCII,
   so that it cannot collide with a lock another part of Tally takes by
   accident. */
#define TLY_CTL_MIGRATE_LOCK_KEY "6071217663471601991"

int tly_ctl_migrate(const tly_ctl_cmd_t *cmd, const tly_ctl_settings_t *settings, const tly_ctl_args_t *args);

#endif
